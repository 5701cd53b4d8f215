//! The architecture, checked on every test run (`tests/run`): no import
//! cycle between the files of the workspace's library crates, none between
//! the gateway's top-level modules, and each of those imports only from
//! the layers below it (the table in `gateway/src/lib.rs`'s `//!`).
//!
//! The binary (`src/bin/vision-gateway/`) and the test-support crate
//! (`tests/support/`) are checked for cycles too; the library must not use
//! the test-support crate.
//!
//! It reads the sources as text: every `crate::`, `super::` and `self::`
//! path (use-trees expanded) is resolved to the file of the longest module
//! that exists. Comments are skipped, so doc links do not count.

#![allow(clippy::unwrap_used)]

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// The gateway's top-level modules, lowest layer first. A module may import
/// from its own layer's lower-numbered entries and from lower layers only.
const GATEWAY_LAYERS: &[(&str, u8)] = &[
    ("util", 0),
    ("records", 0),
    ("log", 1),
    ("config", 2),
    ("sample", 3),
    ("faults", 3),
    ("stage", 3),
    ("intake", 4),
    ("detect", 4),
    ("replicate", 4),
    ("telemetry", 5),
    ("supervisor", 6),
    ("", 6),
];

type Module = Vec<String>;

/// One library crate: its module files, and the names each re-exports
/// (`pub use child::Name;`) with the module they come from.
struct Tree {
    files: BTreeMap<Module, PathBuf>,
    reexports: BTreeMap<(Module, String), Module>,
}

fn tree(src: &Path, root_file: &str) -> Tree {
    let mut files = BTreeMap::new();
    let mut stack = vec![src.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                if path.file_name().is_some_and(|n| n != "bin") {
                    stack.push(path);
                }
                continue;
            }
            if path.extension().is_none_or(|e| e != "rs") {
                continue;
            }
            let rel = path.strip_prefix(src).unwrap();
            let mut module: Module = rel.iter().map(|s| s.to_string_lossy().into_owned()).collect();
            if module.len() == 1 && module[0] == "main.rs" && root_file != "main.rs" {
                continue;
            }
            let last = module.pop().unwrap();
            if last != "mod.rs" && last != root_file {
                module.push(last.trim_end_matches(".rs").to_owned());
            }
            files.insert(module, path);
        }
    }
    let mut tree = Tree { files, reexports: BTreeMap::new() };
    let mut found = Vec::new();
    for (module, file) in &tree.files {
        for path in reexported(&std::fs::read_to_string(file).unwrap()) {
            let Some((name, from)) = path.split_last() else { continue };
            // `pub use child::X` is relative to the module itself.
            let from: Module = match from.first().map(String::as_str) {
                Some("crate" | "super" | "self") => from.to_vec(),
                _ => ["self".to_owned()].into_iter().chain(from.iter().cloned()).collect(),
            };
            if let Some(target) = resolve(&tree, module, &from) {
                found.push(((module.clone(), name.clone()), target));
            }
        }
    }
    tree.reexports.extend(found);
    tree
}

/// The paths of a file's `pub use` and `pub(crate) use` items.
fn reexported(src: &str) -> Vec<Module> {
    let src = strip_test_modules(&strip_comments(src));
    let mut out = Vec::new();
    for start in ["pub use ", "pub(crate) use ", "pub(super) use "] {
        let mut rest = src.as_str();
        while let Some(at) = rest.find(start) {
            let after = &rest[at + start.len()..];
            rest = after;
            if let Some(end) = after.find(';') {
                let mut paths = Vec::new();
                expand(&after[..end], &[], &mut paths);
                out.extend(paths.into_iter().filter(|p| p.last().is_some_and(|n| n != "*" && n != "self")));
            }
        }
    }
    out
}

