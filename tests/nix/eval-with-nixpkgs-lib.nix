# Evaluates the module beside microvm.nix's real host module with nixpkgs'
# real lib (lib.evalModules), on machines without nixpkgs: the NixOS options
# that the two modules read or write are declared here as stubs, with the
# shape of NixOS's own (NixOS itself is not needed). Run through
# tests/nix/eval-with-nixpkgs-lib.sh, which says what it needs.
#
#   lib        nixpkgs' lib (the lib/ directory of nixpkgs or nixpkgs.lib)
#   microvm    a checkout of microvm.nix
#   readme     README.md, for the options table
{
  lib,
  microvm,
  readme,
}:

let
  inherit (lib) mkOption types;

  fakeDrv = name: {
    type = "derivation";
    inherit name;
    outPath = "/nix/store/00000000000000000000000000000000-${name}";
  };

  # The overlay's package: override records what the module passes.
  fakePackage =
    args:
    fakeDrv "microvm-workspaces-0.1.0"
    // {
      overriddenWith = args;
      override = more: fakePackage (args // more);
    };

  pkgs = {
    microvm-workspaces = fakePackage { };
    formats.json = _: {
      type = types.anything;
      # the JSON text, where NixOS would write it to the store
      generate = name: value: fakeDrv name // { text = builtins.toJSON value; };
    };
    callPackage = fn: _args: fakeDrv "callPackage-${baseNameOf (toString fn)}";
    runtimeShell = "/bin/sh";
    coreutils = fakeDrv "coreutils";
    qemu-utils = fakeDrv "qemu-utils";
    systemd = fakeDrv "systemd";
    path = /nonexistent/nixpkgs;
  };

  anyAttrs = mkOption {
    type = types.lazyAttrsOf types.anything;
    default = { };
  };
  anyList = mkOption {
    type = types.listOf types.unspecified;
    default = [ ];
  };
  bool =
    default:
    mkOption {
      type = types.bool;
      inherit default;
    };

  # tmpfiles.d lines: settings.<file>.<path>.<type> = { user; group; mode; ... }
  tmpfilesSettings = mkOption {
    type = types.attrsOf (
      types.attrsOf (
        types.attrsOf (
          types.submodule (
            { name, ... }:
            {
              options = {
                type = mkOption {
                  type = types.str;
                  default = name;
                };
              }
              // lib.genAttrs [ "mode" "user" "group" "age" "argument" ] (
                _:
                mkOption {
                  type = types.str;
                  default = "-";
                }
              );
            }
          )
        )
      )
    );
    default = { };
  };

  # The options of NixOS that microvm.nix's host module and ours touch, with
  # NixOS's defaults where they matter (sudo enabled, sudo-rs not, the
  # wrapper dir, the groups NixOS always declares).
  stubs =
    { config, ... }:
    {
      options = {
        assertions = mkOption {
          type = types.listOf types.unspecified;
          default = [ ];
        };
        warnings = mkOption {
          type = types.listOf types.str;
          default = [ ];
        };
        boot.kernelModules = anyList;
        hardware.ksm.enable = bool false;
        virtualisation.libvirtd.enable = bool false;
        system.activationScripts = anyAttrs;
        environment.systemPackages = anyList;
        environment.etc = mkOption {
          type = types.attrsOf (
            types.submodule {
              options = {
                source = mkOption {
                  type = types.nullOr types.unspecified;
                  default = null;
                };
                text = mkOption {
                  type = types.nullOr types.lines;
                  default = null;
                };
              };
            }
          );
          default = { };
        };
        systemd.package = mkOption {
          type = types.unspecified;
          default = pkgs.systemd;
        };
        systemd.packages = anyList;
        systemd.services = anyAttrs;
        systemd.targets = anyAttrs;
        systemd.tmpfiles.settings = tmpfilesSettings;
        users.users = mkOption {
          type = types.attrsOf (
            types.submodule {
              freeformType = types.lazyAttrsOf types.anything;
              options = {
                group = mkOption {
                  type = types.str;
                  default = "";
                };
                extraGroups = mkOption {
                  type = types.listOf types.str;
                  default = [ ];
                };
              };
            }
          );
          default = { };
        };
        users.groups = mkOption {
          type = types.attrsOf (
            types.submodule {
              freeformType = types.lazyAttrsOf types.anything;
              options.members = mkOption {
                type = types.listOf types.str;
                default = [ ];
              };
            }
          );
          default = { };
        };
        security.wrapperDir = mkOption {
          type = types.path;
          default = "/run/wrappers/bin";
        };
        security.wrappers = anyAttrs;
        security.pam.loginLimits = anyList;
        security.sudo = {
          enable = bool true;
          execWheelOnly = bool false;
          extraRules = anyList;
        };
        security.sudo-rs = {
          enable = bool false;
          execWheelOnly = bool false;
          extraRules = anyList;
        };
        # nixos/modules/programs/ssh.nix: includes systemd's ssh proxy
        # snippet (Host vsock/* ...) in /etc/ssh/ssh_config
        programs.ssh.systemd-ssh-proxy.enable = bool true;
        # what the flake's module-eval check sets and reads
        nixpkgs.hostPlatform = mkOption {
          type = types.str;
          default = "x86_64-linux";
        };
        boot.isContainer = bool false;
        system.stateVersion = mkOption {
          type = types.str;
          default = "";
        };
        system.build.toplevel = mkOption {
          type = types.unspecified;
          default = fakeDrv "nixos-system" // {
            drvPath = "/nix/store/00000000000000000000000000000000-nixos-system.drv";
          };
        };
      };
      config = {
        # NixOS's own rule, which is in extraRules too
        security.sudo.extraRules = [
          {
            groups = [ "wheel" ];
            commands = [
              {
                command = "ALL";
                options = [ "SETENV" ];
              }
            ];
          }
        ];
        users.users.root.group = "root";
        users.groups = lib.genAttrs [
          "root"
          "wheel"
          "users"
          "nogroup"
          "kvm"
        ] (_: { });
      };
    };

  # A microvm.nix guest: microvm.nix's real guest module and ours
  # (nixosModules.guest) evaluated together. The NixOS options both read or
  # write are declared as stubs; everything else microvm.nix sets lands in a
  # freeform catch-all that nothing reads. (networking.hostId and
  # environment.etc are declared: microvm.nix defines them under conditions
  # that read networking.hostName, which a freeform `networking` would make
  # recursive; nix.enable, read by one of its conditions, is off so that the
  # store registration it guards, which needs a real nix package, stays out.)
  guestStubs = {
    freeformType = types.lazyAttrsOf types.anything;
    options = {
      assertions = mkOption {
        type = types.listOf types.unspecified;
        default = [ ];
      };
      warnings = mkOption {
        type = types.listOf types.str;
        default = [ ];
      };
      networking.hostName = mkOption {
        type = types.str;
        default = "nixos";
      };
      networking.hostId = mkOption {
        type = types.nullOr types.str;
        default = null;
      };
      environment.etc = anyAttrs;
      nix.enable = bool false;
      systemd.tmpfiles.settings = tmpfilesSettings;
      # read by microvm.nix's store-disk.nix, whose fileSystems the guest
      # module checks the live symlinks against
      security.virtualisation.flushL1DataCache = mkOption {
        type = types.nullOr types.str;
        default = null;
      };
    };
  };

  evalGuest =
    modules:
    lib.evalModules {
      specialArgs = {
        inherit pkgs;
      };
      modules = [
        guestStubs
        "${microvm}/nixos-modules/microvm"
        ../../nixos-module/guest.nix
        { microvm.hypervisor = "qemu"; }
      ]
      ++ modules;
    };

  mkGuest =
    {
      hostName,
      shares,
      live ? { },
      vsockCid ? null,
    }:
    evalGuest [
      {
        networking.hostName = hostName;
        microvm.shares = shares;
        microvm.vsock.cid = vsockCid;
        services.microvm-workspaces.guest.shares = live;
      }
    ];

  # A guest with live shares beside a share of its own.
  liveGuest = evalGuest [
    {
      networking.hostName = "dev";
      microvm.shares = [
        {
          tag = "ro-store";
          proto = "virtiofs";
          source = "/nix/store";
          mountPoint = "/nix/.ro-store";
          readOnly = true;
        }
      ];
      services.microvm-workspaces.guest.shares = {
        nixfiles = {
          entry = "nixfiles";
          mountPoint = "/nixfiles";
        };
        hostcfg = {
          entry = "nixfiles";
          path = "hosts/microvms/dev";
          mountPoint = "/etc/hostcfg";
          readOnly = false;
        };
        "a-share-name-much-longer-than-a-virtiofs-tag" = {
          entry = "nix-secrets";
          mountPoint = "/secrets";
        };
      };
    }
  ];

  # Guests the module must refuse, each with the words of its refusal.
  refusedGuests = {
    "path through current" = {
      live.x = {
        entry = "nixfiles";
        path = "hosts/current";
        mountPoint = "/x";
      };
      says = "services.microvm-workspaces.guest.shares.x.path = \"hosts/current\" has a component \"current\"";
    };
    "path up out of the entry" = {
      live.x = {
        entry = "nixfiles";
        path = "../nix-secrets";
        mountPoint = "/x";
      };
      says = "services.microvm-workspaces.guest.shares.x.path = \"../nix-secrets\" has a component \"..\"";
    };
    "absolute path" = {
      live.x = {
        entry = "nixfiles";
        path = "/etc";
        mountPoint = "/x";
      };
      says = "services.microvm-workspaces.guest.shares.x.path = \"/etc\" is absolute";
    };
    "invalid entry" = {
      live.x = {
        entry = ".live";
        mountPoint = "/x";
      };
      says = "services.microvm-workspaces.guest.shares.x.entry = \".live\": not a workspace entry name";
    };
    "tag of another share" = {
      shares = [
        {
          tag = "live-x";
          proto = "virtiofs";
          source = "/srv/x";
          mountPoint = "/srv/x";
        }
      ];
      live.x = {
        entry = "nixfiles";
        mountPoint = "/x";
      };
      says = "services.microvm-workspaces.guest.shares.x: its tag \"live-x\" is also the tag of the share mounted at \"/srv/x\"";
    };
  };

  host = import ./host.nix { inherit mkGuest; };

  # The flake's outputs, with inputs made of the same stubs: nixpkgs is the
  # real lib plus lib.nixosSystem (evalModules over the stub options) and a
  # package set of stubs; microvm is the real host module and a stub guest
  # module. Exercises flake.nix's own Nix (module-eval, the output names).
  flake =
    let
      system = "x86_64-linux";
      nixosSystem =
        args:
        lib.evalModules {
          specialArgs = {
            inherit pkgs;
          };
          modules = [ stubs ] ++ args.modules;
        };
      flakePkgs = pkgs // {
        jq = fakeDrv "jq";
        nixfmt-tree = fakeDrv "nixfmt-tree";
        runCommand = name: env: script: fakeDrv name // { inherit env script; };
        testers.runNixOSTest = test: fakeDrv "vm-test" // { driver = fakeDrv "vm-test-driver"; inherit test; };
        mkShell = args: fakeDrv "shell";
        rustPlatform.rustLibSrc = fakeDrv "rust-lib-src";
      };
      nixpkgs = {
        lib = lib // {
          inherit nixosSystem;
        };
        legacyPackages = lib.genAttrs [ "x86_64-linux" "aarch64-linux" ] (_: flakePkgs);
      };
      guestModule =
        { ... }:
        {
          options = {
            nixpkgs.hostPlatform = mkOption { type = types.str; };
            networking.hostName = mkOption { type = types.str; };
            microvm.hypervisor = mkOption { type = types.str; };
            microvm.shares = mkOption { type = types.listOf (types.attrsOf types.anything); };
            microvm.vsock.cid = mkOption { type = types.nullOr types.int; };
            system.stateVersion = mkOption { type = types.str; };
          };
        };
      microvmInput = {
        nixosModules.host = "${microvm}/nixos-modules/host";
        nixosModules.microvm = guestModule;
      };
      outputs = (import ../../flake.nix).outputs {
        self = outputs // {
          outPath = ../..;
        };
        inherit nixpkgs;
        microvm = microvmInput;
      };
    in
    outputs;

  eval =
    fixture:
    lib.evalModules {
      specialArgs = {
        inherit pkgs;
      };
      modules = [
        stubs
        "${microvm}/nixos-modules/host"
        ../../nixos-module
        fixture.module
      ];
    };

  clean = eval host.clean;

  failedAssertions =
    e: map (a: a.message) (lib.filter (a: !a.assertion) e.config.assertions);

  # The clean host on a nixpkgs that calls itself 25.05.
  oldNixpkgs =
    let
      oldLib = lib // {
        trivial = lib.trivial // {
          release = "25.05";
        };
      };
    in
    lib.evalModules {
      specialArgs = {
        inherit pkgs;
        lib = oldLib;
      };
      modules = [
        stubs
        "${microvm}/nixos-modules/host"
        ../../nixos-module
        host.clean.module
      ];
    };

  # Our module beside a microvm.nix too old for it: microvm.vms, but no
  # microvm.host.enable.
  oldMicrovm = lib.evalModules {
    specialArgs = {
      inherit pkgs;
    };
    modules = [
      stubs
      ../../nixos-module
      {
        options.microvm.vms = mkOption {
          type = types.attrsOf types.unspecified;
          default = { };
        };
        options.microvm.stateDir = mkOption {
          type = types.str;
          default = "/var/lib/microvms";
        };
      }
      { services.microvm-workspaces.enable = true; }
    ];
  };

  # Our module without microvm.nix's host module.
  noMicrovm = lib.evalModules {
    specialArgs = {
      inherit pkgs;
    };
    modules = [
      stubs
      ../../nixos-module
      { services.microvm-workspaces.enable = true; }
    ];
  };
  warned = eval host.warned;

  # The clean host with services.microvm-workspaces.ssh changed.
  withSsh =
    ssh:
    eval (
      host.clean
      // {
        module = {
          imports = [ host.clean.module ];
          services.microvm-workspaces.ssh = ssh;
        };
      }
    );

  configJsonOf = e: builtins.fromJSON e.config.environment.etc."microvm-workspaces/config.json".source.text;

  # The clean host with services.microvm-workspaces.vms.vm1 set.
  withVm1 =
    settings:
    eval (
      host.clean
      // {
        module = {
          imports = [ host.clean.module ];
          services.microvm-workspaces.vms.vm1 = settings;
        };
      }
    );

  # Whether services.microvm-workspaces.vms of an evaluation has no value (an
  # option's type refused a definition: the module system throws).
  refused =
    e: !(builtins.tryEval (builtins.deepSeq e.config.services.microvm-workspaces.vms null)).success;

  # nixos-module/package.nix called with stubs: the arguments it gives
  # buildRustPackage.
  packageArgs = import ../../nixos-module/package.nix {
    inherit lib;
    stdenv = {
      buildPlatform.canExecute = _: true;
      hostPlatform = { };
    };
    rustPlatform.buildRustPackage = args: args;
    installShellFiles = fakeDrv "install-shell-files";
    systemd = fakeDrv "systemd";
    # unshare is in the bin output
    util-linux = fakeDrv "util-linux-2.41" // {
      bin = fakeDrv "util-linux-2.41-bin";
    };
  };

  # The options table of the README's "On NixOS" section, from the option
  # declarations: name, type, default, description.
  oneLine =
    s:
    lib.concatStringsSep " " (
      lib.filter (w: w != "") (lib.splitString " " (lib.replaceStrings [ "\n" ] [ " " ] s))
    );
  mdText =
    s:
    lib.replaceStrings [ "{option}`" "{file}`" "|" ] [ "`" "`" "\\|" ] (oneLine s);
  literal = v: if v ? text then v.text else toString v;
  defaultOf =
    o:
    if !(o ? default) then
      "none"
    else if (o.default._type or "") == "literalMD" then
      mdText o.default.text
    else
      "`${oneLine (literal o.default)}`";
  tableOf =
    options:
    lib.concatStringsSep "\n" (
      [
        "| Option | Type | Default | Description |"
        "| --- | --- | --- | --- |"
      ]
      ++ map (
        o: "| `${o.name}` | ${mdText o.type} | ${defaultOf o} | ${mdText (literal o.description)} |"
      ) (lib.filter (o: o.visible && !o.internal) (lib.optionAttrSetToDocList options))
    );
  # the host module's options (without the guest module's, which the host
  # evaluation does not import)
  optionsTable = tableOf (
    builtins.removeAttrs clean.options.services.microvm-workspaces [ "guest" ]
  );
  guestOptionsTable = tableOf liveGuest.options.services.microvm-workspaces.guest;
  readmeHasTable = table: lib.hasInfix table (builtins.readFile readme);
