# NixOS module: services.microvm-workspaces.
#
# Needs microvm.nix's host module (microvm.nixosModules.host) in the same
# configuration: it reads `microvm.stateDir` and the guests of `microvm.vms`.
# Needs nixpkgs 25.11 or later (see `minNixpkgs`): both are asserted with a
# message that says what to do.
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

  hasMicrovmHost = options ? microvm.vms && options ? microvm.stateDir && options ? microvm.host.enable;

  # The oldest nixpkgs release this module and package are made for. The
  # package needs rustc >= Cargo.toml's rust-version, the highest
  # rust-version of the locked dependencies (tests/nix/rust-floor.nix checks
  # it): 1.89, for uuid 1.29 through libsystemd. nixpkgs 25.05 ships rustc
  # 1.86 (1.89 came out in August 2025); nixos-unstable had 1.91 when 25.11
  # branched off (nixpkgs PRs #460575 "rust: 1.91.0 -> 1.91.1", 2025-11-11,
  # and #470993 "rust: 1.91.1 -> 1.92.0", 2025-12-15). The module needs
  # `systemd.tmpfiles.settings` and lib.getExe' (23.11). With an older
  # nixpkgs the configuration fails on an assertion saying so, instead of on
  # the package's build or an unknown option.
  minNixpkgs = "25.11";
  rustVersion = (builtins.fromTOML (builtins.readFile ../Cargo.toml)).package.rust-version;
  nixpkgsOk = lib.versionAtLeast lib.trivial.release minNixpkgs;

  # microvm.nix's host module writes tmpfiles lines for share sources under
  # this key; the module masks the ones it manages there (a warning names
  # any it finds elsewhere).
  microvmTmpfilesKey = "10-microvm";
  ownTmpfilesKey = "10-microvm-workspaces";

  masks = mw.tmpfilesMasks {
    inherit (cfg) workspaceDir;
    inherit vms;
  };

  sudoState =
    name:
    if options ? security.${name}.enable then
      {
        enable = config.security.${name}.enable;
        execWheelOnly = config.security.${name}.execWheelOnly or false;
      }
    else
      null;

  members = mw.groupMembers {
    users = config.users.users;
    groups = config.users.groups;
  };

  microvmVmNames = if hasMicrovmHost then builtins.attrNames config.microvm.vms else [ ];

  # Did the user set ssh.destination, or is it the option's default? A
  # default enters the module system as lib.mkOptionDefault (priority 1500);
  # any definition, even `ssh.destination = "%n"` or lib.mkDefault, has a
  # higher one (a lower number), and so does a definition in another module.
  sshTemplateExplicit =
    options.services.microvm-workspaces.ssh.destination.highestPrio
    < (lib.mkOptionDefault null).priority;

  # config.json's vms: every guest's shares (live ones included), and each
  # VM's SSH destination: `ssh` when the user chose it (ssh.perVm, or an
  # explicit ssh.destination), which microvm-link waits for and fails on;
  # else `sshDefault`, a guess that microvm-link waits for only briefly and
  # never fails on.
  #
  # The guess (lib.nix sshGuess) is `vsock/<cid>` for a guest with
  # microvm.vsock.cid on qemu, crosvm or kvmtool, else the VM's name. Facts
  # it rests on (checked 2026-12):
  #  * systemd >= 256 ships systemd-ssh-proxy and the ssh_config snippet
  #    lib/systemd/ssh_config.d/20-systemd-ssh-proxy.conf (`Host unix/*
  #    vsock/* ...` -> ProxyCommand systemd-ssh-proxy); NixOS includes it in
  #    /etc/ssh/ssh_config under `Host *` while programs.ssh.systemd-ssh-proxy
  #    .enable (default true; nixos/modules/programs/ssh.nix, since nixpkgs
  #    PR #372979, 25.05) is on. The module warns when it is off.
  #  * In the guest, systemd-ssh-generator binds sshd to vsock port 22
  #    (sshd-vsock.socket) by itself when sshd is installed (NixOS puts it on
  #    the manager's PATH with services.openssh.enable, PR #372979) and a
  #    vsock transport is there when generators run: microvm.nix adds
  #    vmw_vsock_virtio_transport to the guest's initrd modules (PR #572) and
  #    offers microvm.vsock.ssh.enable, which only enables openssh
  #    (nixos-modules/microvm/vsock-ssh.nix at 71beea0). A guest without
  #    sshd answers on neither address: the guess is waited for briefly.
  #  * cloud-hypervisor and firecracker put a unix socket in front of the
  #    guest's vsock (`vsock-mux/<path>`), so `vsock/<cid>` does not reach them.
  #
  # And each VM's guest ids and git view (services.microvm-workspaces.vms),
  # always written, defaults included; guestGid only when it is not null.
  vms = mw.withGuest {
    settings = cfg.vms;
    vms = mw.withSsh {
      template = cfg.ssh.destination;
      explicit = sshTemplateExplicit;
      perVm = cfg.ssh.perVm;
      guesses = if hasMicrovmHost then mw.sshGuesses config.microvm.vms else { };
      vms = if hasMicrovmHost then mw.collectVms config.microvm.vms else { };
    };
  };

  settings = mw.mkConfig {
    stateDir = if hasMicrovmHost then config.microvm.stateDir else "/var/lib/microvms";
    inherit (cfg) workspaceDir companions pools;
    placeholder = {
      inherit (cfg.placeholder) user group mode;
    };
    # microvm.nix runs hypervisors as microvm:kvm, fixed in its host module
    # (not options): see lib.nix hypervisorIds.
    hypervisor = mw.hypervisorIds;
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

  # The flake's packages.default, built with the host's pkgs. Only systemd
  # is passed (systemctl's path is compiled in): with NixOS's default
  # systemd.package, which is pkgs.systemd, that is callPackage's own
  # argument and the derivation is the same; a host with another systemd
  # gets systemctl from it. sudo is found at run time
  # (/run/wrappers/bin/sudo, then PATH), so nothing else differs.
  defaultPackage =
    (pkgs.microvm-workspaces or (pkgs.callPackage ./package.nix { })).override
      {
        systemd = config.systemd.package;
      };
in
{
  # A NixOS module: the module system refuses it, saying so, in a
  # home-manager, nix-darwin or flake-parts evaluation.
  _class = "nixos";

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
        package built from this repository (the flake's `packages.default`);
        in both cases with `systemctl` taken from {option}`systemd.package`
      '';
      description = ''
        The microvm-workspaces package. Its `microvm-link` goes on the system
        path, its generator into {file}`/etc/systemd/system-generators`, and
        the path of its `microvm-workspaces-prepare` is compiled into that
        generator. The sudo rule of {option}`services.microvm-workspaces.linkGroup`
        names this package's `microvm-link`. A package of your own is used
        as it is. `microvm-link` finds sudo when it runs:
        {file}`/run/wrappers/bin/sudo` first, then `PATH`.
      '';
    };

    workspaceDir = lib.mkOption {
      # A path literal (workspaceDir = /srv/ws) is taken as its string; it is
      # not copied to the store.
      type = lib.types.coercedTo lib.types.path toString absolutePath // {
        description = "absolute path (a string, or a path literal taken as its string)";
      };
      default = "/var/lib/microvm-workspaces";
      example = "/srv/microvm-workspaces";
      description = ''
        Directory holding the VMs' workspaces: `microvm-link` mounts a
        repository on {file}`<workspaceDir>/<vm>` and records the link in
        {file}`<workspaceDir>/.links/<vm>`; the live roots of guests' live
        shares (`nixosModules.guest`) are {file}`<workspaceDir>/.live/<entry>`.
        Created at boot as `root:root 0755`.

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
          Octal mode of the placeholder directories. Placeholders are also
          sealed (immutable), so no guest, its root included, can write into
          a workspace that is not linked yet, whatever the mode.
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

    ssh = {
      destination = lib.mkOption {
        type = lib.types.nullOr lib.types.str;
        default = "%n";
        example = "root@%n.vm.internal";
        description = ''
          How `microvm-link` reaches a VM over SSH (to wait for it after a
          restart, and for its shell): a template in which `%n` is the VM's
          name and `%%` a `%`, giving an ssh destination (`host`,
          `user@host`, `ssh://user@host:port`, `vsock/<cid>`).

          Set (even to `"%n"`), it is written to {file}`config.json` as
          `vms.<vm>.ssh` for every VM of `microvm.vms`: `microvm-link` waits
          for that destination after a restart and fails when it does not
          answer. Left at its default, the module guesses instead and writes
          `vms.<vm>.sshDefault`, which `microvm-link` waits for only briefly
          and never fails on: `vsock/<cid>` for a guest with
          `microvm.vsock.cid` on qemu, crosvm or kvmtool (systemd's
          `systemd-ssh-proxy` on the host, {option}`programs.ssh.systemd-ssh-proxy.enable`;
          sshd in the guest, e.g. `microvm.vsock.ssh.enable`), else the VM's
          name (microvm.nix's convention for host names, reached through DNS,
          {file}`/etc/hosts` or a `Host <vm>` alias in the caller's ssh
          configuration).

          `null` writes no destination. A destination must not start with
          `-` or contain white space or control characters (an assertion
          names the VM; a guess that would is left out).
        '';
      };

      perVm = lib.mkOption {
        type = lib.types.attrsOf (lib.types.nullOr lib.types.str);
        default = { };
        example = {
          builder = "ssh://root@10.0.0.5:2222";
          offline = null;
        };
        description = ''
          SSH destinations of single VMs, taken as they are instead of
          {option}`services.microvm-workspaces.ssh.destination`'s template
          and written as `vms.<vm>.ssh` (chosen by you: waited for, and a
          failure when it does not answer); `null` writes none for that VM. A name that is not in
          `microvm.vms` (a VM made imperatively) gets an entry of its own in
          {file}`config.json`, with a warning in case it is a typo.
        '';
      };
    };

    vms = lib.mkOption {
      type = lib.types.attrsOf (
        lib.types.submodule {
          options = {
            guestUid = lib.mkOption {
              type = lib.types.ints.u32;
              default = mw.guestDefaults.guestUid;
              example = 1001;
              description = ''
                The guest user whose files are the linker's: link mounts are
                idmapped so that this guest uid is the linker's uid on the
                host; no other guest id maps (guest root is nobody). Must not
                be 0 while `idmap` is on.
              '';
            };
            guestGid = lib.mkOption {
              type = lib.types.nullOr lib.types.ints.u32;
              default = mw.guestDefaults.guestGid;
              example = 1000;
              description = ''
                The guest group whose files are the linker's primary group's
                on the host. `null`: the same number as that group, right
                when host and guest use the same group numbers, as NixOS's
                `users` (100) on both sides. Set it when the guest user's
                primary group has another number, e.g. a Debian-style guest
                with user private groups.
              '';
            };
            idmap = lib.mkOption {
              type = lib.types.bool;
              default = mw.guestDefaults.idmap;
              example = false;
              description = ''
                Idmap the VM's link mounts. `false` keeps plain mounts: the
                guest's ids are the host's, its root is root on the repository
                (`status` and `doctor` say so).
              '';
            };
            git = lib.mkOption {
              type = lib.types.enum mw.gitModes;
              default = mw.guestDefaults.git;
              example = "readonly";
              description = ''
                The git metadata the guest sees of a linked repository:
                `private`, a git dir of the VM's own (`microvm-link fetch`
                brings its branches home); `readonly`, the repository's `.git`
                read-only; `shared`, the repository's own `.git`, writable
                (`status` and `doctor` warn).
              '';
            };
          };
        }
      );
      default = { };
      example = {
        dev = {
          guestUid = 1001;
          git = "readonly";
        };
      };
      description = ''
        How each VM's guest sees linked repositories, written to
        {file}`config.json` as `vms.<vm>.guestUid`, `idmap` and `git` for
        every VM, with these defaults for a VM not named here, and
        `guestGid` where it is not `null`. A name that is
        not in `microvm.vms` (a VM made imperatively) gets an entry of its own
        in {file}`config.json`, with a warning in case it is a typo.
      '';
    };

    pools = lib.mkOption {
      type = lib.types.attrsOf (lib.types.listOf lib.types.str);
      default = { };
      example = {
        agents = [
          "agent1"
          "agent2"
          "agent3"
        ];
      };
      description = ''
        Pools of VMs for parallel work, written to {file}`config.json` as
        `pools`. `microvm-link --pool <pool>` (and `microvm-link shell --pool
        <pool>`), run in a git worktree, leases the pool's first VM that nobody
        leases, links the worktree into it without a restart, and records the
        lease in {file}`<workspaceDir>/.leases/<vm>`; the same worktree finds its
        lease again, `microvm-link release` ends it. Each VM must be in
        `microvm.vms`, in one pool only, and have a live share of its own
        workspace (a share whose source is {file}`<workspaceDir>/.live/<vm>`,
        e.g. `services.microvm-workspaces.guest.shares.<share>.entry = "<vm>"`
        in the guest); assertions name what is not.
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

        The rule lets members run nothing but this one program as root, with
        any arguments; `microvm-link` itself refuses `--root` and
        `MICROVM_WORKSPACES_ROOT` under sudo, links only repositories the
        invoking user owns, and relinks or unlinks only workspaces that are
        unlinked or linked by that user. With
        {option}`security.sudo.execWheelOnly` only members of `wheel` can run
        sudo at all, so members outside `wheel` cannot use the rule; a
        warning says so, as it does when neither sudo nor sudo-rs is enabled.
      '';
    };
  };

  config = lib.mkIf cfg.enable (
    if !nixpkgsOk then
      {
        assertions = [
          {
            assertion = false;
            message = "services.microvm-workspaces needs nixpkgs ${minNixpkgs} or later (this is ${lib.trivial.release}): its package needs rustc ${rustVersion} or later. Update the nixpkgs input of this host.";
          }
        ];
      }
    else
    lib.mkMerge [
      {
        assertions = [
          {
            assertion = hasMicrovmHost;
            message =
              if options ? microvm.vms then
                ''
                  services.microvm-workspaces needs a microvm.nix whose host module
                  declares microvm.vms, microvm.stateDir and microvm.host.enable
                  (November 2022 or later): update the microvm input.
                ''
              else
                ''
                  services.microvm-workspaces needs microvm.nix's host module, which
                  declares microvm.vms and microvm.stateDir: add
                  `inputs.microvm.nixosModules.host` to this host's imports.
                '';
          }
        ]
        ++ lib.mapAttrsToList (vm: v: {
          assertion = !(v.idmap && v.guestUid == 0);
          message = "services.microvm-workspaces.vms.${lib.strings.escapeNixIdentifier vm}.guestUid = 0 with idmap on: the guest's root is never the linker. Use the guest user's uid (default ${toString mw.guestDefaults.guestUid}), or set idmap = false for plain mounts.";
        }) cfg.vms
        ++ map (message: {
          assertion = false;
          inherit message;
        }) (
          mw.vmProblems vms
          ++ mw.sshProblems {
            template = cfg.ssh.destination;
            explicit = sshTemplateExplicit;
            perVm = cfg.ssh.perVm;
            vmNames = microvmVmNames;
          }
          ++ lib.optionals hasMicrovmHost (
            mw.guestWorkspaceProblems {
              inherit (cfg) workspaceDir;
              microvmVms = config.microvm.vms;
            }
          )
          ++ mw.poolProblems {
            inherit (cfg) pools workspaceDir;
            inherit vms;
            stateDir = if hasMicrovmHost then config.microvm.stateDir else "/var/lib/microvms";
          }
          ++ mw.companionProblems cfg.companions
          ++ mw.companionClashes {
            inherit (cfg) companions;
            vmNames = builtins.attrNames vms;
          }
        );

        warnings = mw.moduleWarnings {
          inherit (cfg) linkGroup companions workspaceDir;
          sudo = sudoState "sudo";
          sudoRs = sudoState "sudo-rs";
          linkGroupMembers = if cfg.linkGroup == null then [ ] else members cfg.linkGroup;
          wheelMembers = members "wheel";
          vmNames = microvmVmNames;
          placeholder = {
            inherit (cfg.placeholder) user group;
          };
          userNames = builtins.attrNames config.users.users;
          groupNames = builtins.attrNames config.users.groups;
          stateDir = if hasMicrovmHost then config.microvm.stateDir else "/var/lib/microvms";
          unmasked = mw.unmaskedTmpfiles {
            settings = config.systemd.tmpfiles.settings;
            inherit masks;
            ownKey = ownTmpfilesKey;
          };
        }
        ++ mw.sshWarnings {
          perVm = cfg.ssh.perVm;
          vmNames = microvmVmNames;
        }
        ++ mw.guestWarnings {
          settings = cfg.vms;
          vmNames = microvmVmNames;
        }
        ++ mw.vsockProxyWarnings {
          inherit vms;
          proxy =
            if options ? programs.ssh.systemd-ssh-proxy.enable then
              config.programs.ssh.systemd-ssh-proxy.enable
            else
              null;
        };

        environment.etc."microvm-workspaces/config.json".source =
          json.generate "microvm-workspaces-config.json" settings;

        environment.systemPackages = [ cfg.package ];

        # NixOS links lib/systemd/system-generators/* of every package in
        # systemd.packages into /etc/systemd/system-generators (the old
        # systemd.generator-packages option is gone).
        systemd.packages = [ cfg.package ];

        systemd.tmpfiles.settings.${ownTmpfilesKey}.${cfg.workspaceDir}.d = {
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

      # With a microvm.nix older than its share lines (2026-06) this only
      # adds an empty 10-microvm.conf.
      (lib.optionalAttrs hasMicrovmHost {
        systemd.tmpfiles.settings.${microvmTmpfilesKey} = lib.mkIf config.microvm.host.enable (
          lib.genAttrs masks (_: lib.mkForce { })
        );
      })
    ]
  );
}
