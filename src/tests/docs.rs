//! The docs name only what exists (issue 19). No check needs root; they read the whole
//! repository from `CARGO_MANIFEST_DIR` (the Nix package's source, which is only what cargo
//! builds, skips them):
//!
//! * every `module::item` a Markdown file of the repository cites in backticks is defined in
//!   src (which forms count: docs/design.md#citations);
//! * every `<file>.md#anchor` cited anywhere in the repository (code comments, tests, Nix,
//!   scripts, docs) and every relative Markdown link names a file, and an anchor, that exist;
//! * ARCHITECTURE.md's code map names every module of src.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

const ROOT: &str = env!("CARGO_MANIFEST_DIR");

/// Capitalized first segments that are not Rust at all: apt's configuration (`Acquire::http`).
const NOT_RUST: [&str; 1] = ["Acquire"];

/// What src defines, as far as citations go.
struct Src {
    /// Module name -> the `layer/module` files of that name.
    modules: BTreeMap<String, Vec<String>>,
    /// The layer directories of src (not `bin`, not `tests`).
    layers: BTreeSet<String>,
    /// `layer/module` -> items at its top level (name -> is a type: struct, enum, union,
    /// trait or type alias).
    items: BTreeMap<String, BTreeMap<String, bool>>,
    /// Type name -> its members from every file: methods and associated items of its impl
    /// blocks (or of the trait), enum variants, named fields.
    members: BTreeMap<String, BTreeSet<String>>,
    /// Crates a citation may name without being checked: std's and the dependencies.
    external: BTreeSet<String>,
}

impl Src {
    fn read(root: &Path) -> Src {
        let mut src = Src {
            modules: BTreeMap::new(),
            layers: BTreeSet::new(),
            items: BTreeMap::new(),
            members: BTreeMap::new(),
            external: external_crates(root),
        };
        for layer in std::fs::read_dir(root.join("src")).unwrap().flatten() {
            let l = layer.file_name().to_string_lossy().to_string();
            // Not layers: the binaries, and these tests (src/tests), which no doc need cite.
            if !layer.path().is_dir() || l == "bin" || l == "tests" {
                continue;
            }
            src.layers.insert(l.clone());
            for f in std::fs::read_dir(layer.path()).unwrap().flatten() {
                let p = f.path();
                let name = p.file_stem().unwrap().to_string_lossy().to_string();
                if p.extension().is_none_or(|e| e != "rs") || name == "mod" {
                    continue;
                }
                let text = std::fs::read_to_string(&p).unwrap();
                let file =
                    syn::parse_file(&text).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
                let key = format!("{l}/{name}");
                let items = src.items.entry(key.clone()).or_default();
                index(&file.items, items, &mut src.members);
                src.modules.entry(name).or_default().push(key);
            }
        }
        src
    }

    /// Why the cited path `cited` (`a::b::c`) names nothing in src; `None` when it does, or
    /// when it is not a citation of ours (std, a dependency).
    fn check(&self, cited: &str) -> Option<String> {
        let segs: Vec<&str> = cited.trim_start_matches("crate::").split("::").collect();
        let first = segs[0];
        let (file, rest) = if self.layers.contains(first) {
            let Some(module) = segs.get(1) else {
                return None; // the layer alone: a directory
            };
            let key = format!("{first}/{module}");
            if !self.items.contains_key(&key) {
                return Some(format!("no module src/{key}.rs"));
            }
            (key, &segs[2..])
        } else if let Some(files) = self.modules.get(first) {
            if files.len() > 1 {
                return Some(format!(
                    "module {first} is in several layers ({files:?}): name the layer"
                ));
            }
            (files[0].clone(), &segs[1..])
        } else if NOT_RUST.contains(&first) {
            return None;
        } else if first.starts_with(char::is_uppercase) {
            return self.check_type(first, &segs[1..]);
        } else if self.external.contains(first) {
            return None;
        } else {
            return Some(format!(
                "no module {first} in src (nor a crate this one depends on)"
            ));
        };
        let items = &self.items[&file];
        match rest {
            [] => None,
            [item] if items.contains_key(*item) => None,
            [item] => Some(format!("src/{file}.rs defines no {item}")),
            [ty, member] => match items.get(*ty) {
                Some(true) => self.check_type(ty, &[member]),
                _ => Some(format!("src/{file}.rs defines no type {ty}")),
            },
            _ => Some("more segments than module::Type::member".into()),
        }
    }

