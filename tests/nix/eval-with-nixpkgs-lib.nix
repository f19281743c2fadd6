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
        # tmpfiles.d lines: settings.<file>.<path>.<type> = { user; group; mode; ... }
        systemd.tmpfiles.settings = mkOption {
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

  mkGuest =
    { hostName, shares }:
    {
      config = {
        networking.hostName = hostName;
        microvm.shares = shares;
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

  # The clean host on a nixpkgs that calls itself 24.05.
  oldNixpkgs =
    let
      oldLib = lib // {
        trivial = lib.trivial // {
          release = "24.05";
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
  docs = lib.filter (o: o.visible && !o.internal) (
    lib.optionAttrSetToDocList clean.options.services.microvm-workspaces
  );
  optionsTable = lib.concatStringsSep "\n" (
    [
      "| Option | Type | Default | Description |"
      "| --- | --- | --- | --- |"
    ]
    ++ map (
      o: "| `${o.name}` | ${mdText o.type} | ${defaultOf o} | ${mdText (literal o.description)} |"
    ) docs
  );
  readmeHasTable = lib.hasInfix optionsTable (builtins.readFile readme);
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
    "clean host: the default package gets systemd and the sudo wrapper" =
      let
        got = clean.config.services.microvm-workspaces.package.overriddenWith;
      in
      if got.sudoPath == "/run/wrappers/bin/sudo" && got.systemd == pkgs.systemd then
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
        builtins.length got == 1
        && lib.hasInfix "services.microvm-workspaces.ssh.destination = \"-%n\" gives VM \"vm1\" the SSH destination \"-vm1\", which starts with \"-\"" (builtins.head got)
      then
        [ ]
      else
        [ "failed assertions: ${builtins.toJSON got}" ];
    "ssh: destination = null leaves only the perVm destinations" =
      let
        vms = (configJsonOf (withSsh { destination = null; })).vms;
      in
      if (vms.vm1 ? ssh) || vms.nixfiles.ssh != "ssh://root@10.0.0.2:2222" then
        [ "vms: ${builtins.toJSON vms}" ]
      else
        [ ];
    "nixpkgs older than 24.11: one assertion that says so, and nothing else defined" =
      let
        got = failedAssertions oldNixpkgs;
      in
      if
        builtins.length got == 1
        && lib.hasInfix "needs nixpkgs 24.11 or later (this is 24.05)" (builtins.head got)
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
    "README: the options table is the one generated from the module" =
      if readmeHasTable then [ ] else [ "README.md does not contain this table:\n${optionsTable}" ];
  };
  inherit optionsTable;
}