/// The source without comments (line, doc and block comments) and without
/// the contents of string and char literals (raw strings included), so
/// that neither doc links nor text count as imports.
fn strip_comments(src: &str) -> String {
    let b = src.as_bytes();
    let mut out = String::with_capacity(src.len());
    let mut i = 0;
    while i < b.len() {
        let rest = &src[i..];
        if rest.starts_with("//") {
            i += rest.find('\n').unwrap_or(rest.len());
        } else if rest.starts_with("/*") {
            i += rest.find("*/").map_or(rest.len(), |e| e + 2);
        } else if let Some(raw) = rest.strip_prefix("r#\"") {
            i += raw.find("\"#").map_or(rest.len(), |e| e + 5);
            out.push_str("\"\"");
        } else if rest.starts_with("'\"'") || rest.starts_with("'\\\"'") {
            i += rest[1..].find('\'').map_or(rest.len(), |e| e + 2);
        } else if rest.starts_with('"') {
            let mut j = 1;
            while j < rest.len() && b[i + j] != b'"' {
                j += if b[i + j] == b'\\' { 2 } else { 1 };
            }
            i += (j + 1).min(rest.len());
            out.push_str("\"\"");
        } else {
            let c = rest.chars().next().unwrap_or(' ');
            out.push(c);
            i += c.len_utf8();
        }
    }
    out
}

/// Expands a use-tree (`a::{b, c::{d, e as f}}`) into its paths.
fn expand(tree: &str, prefix: &[String], out: &mut Vec<Module>) {
    let tree = tree.trim();
    if tree.is_empty() {
        return;
    }
    if let Some(open) = tree.find('{') {
        let head: Module = split_path(&tree[..open]);
        let inner = &tree[open + 1..tree.rfind('}').unwrap_or(tree.len())];
        let base: Module = prefix.iter().cloned().chain(head).collect();
        let mut depth = 0;
        let mut start = 0;
        for (i, c) in inner.char_indices() {
            match c {
                '{' => depth += 1,
                '}' => depth -= 1,
                ',' if depth == 0 => {
                    expand(&inner[start..i], &base, out);
                    start = i + 1;
                }
                _ => {}
            }
        }
        expand(&inner[start..], &base, out);
    } else {
        let path = tree.split(" as ").next().unwrap_or(tree);
        out.push(prefix.iter().cloned().chain(split_path(path)).collect());
    }
}

fn split_path(s: &str) -> Module {
    s.split("::").map(str::trim).filter(|p| !p.is_empty()).map(str::to_owned).collect()
}

/// The source without its `#[cfg(test)]` modules: tests may import what
/// they check, they are not part of the layering.
fn strip_test_modules(src: &str) -> String {
    let mut out = String::with_capacity(src.len());
    let mut rest = src;
    while let Some(at) = rest.find("#[cfg(test)]") {
        out.push_str(&rest[..at]);
        let after = &rest[at..];
        let Some(open) = after.find(['{', ';']) else {
            rest = "";
            break;
        };
        if after.as_bytes()[open] == b';' {
            rest = &after[open + 1..];
            continue;
        }
        let mut depth = 0usize;
        let mut end = after.len();
        for (i, c) in after[open..].char_indices() {
            match c {
                '{' => depth += 1,
                '}' => {
                    depth -= 1;
                    if depth == 0 {
                        end = open + i + 1;
                        break;
                    }
                }
                _ => {}
            }
        }
        rest = &after[end..];
    }
    out.push_str(rest);
    out
}

/// Every path of the file that starts at `crate`, `super` or `self`.
fn paths(src: &str) -> Vec<Module> {
    let src = strip_test_modules(&strip_comments(src));
    let mut out = Vec::new();
    let mut rest = src.as_str();
    while let Some(at) = rest.find("use ") {
        let before = rest[..at].chars().last();
        let after = &rest[at + 4..];
        rest = after;
        if before.is_some_and(|c| c.is_alphanumeric() || c == '_') {
            continue;
        }
        if let Some(end) = after.find(';') {
            let stmt = &after[..end];
            if stmt.starts_with("crate") || stmt.starts_with("super") || stmt.starts_with("self") {
                expand(stmt, &[], &mut out);
            }
        }
    }
    let inline = regex::Regex::new(r"\b(?:crate|super|self)(?:::(?:[A-Za-z_][A-Za-z0-9_]*))+").unwrap();
    for m in inline.find_iter(&src) {
        out.push(split_path(m.as_str()));
    }
    out
}

