{
  description = "Share sources that exist at every microvm.nix VM start, and `microvm-link` to put a repo into a VM";

  # No flake.lock is shipped: this repository is developed on machines that
  # cannot reach GitHub, so none could be generated, and nothing is pinned by
  # hand. A consumer's own lock file pins these inputs.
  inputs = {
    nixpkgs.url = "github:NixOS/nixpkgs/nixos-unstable";
    # Only the checks use microvm.nix; the module expects the host to import
    # microvm.nix's host module itself. A consumer that also has a `microvm`
    # input should make this one follow it (README, "On NixOS").
    microvm = {
      url = "github:microvm-nix/microvm.nix";
      inputs.nixpkgs.follows = "nixpkgs";
    };
  };

  outputs =
    {
      self,
      nixpkgs,
      microvm,
    }:
    let
      inherit (nixpkgs) lib;
      systems = [
        "x86_64-linux"
        "aarch64-linux"
      ];
      forAllSystems = f: lib.genAttrs systems (system: f system nixpkgs.legacyPackages.${system});
    in
    {
      overlays.default = final: _prev: {
        microvm-workspaces = final.callPackage ./nixos-module/package.nix { };
      };

      packages = forAllSystems (
        system: pkgs: {
          microvm-workspaces = pkgs.callPackage ./nixos-module/package.nix { };
          default = self.packages.${system}.microvm-workspaces;
        }
      );

      nixosModules = {
        # For the host, beside microvm.nix's host module.
        microvm-workspaces = ./nixos-module;
        default = self.nixosModules.microvm-workspaces;
        # For a microvm.nix guest, beside microvm.nix's guest module: live
        # shares (services.microvm-workspaces.guest.shares).
        guest = ./nixos-module/guest.nix;
      };

      # `nix fmt`: nixfmt (RFC 166 style) over the whole tree.
      formatter = forAllSystems (_system: pkgs: pkgs.nixfmt-tree);

      devShells = forAllSystems (
        _system: pkgs: {
          default = pkgs.mkShell {
            packages = with pkgs; [
              cargo
              rustc
              clippy
              rustfmt
              rust-analyzer
              pkg-config
              virtiofsd
              qemu
            ];
            RUST_SRC_PATH = "${pkgs.rustPlatform.rustLibSrc}";
          };
        }
      );

      checks = forAllSystems (
        system: pkgs: {
          package = self.packages.${system}.default;

          # The pure parts of the module and the parse check of every .nix
          # file, as CI runs them without nixpkgs.
          nix-lib =
            pkgs.runCommand "microvm-workspaces-nix-lib-check"
              {
                nativeBuildInputs = [ pkgs.nix ];
                src = lib.fileset.toSource {
                  root = ./.;
                  fileset = lib.fileset.unions [
                    (lib.fileset.fileFilter (file: file.hasExt "nix") ./.)
                    ./tests/nix
                    (lib.fileset.maybeMissing ./docs/nixos.md)
                    (lib.fileset.maybeMissing ./README.md)
                  ];
                };
              }
              ''
                export HOME=$TMPDIR XDG_CACHE_HOME=$TMPDIR/cache NIX_STATE_DIR=$TMPDIR/state
                cp -r $src source && chmod -R u+w source
                bash source/tests/nix/check.sh
                touch $out
              '';

          # A NixOS host with microvm.nix's host module and ours, and real
          # microvm.nix guests, evaluated (tests/nix/host.nix): assertions,
          # the masked tmpfiles lines, the sudo rule and the module's warnings
          # are checked while evaluating (so `nix flake check --no-build`
          # catches them), config.json is built and compared, and both hosts'
          # whole systems must evaluate. Needs no KVM.
          module-eval =
            let
              fixtures = import ./tests/nix/host.nix {
                mkGuest =
                  {
                    hostName,
                    shares,
                    live,
                    vsockCid,
                  }:
                  lib.nixosSystem {
                    modules = [
                      microvm.nixosModules.microvm
                      self.nixosModules.guest
                      {
                        nixpkgs.hostPlatform = system;
                        networking.hostName = hostName;
                        microvm.hypervisor = "qemu";
                        microvm.shares = shares;
                        microvm.vsock.cid = vsockCid;
                        services.microvm-workspaces.guest.shares = live;
                        system.stateVersion = lib.trivial.release;
                      }
                    ];
                  };
              };
              evalHost =
                fixture:
                lib.nixosSystem {
                  modules = [
                    microvm.nixosModules.host
                    self.nixosModules.default
                    fixture.module
                    {
                      nixpkgs.hostPlatform = system;
                      boot.isContainer = true;
                      system.stateVersion = lib.trivial.release;
                    }
                  ];
                };
              clean = evalHost fixtures.clean;
              warned = evalHost fixtures.warned;
              problems =
                map (p: "clean host: ${p}") (fixtures.problems fixtures.clean clean.config)
                ++ map (p: "warned host: ${p}") (fixtures.problems fixtures.warned warned.config);
            in
            if problems != [ ] then
              throw "microvm-workspaces module-eval:\n${lib.concatStringsSep "\n" problems}"
            else
              builtins.seq clean.config.system.build.toplevel.drvPath (
                builtins.seq warned.config.system.build.toplevel.drvPath (
                  pkgs.runCommand "microvm-workspaces-module-eval"
                    {
                      nativeBuildInputs = [ pkgs.jq ];
                      actual = clean.config.environment.etc."microvm-workspaces/config.json".source;
                      expected = builtins.toJSON fixtures.clean.configJson;
                      passAsFile = [ "expected" ];
                    }
                    ''
                      jq -S . "$actual" >actual.json
                      jq -S . "$expectedPath" >expected.json
                      diff -u expected.json actual.json
                      touch $out
                    ''
                )
              );

          # Two qemu microVMs on a NixOS host with microvm.nix and this module.
          # Needs KVM (the `kvm` and `nixos-test` system features).
          vm-test = pkgs.testers.runNixOSTest (import ./nixos-module/test.nix { inherit self microvm; });

          # The VM test's driver: the host and guest systems and the Python
          # test script (type-checked and linted), built without KVM.
          vm-test-driver = self.checks.${system}.vm-test.driver;
        }
      );
    };
}
