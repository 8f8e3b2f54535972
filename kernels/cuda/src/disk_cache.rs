//! Compiled kernel images on disk, so that a restart, or each process of a
//! test run, loads them instead of compiling every module with NVRTC again
//! (seconds per module).
//!
//! Off unless a directory is given ([`set_cache_dir`], or the
//! `WEFT_CUDA_CACHE` environment variable; `weft` uses
//! `$WEFT_HOME/cuda-cache`). An entry is named by the SHA-256 of everything
//! that decides its image (the source, the headers, the compile options and
//! NVRTC's version) and holds the SHA-256 of its image before the image, so
//! a torn or corrupted file is compiled again rather than loaded. Failing
//! to read or write the cache never fails a compile.

use std::io::Write;
use std::path::PathBuf;
use std::sync::{Mutex, OnceLock};

use sha2::{Digest, Sha256};

fn dir_slot() -> &'static Mutex<Option<PathBuf>> {
    static DIR: OnceLock<Mutex<Option<PathBuf>>> = OnceLock::new();
    DIR.get_or_init(|| Mutex::new(std::env::var_os("WEFT_CUDA_CACHE").filter(|d| !d.is_empty()).map(PathBuf::from)))
}

/// Keep compiled kernel images in `dir` (created on first write), or
/// nowhere with `None`.
pub fn set_cache_dir(dir: Option<PathBuf>) {
    *dir_slot().lock().unwrap_or_else(|p| p.into_inner()) = dir;
}

fn dir() -> Option<PathBuf> {
    dir_slot().lock().unwrap_or_else(|p| p.into_inner()).clone()
}

/// The entry name for an image decided by `parts` (each length-prefixed,
/// so no two different lists hash alike).
pub(crate) fn key(parts: &[&[u8]]) -> String {
    let mut h = Sha256::new();
    for p in parts {
        h.update((p.len() as u64).to_le_bytes());
        h.update(p);
    }
    hex::encode(h.finalize())
}

/// The image stored under `key`, if present and intact.
pub(crate) fn load(key: &str) -> Option<Vec<u8>> {
    let bytes = std::fs::read(dir()?.join(key)).ok()?;
    let (sum, image) = bytes.split_at_checked(32)?;
    (Sha256::digest(image).as_slice() == sum).then(|| image.to_vec())
}

/// Store `image` under `key`: written to a temporary file and renamed, so
/// a reader never sees half of it.
pub(crate) fn store(key: &str, image: &[u8]) {
    let Some(dir) = dir() else { return };
    let write = || -> std::io::Result<()> {
        std::fs::create_dir_all(&dir)?;
        let mut tmp = tempfile::NamedTempFile::new_in(&dir)?;
        tmp.write_all(&Sha256::digest(image))?;
        tmp.write_all(image)?;
        tmp.persist(dir.join(key)).map_err(|e| e.error)?;
        Ok(())
    };
    if let Err(e) = write() {
        static WARNED: OnceLock<()> = OnceLock::new();
        WARNED.get_or_init(|| eprintln!("weft: cannot write the CUDA kernel cache in {}: {e}", dir.display()));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_round_trip_and_damaged_ones_are_ignored() {
        let tmp = tempfile::tempdir().unwrap();
        set_cache_dir(Some(tmp.path().to_path_buf()));
        let k = key(&[b"source", b"-DX"]);
        assert_ne!(k, key(&[b"source-", b"DX"]), "parts are length-prefixed");
        assert_eq!(load(&k), None);
        store(&k, b"cubin bytes");
        assert_eq!(load(&k).as_deref(), Some(&b"cubin bytes"[..]));
        // A flipped byte, or a torn file, reads as absent.
        let path = tmp.path().join(&k);
        let mut bytes = std::fs::read(&path).unwrap();
        *bytes.last_mut().unwrap() ^= 1;
        std::fs::write(&path, &bytes).unwrap();
        assert_eq!(load(&k), None);
        std::fs::write(&path, &bytes[..10]).unwrap();
        assert_eq!(load(&k), None);
        set_cache_dir(None);
        store(&k, b"again");
        assert_eq!(load(&k), None, "no directory, no cache");
    }
}
