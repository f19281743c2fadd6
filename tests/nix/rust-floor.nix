# The oldest rustc the package really builds with, from Cargo.lock, against
# what the repository says (tests/nix/check.sh, section 4).
#
#   metadata   paths of `cargo metadata --format-version 1 --locked
#              --filter-platform <target>` outputs, one per target the flake
#              builds for
#   root       the repository
#
# The floor is the highest `rust-version` over the packages the crate
# builds: the crate itself and everything reached from it through normal
# and build dependencies (dev-dependencies build only the tests; cargo's
# resolve for a filtered platform leaves out other targets' dependencies).
# Evaluates to { floor; stated; by; problems; }: `problems` is empty when
# Cargo.toml's rust-version is at least the floor and the README and
# tests/deps.sh name that same version.
{ metadata, root }:
let
  inherit (builtins)
    any
    attrNames
    concatMap
    elemAt
    filter
    foldl'
    fromJSON
    fromTOML
    genericClosure
    length
    listToAttrs
    readFile
    split
    ;

  # "1.89" and "1.89.0" are the same version to cargo; builtins.compareVersions
  # would call the longer one newer.
  components =
    v:
    let
      parts = filter builtins.isString (split "[.]" v);
    in
    map (i: if i < length parts then builtins.fromJSON (elemAt parts i) else 0) [ 0 1 2 ];
  newer =
    a: b:
    let
      ca = components a;
      cb = components b;
      go = i: if i == 3 then false else if elemAt ca i != elemAt cb i then elemAt ca i > elemAt cb i else go (i + 1);
    in
    go 0;

  builtPackages =
    file:
    let
      m = fromJSON (readFile file);
      packages = listToAttrs (map (p: { name = p.id; value = p; }) m.packages);
      nodes = listToAttrs (map (n: { name = n.id; value = n; }) m.resolve.nodes);
      builds = dep: any (k: k.kind == null || k.kind == "build") dep.dep_kinds;
      reached = genericClosure {
        startSet = [ { key = m.resolve.root; } ];
        operator = item: map (dep: { key = dep.pkg; }) (filter builds nodes.${item.key}.deps);
      };
    in
    map (item: packages.${item.key}) reached;

  built = concatMap builtPackages metadata;

  highest = foldl' (
    acc: p:
    let
      v = p.rust_version or null;
    in
    if v != null && newer v acc.floor then
      {
        floor = v;
        by = "${p.name} ${p.version}";
      }
    else
      acc
  ) {
    floor = "0";
    by = "nothing";
  } built;

  # The module's oldest nixpkgs release, which the README names too.
  minNixpkgs =
    let
      m = builtins.match ".*\n  minNixpkgs = \"([0-9.]+)\";\n.*" (readFile "${root}/nixos-module/default.nix");
    in
    if m == null then null else builtins.head m;

  stated = (fromTOML (readFile "${root}/Cargo.toml")).package.rust-version;

  mentions =
    file: text:
    let
      content = readFile "${root}/${file}";
    in
    if builtins.match ".*${builtins.replaceStrings [ "." ] [ "[.]" ] text}.*" content != null then
      [ ]
    else
      [ "${file} does not say \"${text}\" (Cargo.toml's rust-version is ${stated})" ];
in
{
  inherit (highest) floor by;
  inherit stated;
  problems =
    (
      if built == [ ] then
        [ "no packages found in the cargo metadata" ]
      else if newer highest.floor stated then
        [
          "the locked dependencies need rustc ${highest.floor} (${highest.by}), but Cargo.toml's rust-version is ${stated}: raise it (and README.md, tests/deps.sh, the module's minNixpkgs) or pin the dependency with cargo update --precise"
        ]
      else
        [ ]
    )
    ++ mentions "README.md" "rustc ${stated}"
    ++ mentions "tests/deps.sh" "${stated} or later"
    ++ (
      if minNixpkgs == null then
        [ "nixos-module/default.nix has no minNixpkgs = \"<release>\";" ]
      else
        mentions "README.md" "nixpkgs ${minNixpkgs} or later"
    );
}