/// The module file `path` (as written in `from`) resolves to.
fn resolve(tree: &Tree, from: &Module, path: &Module) -> Option<Module> {
    let mut base: Module = Vec::new();
    let mut rest = path.as_slice();
    match rest.first().map(String::as_str) {
        Some("crate") => rest = &rest[1..],
        Some("self") => {
            base = from.clone();
            rest = &rest[1..];
        }
        Some("super") => {
            base = from.clone();
            while rest.first().is_some_and(|s| s == "super") {
                base.pop()?;
                rest = &rest[1..];
            }
        }
        _ => return None,
    }
    let full: Module = base.into_iter().chain(rest.iter().cloned()).collect();
    let n = (0..=full.len()).rev().find(|n| tree.files.contains_key(&full[..*n]))?;
    let mut module = full[..n].to_vec();
    // A name the module re-exports is imported from where it is defined.
    let mut hops = 0;
    while let Some(name) = full.get(n).filter(|_| hops < 8) {
        match tree.reexports.get(&(module.clone(), name.clone())) {
            Some(target) if *target != module => module = target.clone(),
            _ => break,
        }
        hops += 1;
    }
    Some(module)
}

/// File-to-file imports, each with one example path.
fn edges(tree: &Tree) -> BTreeMap<(Module, Module), String> {
    let mut edges = BTreeMap::new();
    for (module, file) in &tree.files {
        let src = std::fs::read_to_string(file).unwrap();
        for path in paths(&src) {
            if let Some(to) = resolve(tree, module, &path) {
                if &to != module {
                    edges.entry((module.clone(), to)).or_insert_with(|| path.join("::"));
                }
            }
        }
    }
    edges
}

/// The strongly connected components of more than one node (Tarjan).
fn cycles<N: Ord + Clone>(edges: &BTreeSet<(N, N)>) -> Vec<Vec<N>> {
    let nodes: BTreeSet<N> = edges.iter().flat_map(|(a, b)| [a.clone(), b.clone()]).collect();
    let nodes: Vec<N> = nodes.into_iter().collect();
    let at = |n: &N| nodes.binary_search(n).unwrap();
    let mut next: Vec<Vec<usize>> = vec![Vec::new(); nodes.len()];
    for (a, b) in edges {
        next[at(a)].push(at(b));
    }
    struct State {
        index: Vec<Option<usize>>,
        low: Vec<usize>,
        on_stack: Vec<bool>,
        stack: Vec<usize>,
        counter: usize,
        found: Vec<Vec<usize>>,
    }
    fn visit(v: usize, next: &[Vec<usize>], s: &mut State) {
        s.index[v] = Some(s.counter);
        s.low[v] = s.counter;
        s.counter += 1;
        s.stack.push(v);
        s.on_stack[v] = true;
        for &w in &next[v] {
            match s.index[w] {
                None => {
                    visit(w, next, s);
                    s.low[v] = s.low[v].min(s.low[w]);
                }
                Some(i) if s.on_stack[w] => s.low[v] = s.low[v].min(i),
                Some(_) => {}
            }
        }
        if Some(s.low[v]) == s.index[v] {
            let mut component = Vec::new();
            while let Some(w) = s.stack.pop() {
                s.on_stack[w] = false;
                component.push(w);
                if w == v {
                    break;
                }
            }
            if component.len() > 1 {
                s.found.push(component);
            }
        }
    }
    let n = nodes.len();
    let mut s = State {
        index: vec![None; n],
        low: vec![0; n],
        on_stack: vec![false; n],
        stack: Vec::new(),
        counter: 0,
        found: Vec::new(),
    };
    for v in 0..n {
        if s.index[v].is_none() {
            visit(v, &next, &mut s);
        }
    }
    s.found.into_iter().map(|c| c.into_iter().map(|i| nodes[i].clone()).collect()).collect()
}

fn name(m: &Module) -> String {
    if m.is_empty() {
        "(crate root)".to_owned()
    } else {
        m.join("::")
    }
}

