//! The shape of the code (ARCHITECTURE.md#code-map): library modules import one way only
//! (no cycle), the binaries stay thin, and nothing is `unsafe`. It reads the sources under
//! `CARGO_MANIFEST_DIR/src`, so it runs wherever the crate builds, without root.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

const SRC: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/src");

/// The layers, in the order src/lib.rs documents them (its `//! * [`name`]` lines).
fn layers() -> Vec<String> {
    std::fs::read_to_string(Path::new(SRC).join("lib.rs"))
        .unwrap()
        .lines()
        .filter_map(|l| l.strip_prefix("//! * [`"))
        .filter_map(|l| l.split('`').next())
        .map(str::to_string)
        .collect()
}

/// "layer/module" -> the `crate::` paths it names, as "layer" or "layer::module" (the
/// first two segments), code only: comments may name anything (doc links).
fn imports() -> BTreeMap<String, BTreeSet<String>> {
    let mut graph = BTreeMap::new();
    for layer in std::fs::read_dir(SRC).unwrap().flatten() {
        // Not layers: the binaries (checked below) and these tests, which may use anything.
        let name = layer.file_name();
        if !layer.path().is_dir() || name == "bin" || name == "tests" {
            continue;
        }
        let l = layer.file_name().to_string_lossy().to_string();
        for e in std::fs::read_dir(layer.path()).unwrap().flatten() {
            let p = e.path();
            let name = p.file_stem().unwrap().to_string_lossy().to_string();
            let code: String = std::fs::read_to_string(&p)
                .unwrap()
                .lines()
                .filter(|l| !l.trim_start().starts_with("//"))
                .map(|l| format!("{l}\n"))
                .collect();
            graph.insert(format!("{l}/{name}"), crate_refs(&code));
        }
    }
    graph
}

/// Every module named after `crate::` in `text`, including inside `use crate::{a, b::c}`.
fn crate_refs(text: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    for (i, _) in text.match_indices("crate::") {
        let rest = &text[i + "crate::".len()..];
        if let Some(group) = rest.strip_prefix('{') {
            // The group up to its closing brace; items split at depth 0 only.
            let (mut depth, mut items, mut item) = (0, Vec::new(), String::new());
            for c in group.chars() {
                match c {
                    '{' => depth += 1,
                    '}' if depth == 0 => break,
                    '}' => depth -= 1,
                    ',' if depth == 0 => {
                        items.push(std::mem::take(&mut item));
                        continue;
                    }
                    _ => {}
                }
                item.push(c);
            }
            items.push(item);
            for item in &items {
                let m = two_segments(item.trim());
                if !m.is_empty() {
                    out.insert(m);
                }
            }
        } else {
            out.insert(two_segments(rest));
        }
    }
    out
}

/// `a::b` of `a::b::c...` (or `a`), identifiers only.
fn two_segments(path: &str) -> String {
    let ident = |s: &str| -> String {
        s.chars()
            .take_while(|c| c.is_alphanumeric() || *c == '_')
            .collect()
    };
    let first = ident(path);
    match path[first.len()..].strip_prefix("::") {
        Some(rest) if !ident(rest).is_empty() => format!("{first}::{}", ident(rest)),
        _ => first,
    }
}

/// A cycle in `graph`, if there is one (depth-first search).
fn find_cycle(graph: &BTreeMap<String, BTreeSet<String>>) -> Option<Vec<String>> {
    fn visit(
        n: &str,
        graph: &BTreeMap<String, BTreeSet<String>>,
        path: &mut Vec<String>,
        done: &mut BTreeSet<String>,
    ) -> Option<Vec<String>> {
        if let Some(at) = path.iter().position(|p| p == n) {
            let mut cycle = path[at..].to_vec();
            cycle.push(n.to_string());
            return Some(cycle);
        }
        if done.contains(n) {
            return None;
        }
        path.push(n.to_string());
        for m in graph.get(n).into_iter().flatten().filter(|m| *m != n) {
            if let Some(c) = visit(m, graph, path, done) {
                return Some(c);
            }
        }
        path.pop();
        done.insert(n.to_string());
        None
    }
    let mut done = BTreeSet::new();
    graph
        .keys()
        .find_map(|n| visit(n, graph, &mut Vec::new(), &mut done))
}

/// Module graph (`layer/module` -> `layer/module` it names) within and across layers.
fn module_graph() -> BTreeMap<String, BTreeSet<String>> {
    imports()
        .into_iter()
        .map(|(m, refs)| {
            let to = refs
                .iter()
                .filter_map(|r| r.split_once("::"))
                .map(|(l, m)| format!("{l}/{m}"))
                .collect();
            (m, to)
        })
        .collect()
}

