//! The engine's owner: one OS thread that runs [`Engine::step`] in a loop.
//!
//! The engine is a single-owner state machine doing blocking compute, so it
//! lives on a dedicated thread and is reached only through commands (state
//! has one owner; no lock is held across an await). Each admitted request
//! gets an unbounded channel of outputs — bounded in practice by its
//! `max_tokens` — and the thread notices a dropped receiver (a client that
//! went away) after every step and cancels that request, which frees its KV
//! blocks within one step whether it was queued, prefilling or decoding.
//!
//! Admission is bounded here too: a [`Ticket`] is taken before a request
//! reaches the engine and given back when its response ends, and beyond
//! `max_running + max_queued` tickets new requests get 503.
//!
//! A panic inside a step is a bug; it fails the requests in flight with an
//! internal error, and the engine is reset (empty, samplers kept) so others
//! keep being served.

use std::collections::HashMap;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc as std_mpsc;

use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use tokio::sync::{mpsc, oneshot};
use weft_engine::{Engine, EngineError, GenerationRequest, Output, RequestId, SamplerId};
use weft_types::Sampler;

use crate::error::ApiError;

/// What a request receives from the engine: outputs until one is finished,
/// or an error if the engine failed under it.
pub type Event = Result<Output, ApiError>;

enum Command {
    Submit { request: GenerationRequest, events: mpsc::UnboundedSender<Event>, accepted: oneshot::Sender<Result<RequestId, EngineError>> },
    AddSampler { sampler: Box<dyn Sampler>, added: oneshot::Sender<SamplerId> },
    RetireSampler(SamplerId),
}

/// Live figures the engine thread publishes after every step, for
/// readiness, metrics and tests.
#[derive(Debug, Default)]
pub struct EngineGauges {
    pub running: AtomicUsize,
    pub waiting: AtomicUsize,
    pub free_blocks: AtomicUsize,
    pub total_blocks: AtomicUsize,
    pub steps: AtomicU64,
    pub prompt_tokens_computed: AtomicU64,
    pub prompt_tokens_cached: AtomicU64,
    pub preemptions: AtomicU64,
    pub generated_tokens: AtomicU64,
    /// Steps that panicked (bugs); each failed its batch.
    pub panics: AtomicU64,
    /// Steps a sequence sat out because its guide was late.
    pub guide_stalls: AtomicU64,
    /// Sampler calls that failed (each failed its rows).
    pub sampler_failures: AtomicU64,
    /// Guide calls that failed (each failed its sequence).
    pub guide_failures: AtomicU64,
    pub alive: AtomicBool,
    pub timings: StepHistograms,
}

/// How long steps' parts take, observed by the engine thread after every
/// step that ran the model and exported at `/metrics`.
#[derive(Debug)]
pub struct StepHistograms {
    /// Tokens each step computed (decodes and prompt chunks).
    pub tokens: Histogram,
    /// The forward pass.
    pub forward_seconds: Histogram,
    /// A guided step's masks, from handing the guides out to the last
    /// answer it used: within the forward pass, they cost nothing.
    pub guide_masks_seconds: Histogram,
    /// How long a guided step waited after its forward pass for its masks.
    pub guide_wait_seconds: Histogram,
}

impl Default for StepHistograms {
    fn default() -> Self {
        // 50 µs to ~3 s in steps of ×1.5.
        let buckets = || exponential_buckets(50e-6, 1.5, 28);
        Self {
            // 1 to 8192 tokens in powers of two.
            tokens: Histogram::new(exponential_buckets(1.0, 2.0, 14)),
            forward_seconds: Histogram::new(buckets()),
            guide_masks_seconds: Histogram::new(buckets()),
            guide_wait_seconds: Histogram::new(std::iter::once(0.0).chain(buckets())),
        }
    }
}

/// A cheap, cloneable way to reach the engine thread.
#[derive(Clone)]
pub struct EngineHandle {
    commands: std_mpsc::Sender<Command>,
    gauges: Arc<EngineGauges>,
    admitted: Arc<AtomicUsize>,
    admission_limit: usize,
    draining: Arc<AtomicBool>,
}

impl std::fmt::Debug for EngineHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EngineHandle").field("admission_limit", &self.admission_limit).finish()
    }
}

/// A place in admission, held for as long as a request's response lives.
#[derive(Debug)]
pub struct Ticket {
    admitted: Arc<AtomicUsize>,
}