    /// `Type::member` (or `Type` alone): the type is defined at the top level of some module,
    /// the member in one of its impl blocks (in any file), its trait, its variants or fields.
    fn check_type(&self, ty: &str, rest: &[&str]) -> Option<String> {
        let defined = self.items.values().any(|m| m.get(ty) == Some(&true));
        if !defined {
            return Some(format!("no type {ty} in src"));
        }
        match rest {
            [] => None,
            [m] if self.members.get(ty).is_some_and(|s| s.contains(*m)) => None,
            [m] => Some(format!("{ty} has no method, variant or field {m}")),
            _ => Some("more segments than Type::member".into()),
        }
    }
}

/// Records the items of one file (its top level only: a `mod tests` is one item).
fn index(
    file: &[syn::Item],
    items: &mut BTreeMap<String, bool>,
    members: &mut BTreeMap<String, BTreeSet<String>>,
) {
    use syn::{ImplItem, Item, TraitItem};
    let mut member = |ty: &syn::Ident, m: String| {
        members.entry(ty.to_string()).or_default().insert(m);
    };
    let fields = |f: &syn::Fields| -> Vec<String> {
        f.iter()
            .filter_map(|f| f.ident.as_ref().map(|i| i.to_string()))
            .collect()
    };
    for item in file {
        let (name, is_type) = match item {
            Item::Fn(i) => (i.sig.ident.to_string(), false),
            Item::Const(i) => (i.ident.to_string(), false),
            Item::Static(i) => (i.ident.to_string(), false),
            Item::Mod(i) => (i.ident.to_string(), false),
            Item::Macro(i) => match &i.ident {
                Some(id) => (id.to_string(), false),
                None => continue,
            },
            Item::Type(i) => (i.ident.to_string(), true),
            Item::Struct(i) => {
                fields(&i.fields)
                    .into_iter()
                    .for_each(|f| member(&i.ident, f));
                (i.ident.to_string(), true)
            }
            Item::Union(i) => {
                i.fields
                    .named
                    .iter()
                    .filter_map(|f| f.ident.as_ref())
                    .for_each(|f| member(&i.ident, f.to_string()));
                (i.ident.to_string(), true)
            }
            Item::Enum(i) => {
                for v in &i.variants {
                    member(&i.ident, v.ident.to_string());
                }
                (i.ident.to_string(), true)
            }
            Item::Trait(i) => {
                for t in &i.items {
                    match t {
                        TraitItem::Fn(f) => member(&i.ident, f.sig.ident.to_string()),
                        TraitItem::Const(c) => member(&i.ident, c.ident.to_string()),
                        TraitItem::Type(t) => member(&i.ident, t.ident.to_string()),
                        _ => {}
                    }
                }
                (i.ident.to_string(), true)
            }
            Item::Impl(i) => {
                let syn::Type::Path(p) = &*i.self_ty else {
                    continue;
                };
                let Some(ty) = p.path.segments.last().map(|s| &s.ident) else {
                    continue;
                };
                for it in &i.items {
                    match it {
                        ImplItem::Fn(f) => member(ty, f.sig.ident.to_string()),
                        ImplItem::Const(c) => member(ty, c.ident.to_string()),
                        ImplItem::Type(t) => member(ty, t.ident.to_string()),
                        _ => {}
                    }
                }
                continue;
            }
            _ => continue,
        };
        items.insert(name, is_type);
    }
}