#[test]
fn modules_import_one_way() {
    let graph = module_graph();
    assert!(graph.len() > 20, "read too few modules: {graph:?}");
    assert!(
        graph["engine/prepare"].contains("engine/entry"),
        "the parser missed an import: {graph:?}"
    );
    assert_eq!(find_cycle(&graph), None, "import cycle");
}

/// Imports of a layer's module from a layer listed below its own.
fn upward(order: &[String], graph: &BTreeMap<String, BTreeSet<String>>) -> Vec<String> {
    let at = |l: &str| order.iter().position(|o| o == l);
    let mut out = Vec::new();
    for (m, refs) in graph {
        let layer = m.split('/').next().unwrap();
        for r in refs {
            let to = r.split("::").next().unwrap();
            match (at(layer), at(to)) {
                (Some(i), Some(j)) if j > i => out.push(format!("{m} imports {r}, a layer below")),
                (None, _) => out.push(format!("{layer} is not in lib.rs's list")),
                (_, None) => out.push(format!("{m} names crate::{r}, which is no layer")),
                _ => {}
            }
        }
    }
    out
}

#[test]
fn layers_import_only_the_layers_above_them() {
    let order = layers();
    let dirs: BTreeSet<String> = imports()
        .keys()
        .map(|m| m.split('/').next().unwrap().to_string())
        .collect();
    assert_eq!(
        order.iter().cloned().collect::<BTreeSet<_>>(),
        dirs,
        "lib.rs lists {order:?}"
    );
    let graph = imports();
    assert_eq!(upward(&order, &graph), Vec::<String>::new());
    // The check can fail: the same graph against the list reversed.
    let reversed: Vec<String> = order.iter().rev().cloned().collect();
    assert!(!upward(&reversed, &graph).is_empty());
}

#[test]
fn the_cycle_finder_finds_a_cycle() {
    // The check above must be able to fail: the old layout's cycle (prepare <-> link).
    let mut graph = BTreeMap::new();
    graph.insert(
        "engine/prepare".to_string(),
        BTreeSet::from(["cmd/link".to_string()]),
    );
    graph.insert(
        "cmd/link".to_string(),
        BTreeSet::from(["engine/prepare".to_string()]),
    );
    graph.insert("fs/paths".to_string(), BTreeSet::new());
    assert_eq!(
        find_cycle(&graph),
        Some(vec![
            "cmd/link".into(),
            "engine/prepare".into(),
            "cmd/link".into()
        ])
    );
    assert_eq!(
        crate_refs("use crate::{fs::paths, engine::prepare::{Ctx, X}};\nx(crate::host::ssh::f)"),
        BTreeSet::from([
            "fs::paths".into(),
            "engine::prepare".into(),
            "host::ssh".into()
        ])
    );
}

#[test]
fn binaries_stay_thin() {
    for e in std::fs::read_dir(Path::new(SRC).join("bin"))
        .unwrap()
        .flatten()
    {
        let lines = std::fs::read_to_string(e.path()).unwrap().lines().count();
        assert!(
            lines < 150,
            "{}: {lines} lines; move logic into the library",
            e.path().display()
        );
    }
}

#[test]
fn nothing_is_unsafe() {
    let mut todo = vec![Path::new(SRC).to_path_buf()];
    let mut files = 0;
    while let Some(d) = todo.pop() {
        for e in std::fs::read_dir(&d).unwrap().flatten() {
            let p = e.path();
            if p.is_dir() {
                todo.push(p);
                continue;
            }
            files += 1;
            let text = std::fs::read_to_string(&p).unwrap();
            let is_root = p.ends_with("lib.rs") || p.parent().unwrap().ends_with("bin");
            if is_root {
                assert!(
                    text.contains("#![forbid(unsafe_code)]"),
                    "{}: no forbid(unsafe_code)",
                    p.display()
                );
            }
            for (n, line) in text.lines().enumerate() {
                let code = line.split("//").next().unwrap();
                let unsafe_code = code.match_indices("unsafe").any(|(i, _)| {
                    let after = code[i + "unsafe".len()..].trim_start();
                    ["{", "fn ", "impl ", "extern ", "trait "]
                        .iter()
                        .any(|k| after.starts_with(k))
                });
                assert!(!unsafe_code, "{}:{}: {line}", p.display(), n + 1);
            }
        }
    }
    assert!(files > 10);
}
