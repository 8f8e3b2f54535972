//! Rules about the code base itself, checked like any other behaviour.

use std::collections::{HashMap, HashSet, VecDeque};
use std::path::Path;
use std::process::Command;

use serde_json::Value;
use weft_tests::repo_root;

/// Normal (non-dev, non-build) dependency closure of a workspace package.
fn dependency_closure(package: &str) -> HashSet<String> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut cmd = Command::new(cargo);
    cmd.args(["metadata", "--format-version", "1"]);
    if cfg!(all(target_os = "linux", target_arch = "x86_64")) {
        // Only this platform's dependencies, so no other platform's crates
        // need downloading.
        cmd.args(["--filter-platform", "x86_64-unknown-linux-gnu"]);
    }
    let out = cmd
        .current_dir(repo_root())
        .output()
        .expect("cargo metadata runs");
    assert!(out.status.success(), "cargo metadata failed: {}", String::from_utf8_lossy(&out.stderr));
    let meta: Value = serde_json::from_slice(&out.stdout).unwrap();
    let names: HashMap<&str, &str> = meta["packages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| (p["id"].as_str().unwrap(), p["name"].as_str().unwrap()))
        .collect();
    let nodes: HashMap<&str, &Value> =
        meta["resolve"]["nodes"].as_array().unwrap().iter().map(|n| (n["id"].as_str().unwrap(), n)).collect();
    let root = names.iter().find(|(_, n)| **n == package).map(|(id, _)| *id).expect("package in workspace");
    let mut seen = HashSet::new();
    let mut queue = VecDeque::from([root]);
    while let Some(id) = queue.pop_front() {
        if !seen.insert(id) {
            continue;
        }
        for dep in nodes[id]["deps"].as_array().unwrap() {
            let normal = dep["dep_kinds"].as_array().unwrap().iter().any(|k| k["kind"].is_null());
            if normal {
                queue.push_back(dep["pkg"].as_str().unwrap());
            }
        }
    }
    seen.into_iter().map(|id| names[id].to_string()).collect()
}

#[test]
fn the_engine_depends_on_no_wasm_runtime_or_network_stack() {
    let closure = dependency_closure("weft-engine");
    assert!(closure.contains("weft-kernels-cpu"), "the closure is computed: {closure:?}");
    for banned in ["wasmtime", "wasmtime-wasi", "hyper", "tonic", "axum", "reqwest"] {
        assert!(!closure.contains(banned), "weft-engine must not depend on {banned}");
    }
}

#[test]
fn only_the_plugin_runtime_links_wasmtime() {
    let meta = std::fs::read_to_string(repo_root().join("Cargo.toml")).unwrap();
    let members: Vec<&str> = meta
        .split("members = [")
        .nth(1)
        .and_then(|rest| rest.split(']').next())
        .unwrap()
        .split(',')
        .map(|m| m.trim().trim_matches('"'))
        .filter(|m| !m.is_empty())
        .collect();
    let mut linking = Vec::new();
    for member in members {
        let manifest = std::fs::read_to_string(repo_root().join(member).join("Cargo.toml")).unwrap();
        let dependencies = manifest.split("[dependencies]").nth(1).unwrap_or("").split("\n[").next().unwrap_or("");
        if dependencies.lines().any(|l| l.trim_start().starts_with("wasmtime")) {
            linking.push(member);
        }
    }
    assert_eq!(linking, ["host/plugin-runtime"], "crates with a direct wasmtime dependency");
}

fn rust_files(dir: &Path, out: &mut Vec<std::path::PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else { return };
    for e in entries.flatten() {
        let p = e.path();
        let name = e.file_name();
        if p.is_dir() {
            if name != "target" && name != ".git" && name != "data" {
                rust_files(&p, out);
            }
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
}

#[test]
fn every_rust_file_opens_with_a_module_doc() {
    let mut files = Vec::new();
    for top in ["host", "kernels", "tests", "plugins", "sdk", "examples"] {
        rust_files(&repo_root().join(top), &mut files);
    }
    assert!(files.len() > 20);
    let missing: Vec<_> = files
        .iter()
        .filter(|f| !std::fs::read_to_string(f).unwrap().trim_start().starts_with("//!"))
        .map(|f| f.strip_prefix(repo_root()).unwrap().display().to_string())
        .collect();
    assert!(missing.is_empty(), "files without a `//!` module doc: {missing:?}");
}
