//! The source layout's rules, checked from the files themselves: the import graph between the
//! files of `src/` has no cycle, and layers only depend downwards:
//! cli -> controller -> {aws, k8s} -> telemetry -> core (aws and k8s never use each other).
//!
//! `make check-layers` runs this with the graph printed (one line per file, what it uses).
//! Test modules (`#[cfg(test)] mod tests` at the end of a file) are left out: a test may reach
//! across layers to build its fixture.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

const LAYERS: [&str; 6] = ["core", "telemetry", "k8s", "aws", "controller", "cli"];

/// Rank of a layer: a file may use files of its own layer or of a lower rank.
fn rank(layer: &str) -> Option<usize> {
    match layer {
        "core" => Some(0),
        "telemetry" => Some(1),
        // Side by side: neither may use the other.
        "k8s" | "aws" => Some(2),
        "controller" => Some(3),
        "cli" => Some(4),
        _ => None,
    }
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// `src/core/meta.rs` -> `core::meta`; `src/core/mod.rs` -> `core`; `src/lib.rs` -> `crate`.
fn module_of(src: &Path, file: &Path) -> String {
    let relative = file.strip_prefix(src).unwrap().with_extension("");
    let parts: Vec<String> = relative
        .components()
        .map(|c| c.as_os_str().to_string_lossy().into_owned())
        .filter(|p| p != "mod")
        .collect();
    match parts.as_slice() {
        [only] if only == "lib" => "crate".into(),
        _ => parts.join("::"),
    }
}

/// The code without its trailing test module.
fn without_tests(text: &str) -> &str {
    match text.find("#[cfg(test)]\nmod tests") {
        Some(i) => &text[..i],
        None => match text.find("#[cfg(test)]\npub(crate) mod tests") {
            Some(i) => &text[..i],
            None => text,
        },
    }
}

/// Every `crate::a::b...` path in `code`, as the longest known module it names.
fn uses(code: &str, modules: &BTreeSet<String>) -> BTreeSet<String> {
    let mut found = BTreeSet::new();
    for (i, _) in code.match_indices("crate::") {
        let rest = &code[i + "crate::".len()..];
        let path: String = rest
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_' || *c == ':')
            .collect();
        let segments: Vec<&str> = path.split("::").filter(|s| !s.is_empty()).collect();
        // The longest prefix that is a module; `crate::Error` and friends are the crate root.
        let module = (1..=segments.len())
            .rev()
            .map(|n| segments[..n].join("::"))
            .find(|m| modules.contains(m))
            .unwrap_or_else(|| "crate".into());
        found.insert(module);
    }
    found
}

fn layer(module: &str) -> &str {
    module.split("::").next().unwrap()
}

/// A cycle in `graph`, if any, as the modules along it.
fn find_cycle(graph: &BTreeMap<String, BTreeSet<String>>) -> Option<Vec<String>> {
    fn visit(
        node: &str,
        graph: &BTreeMap<String, BTreeSet<String>>,
        state: &mut BTreeMap<String, u8>,
        stack: &mut Vec<String>,
    ) -> Option<Vec<String>> {
        state.insert(node.to_string(), 1);
        stack.push(node.to_string());
        for next in graph.get(node).into_iter().flatten() {
            match state.get(next.as_str()).copied().unwrap_or(0) {
                1 => {
                    let start = stack.iter().position(|n| n == next).unwrap();
                    let mut cycle = stack[start..].to_vec();
                    cycle.push(next.clone());
                    return Some(cycle);
                }
                0 => {
                    if let Some(cycle) = visit(next, graph, state, stack) {
                        return Some(cycle);
                    }
                }
                _ => {}
            }
        }
        stack.pop();
        state.insert(node.to_string(), 2);
        None
    }
    let mut state = BTreeMap::new();
    for node in graph.keys() {
        if state.get(node.as_str()).copied().unwrap_or(0) == 0 {
            let mut stack = Vec::new();
            if let Some(cycle) = visit(node, graph, &mut state, &mut stack) {
                return Some(cycle);
            }
        }
    }
    None
}

fn graph() -> BTreeMap<String, BTreeSet<String>> {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    // The binary is its own crate, a user of the library.
    files.retain(|f| !f.ends_with("main.rs"));
    files.sort();
    let modules: BTreeSet<String> = files.iter().map(|f| module_of(&src, f)).collect();
    let mut graph = BTreeMap::new();
    for file in &files {
        let module = module_of(&src, file);
        let mut text = std::fs::read_to_string(file).unwrap();
        if module == "crate" {
            // The root names its children without `crate::` (the crate-wide Error's sources).
            for layer in LAYERS {
                text = text.replace(&format!(" {layer}::"), &format!(" crate::{layer}::"));
                text = text.replace(&format!("({layer}::"), &format!("(crate::{layer}::"));
            }
        }
        let mut used = uses(without_tests(&text), &modules);
        used.remove(&module);
        // A module's own `mod.rs` declaring its children is not a use.
        used.retain(|u| !u.starts_with(&format!("{module}::")) || module == "crate");
        graph.insert(module, used);
    }
    graph
}

#[test]
fn the_import_graph_has_no_cycle_and_points_down() {
    let graph = graph();
    println!("import graph of src/ (file: what it uses; test modules left out)");
    for (module, used) in &graph {
        let used: Vec<&str> = used.iter().map(String::as_str).collect();
        println!("  {module}: {}", used.join(" "));
    }
    assert!(
        graph.keys().any(|m| m == "core::meta") && graph.len() > 30,
        "the walk of src/ found {} files",
        graph.len()
    );
    if let Some(cycle) = find_cycle(&graph) {
        panic!("import cycle: {}", cycle.join(" -> "));
    }
    let mut upward = Vec::new();
    for (module, used) in &graph {
        let Some(from) = rank(layer(module)) else {
            continue;
        };
        for target in used {
            // The crate root holds only the module tree and the crate-wide Error.
            if target == "crate" {
                continue;
            }
            let to = rank(layer(target)).unwrap_or(usize::MAX);
            let sideways = to == from && layer(module) != layer(target);
            if to > from || sideways {
                upward.push(format!("{module} -> {target}"));
            }
        }
    }
    assert!(
        upward.is_empty(),
        "imports against the layering {}: {upward:#?}",
        LAYERS.join(" < ")
    );
}

#[test]
fn the_checker_finds_cycles_and_upward_imports() {
    let modules: BTreeSet<String> = ["core::meta", "core", "cli::run", "controller::pipeline"]
        .into_iter()
        .map(String::from)
        .collect();
    let code = "use crate::core::meta::{A, b};\nfn f() { crate::Error::Config(x); crate::cli::run::run() }\n#[cfg(test)]\nmod tests { use crate::controller::pipeline; }";
    let used = uses(without_tests(code), &modules);
    assert_eq!(
        used,
        BTreeSet::from(["core::meta".into(), "crate".into(), "cli::run".into()])
    );
    let graph = BTreeMap::from([
        ("a".to_string(), BTreeSet::from(["b".to_string()])),
        ("b".to_string(), BTreeSet::from(["c".to_string()])),
        ("c".to_string(), BTreeSet::from(["a".to_string()])),
    ]);
    assert_eq!(find_cycle(&graph).unwrap(), ["a", "b", "c", "a"]);
}