impl Drop for Ticket {
    fn drop(&mut self) {
        self.admitted.fetch_sub(1, Ordering::AcqRel);
    }
}

/// An admitted request: its id and the stream of what it produces.
/// Dropping it cancels the request.
#[derive(Debug)]
pub struct Submission {
    // Fields drop in order: the admission place is given back before the
    // engine can see the receiver gone, so by the time the engine reports
    // a request cancelled its place is free again.
    _ticket: Ticket,
    pub id: RequestId,
    pub events: mpsc::UnboundedReceiver<Event>,
}

impl EngineHandle {
    /// Start the engine thread. Requests beyond `max_queued` waiting ones
    /// (on top of the engine's `max_running`) are refused.
    pub fn spawn(engine: Engine, max_queued: usize) -> std::io::Result<Self> {
        let gauges = Arc::new(EngineGauges::default());
        let admission_limit = engine.config().max_running + max_queued;
        let (commands, inbox) = std_mpsc::channel();
        let thread_gauges = Arc::clone(&gauges);
        gauges.alive.store(true, Ordering::Release);
        std::thread::Builder::new().name("weft-engine".into()).spawn(move || run(engine, inbox, &thread_gauges))?;
        Ok(Self { commands, gauges, admitted: Arc::new(AtomicUsize::new(0)), admission_limit, draining: Arc::default() })
    }

    pub fn gauges(&self) -> &EngineGauges {
        &self.gauges
    }

    /// Requests holding an admission ticket now.
    pub fn admitted(&self) -> usize {
        self.admitted.load(Ordering::Acquire)
    }

    /// Stop admitting requests; those in flight go on to their end.
    pub fn drain(&self) {
        self.draining.store(true, Ordering::Release);
    }

    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::Acquire)
    }

    /// Take `count` places in admission at once (one per choice of a
    /// request), or none.
    pub fn admit(&self, count: usize) -> Result<Vec<Ticket>, ApiError> {
        if self.is_draining() {
            return Err(ApiError::NotReady("the server is draining and admits no new requests".into()));
        }
        let mut current = self.admitted.load(Ordering::Acquire);
        loop {
            if current + count > self.admission_limit {
                return Err(ApiError::Overloaded { limit: self.admission_limit, retry_after_s: 1 });
            }
            match self.admitted.compare_exchange_weak(current, current + count, Ordering::AcqRel, Ordering::Acquire) {
                Ok(_) => break,
                Err(seen) => current = seen,
            }
        }
        Ok((0..count).map(|_| Ticket { admitted: Arc::clone(&self.admitted) }).collect())
    }

    /// Give the engine a sampler; requests name it by the returned id.
    pub async fn add_sampler(&self, sampler: Box<dyn Sampler>) -> Result<SamplerId, ApiError> {
        let (added_tx, added) = oneshot::channel();
        let not_running = || ApiError::NotReady("the engine thread has stopped".into());
        self.commands.send(Command::AddSampler { sampler, added: added_tx }).map_err(|_| not_running())?;
        added.await.map_err(|_| not_running())
    }

    /// Take no new requests for sampler `id`; the engine drops it when its
    /// last request ends.
    pub fn retire_sampler(&self, id: SamplerId) {
        let _ = self.commands.send(Command::RetireSampler(id));
    }

    /// Hand a validated request to the engine.
    pub async fn submit(&self, request: GenerationRequest, ticket: Ticket) -> Result<Submission, ApiError> {
        let (events_tx, events) = mpsc::unbounded_channel();
        let (accepted_tx, accepted) = oneshot::channel();
        let not_running = || ApiError::NotReady("the engine thread has stopped".into());
        self.commands.send(Command::Submit { request, events: events_tx, accepted: accepted_tx }).map_err(|_| not_running())?;
        let id = accepted.await.map_err(|_| not_running())??;
        Ok(Submission { _ticket: ticket, id, events })
    }
}

/// Clears `alive` however the engine thread ends, a panic included, so
/// `/ready` tells the truth.
struct AliveGuard<'a>(&'a EngineGauges);

impl Drop for AliveGuard<'_> {
    fn drop(&mut self) {
        self.0.alive.store(false, Ordering::Release);
    }
}

