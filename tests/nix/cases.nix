# Cases for tests/nix/check.sh: the pure helpers of nixos-module/lib.nix
# applied to hand-made inputs shaped like microvm.nix's `microvm.vms`.
#
# `values.<name>` is evaluated with `nix-instantiate --eval --strict --json`
# and compared with expected/<name>.json, which is written by hand (not
# generated from these expressions). `failures.<name>.expr` must fail to
# evaluate with an error containing `failures.<name>.message`.
let
  mw = import ../../nixos-module/lib.nix;

  ws = "/var/lib/microvm-workspaces";

  # A guest NixOS configuration, as far as the helpers look at it. Extra
  # share attributes (socket, mountPoint, ...) are what microvm.nix's share
  # submodule adds and must not reach config.json.
  guest = hostName: shares: {
    networking.hostName = hostName;
    microvm.shares = shares;
    system.stateVersion = "25.11";
  };

  # The three ways microvm.nix's host module finds a guest configuration.
  declarative = g: {
    flake = null;
    updateFlake = null;
    evaluatedConfig = null;
    # the `config` option holds an eval-config result: `.config` is the guest
    config = {
      config = g;
      options = { };
    };
    autostart = true;
  };
  evaluated = g: {
    flake = null;
    evaluatedConfig = {
      config = g;
    };
    config = null;
    autostart = false;
  };
  fromFlake = name: g: {
    flake = {
      outPath = "/nix/store/00000000000000000000000000000000-source";
      nixosConfigurations.${name}.config = g;
    };
    evaluatedConfig = null;
    config = null;
  };

  workspace = name: {
    tag = "workspace";
    proto = "virtiofs";
    source = "${ws}/${name}";
    mountPoint = "/workspace";
    socket = "${name}-virtiofs-workspace.sock";
    securityModel = "none";
    cache = "auto";
    readOnly = false;
  };
  # A live share of the VM's own entry, as a pool VM has (the guest module's way).
  liveWorkspace = name: {
    tag = "live-workspace";
    proto = "virtiofs";
    source = "${ws}/.live/${name}";
    mountPoint = "/run/microvm-workspaces/workspace";
    readOnly = false;
  };
