//! The crate's modules depend on each other one way: no top-level module of `src/` reaches,
//! through `crate::` paths in its non-test code, a module that reaches it back.
//!
//! Run `cargo test --test module_graph -- --nocapture` to see the layers, lowest first.
//! A cycle fails with the modules on it and the files that close it.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// Edges between top-level modules: `from -> to -> files of `from` that name `to``.
type Graph = BTreeMap<String, BTreeMap<String, BTreeSet<String>>>;

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).expect("read src") {
        let path = entry.expect("dir entry").path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The code of `text` that ships: line comments and everything from the first
/// `#[cfg(test)]` on (the unit-test module sits at the end of a file here) left out.
fn shipped_code(text: &str) -> String {
    let mut code = String::new();
    for line in text.lines() {
        let trimmed = line.trim_start();
        if trimmed.starts_with("#[cfg(test)]") {
            break;
        }
        if trimmed.starts_with("//") {
            continue;
        }
        code.push_str(line);
        code.push('\n');
    }
    code
}

/// The top-level modules that `code` names as `crate::<module>`.
fn named_modules(code: &str) -> BTreeSet<String> {
    let mut found = BTreeSet::new();
    for (at, _) in code.match_indices("crate::") {
        // `$crate::` (in macros) and `foo_crate::` are other paths.
        if code[..at]
            .chars()
            .next_back()
            .is_some_and(|c| c.is_alphanumeric() || c == '_' || c == '$')
        {
            continue;
        }
        let name: String = code[at + "crate::".len()..]
            .chars()
            .take_while(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '_')
            .collect();
        if !name.is_empty() {
            found.insert(name);
        }
    }
    found
}

fn module_graph(src: &Path) -> Graph {
    let mut files = Vec::new();
    rust_files(src, &mut files);
    let mut graph = Graph::new();
    for file in files {
        let relative = file.strip_prefix(src).expect("under src");
        let first = relative
            .components()
            .next()
            .expect("a component")
            .as_os_str()
            .to_string_lossy()
            .into_owned();
        let module = first.trim_end_matches(".rs").to_owned();
        // The crate roots wire everything; a `tests.rs` file is a unit-test module.
        if module == "lib" || module == "main" || file.file_name().is_some_and(|n| n == "tests.rs")
        {
            continue;
        }
        let text = std::fs::read_to_string(&file).expect("read source");
        let edges = graph.entry(module.clone()).or_default();
        for target in named_modules(&shipped_code(&text)) {
            if target != module {
                edges
                    .entry(target)
                    .or_default()
                    .insert(relative.display().to_string());
            }
        }
    }
    graph
}

/// The modules in dependency order (each after all it names), or the modules left on cycles.
fn layers(graph: &Graph) -> Result<Vec<Vec<String>>, BTreeSet<String>> {
    let mut left: BTreeSet<String> = graph
        .iter()
        .flat_map(|(from, to)| std::iter::once(from.clone()).chain(to.keys().cloned()))
        .collect();
    let mut placed = BTreeSet::new();
    let mut layers = Vec::new();
    while !left.is_empty() {
        let layer: Vec<String> = left
            .iter()
            .filter(|m| {
                graph
                    .get(*m)
                    .is_none_or(|to| to.keys().all(|t| placed.contains(t)))
            })
            .cloned()
            .collect();
        if layer.is_empty() {
            return Err(on_cycles(graph, left));
        }
        for m in &layer {
            left.remove(m);
            placed.insert(m.clone());
        }
        layers.push(layer);
    }
    Ok(layers)
}

/// Of `stuck` (modules that wait on each other), those on a cycle: modules that only depend on
/// a cycle, without being named back, are dropped until none is left.
fn on_cycles(graph: &Graph, mut stuck: BTreeSet<String>) -> BTreeSet<String> {
    loop {
        let named: BTreeSet<&String> = stuck
            .iter()
            .filter_map(|m| graph.get(m))
            .flat_map(|to| to.keys())
            .filter(|t| stuck.contains(*t))
            .collect();
        let unnamed: Vec<String> = stuck
            .iter()
            .filter(|m| !named.contains(m))
            .cloned()
            .collect();
        if unnamed.is_empty() {
            return stuck;
        }
        for m in unnamed {
            stuck.remove(&m);
        }
    }
}

#[test]
fn modules_depend_on_each_other_one_way() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let graph = module_graph(&src);
    assert!(
        graph.len() > 10,
        "the crate's modules were not found under {}",
        src.display()
    );
    match layers(&graph) {
        Ok(layers) => {
            println!("module layers, lowest first (each names only those before it):");
            for (depth, layer) in layers.iter().enumerate() {
                println!("  {depth}: {}", layer.join(" "));
            }
        }
        Err(stuck) => {
            let mut why = String::new();
            for module in &stuck {
                for (target, files) in graph.get(module).into_iter().flatten() {
                    if stuck.contains(target) {
                        let files: Vec<&str> = files.iter().map(String::as_str).collect();
                        why.push_str(&format!("\n  {module} -> {target} ({})", files.join(", ")));
                    }
                }
            }
            panic!("modules on a dependency cycle: {stuck:?}; their edges:{why}");
        }
    }
}

#[test]
fn a_cycle_is_found_and_test_code_is_not_counted() {
    let mut graph = Graph::new();
    let edge = |graph: &mut Graph, from: &str, to: &str| {
        graph
            .entry(from.into())
            .or_default()
            .entry(to.into())
            .or_default()
            .insert(format!("{from}.rs"));
    };
    edge(&mut graph, "api", "registry");
    edge(&mut graph, "registry", "cache");
    assert_eq!(
        layers(&graph).unwrap(),
        vec![
            vec!["cache".to_owned()],
            vec!["registry".into()],
            vec!["api".into()]
        ]
    );
    edge(&mut graph, "registry", "api");
    edge(&mut graph, "cli", "api");
    assert_eq!(
        layers(&graph).unwrap_err(),
        BTreeSet::from(["api".to_owned(), "registry".into()])
    );

    let code = shipped_code(
        "use crate::cache::X;\n// crate::api in a comment\nfn f() { crate::names::check(); $crate::x(); }\n#[cfg(test)]\nmod tests { use crate::poller; }\n",
    );
    assert_eq!(
        named_modules(&code),
        BTreeSet::from(["cache".to_owned(), "names".into()])
    );
}
