{
  lib,
  stdenv,
  rustPlatform,
  installShellFiles,
  systemd,
  # Where microvm-link finds sudo when it re-executes itself as a normal user:
  # the setuid wrapper on NixOS.
  sudoPath ? "/run/wrappers/bin/sudo",
}:

let
  cargoToml = lib.importTOML ../Cargo.toml;
in
rustPlatform.buildRustPackage {
  pname = "microvm-workspaces";
  inherit (cargoToml.package) version;

  # Only what cargo needs: the units/*.in templates are compiled in with
  # include_str!, and tests/ holds integration tests cargo knows about.
  src = lib.fileset.toSource {
    root = ../.;
    fileset = lib.fileset.unions [
      ../Cargo.toml
      ../Cargo.lock
      ../src
      ../units
      (lib.fileset.maybeMissing ../tests)
    ];
  };

  cargoLock.lockFile = ../Cargo.lock;

  nativeBuildInputs = [ installShellFiles ];

  # Read with option_env! at compile time.
  env = {
    MICROVM_WORKSPACES_PREPARE = "${placeholder "out"}/libexec/microvm-workspaces-prepare";
    MICROVM_WORKSPACES_SYSTEMCTL = lib.getExe' systemd "systemctl";
    MICROVM_WORKSPACES_SUDO = sudoPath;
  };

  # The test suite makes bind mounts, mount namespaces and trusted.* extended
  # attributes, which need root and are not available in the build sandbox.
  # It runs in the repository's CI; the NixOS VM test in the flake's checks
  # exercises the installed package.
  doCheck = false;

  # cargo installs every binary into bin/; only microvm-link belongs there.
  postInstall = ''
    mkdir -p $out/libexec $out/lib/systemd/system-generators
    mv $out/bin/microvm-workspaces-prepare $out/libexec/
    mv $out/bin/microvm-workspaces-generator $out/lib/systemd/system-generators/
  ''
  + lib.optionalString (stdenv.buildPlatform.canExecute stdenv.hostPlatform) ''
    installShellCompletion --cmd microvm-link \
      --bash <($out/bin/microvm-link completions bash) \
      --zsh <($out/bin/microvm-link completions zsh) \
      --fish <($out/bin/microvm-link completions fish)
  '';

  meta = {
    description = cargoToml.package.description;
    homepage = cargoToml.package.repository;
    license = lib.licenses.mit;
    mainProgram = "microvm-link";
    platforms = lib.platforms.linux;
  };
}