/// std's crates and every dependency of Cargo.toml (`-` as `_`).
fn external_crates(root: &Path) -> BTreeSet<String> {
    let toml = std::fs::read_to_string(root.join("Cargo.toml")).unwrap();
    let mut out: BTreeSet<String> = ["std", "core", "alloc", "libc", "proc_macro"]
        .map(String::from)
        .into();
    let mut in_deps = false;
    for line in toml.lines().map(str::trim) {
        if line.starts_with('[') {
            in_deps = line.ends_with("dependencies]");
            continue;
        }
        if in_deps && !line.starts_with('#') {
            if let Some((name, _)) = line.split_once('=') {
                out.insert(name.trim().replace('-', "_"));
            }
        }
    }
    out
}

/// The text of a Markdown file without its fenced code blocks (examples and transcripts,
/// not citations).
fn prose(md: &str) -> String {
    let mut out = String::new();
    let mut fence: Option<&str> = None;
    for line in md.lines() {
        let t = line.trim_start();
        match fence {
            Some(f) if t.starts_with(f) => fence = None,
            Some(_) => {}
            None if t.starts_with("```") || t.starts_with("~~~") => fence = Some(&t[..3]),
            None => {
                out.push_str(line);
                out.push('\n');
            }
        }
    }
    out
}

/// The inline code spans of `text` (a run of backticks up to the next run of as many).
fn code_spans(text: &str) -> Vec<&str> {
    let mut out = Vec::new();
    let mut rest = text;
    while let Some(at) = rest.find('`') {
        let after = &rest[at..];
        let n = after.len() - after.trim_start_matches('`').len();
        let body = &after[n..];
        let close = "`".repeat(n);
        let mut end = None;
        let mut from = 0;
        while let Some(i) = body[from..].find(&close) {
            let i = from + i;
            let run = body[i..].len() - body[i..].trim_start_matches('`').len();
            if run == n {
                end = Some(i);
                break;
            }
            from = i + run;
        }
        match end {
            Some(i) => {
                out.push(&body[..i]);
                rest = &body[i + n..];
            }
            None => rest = body,
        }
    }
    out
}

/// The `a::b[::c...]` paths in one code span (identifiers joined by `::`).
fn paths_in(span: &str) -> Vec<String> {
    let ident = |c: char| c.is_ascii_alphanumeric() || c == '_';
    let mut out = Vec::new();
    let b = span.as_bytes();
    let mut i = 0;
    while i < b.len() {
        let starts = (b[i] as char).is_ascii_alphabetic() || b[i] == b'_';
        if !starts || (i > 0 && (ident(b[i - 1] as char) || b[i - 1] == b':')) {
            i += 1;
            continue;
        }
        let mut end = i;
        let mut segs = 0;
        loop {
            let s = end;
            while end < b.len() && ident(b[end] as char) {
                end += 1;
            }
            if end == s {
                break;
            }
            segs += 1;
            let more = span[end..].starts_with("::")
                && span[end + 2..].starts_with(|c: char| c.is_ascii_alphabetic() || c == '_');
            if !more {
                break;
            }
            end += 2;
        }
        if segs > 1 {
            out.push(span[i..end].to_string());
        }
        i = end.max(i + 1);
    }
    out
}

/// Every broken citation in the Markdown text `md`: (cited path, why).
fn broken_citations(src: &Src, md: &str) -> Vec<(String, String)> {
    code_spans(&prose(md))
        .into_iter()
        .flat_map(paths_in)
        .filter_map(|p| src.check(&p).map(|why| (p, why)))
        .collect()
}

/// The repository's files, without `target` and `.git` (and other hidden directories).
fn repo_files(root: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut todo = vec![root.to_path_buf()];
    while let Some(d) = todo.pop() {
        for e in std::fs::read_dir(&d).unwrap().flatten() {
            let p = e.path();
            let name = e.file_name().to_string_lossy().to_string();
            if name.starts_with('.') && name != ".ci" || (d == root && name == "target") {
                continue;
            }
            if p.is_dir() {
                todo.push(p);
            } else {
                out.push(p);
            }
        }
    }
    out.sort();
    out
}

