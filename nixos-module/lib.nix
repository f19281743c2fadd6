# Pure helpers of the microvm-workspaces NixOS module.
#
# Only builtins are used (nothing from nixpkgs' lib), and nothing newer than
# Nix 2.8 offers, so that tests/nix/check.sh can evaluate every function here
# with a bare `nix-instantiate --eval`, on machines without nixpkgs.
#
# The checks below mirror what the Rust config parser (src/model/config.rs) rejects,
# so that a config.json it would refuse is caught while evaluating the host,
# with the option name in the message, instead of at the next VM start.
let
  inherit (builtins)
    attrNames
    concatMap
    filter
    foldl'
    head
    isString
    length
    listToAttrs
    match
    replaceStrings
    stringLength
    substring
    ;

  matches = regex: s: isString s && match regex s != null;

  hasControlChar = s: match "[^[:cntrl:]]*" s == null;

  # Keep the first occurrence of each element, in order.
  unique = foldl' (acc: x: if builtins.elem x acc then acc else acc ++ [ x ]) [ ];

  quote = builtins.toJSON;

  # An attribute name as it would be written in an option path: bare when it
  # is an identifier, quoted otherwise (microvm.vms.vm1, microvm.vms.".x").
  showAttr = n: if match "[A-Za-z_][A-Za-z0-9_'-]*" n != null then n else quote n;
