# Two NixOS host configurations with microvm.nix's host module and ours, and
# what evaluating them must give. Shared by the flake's `module-eval` check
# (real NixOS, real microvm.nix guests) and tests/nix/eval-with-nixpkgs-lib.sh
# (nixpkgs' lib.evalModules with stub NixOS options, run by hand where only
# nixpkgs.lib and microvm.nix are at hand). Builtins only.
#
# `mkGuest { hostName, shares, live, vsockCid }` returns what goes into
# `microvm.vms.<vm>.evaluatedConfig` (something whose `.config` is a guest
# NixOS configuration with those microvm.shares, with microvm.vsock.cid =
# `vsockCid` (null or an integer), and with our guest module,
# nixosModules.guest, given `live` as services.microvm-workspaces.guest.shares);
# `shares` list tag, proto, source, mountPoint and readOnly.
{ mkGuest }:

let
  ws = "/var/lib/microvm-workspaces";

  share = proto: tag: source: readOnly: {
    inherit
      proto
      tag
      source
      readOnly
      ;
    mountPoint = "/mnt/${tag}";
  };

  vms = {
    vm1 = [
      (share "virtiofs" "workspace" "${ws}/vm1" false)
      (share "virtiofs" "nixfiles" "${ws}/nixfiles" true)
      (share "virtiofs" "hostcfg" "${ws}/nixfiles/hosts/microvms/vm1" false)
      (share "virtiofs" "ro-store" "/nix/store" true)
    ];
    nixfiles = [
      (share "virtiofs" "nixfiles" "${ws}/nixfiles" true)
      (share "virtiofs" "secrets" "${ws}/nix-secrets" true)
      # outside the workspace dir: microvm.nix's line stays
      (share "virtiofs" "data" "/srv/data" false)
      # relative (to <stateDir>/<vm>): tmpfiles cannot take it, masked
      (share "9p" "scratch" "scratch" false)
    ];
  };

  # Live shares (the guest module's), per VM. dev has no shares of its own,
  # so the order of its microvm.shares is the guest module's (by name).
  live = {
    dev = {
      nixfiles = {
        entry = "nixfiles";
        mountPoint = "/nixfiles";
      };
      hostcfg = {
        entry = "nixfiles";
        path = "hosts/microvms/dev";
        mountPoint = "/hostcfg";
        readOnly = false;
      };
    };
  };

  # vm1 has a vsock CID (on qemu, microvm.nix's default hypervisor), so the
  # module guesses vsock/<cid> for it.
  vsockCids.vm1 = 3;

  # config.json's guest keys: the defaults (guestGid null, so left out),
  # and nixfiles' own (a guest user with a group of its own, 1001).
  guestKeys = {
    guestUid = 1000;
    idmap = true;
    git = "private";
  };
  nixfilesGuestKeys = guestKeys // {
    guestUid = 1001;
    guestGid = 1001;
    git = "readonly";
  };

  microvmVms = builtins.mapAttrs (name: shares: {
    autostart = false;
    evaluatedConfig = mkGuest {
      hostName = name;
      inherit shares;
      live = live.${name} or { };
      vsockCid = vsockCids.${name} or null;
    };
  }) (vms // { dev = [ ]; });

  tmpfilesUserEntry = {
    user = ":microvm";
    group = ":kvm";
    mode = ":0775";
  };
in
{
  # A host as the README describes it. workspaceDir is set with a path
  # literal, which the option takes as its string.
  clean = {
    module = {
      services.microvm-workspaces = {
        enable = true;
        workspaceDir = /var/lib/microvm-workspaces;
        linkGroup = "microvm-link";
        companions.nixfiles.nix-secrets = "../nix-secrets";
        # ssh.destination stays unset: vm1 and dev get guesses
        # (sshDefault), vsock/3 and "dev"
        ssh.perVm.nixfiles = "ssh://root@10.0.0.2:2222";
        # vm1 and dev keep the defaults (written all the same)
        vms.nixfiles = {
          guestUid = 1001;
          guestGid = 1001;
          git = "readonly";
        };
      };
      users.users.alice = {
        isNormalUser = true;
        extraGroups = [ "microvm-link" ];
      };
      microvm.vms = microvmVms;
    };

    # config.json, exactly (key order aside).
    configJson = {
      enable = true;
      stateDir = "/var/lib/microvms";
      workspaceDir = ws;
      placeholder = {
        user = "root";
        group = "root";
        mode = "0555";
      };
      hypervisor = {
        user = "microvm";
        group = "kvm";
      };
      vms =
        builtins.mapAttrs (
          name: shares:
          (if name == "nixfiles" then nixfilesGuestKeys else guestKeys)
          // {
            ${if name == "nixfiles" then "ssh" else "sshDefault"} =
              if name == "nixfiles" then
                "ssh://root@10.0.0.2:2222"
              else if vsockCids ? ${name} then
                "vsock/${toString vsockCids.${name}}"
              else
                name;
            shares = map (s: {
              inherit (s)
                tag
                proto
                source
                readOnly
                mountPoint
                ;
            }) shares;
          }
        ) vms
        // {
          # the live shares: sources under .live, mounted below
          # /run/microvm-workspaces in the guest
          dev = guestKeys // {
            sshDefault = "dev";
            shares = [
              {
                tag = "live-hostcfg";
                proto = "virtiofs";
                source = "${ws}/.live/nixfiles/hosts/microvms/dev";
                readOnly = false;
                mountPoint = "/run/microvm-workspaces/hostcfg";
              }
              {
                tag = "live-nixfiles";
                proto = "virtiofs";
                source = "${ws}/.live/nixfiles";
                readOnly = true;
                mountPoint = "/run/microvm-workspaces/nixfiles";
              }
            ];
          };
        };
      companions.nixfiles.nix-secrets = "../nix-secrets";
    };

    # systemd.tmpfiles.settings.<key>.<path>.d: these fields, or (null) no
    # entry at all for that path under that key, or ({ }) an entry with no
    # line (masked).
    tmpfiles = [
      {
        key = "10-microvm-workspaces";
        path = ws;
        d = {
          user = "root";
          group = "root";
          mode = "0755";
        };
      }
      {
        key = "10-microvm";
        path = "/var/lib/microvms";
        d = {
          user = "microvm";
          group = "kvm";
          mode = "0775";
        };
      }
      {
        key = "10-microvm";
        path = "/srv/data";
        d = tmpfilesUserEntry;
      }
      {
        key = "10-microvm";
        path = "${ws}/vm1";
        d = { };
      }
      {
        key = "10-microvm";
        path = "${ws}/nixfiles";
        d = { };
      }
      {
        key = "10-microvm";
        path = "${ws}/nixfiles/hosts/microvms/vm1";
        d = { };
      }
      {
        key = "10-microvm";
        path = "${ws}/nix-secrets";
        d = { };
      }
      {
        key = "10-microvm";
        path = "scratch";
        d = { };
      }
      # live roots are under the workspace dir too
      {
        key = "10-microvm";
        path = "${ws}/.live/nixfiles";
        d = { };
      }
      {
        key = "10-microvm";
        path = "${ws}/.live/nixfiles/hosts/microvms/dev";
        d = { };
      }
      {
        key = "10-microvm";
        path = "/nix/store";
        d = null;
      }
    ];

    warnings = [ ];

    # The sudo rule: group, command (this package's microvm-link), NOPASSWD.
    sudoRule = {
      groups = [ "microvm-link" ];
      runAs = "root";
      optionsOfCommand = [ "NOPASSWD" ];
    };
  };

  # The same host with everything the module warns about.
  warned = {
    module = {
      services.microvm-workspaces = {
        enable = true;
        linkGroup = "microvm-link";
        # no VM "ghost" in microvm.vms
        companions.ghost.ghost-data = "../ghost-data";
        placeholder.user = "nobody-here";
        placeholder.group = "nogroup-here";
        # no VM "ghost-vm" in microvm.vms
        ssh.perVm.ghost-vm = "ghost.example";
        # nor "ghost-guest"
        vms.ghost-guest.git = "shared";
      };
      security.sudo.execWheelOnly = true;
      users.users.alice = {
        isNormalUser = true;
        extraGroups = [
          "microvm-link"
          "wheel"
        ];
      };
      users.users.bob = {
        isNormalUser = true;
        extraGroups = [ "microvm-link" ];
      };
      # A share source line under a key the module does not mask, as a
      # microvm.nix that renamed its key would write it.
      systemd.tmpfiles.settings."20-microvm-renamed"."${ws}/vm1".d = tmpfilesUserEntry;
      microvm.vms = microvmVms;
    };

    # The first word of each of the module's warnings, in order.
    warnings = [
      "security.sudo.execWheelOnly"
      "services.microvm-workspaces.companions.ghost:"
      "services.microvm-workspaces.placeholder.user"
      "services.microvm-workspaces.placeholder.group"
      "systemd.tmpfiles.settings.\"20-microvm-renamed\""
      "services.microvm-workspaces.ssh.perVm.ghost-vm:"
      "services.microvm-workspaces.vms.ghost-guest:"
    ];
  };

  # Problems with an evaluated host `config` against one of the above
  # (`expected`), as a list of messages; config.json is compared elsewhere
  # (it is a file). `ours`: the module's warnings among all of them.
  problems =
    expected: config:
    let
      inherit (builtins)
        concatMap
        filter
        head
        match
        toJSON
        ;
      ours = filter (w: match ".*microvm-workspaces.*" w != null) config.warnings;
      firstWord = w: head (match "([^ ]*) .*" w);
      failedAssertions = map (a: a.message) (filter (a: !a.assertion) config.assertions);
      settings = config.systemd.tmpfiles.settings;
      tmpfilesProblem =
        t:
        let
          actual = settings.${t.key}.${t.path} or null;
        in
        if t.d == null then
          (if actual == null then [ ] else [ "tmpfiles ${t.key} ${t.path}: expected no entry, found ${toJSON actual}" ])
        else if actual == null then
          [ "tmpfiles ${t.key} ${t.path}: no entry" ]
        else if t.d == { } then
          (if actual == { } then [ ] else [ "tmpfiles ${t.key} ${t.path}: expected masked ({ }), found ${toJSON actual}" ])
        else if !(actual ? d) then
          [ "tmpfiles ${t.key} ${t.path}: no d line in ${toJSON actual}" ]
        else
          concatMap (
            f:
            if (actual.d.${f} or null) == t.d.${f} then
              [ ]
            else
              [ "tmpfiles ${t.key} ${t.path}: d.${f} is ${toJSON (actual.d.${f} or null)}, expected ${toJSON t.d.${f}}" ]
          ) (builtins.attrNames t.d);
    in
    map (m: "failed assertion: ${m}") failedAssertions
    ++ concatMap tmpfilesProblem (expected.tmpfiles or [ ])
    ++ (
      if map firstWord ours == expected.warnings then
        [ ]
      else
        [ "warnings: expected ${toJSON expected.warnings}, got ${toJSON ours}" ]
    )
    ++ (
      if expected ? sudoRule then
        let
          # NixOS's own rule for wheel is in extraRules too.
          isOurs = r: builtins.any (c: match ".*/bin/microvm-link" (c.command or c) != null) r.commands;
          rules = filter isOurs config.security.sudo.extraRules;
          rule = head rules;
          cmd = head rule.commands;
        in
        if builtins.length rules != 1 then
          [ "sudo rules for microvm-link: expected 1, got ${toJSON rules}" ]
        else if
          rule.groups != expected.sudoRule.groups
          || rule.runAs != expected.sudoRule.runAs
          || cmd.options != expected.sudoRule.optionsOfCommand
          || match "/nix/store/[^/]+/bin/microvm-link" cmd.command == null
        then
          [ "sudo rule: ${toJSON rule}" ]
        else
          [ ]
      else
        [ ]
    );
}
