//! The architecture as tests: rules that ARCHITECTURE.md states and the build now enforces. Module imports are
//! read from the source (top-level modules of every crate, `crate::x` and a root module's `super::x`); the
//! dependency rules are read from `cargo tree` on the lock file, so they hold for what is really compiled.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;

fn crates_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            rust_files(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
}

/// The top-level modules another module's code names, per crate: `crate::x`, and `super::x` in a file whose
/// parent is the crate root.
fn module_imports(src: &Path) -> BTreeMap<String, BTreeSet<String>> {
    let mut mods = BTreeMap::new();
    for e in std::fs::read_dir(src).unwrap() {
        let p = e.unwrap().path();
        let name = p.file_stem().unwrap().to_string_lossy().into_owned();
        if name == "lib" || name == "main" || (p.is_file() && p.extension().is_none_or(|x| x != "rs")) {
            continue;
        }
        mods.entry(name).or_insert_with(Vec::new).push(p);
    }
    let names: BTreeSet<String> = mods.keys().cloned().collect();
    let mut edges = BTreeMap::new();
    for (m, paths) in &mods {
        let mut files = Vec::new();
        for p in paths {
            if p.is_dir() { rust_files(p, &mut files) } else { files.push(p.clone()) }
        }
        let mut to = BTreeSet::new();
        for f in files {
            let at_root = f.parent() == Some(src)
                || f.file_name().is_some_and(|n| n == "mod.rs") && f.parent().and_then(Path::parent) == Some(src);
            for line in std::fs::read_to_string(&f).unwrap().lines() {
                let line = line.trim_start();
                if line.starts_with("//") {
                    continue;
                }
                let mut prefixes = vec!["crate::"];
                if at_root {
                    prefixes.push("super::");
                }
                for prefix in prefixes {
                    for (i, _) in line.match_indices(prefix) {
                        let before = line[..i].chars().next_back();
                        if before.is_some_and(|c| c.is_alphanumeric() || c == '_') {
                            continue;
                        }
                        let rest = &line[i + prefix.len()..];
                        let ident: String = rest.chars().take_while(|c| c.is_alphanumeric() || *c == '_').collect();
                        if ident != *m && names.contains(&ident) {
                            to.insert(ident);
                        }
                    }
                }
            }
        }
        edges.insert(m.clone(), to);
    }
    edges
}

fn find_cycle(edges: &BTreeMap<String, BTreeSet<String>>) -> Option<Vec<String>> {
    fn visit<'a>(
        u: &'a str,
        edges: &'a BTreeMap<String, BTreeSet<String>>,
        state: &mut BTreeMap<&'a str, bool>,
        stack: &mut Vec<&'a str>,
    ) -> Option<Vec<String>> {
        state.insert(u, false);
        stack.push(u);
        for v in edges.get(u).into_iter().flatten() {
            match state.get(v.as_str()) {
                Some(false) => {
                    let at = stack.iter().position(|s| s == v).unwrap();
                    let mut cycle: Vec<String> = stack[at..].iter().map(|s| s.to_string()).collect();
                    cycle.push(v.clone());
                    return Some(cycle);
                }
                Some(true) => {}
                None => {
                    if let Some(c) = visit(v, edges, state, stack) {
                        return Some(c);
                    }
                }
            }
        }
        stack.pop();
        state.insert(u, true);
        None
    }
    let mut state = BTreeMap::new();
    for u in edges.keys() {
        if !state.contains_key(u.as_str())
            && let Some(c) = visit(u, edges, &mut state, &mut Vec::new())
        {
            return Some(c);
        }
    }
    None
}

#[test]
fn no_crate_has_an_import_cycle_between_its_modules() {
    let mut checked = 0;
    for e in std::fs::read_dir(crates_dir()).unwrap() {
        let src = e.unwrap().path().join("src");
        if !src.is_dir() {
            continue;
        }
        let edges = module_imports(&src);
        assert!(find_cycle(&edges).is_none(), "{}: import cycle {:?}", src.display(), find_cycle(&edges));
        checked += edges.len();
    }
    assert!(checked > 40, "only {checked} modules found: is the crates folder where this test looks?");
}

#[test]
fn the_connectors_erp_module_is_a_leaf() {
    let src = crates_dir().join("ferry-connector/src");
    let edges = module_imports(&src);
    assert_eq!(edges.get("erp"), Some(&BTreeSet::new()), "erp must import nothing else from ferry-connector");
    assert!(edges["delivery"].contains("erp") && !edges["delivery"].contains("config"), "{:?}", edges["delivery"]);
}

#[test]
fn the_module_reader_finds_a_cycle() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("a.rs"), "use crate::b::B;\n").unwrap();
    std::fs::write(dir.path().join("b.rs"), "// crate::c in a comment does not count\nuse super::a::A;\n").unwrap();
    std::fs::write(dir.path().join("c.rs"), "pub struct C;\n").unwrap();
    let edges = module_imports(dir.path());
    assert_eq!(find_cycle(&edges), Some(vec!["a".to_string(), "b".to_string(), "a".to_string()]));
}

/// The packages `package` compiles (normal dependencies), for `target` or the host.
fn compiled_packages(package: &str, target: Option<&str>) -> BTreeSet<String> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut cmd = Command::new(cargo);
    cmd.args(["tree", "-e", "normal", "--prefix", "none", "-f", "{p}", "-p", package]);
    if let Some(t) = target {
        cmd.args(["--target", t]);
    }
    let out = cmd.current_dir(crates_dir()).output().expect("cargo tree runs");
    assert!(out.status.success(), "cargo tree: {}", String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8(out.stdout).unwrap();
    text.lines().filter_map(|l| l.split_whitespace().next()).map(str::to_owned).collect()
}

#[test]
fn dependencies_follow_the_architecture() {
    let comms = compiled_packages("ferry-comms", None);
    assert!(comms.contains("russh"), "cargo tree output not understood: {comms:?}");
    assert!(!comms.contains("csv"), "the relay never parses CSV: ferry-comms must not compile a CSV parser");

    for target in [None, Some("x86_64-pc-windows-gnu")] {
        let connector = compiled_packages("ferry-connector", target);
        assert!(connector.contains("reqwest"), "cargo tree output not understood: {connector:?}");
        for server in ["axum", "axum-server", "ferry-web", "ferry-comms", "ferry-app", "ferry-sample"] {
            assert!(!connector.contains(server), "the Connector ({target:?}) must not compile {server}");
        }
    }
    let windows = compiled_packages("ferry", Some("x86_64-pc-windows-gnu"));
    for server in ["axum", "ferry-web", "ferry-comms", "ferry-app"] {
        assert!(!windows.contains(server), "the Windows binary is the Connector: it must not compile {server}");
    }
}