in
rec {
  # Octal file mode, as in tmpfiles.d: three digits, or four with the
  # special bits ("0555", "755", "2775").
  octalModeRegex = "[0-7]{3,4}";

  # A group name sudoers and shadow-utils accept: starts with a letter or
  # underscore, at most 32 characters, an optional trailing "$".
  groupNameRegex = "[A-Za-z_][A-Za-z0-9_.-]{0,30}[$]?";

  isOctalMode = matches octalModeRegex;

  isGroupName = s: matches groupNameRegex s && stringLength s <= 32;

  # An absolute path without empty, "." or ".." components and without a
  # trailing slash, such as "/var/lib/microvm-workspaces".
  isAbsolutePath =
    p:
    matches "(/[^/]+)+" p
    && !hasControlChar p
    && match "(.*/)?[.][.]?(/.*)?" p == null;

  # A non-empty path that does not start with "/": companion paths are
  # relative to the linked repository (they may go up, as "../nix-secrets").
  isRelativePath = p: isString p && p != "" && substring 0 1 p != "/" && !hasControlChar p;

  # A name that may become one entry of the workspace dir: the rules of
  # `check_name` in src/fs/paths.rs (".links" and ".displaced" are reserved).
  isEntryName =
    s:
    isString s
    && s != ""
    && substring 0 1 s != "."
    && match ".*/.*" s == null
    && !hasControlChar s
    && stringLength s <= 200;

  # `path` is `dir` or lies beneath it (string prefix on whole components).
  isUnder =
    dir: path:
    path == dir || substring 0 (stringLength dir + 1) path == dir + "/";

  # Escape a command path for a sudoers Cmnd_Spec: sudoers(5) requires a
  # backslash before ",", ":", "=", "\" and white space in a command.
  escapeSudoersCommand =
    s:
    if hasControlChar s then
      throw "microvm-workspaces: command path ${quote s} contains a control character and cannot go into sudoers"
    else
      replaceStrings [ "\\" "," ":" "=" " " ] [ "\\\\" "\\," "\\:" "\\=" "\\ " ] s;

  # The evaluated NixOS configuration of the guest behind one entry of
  # microvm.nix's `microvm.vms`, looked up the way microvm.nix's host module
  # does: a flake VM takes nixosConfigurations.<name> of its flake, then an
  # `evaluatedConfig`, then the `config` option (an eval-config result, whose
  # `.config` is the guest configuration). null when the entry has none of
  # them (microvm.nix itself refuses such an entry).
  guestConfigOf =
    name: vm:
    if (vm.flake or null) != null then
      vm.flake.nixosConfigurations.${name}.config
    else if (vm.evaluatedConfig or null) != null then
      vm.evaluatedConfig.config
    else if (vm.config or null) != null then
      vm.config.config
    else
      null;

  # One share as config.json lists it: tag, proto, source, readOnly, and
  # mountPoint (where the guest mounts it, for `microvm-link shell`) when the
  # share has one. The fallbacks are microvm.nix's option defaults (proto
  # "9p", read-write). A path-literal mount point is taken as its string.
  shareEntry =
    share:
    {
      inherit (share) tag source;
      proto = share.proto or "9p";
      readOnly = share.readOnly or false;
    }
    // (
      if isString (share.mountPoint or null) || builtins.isPath (share.mountPoint or null) then
        { mountPoint = toString share.mountPoint; }
      else
        { }
    );

  # config.json's entry for one guest: its shares. (No hostName: config.json
  # may carry one, but nothing reads it, and collecting it only forced every
  # guest's networking.hostName.)
  vmEntry = _name: guest: {
    shares = map shareEntry (guest.microvm.shares or [ ]);
  };

  # `vms` of config.json from microvm.nix's `microvm.vms`: every declarative,
  # evaluatedConfig and flake VM, with all of its shares (virtiofs and 9p,
  # /nix/store included: prepare never touches an existing source).
  collectVms =
    microvmVms:
    let
      withGuest = filter (n: guestConfigOf n microvmVms.${n} != null) (attrNames microvmVms);
    in
    listToAttrs (
      map (n: {
        name = n;
        value = vmEntry n (guestConfigOf n microvmVms.${n});
      }) withGuest
    );

  # The user and group microvm.nix's host module runs every VM's hypervisor
  # (microvm@<vm>.service) as. They are not options: microvm.nix's
  # nixos-modules/host/default.nix fixes them in a `let` (user = "microvm";
  # group = "kvm"; read at 71beea0, 2026-08). The guest's `microvm.user` is
  # something else: the user a runner started by hand as root switches to.
  hypervisorIds = {
    user = "microvm";
    group = "kvm";
  };

  # The whole of config.json.
  mkConfig =
    {
      stateDir,
      workspaceDir,
      placeholder,
      vms,
      companions,
      hypervisor ? hypervisorIds,
      pools ? { },
    }:
    {
      enable = true;
      stateDir = toString stateDir;
      workspaceDir = toString workspaceDir;
      placeholder = {
        inherit (placeholder) user group mode;
      };
      hypervisor = {
        inherit (hypervisor) user group;
      };
      inherit vms companions;
    }
    # Only when there are pools: a config.json without them stays readable by a package of
    # before pools (config.json's unknown keys are errors).
    // (if pools == { } then { } else { inherit pools; });

  # Share sources for which microvm.nix's host module writes tmpfiles lines
  # that must go: those under the workspace dir (prepare creates them at VM
  # start, as placeholders or inside a linked repo; a directory made at boot
  # as microvm:kvm 0775 would be mistaken for a user's directory) and the
  # relative ones (tmpfiles rejects relative paths; prepare resolves them
  # against <stateDir>/<vm>). Sorted, without duplicates.
  tmpfilesMasks =
    { workspaceDir, vms }:
    let
      sources = concatMap (vm: map (s: s.source) vms.${vm}.shares) (attrNames vms);
      masked = filter (
        src: src != "/nix/store" && (substring 0 1 src != "/" || isUnder workspaceDir src)
      ) sources;
    in
    attrNames (
      listToAttrs (
        map (src: {
          name = src;
          value = true;
        }) masked
      )
    );

  # The shell filter the VM test (test.nix) puts after `journalctl -o cat`
  # to pick the guests' report lines out of a unit's journal: the last 20
  # `MVW vm=... END` lines, and nothing, successfully, before the first one.
  # The test driver runs commands under `set -euo pipefail`, where a bare
  # grep that finds nothing fails the whole pipeline; here only grep's "no
  # match" (exit 1) is forgiven, not its errors (exit 2).
  guestReportFilter = "{ grep -a -o 'MVW vm=.* END' || [ $? -eq 1 ]; } | tail -n 20";

  # Names of the users in group `group`: its `members` in users.groups and
  # every user in users.users whose `group` or `extraGroups` name it. Sorted,
  # without duplicates.
  groupMembers =
    {
      users,
      groups,
    }:
    group:
    let
      viaUsers = filter (
        u: (users.${u}.group or null) == group || builtins.elem group (users.${u}.extraGroups or [ ])
      ) (attrNames users);
      viaGroup = (groups.${group} or { }).members or [ ];
    in
    attrNames (
      listToAttrs (
        map (u: {
          name = u;
          value = true;
        }) (viaUsers ++ viaGroup)
      )
    );

  # Entries of the merged `systemd.tmpfiles.settings` that write lines for a
  # path in `masks` (the share sources microvm-workspaces creates at VM start,
  # see tmpfilesMasks) under any key other than `ownKey`: lines the module's
  # masking missed, e.g. because microvm.nix renamed its key. A list of
  # { key; path; }, sorted by key, then path.
  unmaskedTmpfiles =
    {
      settings,
      masks,
      ownKey,
    }:
    concatMap (
      key:
      map (path: { inherit key path; }) (
        filter (path: (settings.${key}.${path} or { }) != { }) masks
      )
    ) (filter (key: key != ownKey) (attrNames settings));

  # The module's warnings: configurations that evaluate and build but do not
  # do what they say. A list of messages; the module passes it to `warnings`.
  #   linkGroup        null or the group of the sudo rule
  #   sudo, sudoRs     null (no such module) or { enable; execWheelOnly; }
  #   linkGroupMembers, wheelMembers   user names (groupMembers)
  #   vmNames          the names in microvm.vms
  #   userNames, groupNames            the names in users.users, users.groups
  #   unmasked         unmaskedTmpfiles
  moduleWarnings =
    {
      linkGroup,
      sudo,
      sudoRs,
      linkGroupMembers,
      wheelMembers,
      companions,
      vmNames,
      placeholder,
      userNames,
      groupNames,
      workspaceDir,
      stateDir,
      unmasked,
    }:
    let
      opt = "services.microvm-workspaces";
      enabled = x: x != null && (x.enable or false);
      wheelOnly = filter (x: enabled x.value && (x.value.execWheelOnly or false)) [
        {
          name = "security.sudo";
          value = sudo;
        }
        {
          name = "security.sudo-rs";
          value = sudoRs;
        }
      ];
      outsideWheel = filter (u: !builtins.elem u wheelMembers) linkGroupMembers;
      # prepare resolves "root" and numeric ids without the user database
      needsEntry = name: name != "root" && match "[0-9]+" name == null;
      ws = toString workspaceDir;
      state = toString stateDir;
    in
    (
      if linkGroup != null && !enabled sudo && !enabled sudoRs then
        [
          "${opt}.linkGroup = ${quote linkGroup} adds a sudo rule, but neither security.sudo.enable nor security.sudo-rs.enable is set, so no member can run microvm-link (a normal user's microvm-link re-executes itself through sudo). Enable one of them, or set linkGroup = null and run microvm-link as root."
        ]
      else
        [ ]
    )
    ++ (
      if linkGroup != null && linkGroup != "wheel" && (outsideWheel != [ ] || linkGroupMembers == [ ]) then
        map (
          x:
          "${x.name}.execWheelOnly is set: only members of wheel can execute sudo at all, so "
          + (
            if outsideWheel != [ ] then
              "these members of ${opt}.linkGroup (${quote linkGroup}) cannot run microvm-link: ${builtins.concatStringsSep ", " outsideWheel}."
            else
              "members of ${opt}.linkGroup (${quote linkGroup}) who are not in wheel cannot run microvm-link."
          )
          + " Add them to wheel, use linkGroup = \"wheel\", or set ${x.name}.execWheelOnly = false."
        ) wheelOnly
      else
        [ ]
    )
    ++ map (
      owner:
      "${opt}.companions.${showAttr owner}: there is no VM ${quote owner} in microvm.vms, so these companions follow a link only if an imperatively created VM of that name is linked; check the name."
    ) (filter (owner: !builtins.elem owner vmNames) (attrNames companions))
    ++ (
      if needsEntry placeholder.user && !builtins.elem placeholder.user userNames then
        [
          "${opt}.placeholder.user = ${quote placeholder.user} is not in users.users: microvm-workspaces-prepare fails (\"no such user\") at every VM start that needs a placeholder, unless the user exists by other means."
        ]
      else
        [ ]
    )
    ++ (
      if needsEntry placeholder.group && !builtins.elem placeholder.group groupNames then
        [
          "${opt}.placeholder.group = ${quote placeholder.group} is not in users.groups: microvm-workspaces-prepare fails (\"no such group\") at every VM start that needs a placeholder, unless the group exists by other means."
        ]
      else
        [ ]
    )
    ++ (
      if ws == state then
        [
          "${opt}.workspaceDir is microvm.stateDir (${quote ws}): workspaces (<workspaceDir>/<vm>) and the VMs' state directories (<stateDir>/<vm>) would be the same directories. Choose another workspaceDir."
        ]
      else if isUnder ws state || isUnder state ws then
        [
          "${opt}.workspaceDir (${quote ws}) and microvm.stateDir (${quote state}) lie inside one another: entries of one would be taken for entries of the other. Keep them apart."
        ]
      else
        [ ]
    )
    ++ map (
      u:
      "systemd.tmpfiles.settings.${quote u.key} creates ${quote u.path}, a share source that microvm-workspaces creates when its VM starts; the module masks such lines only under \"10-microvm\" (microvm.nix's key), so it will be made at boot as a plain directory that prepare then leaves alone. If microvm.nix renamed its key, please report it to microvm-workspaces; meanwhile set systemd.tmpfiles.settings.${quote u.key}.${quote u.path} = lib.mkForce { }."
    ) unmasked;

  # ---- Live shares (issue #11): the guest module, nixos-module/guest.nix ----
  #
  # `services.microvm-workspaces.guest.shares.<share> = { entry; path; mountPoint;
  # readOnly; }` becomes one microvm.nix virtiofs share of the live root
  # <workspaceDir>/.live/<entry>[/<path>], mounted in the guest at
  # /run/microvm-workspaces/<share>, and a symlink mountPoint ->
  # /run/microvm-workspaces/<share>/current. The host keeps `current` of each
  # live root in step with the entry, so a running guest sees a new link
  # without a restart; the host module finds these shares in microvm.vms like
  # any other and lists them in config.json.

  # Where the guest mounts its live shares.
  guestLiveDir = "/run/microvm-workspaces";

  # A live share's name: it names the guest's mount point and the tag, so it
  # is kept to letters, digits, "_", "-" and "." (not first), at most 200
  # bytes. ASCII only: truncating it for the tag never splits a character.
  isLiveShareName = s: matches "[A-Za-z0-9_][A-Za-z0-9_.-]*" s && stringLength s <= 200;

  # virtiofs tags are at most 36 bytes (the Linux virtio-fs driver's limit).
  maxTagBytes = 36;

  # The virtiofs tag of live share `name`: "live-<name>" when that fits in 36
  # bytes, else "live-", the first 22 bytes of the name, "-" and the first 8
  # hex digits of the name's SHA-256 (36 bytes). Deterministic; two names
  # get the same tag only by a hash collision or when a name of exactly 31
  # bytes looks like a shortened one, which the guest module asserts against.
  liveTag =
    name:
    let
      full = "live-${name}";
      keep = maxTagBytes - stringLength "live-" - 1 - 8;
    in
    if stringLength full <= maxTagBytes then
      full
    else
      "live-${substring 0 keep name}-${substring 0 8 (builtins.hashString "sha256" name)}";

  # The components of a relative path ("a/b" -> [ "a" "b" ]; "" -> [ ]).
  pathComponents = p: if p == "" then [ ] else filter isString (builtins.split "/" p);

  # The live root of entry `entry` (and `path` below it): the host directory
  # the guest's share exports. `path` is "" or a relative path without ".",
  # ".." or "current" components (see liveShareProblems).
  liveRoot =
    {
      workspaceDir,
      entry,
      path ? "",
    }:
    "${toString workspaceDir}/.live/${entry}" + (if path == "" then "" else "/${path}");

  # Problems with one `services.microvm-workspaces.guest.shares.<name>`: the
  # name, the entry, the path below it and the mount point. A list of
  # messages.
  liveShareProblems =
    name: share:
    let
      opt = "services.microvm-workspaces.guest.shares.${showAttr name}";
      path = share.path or "";
      mp = share.mountPoint;
      comps = pathComponents path;
      badComps = filter (c: c == "" || c == "." || c == ".." || c == "current") comps;
    in
    (
      if isLiveShareName name then
        [ ]
      else
        [
          "${opt}: the share name ${quote name} must be letters, digits, \"_\", \"-\" and \".\" (not first), at most 200 bytes: it names the guest's mount ${guestLiveDir}/<share> and the share's tag."
        ]
    )
    ++ (
      if isEntryName share.entry then
        [ ]
      else
        [
          "${opt}.entry = ${quote share.entry}: not a workspace entry name (a VM or companion name): it must not be empty, start with \".\" or contain \"/\" or control characters, and is at most 200 bytes."
        ]
    )
    ++ (
      if !isString path then
        [ "${opt}.path must be a string." ]
      else if substring 0 1 path == "/" then
        [
          "${opt}.path = ${quote path} is absolute; it is a path below the entry ${quote share.entry}, such as \"hosts/microvms\" (or \"\" for the whole entry)."
        ]
      else if hasControlChar path then
        [ "${opt}.path = ${quote path} contains a control character." ]
      else
        map (
          c:
          if c == "" then
            "${opt}.path = ${quote path} has an empty component (a doubled or trailing \"/\"); write it as \"a/b\"."
          else if c == "current" then
            "${opt}.path = ${quote path} has a component \"current\": that name is reserved, each live root shows its content under \"current\"."
          else
            "${opt}.path = ${quote path} has a component ${quote c}: the path must go down from the entry, without \".\" or \"..\"."
        ) (unique badComps)
    )
    ++ (
      if !(isString mp && isAbsolutePath mp) then
        [
          "${opt}.mountPoint = ${quote mp} is not an absolute path without \".\", \"..\" or empty components and without a trailing \"/\"."
        ]
      else if match "[^[:space:]'\\\\]*" mp == null then
        [
          "${opt}.mountPoint = ${quote mp} contains white space, a quote or a backslash, which a tmpfiles.d line cannot carry."
        ]
      else if isUnder mp guestLiveDir || isUnder guestLiveDir mp then
        [
          "${opt}.mountPoint = ${quote mp} is, or lies inside or around, ${guestLiveDir}, where the live shares are mounted; choose another place."
        ]
      else
        [ ]
    );

  # The microvm.shares entries for the guest module's shares (attrs of
  # { entry; path; mountPoint; readOnly; }), in name order.
  liveMicrovmShares =
    { workspaceDir, shares }:
    map (
      name:
      let
        s = shares.${name};
      in
      {
        tag = liveTag name;
        proto = "virtiofs";
        source = liveRoot {
          inherit workspaceDir;
          inherit (s) entry;
          path = s.path or "";
        };
        mountPoint = "${guestLiveDir}/${name}";
        readOnly = s.readOnly or true;
      }
    ) (attrNames shares);

  # systemd.tmpfiles.settings entries for the guest module's shares: an `L`
  # line at each mountPoint, pointing into the mounted live root. Not `L+`:
  # that removes whatever is at the path first, a directory with all its
  # contents. `L` creates the symlink where nothing is, and leaves anything
  # else alone without a word (systemd-tmpfiles 252, tried: an existing
  # directory is kept, exit 0); liveLinkCheck says so at boot.
  liveSymlinks =
    shares:
    listToAttrs (
      map (name: {
        name = shares.${name}.mountPoint;
        value."L".argument = "${guestLiveDir}/${name}/current";
      }) (attrNames shares)
    );

  # A shell script for a oneshot unit after systemd-tmpfiles-setup: for each
  # share whose mountPoint is not the symlink liveSymlinks makes (something
  # else was there, which tmpfiles kept), one line saying what to do, and
  # exit 1 so that the unit shows as failed; nothing is moved or deleted.
  # Mount points are absolute paths without white space, quotes or
  # backslashes (liveShareProblems).
  liveLinkCheck =
    shares:
    builtins.concatStringsSep "\n" (
      [ "status=0" ]
      ++ map (
        name:
        let
          mp = shares.${name}.mountPoint;
          target = "${guestLiveDir}/${name}/current";
        in
        "if [ \"$(readlink '${mp}')\" != '${target}' ]; then echo '${mp} is in the way of live share ${name}: it should be a symlink to ${target}, and it is left as it is. Move it away, then run systemd-tmpfiles --create.' >&2; status=1; fi"
      ) (attrNames shares)
      ++ [ "exit $status" ]
    )
    + "\n";

  # Clashes between the guest module's shares and every share of the guest
  # (`allShares`: its whole microvm.shares, theirs included): a tag used by
  # another share, a symlink on, inside or around another mount point or
  # symlink. A list of messages.
  liveClashes =
    {
      shares,
      allShares,
      # mount points of the guest's fileSystems (microvm.nix adds its
      # shares' there too): a symlink cannot stand where one is mounted,
      # nor around one
      fileSystems ? [ ],
    }:
    let
      names = attrNames shares;
      own = name: "${guestLiveDir}/${name}";
      # every place something is mounted or linked, and what put it there
      places =
        map (s: {
          path = toString s.mountPoint;
          what = "the mount point of share ${quote s.tag}";
          skip = null;
        }) (filter (s: isString (s.mountPoint or null) || builtins.isPath (s.mountPoint or null)) allShares)
        ++ map (n: {
          path = shares.${n}.mountPoint;
          what = "the mountPoint of services.microvm-workspaces.guest.shares.${showAttr n}";
          skip = n;
        }) names
        ++ map (fs: {
          path = fs;
          what = "the file system mounted at fileSystems.${quote fs}";
          skip = null;
          below = true;
        }) (filter (fs: !builtins.elem fs shareMounts) fileSystems);
      shareMounts = map (s: toString (s.mountPoint or "")) allShares;
    in
    concatMap (
      name:
      let
        opt = "services.microvm-workspaces.guest.shares.${showAttr name}";
        tag = liveTag name;
        sameTag = filter (s: s.tag == tag && toString (s.mountPoint or "") != own name) allShares;
        mp = shares.${name}.mountPoint;
        # a file system only counts on or below the symlink ("/" holds it)
        near = filter (
          p:
          p.skip != name
          && p.path != own name
          && (isUnder mp p.path || (!(p.below or false) && isUnder p.path mp))
        ) places;
      in
      (
        if sameTag == [ ] then
          [ ]
        else
          [
            "${opt}: its tag ${quote tag} is also the tag of the share mounted at ${
              builtins.concatStringsSep ", " (map (s: quote (toString (s.mountPoint or "?"))) sameTag)
            }; rename one of them (tags must be unique within a VM)."
          ]
      )
      ++ map (
        p:
        "${opt}.mountPoint = ${quote mp} is, or lies inside or around, ${p.what} (${quote p.path}); each needs a place of its own."
      ) near
    ) names;

  # The host's workspaceDir against the one each guest's module was told
  # (services.microvm-workspaces.guest.workspaceDir): they must agree, or the
  # guest's live shares point at live roots nothing keeps in step. A list of
  # messages; `microvmVms` is microvm.vms.
  guestWorkspaceProblems =
    { workspaceDir, microvmVms }:
    concatMap (
      vm:
      let
        guest = guestConfigOf vm microvmVms.${vm};
        g = if guest == null then null else ((guest.services or { }).microvm-workspaces or { }).guest or null;
      in
      if g == null || (g.shares or { }) == { } || toString g.workspaceDir == toString workspaceDir then
        [ ]
      else
        [
          "microvm.vms.${showAttr vm}: its guest sets services.microvm-workspaces.guest.workspaceDir = ${quote (toString g.workspaceDir)}, but this host's services.microvm-workspaces.workspaceDir is ${quote (toString workspaceDir)}; its live shares would export directories nothing keeps in step. Make them the same."
        ]
    ) (filter (vm: guestConfigOf vm microvmVms.${vm} != null) (attrNames microvmVms));

  # ---- SSH destinations (issue #12): config.json's vms.<vm>.ssh ----

  # `template` for VM `vm`: "%n" becomes the VM's name, "%%" a "%".
  sshDestination =
    template: vm:
    builtins.concatStringsSep "%" (
      map (replaceStrings [ "%n" ] [ vm ]) (filter isString (builtins.split "%%" template))
    );

  # Characters a destination must not hold: what Rust's char::is_control
  # and char::is_whitespace accept (src/model/config.rs check_ssh_destination), as
  # UTF-8: C0 and C1 controls, DEL, and Unicode's white space.
  sshForbiddenChars =
    let
      u = hex: builtins.fromJSON "\"\\u${hex}\"";
      hexDigits = [ "0" "1" "2" "3" "4" "5" "6" "7" "8" "9" "a" "b" "c" "d" "e" "f" ];
      byteHex = concatMap (hi: map (lo: hi + lo) hexDigits);
    in
    map (h: u "00${h}") (
      builtins.tail (byteHex [ "0" "1" ]) # U+0001..U+001F (Nix strings hold no NUL)
      ++ [ "20" "7f" ]
      ++ byteHex [ "8" "9" ]
      ++ [ "a0" ]
    )
    ++ map u [ "1680" "2000" "2001" "2002" "2003" "2004" "2005" "2006" "2007" "2008" "2009" "200a" "2028" "2029" "202f" "205f" "3000" ];

  # Why ssh would refuse `dest` (empty, an option, white space or controls),
  # as microvm-link would; null when it is fine.
  sshDestinationProblem =
    dest:
    if !isString dest || dest == "" then
      "is empty"
    else if substring 0 1 dest == "-" then
      "starts with \"-\", so ssh would take it for an option"
    else if replaceStrings sshForbiddenChars (map (_: "") sshForbiddenChars) dest != dest then
      "contains white space or a control character"
    else
      null;

  # Hypervisors of microvm.nix whose vsock the host reaches as AF_VSOCK at
  # the guest's CID, so that `ssh vsock/<cid>` works (microvm.nix's
  # nixos-modules/microvm/vsock-ssh.nix says so for qemu, crosvm and
  # kvmtool). cloud-hypervisor and firecracker put a unix socket in front of
  # the guest's vsock instead (`vsock-mux/<path>`, a socket the hypervisor's
  # user owns): their VMs get the VM's name.
  vsockHypervisors = [
    "qemu"
    "crosvm"
    "kvmtool"
  ];

  # The SSH destination the module guesses for VM `name` whose destination
  # the user did not choose: `vsock/<cid>` when the guest sets
  # microvm.vsock.cid and its hypervisor reaches it as AF_VSOCK (systemd >=
  # 256's systemd-ssh-proxy on the host; sshd in the guest, which systemd's
  # ssh generator binds to vsock port 22 by itself), else the VM's name
  # (the template default "%n"). `guest` is the guest configuration.
  sshGuess =
    name: guest:
    let
      mvm = guest.microvm or { };
      cid = (mvm.vsock or { }).cid or null;
      hypervisor = mvm.hypervisor or "qemu";
    in
    if cid != null && builtins.elem hypervisor vsockHypervisors then "vsock/${toString cid}" else name;

  # sshGuess for every VM of microvm.nix's `microvm.vms` that has a guest
  # configuration: attrs of VM name -> destination.
  sshGuesses =
    microvmVms:
    listToAttrs (
      map (n: {
        name = n;
        value = sshGuess n (guestConfigOf n microvmVms.${n});
      }) (filter (n: guestConfigOf n microvmVms.${n} != null) (attrNames microvmVms))
    );

  # vms of config.json with each VM's SSH destination, under one of two
  # keys. `ssh`: a destination the user chose, which microvm-link waits for
  # and fails on: `perVm.<vm>` as it is when the VM is there (null: none),
  # else `template` applied to the VM's name when `explicit` (the user set
  # the template). `sshDefault`: a destination the module guessed, which
  # microvm-link waits for only briefly and never fails on: when the
  # template was not set (`explicit` false) and is not null, `guesses.<vm>`
  # (sshGuesses), or `template` applied to the name for a VM without a
  # guess; left out when ssh would refuse it (a VM named "-x"). Never both
  # keys. A name in perVm but not in `vms` (a VM made imperatively) gets an
  # entry with no shares and its destination.
  withSsh =
    {
      template,
      perVm,
      vms,
      explicit ? true,
      guesses ? { },
    }:
    let
      dest =
        vm:
        if perVm ? ${vm} then
          (if perVm.${vm} == null then { } else { ssh = perVm.${vm}; })
        else if template == null then
          { }
        else if explicit then
          { ssh = sshDestination template vm; }
        else
          let
            guess = guesses.${vm} or (sshDestination template vm);
          in
          if sshDestinationProblem guess == null then { sshDefault = guess; } else { };
    in
    listToAttrs (
      map (vm: {
        name = vm;
        value = (vms.${vm} or { shares = [ ]; }) // dest vm;
      }) (unique (attrNames vms ++ attrNames perVm))
    );

  # Problems with services.microvm-workspaces.ssh for the VMs `vmNames`: an
  # unknown %-token in the template, or a destination ssh would refuse. A
  # list of messages. A template the user did not set (`explicit` false)
  # only guesses: withSsh leaves out what it would give ssh to refuse.
  sshProblems =
    {
      template,
      perVm,
      vmNames,
      explicit ? true,
    }:
    let
      opt = "services.microvm-workspaces.ssh";
      leftover = if template == null then "" else replaceStrings [ "%%" "%n" ] [ "" "" ] template;
    in
    (
      if match ".*%.*" leftover == null then
        [ ]
      else
        [
          "${opt}.destination = ${quote template}: the only %-tokens are %n (the VM's name) and %% (a \"%\")."
        ]
    )
    ++ concatMap (
      vm:
      let
        fromTemplate = !(perVm ? ${vm});
        dest =
          if fromTemplate then
            (if template == null || !explicit then null else sshDestination template vm)
          else
            perVm.${vm};
        problem = if dest == null then null else sshDestinationProblem dest;
      in
      if problem == null then
        [ ]
      else if fromTemplate then
        [
          "${opt}.destination = ${quote template} gives VM ${quote vm} the SSH destination ${quote dest}, which ${problem}; set ${opt}.perVm.${showAttr vm} to its destination, or to null."
        ]
      else
        [ "${opt}.perVm.${showAttr vm} = ${quote dest}: the SSH destination ${problem}." ]
    ) (unique (vmNames ++ attrNames perVm));

  # Names under the per-VM option `option` that are no VM of microvm.vms:
  # fine for a VM made imperatively, else a typo (one that leaves the real
  # VM at the defaults). Messages.
  unknownVmWarnings =
    option: names: vmNames:
    map (
      vm:
      "${option}.${showAttr vm}: there is no VM ${quote vm} in microvm.vms, so config.json gains an entry for a VM of that name made imperatively (microvm -c); check the name."
    ) (filter (vm: !builtins.elem vm vmNames) names);

  # ... for services.microvm-workspaces.ssh.perVm.
  sshWarnings =
    { perVm, vmNames }:
    unknownVmWarnings "services.microvm-workspaces.ssh.perVm" (attrNames perVm) vmNames;

  # A warning when config.json gives some VM a `vsock/<cid>` destination
  # (under either key) but the host's ssh client cannot follow it: `proxy`
  # is programs.ssh.systemd-ssh-proxy.enable, or null where NixOS has no
  # such option (nixpkgs before 25.05), so /etc/ssh/ssh_config does not
  # include systemd's `Host vsock/*` ProxyCommand. A list of messages.
  vsockProxyWarnings =
    { vms, proxy }:
    let
      isVsock = d: isString d && substring 0 6 d == "vsock/";
      vsockVms = filter (vm: isVsock (vms.${vm}.ssh or null) || isVsock (vms.${vm}.sshDefault or null)) (
        attrNames vms
      );
      list = builtins.concatStringsSep ", " vsockVms;
    in
    if vsockVms == [ ] || proxy == true then
      [ ]
    else if proxy == false then
      [
        "services.microvm-workspaces: VMs ${list} are reached over SSH at vsock/<cid>, but programs.ssh.systemd-ssh-proxy.enable is false, so ssh does not know that host name form; microvm-link waits for them in vain (briefly, for a guessed destination). Set it to true, or set services.microvm-workspaces.ssh.destination."
      ]
    else
      [
        "services.microvm-workspaces: VMs ${list} are reached over SSH at vsock/<cid>, which needs systemd's ssh proxy in the host's ssh configuration (programs.ssh.systemd-ssh-proxy.enable, NixOS 25.05 or later; systemd 256 or later): this NixOS has no such option. Include ${"$"}{systemd}/lib/systemd/ssh_config.d/20-systemd-ssh-proxy.conf in programs.ssh.extraConfig, or set services.microvm-workspaces.ssh.destination."
      ];

  # ---- The guest is not trusted (the guest-containment issue):
  # config.json's vms.<vm>.guestUid, guestGid, idmap and git ----

  # What src/model/config.rs assumes when a key is absent (DEFAULT_GUEST_UID,
  # None, `yes`, GitMode::Private); the module's option defaults are these,
  # and it writes every key for every VM, so the Rust defaults never decide,
  # except guestGid: null is left out (Rust's None, the number of the
  # linker's primary group), which keeps config.json free of nulls.
  guestDefaults = {
    guestUid = 1000;
    guestGid = null;
    idmap = true;
    git = "private";
  };

  # The values of vms.<vm>.git (src/model/config.rs GitMode, lowercase).
  gitModes = [
    "private"
    "readonly"
    "shared"
  ];

  # vms of config.json with guestUid, idmap and git on every VM, and
  # guestGid where it is not null: from `settings.<vm>`
  # (services.microvm-workspaces.vms) where it has the key, else
  # guestDefaults. Other keys of `settings.<vm>` are not written. A name in
  # `settings` but not in `vms` (a VM made imperatively) gets an entry with
  # no shares, as in withSsh.
  withGuest =
    { settings, vms }:
    listToAttrs (
      map (
        vm:
        let
          guest = builtins.mapAttrs (key: default: (settings.${vm} or { }).${key} or default) guestDefaults;
        in
        {
          name = vm;
          value =
            (vms.${vm} or { shares = [ ]; })
            // builtins.removeAttrs guest (filter (key: guest.${key} == null) (attrNames guest));
        }
      ) (unique (attrNames vms ++ attrNames settings))
    );

  # ... for services.microvm-workspaces.vms.
  guestWarnings =
    { settings, vmNames }:
    unknownVmWarnings "services.microvm-workspaces.vms" (attrNames settings) vmNames;

  # Problems the Rust parser would reject config.json for, found in the
  # collected VMs: names, share tags and sources. A list of messages.
  vmProblems =
    vms:
    concatMap (
      vm:
      (
        if isEntryName vm then
          [ ]
        else
          [
            "microvm.vms.${showAttr vm}: microvm-workspaces needs VM names that are not empty, do not start with \".\" and contain no \"/\" or control characters."
          ]
      )
      ++ concatMap (
        share:
        (
          if isString share.tag && share.tag != "" && match ".*/.*" share.tag == null && !hasControlChar share.tag then
            [ ]
          else
            [
              "microvm.vms.${showAttr vm}: share tag ${quote share.tag} is empty or contains \"/\" or a control character."
            ]
        )
        ++ (
          if isString share.source && share.source != "" && match ".*[\n].*" share.source == null then
            [ ]
          else
            [
              "microvm.vms.${showAttr vm}: share ${quote share.tag} has a source that is empty or spans lines: ${quote share.source}."
            ]
        )
      ) vms.${vm}.shares
    ) (attrNames vms);

  # Problems in `services.microvm-workspaces.companions`: invalid owner or
  # entry names, paths that are not relative. A list of messages.
  companionProblems =
    companions:
    concatMap (
      owner:
      let
        opt = "services.microvm-workspaces.companions.${showAttr owner}";
      in
      (
        if isEntryName owner then
          [ ]
        else
          [
            "${opt}: the VM name must not be empty, start with \".\" or contain \"/\" or control characters."
          ]
      )
      ++ concatMap (
        name:
        let
          path = companions.${owner}.${name};
        in
        (
          if isEntryName name then
            [ ]
          else
            [
              "${opt}.${showAttr name}: a companion name becomes an entry of the workspace dir; it must not be empty, start with \".\" or contain \"/\" or control characters."
            ]
        )
        ++ (
          if isRelativePath path then
            [ ]
          else
            [
              "${opt}.${showAttr name}: ${quote path} must be a path relative to the linked repository, such as \"../${name}\"."
            ]
        )
      ) (attrNames companions.${owner})
    ) (attrNames companions);

  # Companion names that would share one entry of the workspace dir with
  # another companion or with a VM's own workspace. A list of messages.
  companionClashes =
    { companions, vmNames }:
    let
      owned = concatMap (
        owner:
        map (name: {
          inherit owner name;
        }) (attrNames companions.${owner})
      ) (attrNames companions);
      names = unique (map (c: c.name) owned);
      ownersOf = name: map (c: c.owner) (filter (c: c.name == name) owned);
    in
    concatMap (
      name:
      let
        owners = ownersOf name;
      in
      (
        if length owners > 1 then
          [
            "services.microvm-workspaces.companions: ${quote name} is a companion of several VMs (${builtins.concatStringsSep ", " owners}); each companion name is one entry of the workspace dir and can follow only one repository."
          ]
        else
          [ ]
      )
      ++ (
        if builtins.elem name vmNames then
          [
            "services.microvm-workspaces.companions.${showAttr (head owners)}.${showAttr name}: ${quote name} is also a VM in microvm.vms, whose own workspace has that name; rename the companion."
          ]
        else
          [ ]
      )
    ) names;

  # ---- Pools (issue 20): services.microvm-workspaces.pools.<pool> = [ vm ... ] ----

  # A pool's name: what src/model/names.rs PoolName accepts, 1 to 64 bytes of
  # letters, digits, "_", "." and "-", not starting with "." or "-".
  isPoolName = s: matches "[A-Za-z0-9_][A-Za-z0-9_.-]{0,63}" s;

  # A path with "." and ".." resolved lexically (".." above "/" stays at "/"),
  # as the Rust side's paths::normalize: "/a/b/../c" -> "/a/c".
  normalizePath =
    p:
    let
      parts = filter (c: c != "" && c != ".") (pathComponents p);
      dropLast = l: builtins.genList (i: builtins.elemAt l i) (length l - 1);
      step = acc: c: if c == ".." then (if acc == [ ] then [ ] else dropLast acc) else acc ++ [ c ];
    in
    "/" + builtins.concatStringsSep "/" (foldl' step [ ] parts);

  # Does VM `vm` (an entry of config.json's vms) have a share whose source is
  # its own live root <workspaceDir>/.live/<vm>? A relative source is taken
  # against <stateDir>/<vm>, as prepare does.
  hasLiveWorkspace =
    {
      vm,
      vms,
      workspaceDir,
      stateDir,
    }:
    let
      want = "${toString workspaceDir}/.live/${vm}";
      resolve = src: normalizePath (if substring 0 1 src == "/" then src else "${toString stateDir}/${vm}/${src}");
    in
    builtins.any (s: isString s.source && resolve s.source == want) ((vms.${vm} or { }).shares or [ ]);

  # Problems config.json's parser would refuse `pools` for (Config::validate_pools
  # in src/model/config.rs): a pool name that is not one, an empty pool, a VM
  # not in config.json's vms (every VM of microvm.vms is), listed twice or in
  # two pools, or without a live workspace share. A list of messages.
  poolProblems =
    {
      pools,
      vms,
      workspaceDir,
      stateDir,
    }:
    let
      opt = "services.microvm-workspaces.pools";
      names = attrNames pools;
      # every (pool, vm) in order, to find a VM's first pool
      listed = concatMap (pool: map (vm: { inherit pool vm; }) pools.${pool}) names;
      firstPool = vm: (head (filter (x: x.vm == vm) listed)).pool;
      count = pool: vm: length (filter (x: x == vm) pools.${pool});
    in
    concatMap (
      pool:
      let
        at = "${opt}.${showAttr pool}";
        members = pools.${pool};
      in
      (
        if isPoolName pool then
          [ ]
        else
          [
            "${at}: a pool name is 1 to 64 letters, digits, \"_\", \".\" or \"-\", not starting with \".\" or \"-\"."
          ]
      )
      ++ (if members == [ ] then [ "${at} is empty: a pool needs at least one VM." ] else [ ])
      ++ concatMap (
        vm:
        if !isString vm then
          [ "${at}: ${quote vm} is not a VM name." ]
        else if count pool vm > 1 then
          [ "${at} lists the VM ${quote vm} more than once." ]
        else if firstPool vm != pool then
          [
            "${at}: the VM ${quote vm} is in the pool ${quote (firstPool vm)} too; a VM is in at most one pool."
          ]
        else if !(vms ? ${vm}) then
          [ "${at}: there is no VM ${quote vm} in microvm.vms." ]
        else if
          !hasLiveWorkspace {
            inherit vm vms workspaceDir stateDir;
          }
        then
          [
            "${at}: the VM ${quote vm} has no live workspace share (a share whose source is ${toString workspaceDir}/.live/${vm}; in the guest: services.microvm-workspaces.guest.shares.<share>.entry = ${quote vm}), so a lease could not switch it without a restart."
          ]
        else
          [ ]
      ) (unique members)
    ) names;
}
