# NixOS VM test of the module (`nix flake check`, or
# `nix build .#checks.x86_64-linux.vm-test`), for pkgs.testers.runNixOSTest.
#
# One NixOS host with microvm.nix's host module and ours runs two qemu
# microVMs whose virtiofs shares live under the workspace dir:
#
#   vm1       workspace (rw)                 <ws>/vm1
#             nixfiles  (ro)                 <ws>/nixfiles
#             hostcfg   (rw)                 <ws>/nixfiles/hosts/microvms/vm1
#             live-nixfiles (ro, live)       <ws>/.live/nixfiles     -> /live-nixfiles
#             live-secrets  (ro, live)       <ws>/.live/nix-secrets  -> /live-secrets
#   nixfiles  nixfiles  (ro)                 <ws>/nixfiles
#             hostcfg   (rw)                 <ws>/nixfiles/hosts/microvms/nixfiles
#             secrets   (ro)                 <ws>/nix-secrets  (companion of nixfiles)
#
# How the guests are observed: each guest runs a small reporter that, every
# two seconds, lists each share's mount point and tries to create a file in
# it as the unprivileged guest user `dev` (uid 1000, the uid of the host user
# alice who owns the repos), and prints the result as one line
#   MVW vm=<host> boot=<id> seq=<n> <mountpoint>=[<files>]:<ok|denied> ... END
# to the console. The console is qemu's serial port on stdio, so the lines
# land in the host's journal of microvm@<vm>.service, where the test script
# reads them. This needs no network and no writable share, works while a
# share is still a read-only placeholder, and the boot id tells a restarted
# guest from the one before; the periodic lines show what a running guest
# sees now, not only at boot.
#
# vm1's live shares come from nixosModules.guest: virtiofs shares of the live
# roots, mounted below /run/microvm-workspaces, and symlinks /live-nixfiles
# and /live-secrets into them. Linking nixfiles (and its companion
# nix-secrets) must show in them while vm1 keeps running: its reports go on
# from the same boot, where its ordinary nixfiles share stays stale.
{ self, microvm }:

let
  ws = "/var/lib/microvm-workspaces";

  mw = import ./lib.nix;

  guest =
    {
      hostName,
      shares,
      live ? { },
    }:
    { lib, pkgs, ... }:
    let
      mountPoints = map (s: s.mountPoint) shares;
      # the live shares' symlinks
      linkPoints = map (n: live.${n}.mountPoint) (builtins.attrNames live);
      reporter = pkgs.writeShellScript "mvw-report" ''
        PATH=${
          lib.makeBinPath [
            pkgs.coreutils
            pkgs.util-linux
          ]
        }
        boot=$(cut -c1-8 /proc/sys/kernel/random/boot_id)
        seq=0
        while :; do
          seq=$((seq + 1))
          line="MVW vm=${hostName} boot=$boot seq=$seq"
          for mp in ${lib.escapeShellArgs mountPoints}; do
            if ! mountpoint -q "$mp"; then
              line="$line $mp=unmounted"
              continue
            fi
            if files=$(ls -A -- "$mp" 2>/dev/null); then
              files=$(printf '%s\n' "$files" | LC_ALL=C sort | paste -sd, -)
            else
              files='?'
            fi
            # as dev (uid 1000, group users), without a PAM session
            if setpriv --reuid=1000 --regid=100 --clear-groups -- \
              touch "$mp/.guest-wrote-${hostName}" 2>/dev/null; then
              write=ok
            else
              write=denied
            fi
            line="$line $mp=[$files]:$write"
          done
          for mp in ${lib.escapeShellArgs linkPoints}; do
            if [ ! -L "$mp" ]; then
              line="$line $mp=unlinked"
              continue
            fi
            # what the live root's `current` shows now ('?' while there
            # is none)
            if files=$(ls -A -- "$mp/" 2>/dev/null); then
              files=$(printf '%s\n' "$files" | LC_ALL=C sort | paste -sd, -)
            else
              files='?'
            fi
            if setpriv --reuid=1000 --regid=100 --clear-groups -- \
              touch "$mp/.guest-wrote-${hostName}" 2>/dev/null; then
              write=ok
            else
              write=denied
            fi
            line="$line $mp=[$files]:$write"
          done
          echo "$line END"
          sleep 2
        done
      '';
    in
    {
      imports = [ self.nixosModules.guest ];

      networking.hostName = hostName;
      system.stateVersion = lib.trivial.release;

      services.microvm-workspaces.guest.shares = live;

      microvm = {
        hypervisor = "qemu";
        # Uses KVM when the test host offers nested virtualisation and falls
        # back to TCG (slow, but it works) when it does not: with a CPU model
        # set, microvm.nix leaves out -enable-kvm and qemu's accel=kvm:tcg
        # chooses. SGX stays off on x86, as microvm.nix's own default CPU
        # does: qemu's microvm machine crashes with it.
        cpu = if pkgs.stdenv.hostPlatform.isx86_64 then "max,-sgx" else "max";
        vcpu = 1;
        mem = 512;
        inherit shares;
      };

      users.users.dev = {
        isNormalUser = true;
        uid = 1000;
      };

      systemd.services.mvw-report = {
        description = "Report what the shares look like to the host";
        wantedBy = [ "multi-user.target" ];
        after = [ "local-fs.target" ];
        serviceConfig = {
          ExecStart = reporter;
          StandardOutput = "journal+console";
        };
      };
    };

  share = tag: source: mountPoint: readOnly: {
    inherit
      tag
      source
      mountPoint
      readOnly
      ;
    proto = "virtiofs";
  };