fn markdown_files(root: &Path) -> Vec<PathBuf> {
    repo_files(root)
        .into_iter()
        .filter(|p| p.extension().is_some_and(|e| e == "md"))
        .collect()
}

#[test]
fn every_cited_item_exists() {
    let root = Path::new(ROOT);
    let src = Src::read(root);
    assert!(
        src.items.len() > 20,
        "read too few modules: {:?}",
        src.items.keys()
    );
    let mut broken = Vec::new();
    let mut cited = 0;
    for f in markdown_files(root) {
        let md = std::fs::read_to_string(&f).unwrap();
        cited += code_spans(&prose(&md))
            .into_iter()
            .flat_map(paths_in)
            .count();
        for (p, why) in broken_citations(&src, &md) {
            broken.push(format!(
                "{}: `{p}`: {why}",
                f.strip_prefix(root).unwrap().display()
            ));
        }
    }
    assert!(
        cited > 100,
        "found only {cited} citations: is the scanner broken?"
    );
    assert!(
        broken.is_empty(),
        "citations of nothing:\n{}",
        broken.join("\n")
    );
}

#[test]
fn the_citation_check_can_fail() {
    let src = Src::read(Path::new(ROOT));
    let md = "Good: `fs::chase::Tree`, `chase::Tree::walk`, `Workspace::view`,\n\
              `paths::check_name()`, `Trust::Owners`, `Node::is_placeholder` (an impl in\n\
              another file), `` `a` `chase::read_trusted` ``, `host::units`, `fs`.\n\
              Not ours: `std::fs::File`, `serde_json::to_vec`, `nix::unistd::setfsuid`,\n\
              `services.microvm-workspaces.vms.<name>.git`, `ssh://user@host:22`.\n\
              ```\nfenced::not_checked\n```\n\
              Broken: `state::write`, `chase::NoSuchItem`, `fs::nothing::x`,\n\
              `Workspace::no_such_method`, `NoSuchType::x`, `chase::Tree::Nope`,\n\
              `chase::walk` (a method, not a module item).";
    let broken: Vec<String> = broken_citations(&src, md)
        .into_iter()
        .map(|(p, _)| p)
        .collect();
    assert_eq!(
        broken,
        [
            "state::write",
            "chase::NoSuchItem",
            "fs::nothing::x",
            "Workspace::no_such_method",
            "NoSuchType::x",
            "chase::Tree::Nope",
            "chase::walk"
        ]
    );
}

#[test]
fn the_code_map_names_every_module() {
    let root = Path::new(ROOT);
    let src = Src::read(root);
    let map = prose(&std::fs::read_to_string(root.join("ARCHITECTURE.md")).unwrap());
    let spans: BTreeSet<&str> = code_spans(&map).into_iter().collect();
    let missing: Vec<&String> = src
        .modules
        .keys()
        .filter(|m| !spans.contains(m.as_str()))
        .collect();
    assert!(
        missing.is_empty(),
        "ARCHITECTURE.md's code map does not name these modules: {missing:?}"
    );
}

/// The anchors of a Markdown file: `<a id="...">` and its headings' GitHub slugs.
fn anchors(md: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    for (i, _) in md.match_indices("<a id=\"") {
        let rest = &md[i + 7..];
        if let Some(end) = rest.find('"') {
            out.insert(rest[..end].to_string());
        }
    }
    for line in prose(md).lines() {
        if let Some(h) = line.strip_prefix('#') {
            let title = h.trim_start_matches('#').trim();
            let slug: String = title
                .to_lowercase()
                .chars()
                .filter(|c| c.is_alphanumeric() || *c == ' ' || *c == '-' || *c == '_')
                .map(|c| if c == ' ' { '-' } else { c })
                .collect();
            out.insert(slug);
        }
    }
    out
}