/// The cycles between files, explained by one import per edge.
fn file_cycles(tree: &Tree) -> Vec<String> {
    let edges = edges(tree);
    let keys: BTreeSet<(Module, Module)> = edges.keys().cloned().collect();
    cycles(&keys)
        .into_iter()
        .map(|component| {
            let inside: BTreeSet<&Module> = component.iter().collect();
            let why: Vec<String> = edges
                .iter()
                .filter(|((a, b), _)| inside.contains(a) && inside.contains(b))
                .map(|((a, b), path)| format!("{} -> {} ({path})", name(a), name(b)))
                .collect();
            why.join("; ")
        })
        .collect()
}

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap().to_path_buf()
}

#[test]
fn no_import_cycle_between_the_files_of_a_library() {
    let ws = workspace();
    let mut found = Vec::new();
    let crates = [
        ("gateway", "gateway/src", "lib.rs"),
        ("vision-gateway (binary)", "gateway/src/bin/vision-gateway", "main.rs"),
        ("inference", "inference/src", "lib.rs"),
        ("testkit", "tests/support/src", "lib.rs"),
    ];
    for (krate, src, root) in crates {
        let tree = tree(&ws.join(src), root);
        assert!(tree.files.len() > 1, "{krate}: too few module files found");
        for cycle in file_cycles(&tree) {
            found.push(format!("{krate}: {cycle}"));
        }
    }
    assert!(found.is_empty(), "import cycles between files:\n{}", found.join("\n"));
}

#[test]
fn the_gateway_top_level_modules_import_only_from_lower_layers() {
    let tree = tree(&workspace().join("gateway/src"), "lib.rs");
    let layer: BTreeMap<&str, (usize, u8)> =
        GATEWAY_LAYERS.iter().enumerate().map(|(i, (m, l))| (*m, (i, *l))).collect();
    let mut wrong = Vec::new();
    let mut top_edges = BTreeSet::new();
    for ((from, to), path) in edges(&tree) {
        let top = |m: &Module| m.first().cloned().unwrap_or_default();
        let (a, b) = (top(&from), top(&to));
        if a == b {
            continue;
        }
        top_edges.insert((a.clone(), b.clone()));
        match (layer.get(a.as_str()), layer.get(b.as_str())) {
            (Some(&(_, la)), Some(&(_, lb))) if lb < la => {}
            (Some(&(ia, la)), Some(&(ib, lb))) if lb == la && ib < ia => {}
            (None, _) | (_, None) => {
                wrong.push(format!("{} or {} has no layer in GATEWAY_LAYERS", name(&from), name(&to)))
            }
            _ => wrong.push(format!("{} imports {} ({path}): not a lower layer", name(&from), name(&to))),
        }
    }
    assert!(top_edges.len() > 10, "too few imports between modules found: {top_edges:?}");
    assert!(wrong.is_empty(), "layering broken:\n{}", wrong.join("\n"));
}

#[test]
fn the_library_does_not_use_the_test_support_crate() {
    let tree = tree(&workspace().join("gateway/src"), "lib.rs");
    let users: Vec<String> = tree
        .files
        .values()
        .filter(|f| strip_comments(&std::fs::read_to_string(f).unwrap()).contains("testkit::"))
        .map(|f| f.display().to_string())
        .collect();
    assert!(users.is_empty(), "the library uses testkit: {users:?}");
}

#[test]
fn the_checker_finds_a_cycle_it_is_shown() {
    let edges: BTreeSet<(u8, u8)> = [(1, 2), (2, 3), (3, 1), (3, 4)].into_iter().collect();
    assert_eq!(cycles(&edges).len(), 1);
    let mut out = Vec::new();
    expand("crate::{log::{A, b::C as D}, records}", &[], &mut out);
    let got: Vec<String> = out.iter().map(|p| p.join("::")).collect();
    assert_eq!(got, ["crate::log::A", "crate::log::b::C", "crate::records"]);
    let re: Vec<String> =
        reexported("pub use gap::{Area, GapReason};\nuse x::Y;").iter().map(|p| p.join("::")).collect();
    assert_eq!(re, ["gap::Area", "gap::GapReason"]);
    let found = paths("// use crate::x::Y;\nlet a = super::z::W::new(\"crate::q\");");
    let got: Vec<String> = found.iter().map(|p| p.join("::")).collect();
    assert_eq!(got, ["super::z::W::new"]);
}
