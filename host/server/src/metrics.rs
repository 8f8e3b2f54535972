//! Prometheus metrics: a registry of request counters plus the engine's
//! live gauges, encoded in the OpenMetrics text format at `/metrics`.
//!
//! This is the seed the observability work grows (latency histograms,
//! plugin metrics, traces); what is here is real and scraped from the
//! engine thread's published figures.

use std::sync::atomic::Ordering;

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use crate::engine_task::EngineHandle;

type RequestLabels = Vec<(String, String)>;

/// The server's metrics.
pub struct Metrics {
    registry: Registry,
    requests: Family<RequestLabels, Counter>,
    engine: EngineHandle,
    gauges: EngineMetrics,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Metrics")
    }
}

/// Gauges mirrored from the engine thread at each scrape. Cumulative
/// figures are exposed as gauges of totals until the observability work
/// moves them to native counters.
#[derive(Default)]
struct EngineMetrics {
    running: Gauge,
    waiting: Gauge,
    admitted: Gauge,
    kv_blocks_free: Gauge,
    kv_blocks_total: Gauge,
    steps: Gauge,
    generated_tokens: Gauge,
    prompt_tokens_computed: Gauge,
    prompt_tokens_cached: Gauge,
    preemptions: Gauge,
    panics: Gauge,
    guide_stalls: Gauge,
    sampler_failures: Gauge,
    guide_failures: Gauge,
}

impl Metrics {
    pub fn new(engine: EngineHandle) -> Self {
        let mut registry = Registry::with_prefix("weft");
        let requests = Family::<RequestLabels, Counter>::default();
        registry.register("http_requests", "HTTP requests answered, by route and status", requests.clone());
        let gauges = EngineMetrics::default();
        let g = &gauges;
        for (name, help, gauge) in [
            ("engine_running_sequences", "Sequences in the running batch", &g.running),
            ("engine_waiting_sequences", "Sequences queued for admission", &g.waiting),
            ("admitted_requests", "Engine requests holding an admission ticket", &g.admitted),
            ("kv_blocks_free", "KV cache blocks not referenced by any sequence", &g.kv_blocks_free),
            ("kv_blocks", "KV cache blocks in the pool", &g.kv_blocks_total),
            ("engine_steps", "Engine steps run since start", &g.steps),
            ("generated_tokens", "Tokens generated since start", &g.generated_tokens),
            ("prompt_tokens_computed", "Prompt tokens run through the model since start", &g.prompt_tokens_computed),
            ("prompt_tokens_cached", "Prompt tokens served from the prefix cache since start", &g.prompt_tokens_cached),
            ("engine_preemptions", "Sequences preempted for blocks since start", &g.preemptions),
            ("engine_step_panics", "Engine steps that failed with a bug since start", &g.panics),
            ("guide_stalls", "Steps a guided sequence sat out because its guide was late, since start", &g.guide_stalls),
            ("sampler_failures", "Sampler calls that failed (each failed the rows it was asked about) since start", &g.sampler_failures),
            ("guide_failures", "Guide calls that failed (each failed its sequence) since start", &g.guide_failures),
        ] {
            registry.register(name, help, gauge.clone());
        }
        let timings = &engine.gauges().timings;
        registry.register("step_tokens", "Tokens each engine step computed (decodes and prompt chunks, at most --max-batch-tokens)", timings.tokens.clone());
        registry.register("step_forward_seconds", "The forward pass of each engine step", timings.forward_seconds.clone());
        registry.register(
            "step_guide_masks_seconds",
            "Each guided step's masks, from handing its guides out to the last answer it used (hidden while under the forward pass)",
            timings.guide_masks_seconds.clone(),
        );
        registry.register(
            "step_guide_wait_seconds",
            "How long each guided step waited after its forward pass for its masks (0: fully hidden)",
            timings.guide_wait_seconds.clone(),
        );
        Self { registry, requests, engine, gauges }
    }

    pub fn count_request(&self, route: String, status: u16) {
        self.requests.get_or_create(&vec![("route".into(), route), ("status".into(), status.to_string())]).inc();
    }

    /// The OpenMetrics text of every metric, engine figures as of now.
    pub fn encode(&self) -> Result<String, std::fmt::Error> {
        let e = self.engine.gauges();
        let g = &self.gauges;
        let set = |gauge: &Gauge, v: u64| {
            gauge.set(i64::try_from(v).unwrap_or(i64::MAX));
        };
        set(&g.running, e.running.load(Ordering::Relaxed) as u64);
        set(&g.waiting, e.waiting.load(Ordering::Relaxed) as u64);
        set(&g.admitted, self.engine.admitted() as u64);
        set(&g.kv_blocks_free, e.free_blocks.load(Ordering::Relaxed) as u64);
        set(&g.kv_blocks_total, e.total_blocks.load(Ordering::Relaxed) as u64);
        set(&g.steps, e.steps.load(Ordering::Relaxed));
        set(&g.generated_tokens, e.generated_tokens.load(Ordering::Relaxed));
        set(&g.prompt_tokens_computed, e.prompt_tokens_computed.load(Ordering::Relaxed));
        set(&g.prompt_tokens_cached, e.prompt_tokens_cached.load(Ordering::Relaxed));
        set(&g.preemptions, e.preemptions.load(Ordering::Relaxed));
        set(&g.panics, e.panics.load(Ordering::Relaxed));
        set(&g.guide_stalls, e.guide_stalls.load(Ordering::Relaxed));
        set(&g.sampler_failures, e.sampler_failures.load(Ordering::Relaxed));
        set(&g.guide_failures, e.guide_failures.load(Ordering::Relaxed));
        let mut text = String::new();
        encode(&mut text, &self.registry)?;
        Ok(text)
    }
}
