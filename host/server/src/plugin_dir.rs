//! The watched plugin folder (`--plugin-dir`): drop a manifest (`*.toml`)
//! and the component it names into the folder and the server deploys it,
//! exactly as `POST /admin/v1/plugins` would.
//!
//! Only names ending in `.toml` (not starting with `.`) are manifests, so
//! the way to add one is write-then-rename (`x.toml.tmp` → `x.toml`): a
//! file is looked at only once it is complete. After any change in the
//! folder settles (a quarter second without events) every manifest is
//! read; one whose name and version are already deployed is skipped, one
//! that does not parse, whose component is missing or is rejected is
//! logged once and skipped until either file changes. Removing files
//! undeploys nothing: `weft plugin remove` does that.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use axum::body::Bytes;
use notify::Watcher;
use sha2::{Digest, Sha256};

use crate::AppState;
use crate::manifest::Manifest;

/// How long the folder must be quiet before it is read.
const SETTLE: Duration = Duration::from_millis(250);

/// Watch `dir` and deploy what appears in it, for as long as the server
/// runs. Fails only if the folder cannot be watched.
pub fn watch(dir: PathBuf, state: AppState) -> notify::Result<()> {
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let mut watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
        if event.is_ok() {
            let _ = tx.send(());
        }
    })?;
    watcher.watch(&dir, notify::RecursiveMode::NonRecursive)?;
    tokio::spawn(async move {
        let _watcher = watcher;
        let mut failed: HashMap<PathBuf, [u8; 32]> = HashMap::new();
        loop {
            scan(&dir, &state, &mut failed).await;
            if rx.recv().await.is_none() {
                return;
            }
            // Let a burst of events (a copy, a rename) settle first.
            while let Ok(Some(())) = tokio::time::timeout(SETTLE, rx.recv()).await {}
        }
    });
    Ok(())
}

/// Deploy every manifest in `dir` not yet deployed. `failed` remembers
/// what failed (by the manifest's path and both files' contents), so a
/// failure is logged once.
async fn scan(dir: &Path, state: &AppState, failed: &mut HashMap<PathBuf, [u8; 32]>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        eprintln!("weft: the plugin folder {} cannot be read", dir.display());
        return;
    };
    let mut manifests: Vec<PathBuf> = entries
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "toml") && !p.file_name().is_some_and(|n| n.to_string_lossy().starts_with('.')))
        .collect();
    manifests.sort();
    for path in manifests {
        let (digest, outcome) = match load(dir, &path) {
            Ok((digest, manifest, component)) => {
                if state.plugins.has(&manifest.name, &manifest.version).unwrap_or(true) || failed.get(&path) == Some(&digest) {
                    continue;
                }
                let label = format!("{}@{}", manifest.name, manifest.version);
                let outcome = crate::routes::admin::deploy_version(state, manifest, component, None)
                    .await
                    .map(|_| label.clone())
                    .map_err(|e| format!("{label}: {e}"));
                (digest, outcome)
            }
            Err((digest, why)) => {
                if failed.get(&path) == Some(&digest) {
                    continue;
                }
                (digest, Err(why))
            }
        };
        match outcome {
            Ok(label) => {
                failed.remove(&path);
                eprintln!("weft: deployed {label} from {}", path.display());
            }
            Err(why) => {
                eprintln!("weft: the plugin folder's {} was not deployed: {why}", path.display());
                failed.insert(path, digest);
            }
        }
    }
}

/// A manifest and its component, with a digest of both; or why not (with
/// the digest of what was read, so the same failure is not retried).
fn load(dir: &Path, path: &Path) -> Result<([u8; 32], Manifest, Bytes), ([u8; 32], String)> {
    let mut hasher = Sha256::new();
    let text = std::fs::read(path).map_err(|e| (hasher.clone().finalize().into(), e.to_string()))?;
    hasher.update(&text);
    let text = String::from_utf8(text).map_err(|_| (hasher.clone().finalize().into(), "the manifest is not UTF-8".to_string()))?;
    let manifest = Manifest::from_toml(&text).map_err(|e| (hasher.clone().finalize().into(), e.to_string()))?;
    let Some(file) = &manifest.component else {
        return Err((hasher.finalize().into(), "the manifest names no `component` file".into()));
    };
    let file = dir.join(file);
    let component = std::fs::read(&file).map_err(|e| (hasher.clone().finalize().into(), format!("{}: {e}", file.display())))?;
    hasher.update(&component);
    Ok((hasher.finalize().into(), manifest, Bytes::from(component)))
}
