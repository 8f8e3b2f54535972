//! Opening the backend or skipping, the default model, and logits of a
//! single sequence through any backend.

use std::path::PathBuf;
use std::sync::{Arc, OnceLock};

use weft_backend_cuda::{CudaBackend, CudaOptions, KvCacheType, OpenError};
use weft_engine::model::{BatchToken, ForwardBatch, LlamaModel};
use weft_engine::{Backend, LoadedModel};
use weft_engine::sampling::{HostRows, nucleus};
use weft_types::logits::edited_row;
use weft_types::{LogitsRows, Pick};

fn require_gpu() -> bool {
    std::env::var("WEFT_REQUIRE_GPU").is_ok_and(|v| v == "1")
}

/// `model` on cuda:0 with a KV cache of `kv`, or None (after printing why)
/// where this machine has no usable CUDA.
pub fn cuda(test: &str, model: &LlamaModel, kv: Option<KvCacheType>) -> Option<CudaBackend> {
    match CudaBackend::new(model, CudaOptions { kv, ..CudaOptions::default() }) {
        Ok(b) => {
            eprintln!("{test}: on {}", b.name());
            Some(b)
        }
        Err(OpenError::Cuda(e)) if e.is_unavailable() && !require_gpu() => {
            eprintln!("skipping {test}: {e}");
            None
        }
        Err(e) => panic!("{test}: {e}"),
    }
}

/// Whether a GPU test can run at all (checked before loading a model).
pub fn have_gpu(test: &str) -> bool {
    match weft_kernels_cuda::CudaKernels::new(0) {
        Ok(_) => true,
        Err(e) if e.is_unavailable() && !require_gpu() => {
            eprintln!("skipping {test}: {e}");
            false
        }
        Err(e) => panic!("{test}: {e}"),
    }
}

pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// The default model, from `$WEFT_TEST_MODEL` (scripts/gpu-check.sh sets it).
pub fn default_model() -> &'static LoadedModel {
    static MODEL: OnceLock<LoadedModel> = OnceLock::new();
    MODEL.get_or_init(|| {
        let path = std::env::var_os("WEFT_TEST_MODEL")
            .expect("WEFT_TEST_MODEL names the default model's GGUF file (scripts/gpu-check.sh sets it)");
        LoadedModel::open(&PathBuf::from(path)).expect("the default model loads")
    })
}

/// Logits at every position of `tokens`, one sequence from an empty cache,
/// in one forward pass, on the host.
pub fn all_logits(backend: &mut dyn Backend, tokens: &[u32]) -> Vec<f32> {
    on_host(&*all_logits_rows(backend, tokens))
}

/// Every row of `rows`, in order, on the host.
pub fn on_host(rows: &dyn LogitsRows) -> Vec<f32> {
    (0..rows.len()).flat_map(|i| rows.row(i).unwrap().into_owned()).collect()
}

/// [`all_logits`], left where the backend keeps them.
pub fn all_logits_rows(backend: &mut dyn Backend, tokens: &[u32]) -> Box<dyn LogitsRows> {
    let bs = 16;
    let blocks = tokens.len().div_ceil(bs);
    backend.allocate_kv(blocks, bs).unwrap();
    let table: Vec<u32> = (0..blocks as u32).collect();
    let batch = ForwardBatch {
        tokens: tokens.iter().enumerate().map(|(pos, &token)| BatchToken { token, pos, seq: 0, logits: true }).collect(),
        block_tables: vec![&table],
    };
    backend.forward(&batch).unwrap()
}

/// ‖a − b‖ / ‖b‖ in f64.
pub fn relative_error(a: &[f32], b: &[f32]) -> f64 {
    assert_eq!(a.len(), b.len());
    assert!(a.iter().all(|v| v.is_finite()), "non-finite output");
    let diff: f64 = a.iter().zip(b).map(|(x, y)| (*x as f64 - *y as f64).powi(2)).sum::<f64>().sqrt();
    let norm: f64 = b.iter().map(|y| (*y as f64).powi(2)).sum::<f64>().sqrt();
    diff / norm
}

pub fn shared(model: &LoadedModel) -> Arc<LlamaModel> {
    Arc::clone(&model.model)
}

/// `(temperature, top_k, top_p, min_p)` for the sampling tests: greedy
/// both ways (temperature 0, top-k 1), plain temperature, and each cut
/// alone and together.
pub const CUTS: [(f32, u32, f32, f32); 10] = [
    (0.0, 0, 1.0, 0.0),
    (1.0, 0, 1.0, 0.0),
    (0.7, 40, 0.9, 0.0),
    (1.3, 0, 0.95, 0.05),
    (0.8, 1000, 0.8, 0.01),
    (1.0, 5, 1.0, 0.0),
    (0.6, 0, 0.5, 0.0),
    (1.0, 1, 1.0, 0.0),
    (2.0, 0, 0.3, 0.0),
    (0.9, 3, 0.99, 0.2),
];

/// A pick in a line: its row, whether it is masked, how many edits, its
/// cuts and draw (a pick's Debug prints the whole mask).
pub fn pick_summary(p: &Pick<'_>) -> String {
    format!("row {}, masked {}, {} edits, {:?}, uniform {}", p.row, p.mask.is_some(), p.edits.len(), p.cuts, p.uniform)
}

/// Checks the device's token for every pick against the host's: the same
/// for a greedy pick; otherwise inside the host's nucleus of the edited
/// row, and the host's own token for at least 99% of the picks. Returns
/// how many picks were sampled and how many of those gave the host's token.
pub fn check_against_host(host: &HostRows, picks: &[Pick<'_>], ours: &[u32]) -> (usize, usize) {
    let reference = host.choose(picks).unwrap();
    let (mut sampled, mut same) = (0, 0);
    for ((p, &o), &r) in picks.iter().zip(ours).zip(&reference) {
        if p.cuts.is_greedy() {
            assert_eq!(o, r, "greedy pick {}", pick_summary(p));
            continue;
        }
        let mut row = Vec::new();
        edited_row(&mut row, &host.row(p.row).unwrap(), p.mask, p.edits);
        let c = p.cuts;
        let kept = nucleus(&row, c.temperature, c.top_k, c.top_p, c.min_p);
        assert!(kept.iter().any(|k| k.0 == o), "token {o} is outside the host's nucleus of {} for {}", kept.len(), pick_summary(p));
        sampled += 1;
        same += usize::from(o == r);
    }
    assert!(same as f64 >= 0.99 * sampled as f64, "{same}/{sampled} draws agree");
    (sampled, same)
}
