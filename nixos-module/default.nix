# NixOS module: services.microvm-workspaces.
#
# Needs microvm.nix's host module (microvm.nixosModules.host) in the same
# configuration: it reads `microvm.stateDir` and the guests of `microvm.vms`.
{
  config,
  lib,
  options,
  pkgs,
  ...
}:

let
  cfg = config.services.microvm-workspaces;

  mw = import ./lib.nix;

  json = pkgs.formats.json { };

  hasMicrovmHost = options ? microvm.vms;

  vms = if hasMicrovmHost then mw.collectVms config.microvm.vms else { };

  settings = mw.mkConfig {
    stateDir = if hasMicrovmHost then config.microvm.stateDir else "/var/lib/microvms";
    inherit (cfg) workspaceDir companions;
    placeholder = {
      inherit (cfg.placeholder) user group mode;
    };
    inherit vms;
  };

  # The sudo rule for `linkGroup`: its members run exactly this package's
  # microvm-link as root, with any arguments, without a password. microvm-link
  # re-executes itself through /run/wrappers/bin/sudo with its own store path;
  # it needs no environment from the caller (it reads SUDO_UID, which sudo
  # sets), so the rule has no SETENV.
  sudoRules = [
    {
      groups = [ cfg.linkGroup ];
      runAs = "root";
      commands = [
        {
          command = mw.escapeSudoersCommand "${cfg.package}/bin/microvm-link";
          options = [ "NOPASSWD" ];
        }
      ];
    }
  ];

  absolutePath = lib.types.addCheck lib.types.str mw.isAbsolutePath // {
    description = "absolute path";
  };

  relativePath = lib.types.addCheck lib.types.str mw.isRelativePath // {
    description = "relative path";
  };

  defaultPackage =
    (pkgs.microvm-workspaces or (pkgs.callPackage ./package.nix { })).override
      {
        systemd = config.systemd.package;
      };
in
{
  options.services.microvm-workspaces = {
    enable = lib.mkEnableOption ''
      microvm-workspaces: every share source of a microvm.nix VM exists when
      the VM starts (missing ones become read-only placeholders), and
      `microvm-link` binds a repository onto a VM's workspace and restarts
      the VM'';

    package = lib.mkOption {
      type = lib.types.package;
      default = defaultPackage;
      defaultText = lib.literalMD ''
        `pkgs.microvm-workspaces` when this flake's overlay is applied, else the
        package built from this repository; in both cases with `systemctl` taken
        from {option}`systemd.package`
      '';
      description = ''
        The microvm-workspaces package. Its `microvm-link` goes on the system
        path, its generator into {file}`/etc/systemd/system-generators`, and
        the path of its `microvm-workspaces-prepare` is compiled into that
        generator. The sudo rule of {option}`services.microvm-workspaces.linkGroup`
        names this package's `microvm-link`.
      '';
    };

    workspaceDir = lib.mkOption {
      type = absolutePath;
      default = "/var/lib/microvm-workspaces";
      example = "/srv/microvm-workspaces";
      description = ''
        Directory holding the VMs' workspaces: `microvm-link` mounts a
        repository on {file}`<workspaceDir>/<vm>` and records the link in
        {file}`<workspaceDir>/.links/<vm>`. Created at boot as `root:root 0755`.

        microvm.nix's own tmpfiles entries for share sources beneath this
        directory (and for relative sources) are dropped: these sources are
        created when their VM starts, as placeholders or inside the linked
        repository, never at boot as empty `microvm:kvm` directories.
      '';
    };

    placeholder = {
      user = lib.mkOption {
        type = lib.types.passwdEntry lib.types.str;
        default = "root";
        example = "microvm";
        description = ''
          Owner of the placeholder directories created for missing share
          sources. The default keeps them out of reach of everyone but root.
        '';
      };

      group = lib.mkOption {
        type = lib.types.passwdEntry lib.types.str;
        default = "root";
        example = "kvm";
        description = "Group of the placeholder directories created for missing share sources.";
      };

      mode = lib.mkOption {
        type = lib.types.strMatching mw.octalModeRegex;
        default = "0555";
        example = "0755";
        description = ''
          Octal mode of the placeholder directories. The default, read-only
          for everybody, means a guest (other than as root, through a
          read-write share) cannot write into a workspace that is not linked
          yet, so nothing it writes is hidden later under a linked repository.
        '';
      };
    };

    companions = lib.mkOption {
      type = lib.types.attrsOf (lib.types.attrsOf relativePath);
      default = { };
      example = {
        nixfiles = {
          nix-secrets = "../nix-secrets";
        };
      };
      description = ''
        Directories that follow a VM's link. For
        `companions.<vm>.<name> = <path>`, linking `<vm>` to a repository
        `R` also links {file}`<workspaceDir>/<name>` to `R/<path>` when that
        is a directory, and leaves a placeholder there otherwise. Other VMs
        can then share that directory without knowing where the repository is.
        Paths are relative to the repository; names must not clash with VM
        names or with each other.
      '';
    };

    linkGroup = lib.mkOption {
      type = lib.types.nullOr (lib.types.strMatching mw.groupNameRegex);
      default = null;
      example = "microvm-link";
      description = ''
        A group whose members may run `microvm-link` as root through sudo
        without a password (a `NOPASSWD` rule for this package's
        `microvm-link` only, in {option}`security.sudo.extraRules`, and in
        {option}`security.sudo-rs.extraRules` where that module exists). The
        group is created if nothing else defines it. `null` adds no rule:
        `microvm-link` then asks sudo as usual.
      '';
    };
  };

  config = lib.mkIf cfg.enable (
    lib.mkMerge [
      {
        assertions = [
          {
            assertion = hasMicrovmHost;
            message = ''
              services.microvm-workspaces needs microvm.nix's host module, which
              declares microvm.vms and microvm.stateDir: add
              `inputs.microvm.nixosModules.host` to this host's imports.
            '';
          }
        ]
        ++ map (message: {
          assertion = false;
          inherit message;
        }) (
          mw.vmProblems vms
          ++ mw.companionProblems cfg.companions
          ++ mw.companionClashes {
            inherit (cfg) companions;
            vmNames = builtins.attrNames vms;
          }
        );

        environment.etc."microvm-workspaces/config.json".source =
          json.generate "microvm-workspaces-config.json" settings;

        environment.systemPackages = [ cfg.package ];

        # NixOS links lib/systemd/system-generators/* of every package in
        # systemd.packages into /etc/systemd/system-generators (the old
        # systemd.generator-packages option is gone).
        systemd.packages = [ cfg.package ];

        systemd.tmpfiles.settings."10-microvm-workspaces".${cfg.workspaceDir}.d = {
          user = "root";
          group = "root";
          mode = "0755";
        };

        users.groups = lib.optionalAttrs (cfg.linkGroup != null) { ${cfg.linkGroup} = { }; };

        security.sudo.extraRules = lib.mkIf (cfg.linkGroup != null) sudoRules;
      }

      (lib.optionalAttrs (options ? security.sudo-rs.extraRules) {
        security.sudo-rs.extraRules = lib.mkIf (cfg.linkGroup != null) sudoRules;
      })

      (lib.optionalAttrs hasMicrovmHost {
        systemd.tmpfiles.settings."10-microvm" = lib.mkIf config.microvm.host.enable (
          lib.genAttrs (mw.tmpfilesMasks {
            inherit (cfg) workspaceDir;
            inherit vms;
          }) (_: lib.mkForce { })
        );
      })
    ]
  );
}
