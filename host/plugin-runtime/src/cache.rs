//! The precompiled-component cache: a component is compiled by Cranelift
//! once, and its machine code kept as `<content sha256>-<engine hash>.cwasm`
//! so a restart (or a redeploy of the same bytes) maps it back in
//! milliseconds instead of compiling for seconds.
//!
//! The key covers the component's bytes and everything in the engine's
//! configuration that changes the code (wasmtime's own compatibility hash),
//! so a different wasmtime or different limits never load stale code. A
//! file that does not deserialize is recompiled and replaced. Entries are
//! written to a temporary name and renamed, so a crash never leaves a
//! partial entry under a real name.
//!
//! Trust: loading a `.cwasm` runs its machine code, so the cache directory
//! is as sensitive as the `weft` binary itself; it is created private to
//! the server's user. The cache is best effort: an entry that cannot be
//! written only costs the next start a compilation.

use std::hash::{Hash, Hasher};
use std::io::Write;
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};
use wasmtime::Engine;
use wasmtime::component::Component;

/// A directory of precompiled components for one engine configuration.
#[derive(Debug, Clone)]
pub struct CompiledCache {
    dir: PathBuf,
    engine_hash: String,
}

impl CompiledCache {
    /// A cache in `dir` (created, private to this user) for `engine`.
    pub fn open(dir: &Path, engine: &Engine) -> std::io::Result<Self> {
        create_private_dir(dir)?;
        let mut hasher = std::hash::DefaultHasher::new();
        engine.precompile_compatibility_hash().hash(&mut hasher);
        Ok(Self { dir: dir.to_path_buf(), engine_hash: format!("{:016x}", hasher.finish()) })
    }

    fn entry(&self, bytes: &[u8]) -> PathBuf {
        let digest = hex::encode(Sha256::digest(bytes));
        self.dir.join(format!("{digest}-{}.cwasm", self.engine_hash))
    }

    /// The compiled `bytes`: from the cache when an entry loads, else
    /// compiled now and stored for next time.
    pub fn get_or_compile(&self, engine: &Engine, bytes: &[u8]) -> wasmtime::Result<Component> {
        let path = self.entry(bytes);
        if path.exists() {
            // SAFETY: entries are only ever written by `store` below from
            // `Component::serialize` of this engine configuration (the key
            // says so, and wasmtime checks the header again), in a directory
            // only this user can write.
            if let Ok(component) = unsafe { Component::deserialize_file(engine, &path) } {
                return Ok(component);
            }
        }
        let component = Component::new(engine, bytes)?;
        if let Ok(code) = component.serialize() {
            let _ = self.store(&path, &code);
        }
        Ok(component)
    }

    fn store(&self, path: &Path, code: &[u8]) -> std::io::Result<()> {
        let mut tmp = tempfile::Builder::new().prefix(".tmp-").tempfile_in(&self.dir)?;
        tmp.write_all(code)?;
        tmp.as_file().sync_all()?;
        tmp.persist(path).map(drop).map_err(|e| e.error)
    }
}

fn create_private_dir(dir: &Path) -> std::io::Result<()> {
    let mut builder = std::fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    std::os::unix::fs::DirBuilderExt::mode(&mut builder, 0o700);
    builder.create(dir)
}