fn run(mut engine: Engine, inbox: std_mpsc::Receiver<Command>, gauges: &EngineGauges) {
    let _alive = AliveGuard(gauges);
    let mut clients: HashMap<RequestId, mpsc::UnboundedSender<Event>> = HashMap::new();
    gauges.total_blocks.store(engine.config().num_blocks, Ordering::Relaxed);
    publish(&engine, gauges);
    loop {
        // Idle: sleep until a command arrives; busy: take what is there.
        if !engine.has_work() {
            match inbox.recv() {
                Ok(command) => accept(&mut engine, &mut clients, command),
                Err(_) => break,
            }
        }
        while let Ok(command) = inbox.try_recv() {
            accept(&mut engine, &mut clients, command);
        }
        clients.retain(|&id, events| {
            let gone = events.is_closed();
            if gone {
                engine.cancel(id);
            }
            !gone
        });
        if engine.has_work() {
            match std::panic::catch_unwind(AssertUnwindSafe(|| engine.step())) {
                Ok(outputs) => {
                    if let Some(timing) = engine.last_step_timing() {
                        gauges.timings.tokens.observe(timing.tokens as f64);
                        gauges.timings.forward_seconds.observe(timing.forward.as_secs_f64());
                        if let (Some(masks), Some(wait)) = (timing.masks, timing.masks_wait) {
                            gauges.timings.guide_masks_seconds.observe(masks.as_secs_f64());
                            gauges.timings.guide_wait_seconds.observe(wait.as_secs_f64());
                        }
                    }
                    deliver(&mut engine, &mut clients, outputs, gauges)
                }
                Err(panic) => {
                    let what = panic
                        .downcast_ref::<&str>()
                        .map(|s| s.to_string())
                        .or_else(|| panic.downcast_ref::<String>().cloned())
                        .unwrap_or_else(|| "unknown panic".into());
                    gauges.panics.fetch_add(1, Ordering::Relaxed);
                    for (_, events) in clients.drain() {
                        let _ = events.send(Err(ApiError::Internal(format!("the engine step failed: {what}"))));
                    }
                    engine.reset();
                }
            }
        }
        publish(&engine, gauges);
    }
}

fn accept(engine: &mut Engine, clients: &mut HashMap<RequestId, mpsc::UnboundedSender<Event>>, command: Command) {
    match command {
        Command::Submit { request, events, accepted } => {
            let result = engine.add_request(request);
            if let Ok(id) = result {
                clients.insert(id, events);
            }
            if accepted.send(result.clone()).is_err()
                && let Ok(id) = result
            {
                // The client left before hearing back.
                engine.cancel(id);
                clients.remove(&id);
            }
        }
        Command::AddSampler { sampler, added } => {
            let _ = added.send(engine.add_sampler(sampler));
        }
        Command::RetireSampler(id) => engine.retire_sampler(id),
    }
}

fn deliver(
    engine: &mut Engine,
    clients: &mut HashMap<RequestId, mpsc::UnboundedSender<Event>>,
    outputs: Vec<Output>,
    gauges: &EngineGauges,
) {
    for mut out in outputs {
        let id = out.id;
        let finished = out.finished.is_some();
        gauges.generated_tokens.fetch_add(out.tokens.len() as u64, Ordering::Relaxed);
        let event = match out.error.take() {
            Some(e) => Err(ApiError::from(e)),
            None => Ok(out),
        };
        let delivered = clients.get(&id).is_some_and(|events| events.send(event).is_ok());
        if finished {
            clients.remove(&id);
        } else if !delivered {
            engine.cancel(id);
            clients.remove(&id);
        }
    }
}

fn publish(engine: &Engine, gauges: &EngineGauges) {
    let stats = engine.stats();
    gauges.running.store(engine.num_running(), Ordering::Relaxed);
    gauges.waiting.store(engine.num_waiting(), Ordering::Relaxed);
    gauges.free_blocks.store(engine.free_blocks(), Ordering::Relaxed);
    gauges.steps.store(stats.steps, Ordering::Relaxed);
    gauges.prompt_tokens_computed.store(stats.prompt_tokens_computed, Ordering::Relaxed);
    gauges.prompt_tokens_cached.store(stats.prompt_tokens_cached, Ordering::Relaxed);
    gauges.preemptions.store(stats.preemptions, Ordering::Relaxed);
    gauges.guide_stalls.store(stats.guide_stalls, Ordering::Relaxed);
    gauges.sampler_failures.store(stats.sampler_failures, Ordering::Relaxed);
    gauges.guide_failures.store(stats.guide_failures, Ordering::Relaxed);
}
