# NixOS module for microvm.nix guests: services.microvm-workspaces.guest
# (the flake's nixosModules.guest). Live shares (issue #11): a guest sees what
# a workspace entry is linked to now, without a restart when it is relinked.
#
# For each `shares.<share> = { entry; path; mountPoint; readOnly; }`:
#   * one microvm.shares entry: virtiofs, tag lib.nix liveTag <share> (at most
#     36 bytes), source the live root <workspaceDir>/.live/<entry>[/<path>],
#     mounted at /run/microvm-workspaces/<share>;
#   * a symlink mountPoint -> /run/microvm-workspaces/<share>/current
#     (systemd-tmpfiles `L`: never `L+`, which deletes a directory in the way
#     with its contents; a unit says at boot when something is in the way).
# The host module finds these shares in microvm.vms like any other and lists
# them in config.json, so microvm-link knows every live root to keep in step.
# Needs microvm.nix's guest module (microvm.nixosModules.microvm).
{
  config,
  lib,
  options,
  ...
}:

let
  cfg = config.services.microvm-workspaces.guest;

  mw = import ./lib.nix;

  hasMicrovmGuest = options ? microvm.shares;

  absolutePath = lib.types.addCheck lib.types.str mw.isAbsolutePath // {
    description = "absolute path";
  };

  liveShares = mw.liveMicrovmShares {
    inherit (cfg) workspaceDir shares;
  };

  shareProblems = lib.concatMap (name: mw.liveShareProblems name cfg.shares.${name}) (
    builtins.attrNames cfg.shares
  );
in
{
  # A NixOS module: the module system refuses it, saying so, in a
  # home-manager, nix-darwin or flake-parts evaluation.
  _class = "nixos";

  options.services.microvm-workspaces.guest = {
    workspaceDir = lib.mkOption {
      type = lib.types.coercedTo lib.types.path toString absolutePath // {
        description = "absolute path (a string, or a path literal taken as its string)";
      };
      default = "/var/lib/microvm-workspaces";
      example = "/srv/microvm-workspaces";
      description = ''
        The host's {option}`services.microvm-workspaces.workspaceDir`: the live
        roots this guest's shares export are
        {file}`<workspaceDir>/.live/<entry>[/<path>]` on the host. The host
        module asserts that the two agree.
      '';
    };

    shares = lib.mkOption {
      default = { };
      example = lib.literalExpression ''
        {
          nixfiles = { entry = "nixfiles"; mountPoint = "/nixfiles"; };
          hostcfg = {
            entry = "nixfiles";
            path = "hosts/microvms/dev";
            mountPoint = "/etc/hostcfg";
            readOnly = false;
          };
        }
      '';
      description = ''
        Live shares: views of a workspace entry (a VM's or a companion's,
        {file}`<workspaceDir>/<entry>` on the host) that follow
        `microvm-link` while the guest runs. Each becomes a virtiofs share of
        the live root {file}`<workspaceDir>/.live/<entry>[/<path>]` (tag
        `live-<share>`, shortened with a hash to virtiofs' 36 bytes), mounted
        at {file}`/run/microvm-workspaces/<share>`, and a symlink `mountPoint`
        to {file}`/run/microvm-workspaces/<share>/current`, which shows what
        the entry is linked to now. Share names are letters, digits, `_`,
        `-` and `.` (not first).
      '';
      type = lib.types.attrsOf (
        lib.types.submodule {
          options = {
            entry = lib.mkOption {
              type = lib.types.str;
              example = "nixfiles";
              description = "The workspace entry to follow: a VM's or a companion's name.";
            };
            path = lib.mkOption {
              type = lib.types.str;
              default = "";
              example = "hosts/microvms/dev";
              description = ''
                A directory below the entry to show instead of all of it:
                relative, without `.`, `..` or `current` components.
              '';
            };
            mountPoint = lib.mkOption {
              type = lib.types.str;
              example = "/nixfiles";
              description = ''
                Where the guest sees the share: a symlink made at boot and on
                every switch where nothing is at that path (tmpfiles `L`).
                Something else there (a directory with data) is never
                removed: the unit `microvm-workspaces-live-links` fails and
                says to move it away. An absolute path without white space,
                quotes or backslashes, apart from every other share's mount
                point and every file system's.
              '';
            };
            readOnly = lib.mkOption {
              type = lib.types.bool;
              default = true;
              description = "Export the live root read-only (microvm.nix's share `readOnly`).";
            };
          };
        }
      );
    };
  };

  config = lib.mkIf (cfg.shares != { }) (
    lib.mkMerge [
      {
        assertions =
          [
            {
              assertion = hasMicrovmGuest;
              message = ''
                services.microvm-workspaces.guest.shares needs microvm.nix's guest
                module, which declares microvm.shares: add
                `inputs.microvm.nixosModules.microvm` to this guest's modules.
              '';
            }
          ]
          ++ map (message: {
            assertion = false;
            inherit message;
          }) (
            shareProblems
            ++ lib.optionals (hasMicrovmGuest && shareProblems == [ ]) (
              mw.liveClashes {
                inherit (cfg) shares;
                allShares = config.microvm.shares;
                fileSystems = lib.mapAttrsToList (name: fs: toString (fs.mountPoint or name)) (config.fileSystems or { });
              }
            )
          );

        systemd.tmpfiles.settings."10-microvm-workspaces-live" = mw.liveSymlinks cfg.shares;

        # tmpfiles leaves whatever is at a mountPoint alone (`L`, not `L+`):
        # this says so at boot and on every switch, as a failed unit.
        systemd.services.microvm-workspaces-live-links = {
          description = "Check the symlinks of microvm-workspaces' live shares";
          wantedBy = [ "multi-user.target" ];
          after = [ "systemd-tmpfiles-setup.service" ];
          serviceConfig = {
            Type = "oneshot";
            RemainAfterExit = true;
          };
          script = mw.liveLinkCheck cfg.shares;
        };
      }
      (lib.optionalAttrs hasMicrovmGuest {
        microvm.shares = liveShares;
      })
    ]
  );
}
