//! The threads that ask guides for their next step while the forward pass
//! runs.
//!
//! The engine hands each guided sequence's guide to a worker before the
//! forward pass and collects the answers after it, waiting at most the
//! step's grace period ([`crate::EngineConfig::guide_grace`]). A guide that
//! is later than that keeps computing here while the batch goes on without
//! its sequence; its answer is picked up by a later step. Threads start
//! with the first guided step, so an engine that never guides has none.

use std::sync::mpsc::{self, Receiver, Sender};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Instant;

use weft_types::{Guide, GuideError, GuideStep};

use crate::sequence::RequestId;

/// A guide's answer for the sequence `id`, with the guide handed back.
pub(crate) struct Answer {
    pub id: RequestId,
    pub guide: Box<dyn Guide>,
    pub step: Result<GuideStep, GuideError>,
    /// When the guide finished.
    pub done: Instant,
}

type Job = (RequestId, Box<dyn Guide>);

pub(crate) struct GuideWorkers {
    jobs: Option<Sender<Job>>,
    answers: Receiver<Answer>,
    threads: Vec<JoinHandle<()>>,
}

impl GuideWorkers {
    /// `threads` workers taking guides from one queue, so one slow guide
    /// holds up only the guides queued behind it on its own thread.
    pub fn new(threads: usize) -> std::io::Result<Self> {
        let (jobs, queue) = mpsc::channel::<Job>();
        let (answer, answers) = mpsc::channel();
        let queue = Arc::new(Mutex::new(queue));
        let threads = (0..threads.max(1))
            .map(|i| {
                let (queue, answer) = (Arc::clone(&queue), answer.clone());
                std::thread::Builder::new().name(format!("weft-guide-{i}")).spawn(move || work(&queue, &answer))
            })
            .collect::<std::io::Result<_>>()?;
        Ok(Self { jobs: Some(jobs), answers, threads })
    }

    /// Ask `guide` for sequence `id`'s next step.
    pub fn ask(&self, id: RequestId, guide: Box<dyn Guide>) {
        if let Some(jobs) = &self.jobs {
            // The workers outlive the sender; a send fails only if every
            // one of them died, which `work` never lets a guide cause.
            let _ = jobs.send((id, guide));
        }
    }

    /// The next answer, waiting until `deadline` at most.
    pub fn answer_by(&self, deadline: Instant) -> Option<Answer> {
        let wait = deadline.saturating_duration_since(Instant::now());
        self.answers.recv_timeout(wait).ok()
    }
}

impl Drop for GuideWorkers {
    fn drop(&mut self) {
        self.jobs = None;
        for thread in self.threads.drain(..) {
            let _ = thread.join();
        }
    }
}

/// One worker: a guide that panics answers with a fault.
fn work(queue: &Mutex<Receiver<Job>>, answers: &Sender<Answer>) {
    loop {
        let job = match queue.lock() {
            Ok(queue) => queue.recv(),
            Err(_) => return,
        };
        let Ok((id, mut guide)) = job else { return };
        let step = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| guide.next()))
            .unwrap_or_else(|_| Err(GuideError::Fault { guide: format!("{guide:?}"), message: "the guide panicked".into() }));
        if answers.send(Answer { id, guide, step, done: Instant::now() }).is_err() {
            return;
        }
    }
}