in
{
  values = {
    collect-declarative = mw.collectVms {
      dev = declarative (guest "dev-box" [
        (workspace "dev")
        {
          tag = "store";
          proto = "virtiofs";
          source = "/nix/store";
          mountPoint = "/nix/.ro-store";
          readOnly = true;
        }
        # 9p share leaving proto and readOnly to microvm.nix's defaults
        {
          tag = "data";
          source = "data";
          mountPoint = "/data";
        }
      ]);
    };

    collect-evaluated = mw.collectVms {
      builder = evaluated (guest "builder" [
        {
          tag = "nixfiles";
          proto = "9p";
          source = "${ws}/nixfiles";
          readOnly = true;
          securityModel = "mapped";
        }
      ]);
    };

    collect-flake = mw.collectVms {
      web = fromFlake "web" (guest "web" [ (workspace "web") ]);
    };

    # One of each, a VM without a guest configuration (left out) and a VM
    # without shares; no hostName is collected, whatever the guest sets.
    collect-mixed = mw.collectVms {
      a = declarative (guest "" [ (workspace "a") ]);
      b = evaluated (guest "b-host" [ ]);
      c = fromFlake "c" (guest "c" [
        # no mountPoint: none in config.json
        {
          tag = "host";
          proto = "virtiofs";
          source = "${ws}/nixfiles/hosts/microvms/c";
          readOnly = false;
        }
      ]);
      d = {
        flake = null;
        evaluatedConfig = null;
        config = null;
      };
    };

    # flake wins over evaluatedConfig, which wins over config.
    guest-precedence = map (vm: (mw.guestConfigOf "x" vm).networking.hostName) [
      {
        flake.nixosConfigurations.x.config = guest "from-flake" [ ];
        evaluatedConfig.config = guest "from-evaluated" [ ];
        config.config = guest "from-config" [ ];
      }
      {
        flake = null;
        evaluatedConfig.config = guest "from-evaluated" [ ];
        config.config = guest "from-config" [ ];
      }
      {
        flake = null;
        evaluatedConfig = null;
        config.config = guest "from-config" [ ];
      }
    ];

    # A config like the example of docs/reference/config.md#config, built the way the module does.
    mk-config = mw.mkConfig {
      stateDir = "/var/lib/microvms";
      workspaceDir = ws;
      placeholder = {
        user = "root";
        group = "root";
        mode = "0555";
      };
      vms = mw.collectVms {
        testvm = declarative (guest "testvm" [ (workspace "testvm") ]);
      };
      companions = {
        nixfiles = {
          nix-secrets = "../nix-secrets";
        };
      };
    };

    tmpfiles-masks = mw.tmpfilesMasks {
      workspaceDir = ws;
      vms = mw.collectVms {
        one = declarative (guest "one" [
          (workspace "one")
          {
            tag = "hosts";
            proto = "virtiofs";
            source = "${ws}/nixfiles/hosts/microvms/one";
          }
          {
            tag = "store";
            proto = "virtiofs";
            source = "/nix/store";
          }
          {
            tag = "state";
            proto = "virtiofs";
            source = "/var/lib/microvms/one/state";
          }
          {
            tag = "rel";
            source = "relative/dir";
          }
        ]);
        two = evaluated (guest "two" [
          (workspace "one")
          {
            tag = "all";
            proto = "virtiofs";
            source = ws;
          }
          {
            tag = "lookalike";
            proto = "virtiofs";
            source = "${ws}-old/two";
          }
        ]);
      };
    };

    octal-modes = map (m: [
      m
      (mw.isOctalMode m)
    ]) [ "0555" "755" "2775" "0558" "55" "05555" "" "u+rx" ];

    group-names = map (g: [
      g
      (mw.isGroupName g)
    ]) [ "microvm-link" "_dev" "wheel" "host$" "9group" "a b" "a,b" "" "abcdefghijklmnopqrstuvwxyz0123456" ];

    absolute-paths = map (p: [
      p
      (mw.isAbsolutePath p)
    ]) [ "/var/lib/microvm-workspaces" "/srv/ws" "/" "relative" "/var/lib/" "/var//lib" "/var/./lib" "/var/../etc" "/var/.hidden" "/a\nb" ];

    relative-paths = map (p: [
      p
      (mw.isRelativePath p)
    ]) [ "../nix-secrets" "." "sub/dir" "/abs" "" "a\nb" ];

    entry-names = map (n: [
      n
      (mw.isEntryName n)
    ]) [ "nix-secrets" "vm 1" "a.b" ".links" "a/b" "" "tab\there" ];

    is-under = map (p: [
      p
      (mw.isUnder ws p)
    ]) [ ws "${ws}/x" "${ws}/x/y" "${ws}-old/x" "/var/lib" ];

    # A pool in config.json: written only when there is one (the mk-config case has none).
    mk-config-pools = mw.mkConfig {
      stateDir = "/var/lib/microvms";
      workspaceDir = ws;
      placeholder = {
        user = "root";
        group = "root";
        mode = "0555";
      };
      vms = mw.collectVms {
        a1 = declarative (guest "a1" [ (liveWorkspace "a1") ]);
      };
      companions = { };
      pools.agents = [ "a1" ];
    };

    pool-names = map mw.isPoolName [
      "agents"
      "_x"
      "9lives"
      "ci.fast-2"
      "${builtins.concatStringsSep "" (builtins.genList (_: "p") 64)}"
      ""
      "-x"
      ".x"
      "a b"
      "a/b"
      "${builtins.concatStringsSep "" (builtins.genList (_: "p") 65)}"
    ];

    normalized-paths = map mw.normalizePath [
      "/var/lib/microvms/a2/../../microvm-workspaces/.live/a2"
      "/a/./b//c/"
      "/../x"
    ];

    # Every refusal of Config::validate_pools, named by option; a1 and a2 are fine (a2's
    # live share is relative to its state dir, as microvm.nix allows).
    pool-problems = mw.poolProblems {
      workspaceDir = ws;
      stateDir = "/var/lib/microvms";
      vms = mw.collectVms {
        a1 = declarative (guest "a1" [ (liveWorkspace "a1") ]);
        a2 = declarative (guest "a2" [
          ((liveWorkspace "a2") // { source = "../../microvm-workspaces/.live/a2"; })
        ]);
        pinned = declarative (guest "pinned" [ (workspace "pinned") ]);
      };
      pools = {
        agents = [
          "a1"
          "a2"
          "a1"
        ];
        ci = [
          "a2"
          "ghost"
          "pinned"
        ];
        empty = [ ];
        "-bad" = [ ];
      };
    };

    no-pool-problems = mw.poolProblems {
      workspaceDir = ws;
      stateDir = "/var/lib/microvms";
      vms = mw.collectVms {
        a1 = declarative (guest "a1" [ (liveWorkspace "a1") ]);
      };
      pools.agents = [ "a1" ];
    };

    escape-sudoers = map mw.escapeSudoersCommand [
      "/nix/store/abc-microvm-workspaces-0.1.0/bin/microvm-link"
      "/opt/a b/c,d:e=f\\g"
    ];

    vm-problems = mw.vmProblems (mw.collectVms {
      good = declarative (guest "good" [ (workspace "good") ]);
      ".hidden" = declarative (guest "hidden" [
        {
          tag = "a/b";
          proto = "virtiofs";
          source = "";
        }
      ]);
    });

    companion-problems = mw.companionProblems {
      nixfiles = {
        nix-secrets = "../nix-secrets";
        ".links" = "links";
        abs = "/etc/secrets";
      };
      "a/b" = { };
    };

    companion-clashes = mw.companionClashes {
      companions = {
        nixfiles = {
          nix-secrets = "../nix-secrets";
          shared = "../shared";
        };
        other = {
          shared = "../shared";
        };
      };
      vmNames = [
        "nixfiles"
        "other"
        "nix-secrets"
      ];
    };

    no-companion-clashes = mw.companionClashes {
      companions = {
        nixfiles = {
          nix-secrets = "../nix-secrets";
        };
      };
      vmNames = [
        "nixfiles"
        "vm1"
      ];
    };
    group-members =
      let
        members = mw.groupMembers {
          users = {
            alice = {
              group = "users";
              extraGroups = [
                "wheel"
                "microvm-link"
              ];
            };
            bob.group = "microvm-link";
            carol.extraGroups = [ ];
            root = { };
          };
          groups = {
            microvm-link.members = [
              "dave"
              "alice"
            ];
            wheel = { };
          };
        };
      in
      map members [
        "microvm-link"
        "wheel"
        "nogroup"
      ];

    unmasked-tmpfiles = mw.unmaskedTmpfiles {
      settings = {
        # masked by the module (mkForce { }), microvm.nix's own state dir kept
        "10-microvm" = {
          "${ws}/vm1" = { };
          "/var/lib/microvms".d.mode = "0775";
        };
        # a renamed key, as a newer microvm.nix might write it
        "20-microvm-shares" = {
          "${ws}/vm1".d.mode = ":0775";
          "rel/dir".d.mode = ":0775";
          "/srv/other".d.mode = ":0775";
        };
        # the module's own line for the workspace dir itself
        "10-microvm-workspaces".${ws}.d.mode = "0755";
      };
      masks = [
        ws
        "${ws}/vm1"
        "rel/dir"
      ];
      ownKey = "10-microvm-workspaces";
    };

    # Each scenario changes one thing of `base`; the value is the first word
    # of each warning (the option it is about), in order.
    warnings =
      let
        base = {
          linkGroup = "microvm-link";
          sudo = {
            enable = true;
            execWheelOnly = false;
          };
          sudoRs = null;
          linkGroupMembers = [ "alice" ];
          wheelMembers = [ "alice" ];
          companions.nixfiles.nix-secrets = "../nix-secrets";
          vmNames = [
            "nixfiles"
            "vm1"
          ];
          placeholder = {
            user = "root";
            group = "root";
          };
          userNames = [
            "alice"
            "root"
          ];
          groupNames = [
            "root"
            "wheel"
          ];
          workspaceDir = ws;
          stateDir = "/var/lib/microvms";
          unmasked = [ ];
        };
        firstWords = args: map (m: builtins.head (builtins.match "([^ ]*) .*" m)) (mw.moduleWarnings (base // args));
        wheelOnly = {
          enable = true;
          execWheelOnly = true;
        };
      in
      builtins.mapAttrs (_: firstWords) {
        clean = { };
        no-sudo.sudo.enable = false;
        no-sudo-module = {
          sudo = null;
        };
        sudo-rs-only = {
          sudo.enable = false;
          sudoRs = {
            enable = true;
            execWheelOnly = false;
          };
        };
        no-link-group = {
          linkGroup = null;
          sudo.enable = false;
        };
        wheel-only = {
          sudo = wheelOnly;
          linkGroupMembers = [
            "alice"
            "bob"
            "carol"
          ];
        };
        wheel-only-all-in-wheel = {
          sudo = wheelOnly;
        };
        wheel-only-no-members = {
          sudo = wheelOnly;
          linkGroupMembers = [ ];
        };
        wheel-only-group-is-wheel = {
          sudo = wheelOnly;
          linkGroup = "wheel";
          linkGroupMembers = [ "bob" ];
        };
        sudo-rs-wheel-only = {
          sudo.enable = false;
          sudoRs = wheelOnly;
          linkGroupMembers = [ "bob" ];
          wheelMembers = [ ];
        };
        companion-owner-unknown = {
          companions.ghost.x = "../x";
        };
        placeholder-unknown = {
          placeholder = {
            user = "microvm";
            group = "kvm";
          };
        };
        placeholder-numeric = {
          placeholder = {
            user = "1000";
            group = "100";
          };
        };
        placeholder-known = {
          placeholder = {
            user = "alice";
            group = "wheel";
          };
        };
        workspace-is-state-dir = {
          workspaceDir = "/var/lib/microvms";
        };
        workspace-in-state-dir = {
          workspaceDir = "/var/lib/microvms/ws";
        };
        state-dir-lookalike = {
          workspaceDir = "/var/lib/microvms-ws";
        };
        unmasked-line = {
          unmasked = [
            {
              key = "20-x";
              path = "${ws}/vm1";
            }
          ];
        };
      };

    # What the warnings name: the members outside wheel, the key and path
    # of an unmasked line (true when the message contains the text).
    warning-details =
      let
        contains = text: m: builtins.match ".*${text}.*" m != null;
        one =
          args:
          builtins.head (
            mw.moduleWarnings (
              {
                linkGroup = "microvm-link";
                sudo = {
                  enable = true;
                  execWheelOnly = false;
                };
                sudoRs = null;
                linkGroupMembers = [ ];
                wheelMembers = [ ];
                companions = { };
                vmNames = [ ];
                placeholder = {
                  user = "root";
                  group = "root";
                };
                userNames = [ ];
                groupNames = [ ];
                workspaceDir = ws;
                stateDir = "/var/lib/microvms";
                unmasked = [ ];
              }
              // args
            )
          );
      in
      [
        (contains "cannot run microvm-link: bob, carol[.]" (one {
          sudo = {
            enable = true;
            execWheelOnly = true;
          };
          linkGroupMembers = [
            "alice"
            "bob"
            "carol"
          ];
          wheelMembers = [ "alice" ];
        }))
        (contains "settings[.]\"20-x\"[.]\"/var/lib/microvm-workspaces/vm1\" = lib[.]mkForce" (one {
          unmasked = [
            {
              key = "20-x";
              path = "${ws}/vm1";
            }
          ];
        }))
      ];

    # ---- live shares (nixos-module/guest.nix) ----

    # Tags: "live-<name>" up to 36 bytes; longer names are cut to 22 bytes
    # and get 8 hex digits of their SHA-256 (computed with sha256sum).
    live-tags = map mw.liveTag [
      "nixfiles"
      "abcdefghijklmnopqrstuvwxyz01234" # 31 bytes: "live-" + it is 36
      "abcdefghijklmnopqrstuvwxyz0123456789"
      "abcdefghijklmnopqrstuvwxyz0123456789-other"
    ];

    # Every tag fits virtiofs' 36 bytes, and the names give distinct tags.
    live-tag-limits =
      let
        names = [
          "a"
          "nixfiles"
          "abcdefghijklmnopqrstuvwxyz01234"
          "abcdefghijklmnopqrstuvwxyz012345"
          "abcdefghijklmnopqrstuvwxyz0123456789"
          "abcdefghijklmnopqrstuvwxyz0123456789-other"
          "abcdefghijklmnopqrstuvwxyz0123456789-other2"
          (builtins.concatStringsSep "" (builtins.genList (_: "x") 200))
        ];
        tags = map mw.liveTag names;
      in
      {
        longest = builtins.foldl' (m: t: if builtins.stringLength t > m then builtins.stringLength t else m) 0 tags;
        distinct = builtins.length (builtins.attrNames (builtins.listToAttrs (map (t: {
          name = t;
          value = true;
        }) tags)));
        names = builtins.length names;
      };

    live-roots = [
      (mw.liveRoot {
        workspaceDir = ws;
        entry = "nixfiles";
      })
      (mw.liveRoot {
        workspaceDir = ws;
        entry = "nixfiles";
        path = "hosts/microvms/vm1";
      })
      (mw.liveRoot {
        workspaceDir = "/srv/ws";
        entry = "nix-secrets";
        path = "";
      })
    ];

    # What the guest module adds to microvm.shares, and its symlinks.
    live-microvm-shares = mw.liveMicrovmShares {
      workspaceDir = ws;
      shares = {
        nixfiles = {
          entry = "nixfiles";
          path = "";
          mountPoint = "/nixfiles";
          readOnly = true;
        };
        hostcfg = {
          entry = "nixfiles";
          path = "hosts/microvms/dev";
          mountPoint = "/etc/hostcfg";
          readOnly = false;
        };
      };
    };

    live-symlinks = mw.liveSymlinks {
      nixfiles = {
        entry = "nixfiles";
        mountPoint = "/nixfiles";
      };
      hostcfg = {
        entry = "nixfiles";
        path = "hosts/microvms/dev";
        mountPoint = "/etc/hostcfg";
      };
    };

    # The host collects live shares like any other: source under .live,
    # mount point under /run/microvm-workspaces.
    collect-live = mw.collectVms {
      dev = declarative (guest "dev" (
        [ (workspace "dev") ]
        ++ mw.liveMicrovmShares {
          workspaceDir = ws;
          shares.nixfiles = {
            entry = "nixfiles";
            path = "hosts";
            mountPoint = "/nixfiles";
            readOnly = true;
          };
        }
      ));
    };

    # The first word (the option) of each refusal, per share.
    live-share-problems =
      let
        firstWords = name: share: map (m: builtins.head (builtins.match "([^ ]*) .*" m)) (mw.liveShareProblems name share);
        ok = {
          entry = "nixfiles";
          path = "";
          mountPoint = "/nixfiles";
        };
      in
      builtins.mapAttrs (name: firstWords name) {
        good = ok;
        good-path = ok // {
          path = "hosts/microvms/dev";
        };
        "bad/name" = ok;
        ".hidden" = ok;
        bad-entry = ok // {
          entry = ".links";
        };
        bad-entry-slash = ok // {
          entry = "a/b";
        };
        absolute-path = ok // {
          path = "/etc";
        };
        current = ok // {
          path = "current";
        };
        current-deeper = ok // {
          path = "hosts/current/x";
        };
        dot = ok // {
          path = "./hosts";
        };
        dotdot = ok // {
          path = "../nix-secrets";
        };
        empty-component = ok // {
          path = "hosts//x";
        };
        trailing-slash = ok // {
          path = "hosts/";
        };
        relative-mount = ok // {
          mountPoint = "nixfiles";
        };
        spaced-mount = ok // {
          mountPoint = "/my files";
        };
        quoted-mount = ok // {
          mountPoint = "/it's";
        };
        mount-in-live-dir = ok // {
          mountPoint = "/run/microvm-workspaces/x";
        };
        mount-around-live-dir = ok // {
          mountPoint = "/run";
        };
        several = {
          entry = "";
          path = "../current";
          mountPoint = "rel";
        };
      };

    # The reason each refusal gives (true when the message says it).
    live-share-reasons =
      let
        says = text: share: builtins.any (m: builtins.match ".*${text}.*" m != null) (mw.liveShareProblems "x" share);
        ok = {
          entry = "nixfiles";
          path = "";
          mountPoint = "/nixfiles";
        };
      in
      [
        (says "\"current\": that name is reserved" (ok // { path = "a/current"; }))
        (says "component \"[.][.]\"" (ok // { path = "../x"; }))
        (says "component \"[.]\"" (ok // { path = "a/."; }))
        (says "is absolute" (ok // { path = "/x"; }))
        (says "not a workspace entry name" (ok // { entry = ".live"; }))
        (says "white space, a quote or a backslash" (ok // { mountPoint = "/a\\b"; }))
      ];

    # Tags and mount points that clash, given the guest's whole
    # microvm.shares (the module's own included): the first word of each.
    # A live share's symlink against the guest's file systems: one mounted
    # at the mountPoint or below it is refused (tmpfiles would leave the
    # mount point alone, and the data under it); "/" and file systems
    # beside it are fine; a share's own mount (in fileSystems too, as
    # microvm.nix adds it) is reported once, as the share.
    live-clashes-filesystems =
      let
        firstWords = ms: map (m: builtins.head (builtins.match "([^ ]*) .*" m)) ms;
        shares = {
          a = {
            entry = "nixfiles";
            mountPoint = "/data";
          };
        };
        run =
          fileSystems:
          firstWords (mw.liveClashes {
            inherit shares fileSystems;
            allShares = mw.liveMicrovmShares {
              workspaceDir = ws;
              inherit shares;
            };
          });
      in
      {
        beside = run [
          "/"
          "/nix/store"
          "/run/microvm-workspaces/a"
          "/datastore"
        ];
        on = run [
          "/"
          "/data"
        ];
        below = run [ "/data/cache" ];
      };

    live-clashes =
      let
        firstWords = ms: map (m: builtins.head (builtins.match "([^ ]*) .*" m)) ms;
        run =
          shares: others:
          firstWords (mw.liveClashes {
            inherit shares;
            allShares = others ++ mw.liveMicrovmShares {
              workspaceDir = ws;
              inherit shares;
            };
          });
        live = mountPoint: {
          entry = "nixfiles";
          inherit mountPoint;
        };
      in
      {
        clean = run {
          a = live "/a";
          b = live "/b";
        } [ (workspace "dev") ];
        tag-taken = run { nixfiles = live "/nixfiles"; } [
          {
            tag = "live-nixfiles";
            source = "/srv";
            mountPoint = "/srv";
          }
        ];
        # a 31-byte name whose tag looks like a shortened one's
        long-names =
          run {
            "abcdefghijklmnopqrstuvwxyz0123456789" = live "/long";
            "abcdefghijklmnopqrstuv-011fc299" = live "/short";
          } [ ];
        same-mount-point = run {
          a = live "/same";
          b = live "/same";
        } [ ];
        on-a-share = run { a = live "/workspace"; } [ (workspace "dev") ];
        inside-a-share = run { a = live "/workspace/live"; } [ (workspace "dev") ];
        around-a-share = run { a = live "/nix"; } [
          {
            tag = "store";
            source = "/nix/store";
            mountPoint = "/nix/.ro-store";
          }
        ];
        inside-another = run {
          a = live "/live";
          b = live "/live/b";
        } [ ];
      };

    # A guest told another workspaceDir than the host's.
    guest-workspace-problems =
      let
        withLive = workspaceDir: shares: (guest "g" [ ]) // {
          services.microvm-workspaces.guest = { inherit workspaceDir shares; };
        };
        one.x = {
          entry = "nixfiles";
          mountPoint = "/x";
        };
      in
      map (m: builtins.head (builtins.match "([^ ]*) .*" m)) (mw.guestWorkspaceProblems {
        workspaceDir = ws;
        microvmVms = {
          same = declarative (withLive ws one);
          other = evaluated (withLive "/srv/ws" one);
          other-unused = declarative (withLive "/srv/ws" { });
          plain = declarative (guest "plain" [ ]);
          none = {
            flake = null;
            evaluatedConfig = null;
            config = null;
          };
        };
      });

    # ---- SSH destinations ----

    ssh-destinations = map (t: mw.sshDestination t "vm1") [
      "%n"
      "root@%n"
      "ssh://dev@%n.vm.internal:2222"
      "%n-%n"
      "100%%"
      "%%n"
      "static"
    ];

    ssh-destination-problems = map (d: [
      d
      (mw.sshDestinationProblem d)
    ]) ([
      "vm1"
      "root@vm1"
      "ssh://root@[fe80::1%25eth0]:22"
      "-oProxyCommand=x"
      ""
      "vm 1"
      "vm1\n"
      "a\tb"
    ]
    # no-break space, NEL (a C1 control), ideographic space, and "é" (fine)
    ++ map builtins.fromJSON [ "\"a\\u00a0b\"" "\"a\\u0085b\"" "\"a\\u3000b\"" "\"caf\\u00e9\"" ]);

    with-ssh = mw.withSsh {
      template = "root@%n";
      perVm = {
        b = "ssh://root@10.0.0.5:2222";
        c = null;
        imperative = "imp";
      };
      vms = {
        a.shares = [ ];
        b.shares = [ ];
        c.shares = [ ];
      };
    };

    with-ssh-none = mw.withSsh {
      template = null;
      perVm.b = "b.example";
      vms = {
        a.shares = [ ];
        b.shares = [ ];
      };
    };

    # ssh.destination left at its default: the module guesses, under
    # sshDefault (never `ssh`, which microvm-link fails on): the vsock guess,
    # else the name; perVm stays `ssh`; a guess ssh would refuse is left out.
    with-ssh-guessed = mw.withSsh {
      template = "%n";
      explicit = false;
      perVm = {
        b = "ssh://root@10.0.0.5:2222";
        c = null;
      };
      guesses = {
        a = "vsock/3";
        d = "d";
      };
      vms = {
        a.shares = [ ];
        b.shares = [ ];
        c.shares = [ ];
        d.shares = [ ];
        # no guess (an imperative VM): the template's name
        e.shares = [ ];
        "-x".shares = [ ];
      };
    };

    # ssh.destination = "%n" written by the user: the same text as the
    # default, but chosen, so `ssh`.
    with-ssh-explicit-default = mw.withSsh {
      template = "%n";
      explicit = true;
      perVm = { };
      guesses.a = "vsock/3";
      vms.a.shares = [ ];
    };

    # The guesses from guest configurations: vsock/<cid> only where the
    # hypervisor reaches the CID as AF_VSOCK (qemu is microvm.nix's default).
    ssh-guesses =
      let
        withVsock =
          hypervisor: cid:
          declarative (
            guest "x" [ ]
            // {
              microvm = {
                shares = [ ];
                vsock.cid = cid;
              }
              // (if hypervisor == null then { } else { inherit hypervisor; });
            }
          );
      in
      mw.sshGuesses {
        qemu = withVsock "qemu" 3;
        default-hypervisor = withVsock null 4;
        crosvm = withVsock "crosvm" 5;
        kvmtool = withVsock "kvmtool" 6;
        cloud-hypervisor = withVsock "cloud-hypervisor" 7;
        firecracker = withVsock "firecracker" 8;
        no-cid = withVsock "qemu" null;
        plain = declarative (guest "plain" [ ]);
        imperative = {
          flake = null;
          evaluatedConfig = null;
          config = null;
        };
      };

    # The host's ssh client must know vsock/<cid>: no warning when the proxy
    # is on or no VM uses vsock; one line (first words) otherwise.
    vsock-proxy-warnings =
      let
        vms = {
          a.sshDefault = "vsock/3";
          b.ssh = "vsock/4";
          c.ssh = "c";
        };
        firstWords = ws: map (w: builtins.head (builtins.match "([^:]*):.*" w)) ws;
      in
      {
        on = mw.vsockProxyWarnings {
          inherit vms;
          proxy = true;
        };
        off = firstWords (mw.vsockProxyWarnings {
          inherit vms;
          proxy = false;
        });
        missing = builtins.length (mw.vsockProxyWarnings {
          inherit vms;
          proxy = null;
        });
        no-vsock = mw.vsockProxyWarnings {
          vms.c.ssh = "c";
          proxy = false;
        };
      };

    # The first word (the option) of each problem.
    ssh-problems =
      let
        firstWords = args: map (m: builtins.head (builtins.match "([^ ]*) .*" m)) (mw.sshProblems args);
        vmNames = [
          "vm1"
          "-evil"
          "vm 2"
        ];
      in
      {
        default = firstWords {
          template = "%n";
          perVm = { };
          inherit vmNames;
        };
        # the template's default guesses: a bad guess is left out, not refused
        guessed = firstWords {
          template = "%n";
          explicit = false;
          perVm = { };
          inherit vmNames;
        };
        overridden = firstWords {
          template = "%n";
          perVm = {
            "-evil" = "evil.example";
            "vm 2" = null;
          };
          inherit vmNames;
        };
        bad-per-vm = firstWords {
          template = null;
          perVm.vm1 = "-p 22 vm1";
          inherit vmNames;
        };
        unknown-token = firstWords {
          template = "%h";
          perVm = { };
          vmNames = [ "vm1" ];
        };
        literal-percent = firstWords {
          template = "%n%%";
          perVm = { };
          vmNames = [ "vm1" ];
        };
      };

    ssh-warnings = mw.sshWarnings {
      perVm = {
        vm1 = "vm1";
        imperative = "imp";
      };
      vmNames = [ "vm1" ];
    };

    # guestUid, idmap and git on every VM, written even when they are the
    # defaults (a VM not in settings, and a key its settings lack); guestGid
    # only where it is set, a null one (the option's default) left out;
    # other keys of an entry stay; a name only in settings (an imperative
    # VM) gets an entry with no shares.
    with-guest = mw.withGuest {
      settings = {
        b = {
          guestUid = 1001;
          guestGid = 1001;
          idmap = false;
          git = "shared";
        };
        c.git = "readonly";
        imperative = {
          guestUid = 2000;
          guestGid = null;
          idmap = true;
          git = "private";
        };
      };
      vms = {
        a = {
          shares = [ ];
          sshDefault = "vsock/3";
        };
        b.shares = [
          {
            tag = "workspace";
            proto = "virtiofs";
            source = "${ws}/b";
            readOnly = false;
            mountPoint = "/workspace";
          }
        ];
        c = {
          shares = [ ];
          ssh = "c.example";
        };
      };
    };

    # The defaults are src/model/config.rs's, and git's values its GitMode's.
    guest-defaults = {
      inherit (mw) guestDefaults gitModes;
    };

    guest-warnings = mw.guestWarnings {
      settings = {
        vm1.git = "readonly";
        "imperative vm".guestUid = 1001;
      };
      vmNames = [ "vm1" ];
    };
  };

  failures = {
    escape-sudoers-newline = {
      expr = mw.escapeSudoersCommand "/bin/microvm-link\nALL ALL=(ALL) ALL";
      message = "contains a control character";
    };
    # A flake VM whose flake has no nixosConfigurations.<name> is an error,
    # as in microvm.nix, not a VM silently left out of config.json.
    flake-without-configuration = {
      expr = mw.collectVms { nope = fromFlake "other" (guest "other" [ ]); };
      message = "nope";
    };
  };
}
