{
  description = "Share sources that exist at every microvm.nix VM start, and `microvm-link` to put a repo into a VM";

  # No flake.lock is shipped: this repository is developed on machines that
  # cannot reach GitHub, so none could be generated, and nothing is pinned by
  # hand. A consumer's own lock file pins these inputs.
  inputs = {
    nixpkgs.url = "github:NixOS/nixpkgs/nixos-unstable";
    # Only the checks use microvm.nix; the module expects the host to import
    # microvm.nix's host module itself.
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
        microvm-workspaces = ./nixos-module;
        default = self.nixosModules.microvm-workspaces;
      };

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

          # Two qemu microVMs on a NixOS host with microvm.nix and this module.
          vm-test = pkgs.testers.runNixOSTest (import ./nixos-module/test.nix { inherit self microvm; });
        }
      );
    };
}