in
{
  name = "microvm-workspaces";

  nodes.host =
    { ... }:
    {
      imports = [
        microvm.nixosModules.host
        self.nixosModules.default
      ];

      virtualisation = {
        cores = 2;
        memorySize = 3072;
        diskSize = 4096;
      };

      services.microvm-workspaces = {
        enable = true;
        linkGroup = "microvm-link";
        companions.nixfiles.nix-secrets = "../nix-secrets";
      };

      users.users.alice = {
        isNormalUser = true;
        uid = 1000;
        extraGroups = [ "microvm-link" ];
      };
      # Not in linkGroup: no sudo rule lets bob run microvm-link, so linking
      # fails (without a terminal, microvm-link runs `sudo -n`, which refuses
      # instead of asking for a password).
      users.users.bob = {
        isNormalUser = true;
        uid = 1001;
      };

      microvm.vms = {
        vm1 = {
          autostart = false;
          config = guest {
            hostName = "vm1";
            shares = [
              (share "workspace" "${ws}/vm1" "/workspace" false)
              (share "nixfiles" "${ws}/nixfiles" "/nixfiles" true)
              (share "hostcfg" "${ws}/nixfiles/hosts/microvms/vm1" "/hostcfg" false)
            ];
            live = {
              nixfiles = {
                entry = "nixfiles";
                mountPoint = "/live-nixfiles";
              };
              # a companion: linked together with nixfiles
              secrets = {
                entry = "nix-secrets";
                mountPoint = "/live-secrets";
              };
            };
          };
        };
        nixfiles = {
          autostart = false;
          config = guest {
            hostName = "nixfiles";
            shares = [
              (share "nixfiles" "${ws}/nixfiles" "/nixfiles" true)
              (share "hostcfg" "${ws}/nixfiles/hosts/microvms/nixfiles" "/hostcfg" false)
              (share "secrets" "${ws}/nix-secrets" "/secrets" true)
            ];
          };
        };
      };
    };

  testScript = ''
    import json
    import re

    WS = "${ws}"
    REPORT = re.compile(r"MVW vm=(\S+) boot=(\S+) seq=(\d+) (.*?) END")


    # Picks report lines out of the journal and succeeds when there is none
    # yet (the driver runs commands under `set -euo pipefail`).
    REPORT_FILTER = ${builtins.toJSON mw.guestReportFilter}


    def reports(vm):
        """The last well-formed report lines of vm's guest, oldest first;
        [] before the guest's first report."""
        out = host.succeed(
            f"journalctl --no-pager -o cat -u microvm@{vm}.service | " + REPORT_FILTER
        )
        found = []
        for m in REPORT.finditer(out):
            views = {}
            for item in m.group(4).split():
                mp, _, rest = item.partition("=")
                if rest in ("unmounted", "unlinked"):
                    views[mp] = None
                    continue
                listing, _, write = rest.rpartition(":")
                files = [f for f in listing.strip("[]").split(",") if f]
                views[mp] = {"files": files, "write": write}
            found.append({"boot": m.group(2), "seq": int(m.group(3)), "views": views})
        return found


    def latest(vm):
        found = reports(vm)
        return found[-1] if found else None


    def wait_report(vm, what, pred, other_than_boot=None, after=None):
        """Wait for a report of vm satisfying pred: from a boot other than
        other_than_boot, or from the same boot as `after` with a later seq."""
        result = {}

        def check(last_try):
            r = latest(vm)
            ok = r is not None
            if ok and other_than_boot is not None:
                ok = r["boot"] != other_than_boot
            if ok and after is not None:
                ok = r["boot"] == after["boot"] and r["seq"] > after["seq"]
            ok = ok and pred(r)
            if last_try and not ok:
                print(f"last report of {vm}: {r}")
            if ok:
                result["r"] = r
            return ok

        with subtest(f"{vm}: {what}"):
            retry(check, 1200)
        return result["r"]


    def view(r, mp):
        v = r["views"].get(mp)
        assert v is not None, f"{mp} is not mounted in {r}"
        return v


    def seen(r, mp):
        """What report r shows of mp, or an empty view while it is not
        mounted (yet): for wait predicates, which must not raise, since an
        exception in a retry() check fails the test at once instead of
        retrying."""
        return r["views"].get(mp) or {"files": [], "write": "unmounted"}


    def status_json(user="alice"):
        out = host.succeed(f"su - {user} -c 'microvm-link status --json'")
        return {v["vm"]: v for v in json.loads(out)["vms"]}


    def stale(st, vm):
        return {s["tag"]: s["stale"] for s in st[vm]["shares"]}


    def owner_mode(path):
        return host.succeed(f"stat -c '%U:%G %a' {path}").strip()


    start_all()
    host.wait_for_unit("multi-user.target")

    with subtest("the module installs config, generator and drop-ins"):
        host.succeed("test -x /etc/systemd/system-generators/microvm-workspaces-generator")
        for unit in ["microvm@", "microvm-virtiofsd@"]:
            host.succeed(f"test -f /run/systemd/generator/{unit}.service.d/50-microvm-workspaces.conf")
            host.succeed(
                f"systemctl cat {unit}vm1.service"
                " | grep -F 'ExecStartPre=+' | grep -E '/libexec/microvm-workspaces-prepare (--serve-fallbacks )?%i'"
            )
        host.succeed("command -v microvm-link")
        cfg = json.loads(host.succeed("cat /etc/microvm-workspaces/config.json"))
        assert cfg["enable"] is True, cfg
        assert cfg["stateDir"] == "/var/lib/microvms", cfg
        assert cfg["workspaceDir"] == WS, cfg
        assert cfg["placeholder"] == {"user": "root", "group": "root", "mode": "0555"}, cfg
        assert cfg["companions"] == {"nixfiles": {"nix-secrets": "../nix-secrets"}}, cfg
        assert sorted(cfg["vms"]) == ["nixfiles", "vm1"], cfg
        assert cfg["hypervisor"] == {"user": "microvm", "group": "kvm"}, cfg
        assert sorted(cfg["vms"]["vm1"]) == ["git", "guestUid", "idmap", "shares", "sshDefault"], cfg
        # the guest keys, written although they are the defaults: the guest
        # user (dev, uid 1000) is the linker, through idmapped mounts;
        # guestGid is null, so left out (users, 100, on both sides)
        assert [cfg["vms"]["vm1"][k] for k in ["guestUid", "idmap", "git"]] == [1000, True, "private"], cfg
        # ssh.destination is not set: the module's guess (no vsock CID, so
        # the VM's name), which microvm-link waits for only briefly and never
        # fails on; these guests run no sshd
        assert cfg["vms"]["vm1"]["sshDefault"] == "vm1", cfg
        vm1_shares = {s["tag"]: s for s in cfg["vms"]["vm1"]["shares"]}
        assert sorted(vm1_shares) == [
            "hostcfg", "live-nixfiles", "live-secrets", "nixfiles", "workspace"
        ], cfg
        assert vm1_shares["workspace"] == {
            "tag": "workspace",
            "proto": "virtiofs",
            "source": f"{WS}/vm1",
            "readOnly": False,
            "mountPoint": "/workspace",
        }, cfg
        # the live shares of nixosModules.guest: live roots, mounted below
        # /run/microvm-workspaces in the guest
        for tag, entry in [("live-nixfiles", "nixfiles"), ("live-secrets", "nix-secrets")]:
            share = tag.removeprefix("live-")
            assert vm1_shares[tag] == {
                "tag": tag,
                "proto": "virtiofs",
                "source": f"{WS}/.live/{entry}",
                "readOnly": True,
                "mountPoint": f"/run/microvm-workspaces/{share}",
            }, cfg
        assert [s["source"] for s in cfg["vms"]["nixfiles"]["shares"]] == [
            f"{WS}/nixfiles",
            f"{WS}/nixfiles/hosts/microvms/nixfiles",
            f"{WS}/nix-secrets",
        ], cfg

    with subtest("share sources under the workspace dir do not exist before a VM starts"):
        assert owner_mode(WS) == "root:root 755"
        for name in ["vm1", "nixfiles", "nix-secrets"]:
            host.fail(f"test -e {WS}/{name}")

    host.succeed(
        "su - alice -c 'mkdir -p ~/vm1/.git ~/nixfiles/.git ~/nix-secrets"
        " && touch ~/vm1/README-vm1 ~/nixfiles/flake.nix ~/nix-secrets/secret.txt'"
    )

    with subtest("a VM starts with its workspace missing"):
        host.succeed("systemctl start microvm@vm1.service")
    r = wait_report(
        "vm1",
        "the guest sees read-only placeholders",
        lambda r: all(mp in r["views"] and r["views"][mp] is not None for mp in ["/workspace", "/nixfiles", "/hostcfg"]),
    )
    for mp in ["/workspace", "/nixfiles", "/hostcfg"]:
        assert view(r, mp)["write"] == "denied", r
    assert "README-vm1" not in view(r, "/workspace")["files"], r
    assert "flake.nix" not in view(r, "/nixfiles")["files"], r
    with subtest("prepare made placeholders on the host"):
        for path in [f"{WS}/vm1", f"{WS}/nixfiles", f"{WS}/nixfiles/hosts/microvms/vm1"]:
            assert owner_mode(path) == "root:root 555", path
            host.fail(f"mountpoint -q {path}")
        host.succeed("systemctl is-active microvm-virtiofsd@vm1.service")

    with subtest("a user outside linkGroup cannot link"):
        host.succeed("su - bob -c 'mkdir -p ~/vm1'")
        # stdin is not a terminal (nor is anything else here): sudo must not
        # wait for a password; `timeout` turns a hang into a failure of
        # this subtest rather than of the whole test run
        status, out = host.execute(
            "timeout 60 su - bob -c 'cd ~/vm1 && microvm-link --no-restart' </dev/null 2>&1"
        )
        assert status not in (0, 124), f"status {status}: {out}"
        host.fail(f"mountpoint -q {WS}/vm1")

    with subtest("microvm-link from a repo links the workspace and restarts the VM"):
        boot = latest("vm1")["boot"]
        # vm1 has no sshd and its name resolves nowhere: the guessed
        # destination is waited for briefly and the link still succeeds
        host.succeed("su - alice -c 'cd ~/vm1 && microvm-link'")
        host.succeed(f"mountpoint -q {WS}/vm1")
        host.succeed(f"test \"$(readlink {WS}/.links/vm1)\" = /home/alice/vm1")
    r = wait_report(
        "vm1",
        "the restarted guest sees the repo and can write to it",
        lambda r: "README-vm1" in seen(r, "/workspace")["files"] and seen(r, "/workspace")["write"] == "ok",
        other_than_boot=boot,
    )
    host.succeed("test \"$(stat -c %U /home/alice/vm1/.guest-wrote-vm1)\" = alice")
    st = status_json()
    assert st["vm1"]["running"] is True, st["vm1"]
    assert not any(stale(st, "vm1").values()), st["vm1"]

    with subtest("linking nixfiles links its companion and starts the nixfiles VM"):
        vm1_boot = latest("vm1")["boot"]
        host.succeed("su - alice -c 'cd ~/nixfiles && microvm-link'")
        vm1_after_link = latest("vm1")
        assert vm1_after_link["boot"] == vm1_boot, "microvm-link restarted vm1 without --restart-stale"
        for name in ["nixfiles", "nix-secrets"]:
            host.succeed(f"mountpoint -q {WS}/{name}")
        # vm1's share below the linked repo is made in the repo, as alice.
        host.succeed("test \"$(stat -c %U /home/alice/nixfiles/hosts/microvms/vm1)\" = alice")
    r = wait_report(
        "nixfiles",
        "the guest sees the repo read-only, its host dir writable and the companion",
        lambda r: "flake.nix" in seen(r, "/nixfiles")["files"]
        and "secret.txt" in seen(r, "/secrets")["files"]
        and seen(r, "/hostcfg")["write"] == "ok",
    )
    assert view(r, "/nixfiles")["write"] == "denied", r
    assert view(r, "/secrets")["write"] == "denied", r
    host.succeed("test -e /home/alice/nixfiles/hosts/microvms/nixfiles/.guest-wrote-nixfiles")

    # vm1's live shares follow the link while it runs: reports from the same
    # boot (wait_report's `after` insists on it) show the repo and the
    # companion through the symlinks, read-only.
    r = wait_report(
        "vm1",
        "a running VM's live shares show the new link without a restart",
        lambda r: "flake.nix" in seen(r, "/live-nixfiles")["files"]
        and "secret.txt" in seen(r, "/live-secrets")["files"],
        after={"boot": vm1_boot, "seq": vm1_after_link["seq"]},
    )
    assert view(r, "/live-nixfiles")["write"] == "denied", r
    assert view(r, "/live-secrets")["write"] == "denied", r
    host.fail("test -e /home/alice/nixfiles/.guest-wrote-vm1")

    # vm1 was started before nixfiles was linked: its virtiofsd keeps the
    # placeholders it opened, so the guest still sees them, and status says so.
    r = wait_report(
        "vm1",
        "a VM started earlier stays stale while it runs",
        lambda r: True,
        after={"boot": vm1_boot, "seq": vm1_after_link["seq"] + 1},
    )
    assert "flake.nix" not in view(r, "/nixfiles")["files"], r
    assert view(r, "/hostcfg")["write"] == "denied", r
    with subtest("microvm-link status reports the stale shares"):
        st = status_json()
        assert st["vm1"]["running"] is True, st["vm1"]
        # a live share is never stale: its source, the live root, stays the
        # directory the VM started with; only its `current` moves
        assert stale(st, "vm1") == {
            "workspace": False,
            "nixfiles": True,
            "hostcfg": True,
            "live-nixfiles": False,
            "live-secrets": False,
        }, st["vm1"]
        assert not any(stale(st, "nixfiles").values()), st["nixfiles"]

    with subtest("restarting the stale VM"):
        boot = latest("vm1")["boot"]
        host.succeed("systemctl restart microvm@vm1.service")
    r = wait_report(
        "vm1",
        "the restarted guest sees the new content and can write to it",
        lambda r: "flake.nix" in seen(r, "/nixfiles")["files"] and seen(r, "/hostcfg")["write"] == "ok",
        other_than_boot=boot,
    )
    assert "README-vm1" in view(r, "/workspace")["files"], r
    assert view(r, "/nixfiles")["write"] == "denied", r
    host.succeed("test \"$(stat -c %U /home/alice/nixfiles/hosts/microvms/vm1/.guest-wrote-vm1)\" = alice")
    st = status_json()
    assert not any(stale(st, "vm1").values()), st["vm1"]

    with subtest("unlink brings the placeholder back and keeps the repo"):
        host.succeed("su - alice -c 'microvm-link unlink vm1 --no-restart'")
        host.fail(f"mountpoint -q {WS}/vm1")
        host.fail(f"test -e {WS}/.links/vm1")
        assert owner_mode(f"{WS}/vm1") == "root:root 555"
        host.succeed("test -f /home/alice/vm1/README-vm1")
        st = status_json()
        assert stale(st, "vm1")["workspace"] is True, st["vm1"]
  '';
}
