{
  lib,
  stdenv,
  rustPlatform,
  installShellFiles,
  systemd,
  util-linux,
}:

let
  cargoToml = lib.importTOML ../Cargo.toml;

  # Cargo.toml's rust-version (the highest of the locked dependencies,
  # tests/nix/rust-floor.nix); nixpkgs 25.11 is the first release whose
  # rustc meets it (see minNixpkgs in default.nix).
  rustc = rustPlatform.rust.rustc or null;
  rustcOk =
    rustc == null || lib.versionAtLeast rustc.version cargoToml.package.rust-version;
in
assert lib.assertMsg rustcOk "microvm-workspaces needs rustc ${cargoToml.package.rust-version} or later (nixpkgs 25.11 or later); this nixpkgs has rustc ${rustc.version}. Update nixpkgs.";
rustPlatform.buildRustPackage {
  pname = "microvm-workspaces";
  inherit (cargoToml.package) version;

  # Only what cargo needs to build: the units/*.in templates are compiled in
  # with include_str!. tests/ stays out, so editing a test does not rebuild
  # the package; its test targets need the root-tests feature, so cargo never
  # looks for them.
  src = lib.fileset.toSource {
    root = ../.;
    fileset = lib.fileset.unions [
      ../Cargo.toml
      ../Cargo.lock
      ../src
      ../units
    ];
  };

  cargoLock.lockFile = ../Cargo.lock;

  nativeBuildInputs = [ installShellFiles ];

  # Read with option_env! at compile time. No sudo path: microvm-link finds
  # sudo when it runs (NixOS's setuid wrapper /run/wrappers/bin/sudo first,
  # then PATH), so the NixOS module and `nix run` use this same derivation.
  # util-linux's unshare makes the user namespaces of idmapped link mounts
  # (src/fs/idmap.rs); compiled in, so root's PATH never decides which one runs.
  env = {
    MICROVM_WORKSPACES_PREPARE = "${placeholder "out"}/libexec/microvm-workspaces-prepare";
    MICROVM_WORKSPACES_SYSTEMCTL = lib.getExe' systemd "systemctl";
    MICROVM_WORKSPACES_UNSHARE = lib.getExe' util-linux "unshare";
  };

  # Only the library's tests (no root: names, unit name escaping, the command
  # line, the code's layout read from src/, ...). The root set (tests/root,
  # tests/reliability) makes bind mounts, mount namespaces and trusted.*
  # extended attributes, which need root and are not available in the build
  # sandbox; it runs in the repository's CI, and the NixOS VM test in the
  # flake's checks exercises the installed package.
  cargoTestFlags = [ "--lib" ];
  # Of those, the docs checks (src/tests/docs.rs) read the whole repository:
  # its Markdown, scripts and Nix, which this source leaves out.
  checkFlags = [ "--skip=tests::docs::" ];

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
