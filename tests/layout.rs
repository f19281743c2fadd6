//! The shape of the code (docs/design.md#module-map): library modules import one way only
//! (no cycle), the binaries stay thin, and nothing is `unsafe`.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

const SRC: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/src");

/// Library module name -> the library modules it names (`crate::x` or `use crate::{x, ..}`).
fn imports() -> BTreeMap<String, BTreeSet<String>> {
    let mut graph = BTreeMap::new();
    for e in std::fs::read_dir(SRC).unwrap().flatten() {
        let p = e.path();
        let Some(name) = p.file_stem().and_then(|s| s.to_str()) else {
            continue;
        };
        if p.extension().is_none_or(|x| x != "rs") || name == "lib" {
            continue;
        }
        // Code only: comments may name modules freely (doc links).
        let code: String = std::fs::read_to_string(&p)
            .unwrap()
            .lines()
            .filter(|l| !l.trim_start().starts_with("//"))
            .map(|l| format!("{l}\n"))
            .collect();
        graph.insert(name.to_string(), crate_refs(&code));
    }
    graph
}

/// Every module named after `crate::` in `text`, including inside `use crate::{a, b::c}`.
fn crate_refs(text: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    for (i, _) in text.match_indices("crate::") {
        let rest = &text[i + "crate::".len()..];
        if let Some(group) = rest.strip_prefix('{') {
            let group = &group[..group.find('}').unwrap_or(group.len())];
            for item in group.split(',') {
                let m: String = item
                    .trim()
                    .chars()
                    .take_while(|c| c.is_alphanumeric() || *c == '_')
                    .collect();
                if !m.is_empty() {
                    out.insert(m);
                }
            }
        } else {
            let m: String = rest
                .chars()
                .take_while(|c| c.is_alphanumeric() || *c == '_')
                .collect();
            out.insert(m);
        }
    }
    out
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

#[test]
fn library_modules_import_one_way() {
    let graph = imports();
    assert!(graph.len() > 10, "read too few modules: {graph:?}");
    assert!(
        graph["prepare"].contains("entry"),
        "the parser missed an import: {graph:?}"
    );
    assert_eq!(find_cycle(&graph), None, "import cycle");
}

/// The module order src/lib.rs documents (its `//! * [`name`]` lines).
fn documented_order() -> Vec<String> {
    std::fs::read_to_string(Path::new(SRC).join("lib.rs"))
        .unwrap()
        .lines()
        .filter_map(|l| l.strip_prefix("//! * [`"))
        .filter_map(|l| l.split('`').next())
        .map(str::to_string)
        .collect()
}

/// Imports of a module that come later in `order` than itself.
fn upward(order: &[String], graph: &BTreeMap<String, BTreeSet<String>>) -> Vec<String> {
    let at = |m: &str| order.iter().position(|o| o == m);
    let mut out = Vec::new();
    for (m, refs) in graph {
        for r in refs.iter().filter(|r| *r != m) {
            match (at(m), at(r)) {
                (Some(i), Some(j)) if j > i => {
                    out.push(format!("{m} imports {r}, listed below it"))
                }
                (None, _) => out.push(format!("{m} is not in lib.rs's list")),
                _ => {}
            }
        }
    }
    out
}

#[test]
fn modules_import_only_modules_listed_above_them() {
    let order = documented_order();
    let graph = imports();
    assert_eq!(
        order.len(),
        graph.len(),
        "lib.rs lists {order:?}, src has {:?}",
        graph.keys()
    );
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
        "prepare".to_string(),
        crate_refs("use crate::link::entry_of;"),
    );
    graph.insert(
        "link".to_string(),
        crate_refs("use crate::{paths, prepare::Ctx};"),
    );
    graph.insert("paths".to_string(), BTreeSet::new());
    assert_eq!(
        find_cycle(&graph),
        Some(vec!["link".into(), "prepare".into(), "link".into()])
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