/// Every `<path>.md#<anchor>` and `](<path>.md)` in `text`, every `](#<anchor>)`, and with
/// `plain` every other `<path>.md` named (not a link's text, not a shell variable's):
/// (path, anchor). Scripts name files that may be missing on purpose: `plain` is for Rust
/// and Markdown.
fn md_refs(text: &str, plain: bool) -> Vec<(String, Option<String>)> {
    let pathc = |c: char| c.is_ascii_alphanumeric() || "_./-".contains(c);
    let anchorc = |c: char| c.is_ascii_alphanumeric() || c == '-' || c == '_';
    let mut out = Vec::new();
    for (i, _) in text.match_indices(".md") {
        let before = &text[..i];
        let start = before
            .char_indices()
            .rev()
            .find(|(_, c)| !pathc(*c))
            .map_or(0, |(j, c)| j + c.len_utf8());
        let file = format!("{}.md", &text[start..i]);
        // Nothing before `.md` (a glob, `*.md`), or a URL's (`https://...`): not ours.
        if start == i || text[..start].ends_with(':') {
            continue;
        }
        let after = &text[i + 3..];
        if let Some(a) = after.strip_prefix('#') {
            let anchor: String = a.chars().take_while(|c| anchorc(*c)).collect();
            out.push((file, Some(anchor)));
        } else if text[..start].ends_with("](") || plain && !text[..start].ends_with(['[', '$']) {
            out.push((file, None));
        }
    }
    for (i, _) in text.match_indices("](#") {
        let anchor: String = text[i + 3..].chars().take_while(|c| anchorc(*c)).collect();
        out.push((String::new(), Some(anchor)));
    }
    // `file.md#<anchor>` in prose is a pattern, not a reference.
    out.retain(|(_, a)| a.as_deref() != Some(""));
    out
}

#[test]
fn every_cited_anchor_exists() {
    let root = Path::new(ROOT);
    let mut broken = Vec::new();
    let mut seen = 0;
    for f in repo_files(root) {
        // This file's own examples are test data.
        if f.ends_with("src/tests/docs.rs") {
            continue;
        }
        let Ok(text) = std::fs::read_to_string(&f) else {
            continue; // not text
        };
        let here = f.strip_prefix(root).unwrap().display().to_string();
        let plain = f.extension().is_some_and(|e| e == "rs" || e == "md");
        for (file, anchor) in md_refs(&text, plain) {
            seen += 1;
            // Relative to the citing file, else to the repository's root; a bare anchor is
            // in the citing file itself.
            let target = if file.is_empty() {
                Some(f.clone())
            } else {
                [f.parent().unwrap().join(&file), root.join(&file)]
                    .into_iter()
                    .find(|p| p.is_file())
            };
            let Some(target) = target else {
                broken.push(format!("{here}: {file}: no such file"));
                continue;
            };
            let Some(anchor) = anchor else { continue };
            let md = std::fs::read_to_string(&target).unwrap();
            if !anchors(&md).contains(&anchor) {
                broken.push(format!("{here}: {file}#{anchor}: no such anchor"));
            }
        }
    }
    assert!(
        seen > 50,
        "found only {seen} references: is the scanner broken?"
    );
    assert!(
        broken.is_empty(),
        "references to nothing:\n{}",
        broken.join("\n")
    );
}

#[test]
fn the_anchor_check_can_fail() {
    let md = "# The Title\n<a id=\"x-y\"></a>\n## `microvm-link shell`\n";
    assert_eq!(
        anchors(md),
        BTreeSet::from([
            "x-y".into(),
            "the-title".into(),
            "microvm-link-shell".into()
        ])
    );
    assert_eq!(
        md_refs(
            "see docs/design.md#live-links, [a](reference/cli.md) and [b](#here); x/y.md",
            false
        ),
        vec![
            ("docs/design.md".to_string(), Some("live-links".to_string())),
            ("reference/cli.md".to_string(), None),
            (String::new(), Some("here".to_string())),
        ]
    );
    assert_eq!(
        md_refs("see x/y.md, [a.md](a.md) and $h/z.md", true),
        vec![("x/y.md".to_string(), None), ("a.md".to_string(), None)]
    );
}