in
{
  results = {
    "clean host: assertions, tmpfiles, warnings, sudo rule" = host.problems host.clean clean.config;
    "clean host: config.json" =
      let
        actual = configJsonOf clean;
      in
      if actual == host.clean.configJson then
        [ ]
      else
        [ "expected ${builtins.toJSON host.clean.configJson}, got ${builtins.toJSON actual}" ];
    # One package: the module overrides nothing but systemd (the host's
    # systemd.package, by default pkgs.systemd, callPackage's own argument),
    # so it builds the derivation of the flake's packages.default.
    "clean host: the default package is packages.default, with the host's systemd" =
      let
        got = clean.config.services.microvm-workspaces.package.overriddenWith;
      in
      if builtins.attrNames got == [ "systemd" ] && got.systemd == pkgs.systemd then
        [ ]
      else
        [ "override arguments: ${builtins.toJSON got}" ];
    "clean host: microvm.nix's own tmpfiles lines are there to be masked" =
      # Without microvm.nix's share lines, the masking would be untested.
      let
        defs = lib.concatMap (d: builtins.attrNames (d.value."10-microvm" or { })) (
          clean.options.systemd.tmpfiles.settings.definitionsWithLocations
        );
      in
      if builtins.elem "/var/lib/microvm-workspaces/vm1" defs then
        [ ]
      else
        [ "microvm.nix's host module defines no 10-microvm line for a share source: ${builtins.toJSON defs}" ];
    "warned host: the module's warnings" = host.problems host.warned warned.config;
    "ssh: a destination ssh would refuse is an assertion naming the VM and the option" =
      let
        got = failedAssertions (withSsh { destination = "-%n"; });
      in
      if
        # dev and vm1 (nixfiles has its own destination)
        builtins.length got == 2
        && lib.any (lib.hasInfix "services.microvm-workspaces.ssh.destination = \"-%n\" gives VM \"vm1\" the SSH destination \"-vm1\", which starts with \"-\"") got
      then
        [ ]
      else
        [ "failed assertions: ${builtins.toJSON got}" ];
    # The same text as the default, but set: the user chose it, so `ssh`
    # (waited for, a failure when it does not answer), for vm1's vsock too.
    "ssh: the default template set explicitly gives ssh, not sshDefault" =
      let
        vms = (configJsonOf (withSsh { destination = "%n"; })).vms;
      in
      if
        vms.vm1.ssh or null == "vm1"
        && vms.dev.ssh or null == "dev"
        && !(vms.vm1 ? sshDefault)
        && vms.nixfiles.ssh == "ssh://root@10.0.0.2:2222"
      then
        [ ]
      else
        [ "vms: ${builtins.toJSON vms}" ];
    "ssh: a guessed vsock destination warns when the host's ssh lacks systemd's proxy" =
      let
        got = (withSsh { }).config.warnings or [ ];
        off = eval (
          host.clean
          // {
            module = {
              imports = [ host.clean.module ];
              programs.ssh.systemd-ssh-proxy.enable = false;
            };
          }
        );
        gotOff = off.config.warnings;
      in
      if
        !(lib.any (lib.hasInfix "vsock/<cid>") got)
        && lib.any (lib.hasInfix "VMs vm1 are reached over SSH at vsock/<cid>, but programs.ssh.systemd-ssh-proxy.enable is false") gotOff
      then
        [ ]
      else
        [ "warnings with the proxy on: ${builtins.toJSON got}; off: ${builtins.toJSON gotOff}" ];
    "ssh: destination = null leaves only the perVm destinations" =
      let
        vms = (configJsonOf (withSsh { destination = null; })).vms;
      in
      if (vms.vm1 ? ssh) || vms.nixfiles.ssh != "ssh://root@10.0.0.2:2222" then
        [ "vms: ${builtins.toJSON vms}" ]
      else
        [ ];
    "guest: guestUid = 0 with idmap is an assertion naming the VM; with idmap = false it is not" =
      let
        got = failedAssertions (withVm1 { guestUid = 0; });
        plain = withVm1 {
          guestUid = 0;
          idmap = false;
        };
        gotPlain = failedAssertions plain;
      in
      (
        if
          builtins.length got == 1
          && lib.hasInfix "services.microvm-workspaces.vms.vm1.guestUid = 0 with idmap on" (builtins.head got)
        then
          [ ]
        else
          [ "failed assertions: ${builtins.toJSON got}" ]
      )
      ++ (if gotPlain == [ ] then [ ] else [ "idmap = false, failed assertions: ${builtins.toJSON gotPlain}" ])
      ++ (
        let
          vm1 = (configJsonOf plain).vms.vm1;
        in
        if vm1.guestUid == 0 && !(vm1 ? guestGid) && vm1.idmap == false && vm1.git == "private" then
          [ ]
        else
          [ "idmap = false, vms.vm1: ${builtins.toJSON vm1}" ]
      );
    "guest: the option types refuse an unknown git mode and a uid or gid that is no u32" =
      let
        gitType = (clean.options.services.microvm-workspaces.vms.type.getSubOptions [ ]).git.type;
      in
      (if refused (withVm1 { git = "rw"; }) then [ ] else [ "git = \"rw\" was taken" ])
      ++ (if refused (withVm1 { guestUid = -1; }) then [ ] else [ "guestUid = -1 was taken" ])
      ++ (if refused (withVm1 { guestUid = 4294967296; }) then [ ] else [ "guestUid = 4294967296 was taken" ])
      ++ (if refused (withVm1 { guestGid = -1; }) then [ ] else [ "guestGid = -1 was taken" ])
      ++ (if refused (withVm1 { guestGid = 4294967296; }) then [ ] else [ "guestGid = 4294967296 was taken" ])
      ++ (if refused (withVm1 { guestGid = "100"; }) then [ ] else [ "guestGid = \"100\" was taken" ])
      ++ (if refused (withVm1 { git = "readonly"; }) then [ "git = \"readonly\" was refused" ] else [ ])
      ++ (
        if map gitType.check [ "private" "readonly" "shared" "Private" "" ] == [ true true true false false ] then
          [ ]
        else
          [ "git's type: ${gitType.description}" ]
      );
    # null (the default, or set) leaves the key out: Rust's None, the number
    # of the linker's primary group. Any number is written, 0 too.
    "guest: guestGid is written when it is a number and left out when null" =
      let
        vm1Of = settings: (configJsonOf (withVm1 settings)).vms.vm1;
        got = map vm1Of [
          { }
          { guestGid = null; }
          { guestGid = 1000; }
          { guestGid = 0; }
        ];
      in
      if
        map (vm1: vm1.guestGid or "absent") got == [
          "absent"
          "absent"
          1000
          0
        ]
      then
        [ ]
      else
        [ "vms.vm1: ${builtins.toJSON got}" ];
    "package: util-linux's unshare is compiled in" =
      let
        got = packageArgs.env.MICROVM_WORKSPACES_UNSHARE or null;
      in
      if got == "/nix/store/00000000000000000000000000000000-util-linux-2.41-bin/bin/unshare" then
        [ ]
      else
        [ "env.MICROVM_WORKSPACES_UNSHARE: ${builtins.toJSON got}" ];
    "nixpkgs older than 25.11: one assertion that says so, and nothing else defined" =
      let
        got = failedAssertions oldNixpkgs;
      in
      if
        builtins.length got == 1
        && lib.hasInfix "needs nixpkgs 25.11 or later (this is 25.05)" (builtins.head got)
        && !(oldNixpkgs.config.environment.etc ? "microvm-workspaces/config.json")
      then
        [ ]
      else
        [ "failed assertions: ${builtins.toJSON got}" ];
    "microvm.nix without microvm.host.enable: the assertion that says to update it" =
      let
        got = failedAssertions oldMicrovm;
      in
      if lib.any (lib.hasInfix "update the microvm input") got then
        [ ]
      else
        [ "failed assertions: ${builtins.toJSON got}" ];
    "without microvm.nix's host module: the assertion that says to import it" =
      let
        got = failedAssertions noMicrovm;
      in
      if lib.any (lib.hasInfix "inputs.microvm.nixosModules.host") got then
        [ ]
      else
        [ "failed assertions: ${builtins.toJSON got}" ];
    "flake: outputs, and checks.module-eval passes with stub NixOS" =
      let
        check = flake.checks.x86_64-linux.module-eval;
        json = builtins.fromJSON check.env.actual.text;
        names = attrs: builtins.attrNames attrs;
        want = {
          top = [
            "checks"
            "devShells"
            "formatter"
            "nixosModules"
            "overlays"
            "packages"
          ];
          nixosModules = [
            "default"
            "guest"
            "microvm-workspaces"
          ];
          checks = [
            "module-eval"
            "nix-lib"
            "package"
            "vm-test"
            "vm-test-driver"
          ];
        };
      in
      (if names flake == want.top then [ ] else [ "outputs: ${builtins.toJSON (names flake)}" ])
      ++ (
        if names flake.nixosModules == want.nixosModules then
          [ ]
        else
          [ "nixosModules: ${builtins.toJSON (names flake.nixosModules)}" ]
      )
      ++ (
        if names flake.checks.x86_64-linux == want.checks then
          [ ]
        else
          [ "checks: ${builtins.toJSON (names flake.checks.x86_64-linux)}" ]
      )
      ++ (if json == host.clean.configJson then [ ] else [ "module-eval config.json: ${builtins.toJSON json}" ])
      ++ (
        if builtins.fromJSON check.env.expected == host.clean.configJson then
          [ ]
        else
          [ "module-eval expected: ${check.env.expected}" ]
      )
      ++ (if flake.checks.x86_64-linux.vm-test-driver.name == "vm-test-driver" then [ ] else [ "vm-test-driver" ]);
    "guest: nixosModules.guest beside microvm.nix's guest module: shares, mounts, symlinks" =
      let
        c = liveGuest.config;
        longName = "a-share-name-much-longer-than-a-virtiofs-tag";
        # "live-" + its first 22 bytes + "-" + 8 hex digits of its SHA-256
        longTag = "live-a-share-name-much-long-53057f23";
        want = [
          {
            tag = longTag;
            source = "/var/lib/microvm-workspaces/.live/nix-secrets";
            mountPoint = "/run/microvm-workspaces/${longName}";
            readOnly = true;
            link = "/secrets";
          }
          {
            tag = "live-hostcfg";
            source = "/var/lib/microvm-workspaces/.live/nixfiles/hosts/microvms/dev";
            mountPoint = "/run/microvm-workspaces/hostcfg";
            readOnly = false;
            link = "/etc/hostcfg";
          }
          {
            tag = "live-nixfiles";
            source = "/var/lib/microvm-workspaces/.live/nixfiles";
            mountPoint = "/run/microvm-workspaces/nixfiles";
            readOnly = true;
            link = "/nixfiles";
          }
        ];
        shareOf = tag: lib.findFirst (s: s.tag == tag) null c.microvm.shares;
        # (through `options`: config.systemd would merge in the freeform
        # rest of `systemd`, which needs real packages)
        lines = liveGuest.options.systemd.tmpfiles.settings.value."10-microvm-workspaces-live";
        problemsOf =
          w:
          let
            s = shareOf w.tag;
            fs = c.fileSystems.${w.mountPoint} or null;
            line = (lines.${w.link} or { })."L" or null;
          in
          if s == null then
            [ "no microvm.shares entry with tag ${w.tag}: ${builtins.toJSON (map (s: s.tag) c.microvm.shares)}" ]
          else
            (
              if
                s.proto == "virtiofs"
                && s.source == w.source
                && s.mountPoint == w.mountPoint
                && s.readOnly == w.readOnly
                # filled in by microvm.nix's share options
                && s.socket == "dev-virtiofs-${w.tag}.sock"
              then
                [ ]
              else
                [ "share ${w.tag}: ${builtins.toJSON s}" ]
            )
            ++ (
              if fs != null && fs.device == w.tag && fs.fsType == "virtiofs" then
                [ ]
              else
                [ "fileSystems.${w.mountPoint}: ${builtins.toJSON fs}" ]
            )
            ++ (
              if line != null && line.type == "L" && line.argument == "${w.mountPoint}/current" then
                [ ]
              else
                [ "tmpfiles line for ${w.link}: ${builtins.toJSON line}" ]
            );
      in
      map (m: "failed assertion: ${m}") (failedAssertions liveGuest)
      ++ lib.concatMap problemsOf want
      ++ (if builtins.length c.microvm.shares == 4 then [ ] else [ "microvm.shares: ${builtins.toJSON c.microvm.shares}" ])
      ++ (if builtins.stringLength longTag == 36 then [ ] else [ "the long tag is not 36 bytes" ]);
    "guest: every refusal is an assertion that says why" = lib.concatLists (
      lib.mapAttrsToList (
        name: r:
        let
          got = failedAssertions (mkGuest {
            hostName = "refused";
            shares = r.shares or [ ];
            inherit (r) live;
          });
        in
        if lib.any (lib.hasInfix r.says) got then [ ] else [ "${name}: failed assertions ${builtins.toJSON got}" ]
      ) refusedGuests
    );
    "guest: without microvm.nix's guest module, the assertion that says to add it" =
      let
        got = failedAssertions (
          lib.evalModules {
            modules = [
              guestStubs
              ../../nixos-module/guest.nix
              {
                services.microvm-workspaces.guest.shares.x = {
                  entry = "nixfiles";
                  mountPoint = "/x";
                };
              }
            ];
          }
        );
      in
      if lib.any (lib.hasInfix "inputs.microvm.nixosModules.microvm") got then
        [ ]
      else
        [ "failed assertions: ${builtins.toJSON got}" ];
    "host: a guest told another workspaceDir is an assertion" =
      let
        got = failedAssertions (eval {
          module = {
            imports = [ host.clean.module ];
            microvm.vms.dev.evaluatedConfig = lib.mkForce (evalGuest [
              {
                networking.hostName = "dev";
                services.microvm-workspaces.guest = {
                  workspaceDir = "/srv/ws";
                  shares.x = {
                    entry = "nixfiles";
                    mountPoint = "/x";
                  };
                };
              }
            ]);
          };
        });
      in
      if
        lib.any (lib.hasInfix "microvm.vms.dev: its guest sets services.microvm-workspaces.guest.workspaceDir = \"/srv/ws\", but this host's services.microvm-workspaces.workspaceDir is \"/var/lib/microvm-workspaces\"") got
      then
        [ ]
      else
        [ "failed assertions: ${builtins.toJSON got}" ];
    "README: the options table is the one generated from the module" =
      if readmeHasTable optionsTable then [ ] else [ "README.md does not contain this table:\n${optionsTable}" ];
    "README: the guest module's options table is the one generated from it" =
      if readmeHasTable guestOptionsTable then
        [ ]
      else
        [ "README.md does not contain this table:\n${guestOptionsTable}" ];
  };
  inherit optionsTable guestOptionsTable;
}
