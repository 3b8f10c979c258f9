//! The daemon's modules form no import cycle: each file's references to
//! other top-level modules of the crate (`crate::name`, and `use crate::{a,
//! b::...}` lists), read from the source as text, make a graph that must
//! be acyclic. Shared vocabulary lives in `model` at the bottom. Runs
//! unprivileged.

use std::{
    collections::{BTreeMap, BTreeSet},
    path::{Path, PathBuf},
};

/// The crate's top-level modules: `src/*.rs` files and `src/*/` folders.
fn modules(src: &Path) -> BTreeMap<String, Vec<PathBuf>> {
    let mut out: BTreeMap<String, Vec<PathBuf>> = BTreeMap::new();
    for e in std::fs::read_dir(src).expect("reading src") {
        let p = e.expect("dir entry").path();
        let name = p
            .file_stem()
            .and_then(|s| s.to_str())
            .unwrap_or_default()
            .to_string();
        if p.is_dir() {
            let files = walk(&p);
            out.entry(name).or_default().extend(files);
        } else if p.extension().is_some_and(|x| x == "rs") && name != "lib" && name != "main" {
            out.entry(name).or_default().push(p);
        }
    }
    out
}

fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut v = Vec::new();
    for e in std::fs::read_dir(dir).expect("reading a module folder") {
        let p = e.expect("dir entry").path();
        if p.is_dir() {
            v.extend(walk(&p));
        } else if p.extension().is_some_and(|x| x == "rs") {
            v.push(p);
        }
    }
    v
}

/// The top-level modules a source text names through `crate::`.
fn references(text: &str, known: &BTreeSet<String>) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    // Comments name modules too; only code counts.
    let code: String = text
        .lines()
        .map(|l| match l.find("//") {
            Some(i) => &l[..i],
            None => l,
        })
        .collect::<Vec<_>>()
        .join("\n");
    let mut rest = code.as_str();
    while let Some(i) = rest.find("crate::") {
        rest = &rest[i + "crate::".len()..];
        if let Some(list) = rest.strip_prefix('{') {
            // `use crate::{a, b::{..}, c}`: the first segment of each item
            // at the list's top level.
            let mut depth = 0;
            let mut item_start = true;
            let mut word = String::new();
            for ch in list.chars() {
                let ends_item = matches!(ch, ',' | '}') && depth == 0;
                if item_start && (ch.is_alphanumeric() || ch == '_') {
                    word.push(ch);
                    continue;
                }
                if item_start && !word.is_empty() {
                    // The item's first segment is complete.
                    if known.contains(&word) {
                        out.insert(word.clone());
                    }
                    item_start = false;
                }
                match ch {
                    '{' => depth += 1,
                    '}' if depth == 0 => break,
                    '}' => depth -= 1,
                    _ => {}
                }
                if ends_item {
                    item_start = true;
                    word.clear();
                }
            }
        } else {
            let name: String = rest
                .chars()
                .take_while(|c| c.is_alphanumeric() || *c == '_')
                .collect();
            if known.contains(&name) {
                out.insert(name);
            }
        }
    }
    out
}

/// A cycle of the graph, if there is one.
fn find_cycle(graph: &BTreeMap<String, BTreeSet<String>>) -> Option<Vec<String>> {
    fn visit(
        n: &str,
        g: &BTreeMap<String, BTreeSet<String>>,
        state: &mut BTreeMap<String, u8>,
        stack: &mut Vec<String>,
    ) -> Option<Vec<String>> {
        state.insert(n.to_string(), 1);
        stack.push(n.to_string());
        for m in g.get(n).into_iter().flatten() {
            match state.get(m).copied().unwrap_or(0) {
                1 => {
                    let at = stack.iter().position(|s| s == m).unwrap_or(0);
                    let mut c = stack[at..].to_vec();
                    c.push(m.clone());
                    return Some(c);
                }
                0 => {
                    if let Some(c) = visit(m, g, state, stack) {
                        return Some(c);
                    }
                }
                _ => {}
            }
        }
        stack.pop();
        state.insert(n.to_string(), 2);
        None
    }
    let mut state = BTreeMap::new();
    for n in graph.keys() {
        if state.get(n).copied().unwrap_or(0) == 0 {
            let mut stack = Vec::new();
            if let Some(c) = visit(n, graph, &mut state, &mut stack) {
                return Some(c);
            }
        }
    }
    None
}

#[test]
fn the_reference_reader_sees_use_lists_and_paths() {
    let known: BTreeSet<String> = ["a", "b", "c", "d"].iter().map(|s| s.to_string()).collect();
    let text = "use crate::{a::X, b::{Y, Z}};\nuse crate::{\n    b, c,\n};\nfn f() { crate::c::g(); }\n// crate::d in a comment\n";
    let want: BTreeSet<String> = ["a", "b", "c"].iter().map(|s| s.to_string()).collect();
    assert_eq!(references(text, &known), want);
    let g: BTreeMap<String, BTreeSet<String>> = [
        ("a".to_string(), ["b".to_string()].into()),
        ("b".to_string(), ["a".to_string()].into()),
    ]
    .into();
    assert!(find_cycle(&g).is_some(), "a cycle is found");
}

#[test]
fn no_module_cycle() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mods = modules(&src);
    let known: BTreeSet<String> = mods.keys().cloned().collect();
    let mut graph: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for (name, files) in &mods {
        let mut refs = BTreeSet::new();
        for f in files {
            let text = std::fs::read_to_string(f).expect("reading a source file");
            refs.extend(references(&text, &known));
        }
        refs.remove(name);
        graph.insert(name.clone(), refs);
    }
    if let Some(c) = find_cycle(&graph) {
        let edges: Vec<String> = graph
            .iter()
            .map(|(k, v)| {
                format!(
                    "{k} -> {}",
                    v.iter().cloned().collect::<Vec<_>>().join(", ")
                )
            })
            .collect();
        panic!(
            "module cycle: {}\nthe graph:\n{}",
            c.join(" -> "),
            edges.join("\n")
        );
    }
}

/// One door to the maps: only `dataplane` (the loader, `maps.rs`,
/// `links.rs`, the readers) names aya; every other concern goes through
/// its typed methods.
#[test]
fn only_the_dataplane_touches_bpf_maps() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut offenders = Vec::new();
    for (name, files) in modules(&src) {
        if name == "dataplane" {
            continue;
        }
        for f in files {
            let text = std::fs::read_to_string(&f).expect("reading a source file");
            let code = text
                .lines()
                .filter(|l| !l.trim_start().starts_with("//"))
                .collect::<Vec<_>>()
                .join("\n");
            if code.contains("aya::") || code.contains("aya_log::") {
                offenders.push(f.display().to_string());
            }
        }
    }
    assert!(
        offenders.is_empty(),
        "aya used outside dataplane/: {offenders:?}"
    );
}
