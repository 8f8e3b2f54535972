//! A persistent compute thread pool with low-latency dispatch.
//!
//! A forward pass issues a few hundred small parallel loops per token; a
//! general-purpose pool's wake-up costs (microseconds each) would dominate
//! decode time. Here the calling thread publishes a job and works on it
//! too, workers claim task indices from one atomic counter, and idle workers
//! spin briefly before sleeping, so back-to-back loops inside one forward
//! pass reach hot workers.
//!
//! The pool is global and sized once (`set_threads`, default: available
//! parallelism). Jobs are scoped: [`parallel_for`] returns only after every
//! task finished, so jobs may borrow from the caller's stack.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, OnceLock};
use std::thread;

/// Spin iterations an idle worker waits for the next job before sleeping.
const SPIN_ITERATIONS: u32 = 1 << 16;

type Job = *const (dyn Fn(usize) + Sync);

struct Shared {
    /// The current job: generation in the high 32 bits of `claim`, its
    /// function here, its task count in `tasks`.
    job: Mutex<Option<(u32, JobPtr)>>,
    /// `generation << 32 | next unclaimed task`.
    claim: AtomicU64,
    tasks: AtomicUsize,
    done: AtomicUsize,
    generation: AtomicU64,
    sleepers: Mutex<usize>,
    wake: Condvar,
}

#[derive(Clone, Copy)]
struct JobPtr(Job);
// SAFETY: the pointee is `Sync` and outlives every use (see `parallel_for`).
unsafe impl Send for JobPtr {}

struct Pool {
    shared: Arc<Shared>,
    threads: usize,
    /// Serialises callers: one job runs at a time.
    caller: Mutex<()>,
}

static POOL: OnceLock<Pool> = OnceLock::new();
static REQUESTED: AtomicUsize = AtomicUsize::new(0);

/// Set the number of compute threads (the caller included). Effective only
/// before the first parallel loop; returns whether it took effect.
pub fn set_threads(n: usize) -> bool {
    REQUESTED.store(n.max(1), Ordering::SeqCst);
    POOL.get().is_none_or(|p| p.threads == n.max(1))
}

/// Number of compute threads.
pub fn threads() -> usize {
    pool().threads
}

fn pool() -> &'static Pool {
    POOL.get_or_init(|| {
        let requested = REQUESTED.load(Ordering::SeqCst);
        let threads = if requested > 0 { requested } else { thread::available_parallelism().map_or(1, |n| n.get()) };
        let shared = Arc::new(Shared {
            job: Mutex::new(None),
            claim: AtomicU64::new(0),
            tasks: AtomicUsize::new(0),
            done: AtomicUsize::new(0),
            generation: AtomicU64::new(0),
            sleepers: Mutex::new(0),
            wake: Condvar::new(),
        });
        for i in 1..threads {
            let s = Arc::clone(&shared);
            thread::Builder::new().name(format!("weft-compute-{i}")).spawn(move || worker(&s)).expect("spawn compute thread");
        }
        Pool { shared, threads, caller: Mutex::new(()) }
    })
}

/// Claim and run tasks of generation `generation` until none are left.
fn work(shared: &Shared, generation: u32, job: Job) {
    let tasks = shared.tasks.load(Ordering::Acquire);
    loop {
        let cur = shared.claim.load(Ordering::Acquire);
        if (cur >> 32) as u32 != generation || (cur & 0xFFFF_FFFF) as usize >= tasks {
            return;
        }
        if shared.claim.compare_exchange_weak(cur, cur + 1, Ordering::AcqRel, Ordering::Acquire).is_err() {
            continue;
        }
        let index = (cur & 0xFFFF_FFFF) as usize;
        // SAFETY: the claim succeeded for this generation and `index < tasks`,
        // so the job is still alive: its caller waits for every task.
        unsafe { (*job)(index) };
        shared.done.fetch_add(1, Ordering::AcqRel);
    }
}

fn worker(shared: &Shared) {
    let mut seen = 0u64;
    loop {
        let mut spins = 0;
        while shared.generation.load(Ordering::Acquire) == seen {
            if spins < SPIN_ITERATIONS {
                std::hint::spin_loop();
                spins += 1;
            } else {
                let mut sleepers = shared.sleepers.lock().unwrap_or_else(|e| e.into_inner());
                *sleepers += 1;
                while shared.generation.load(Ordering::Acquire) == seen {
                    sleepers = shared.wake.wait(sleepers).unwrap_or_else(|e| e.into_inner());
                }
                *sleepers -= 1;
            }
        }
        seen = shared.generation.load(Ordering::Acquire);
        let current = *shared.job.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((generation, job)) = current {
            work(shared, generation, job.0);
        }
    }
}

/// Run `f(0..tasks)` across the pool and return when all calls finished.
/// Tasks may run in any order and on any thread.
pub fn parallel_for<F: Fn(usize) + Sync>(tasks: usize, f: F) {
    if tasks == 0 {
        return;
    }
    let pool = pool();
    if pool.threads == 1 || tasks == 1 {
        (0..tasks).for_each(f);
        return;
    }
    let _turn = pool.caller.lock().unwrap_or_else(|e| e.into_inner());
    let shared = &pool.shared;
    let job: &(dyn Fn(usize) + Sync) = &f;
    // SAFETY: erase the lifetime; we wait below until every claimed task has
    // finished, and stale workers cannot claim tasks of a later generation.
    let job: Job = unsafe { std::mem::transmute::<&(dyn Fn(usize) + Sync), Job>(job) };
    let generation = (shared.generation.load(Ordering::Acquire) + 1) as u32;
    shared.done.store(0, Ordering::Release);
    shared.tasks.store(tasks, Ordering::Release);
    *shared.job.lock().unwrap_or_else(|e| e.into_inner()) = Some((generation, JobPtr(job)));
    shared.claim.store((generation as u64) << 32, Ordering::Release);
    shared.generation.fetch_add(1, Ordering::AcqRel);
    if *shared.sleepers.lock().unwrap_or_else(|e| e.into_inner()) > 0 {
        shared.wake.notify_all();
    }
    work(shared, generation, job);
    while shared.done.load(Ordering::Acquire) < tasks {
        std::hint::spin_loop();
    }
    *shared.job.lock().unwrap_or_else(|e| e.into_inner()) = None;
}

/// Apply `f` to disjoint `width`-long chunks of `data` (chunk index and
/// chunk) across the pool.
pub fn for_each_chunk<T: Send, F: Fn(usize, &mut [T]) + Sync>(data: &mut [T], width: usize, f: F) {
    let n = data.len() / width;
    let ptr = SendPtr(data.as_mut_ptr());
    let tasks = threads().min(n).max(1);
    parallel_for(tasks, |task| {
        let ptr = ptr;
        for i in split(n, tasks, task) {
            // SAFETY: chunk `i` is handed to exactly one task, and lies inside `data`.
            let chunk = unsafe { std::slice::from_raw_parts_mut(ptr.0.add(i * width), width) };
            f(i, chunk);
        }
    });
}

struct SendPtr<T>(*mut T);
impl<T> Clone for SendPtr<T> {
    fn clone(&self) -> Self {
        *self
    }
}
impl<T> Copy for SendPtr<T> {}
// SAFETY: used only to hand disjoint chunks to tasks (`for_each_chunk`).
unsafe impl<T: Send> Send for SendPtr<T> {}
unsafe impl<T: Send> Sync for SendPtr<T> {}

/// Split `0..len` into `parts` nearly equal ranges and return range `i`.
pub fn split(len: usize, parts: usize, i: usize) -> std::ops::Range<usize> {
    let base = len / parts;
    let extra = len % parts;
    let start = i * base + i.min(extra);
    start..start + base + usize::from(i < extra)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicU32;

    #[test]
    fn every_task_runs_exactly_once_across_many_jobs() {
        for tasks in [1usize, 2, 3, 17, 256] {
            for _ in 0..200 {
                let hits: Vec<AtomicU32> = (0..tasks).map(|_| AtomicU32::new(0)).collect();
                parallel_for(tasks, |i| {
                    hits[i].fetch_add(1, Ordering::Relaxed);
                });
                assert!(hits.iter().all(|h| h.load(Ordering::Relaxed) == 1));
            }
        }
    }

    #[test]
    fn split_covers_the_range_without_overlap() {
        let ranges: Vec<_> = (0..7).map(|i| split(100, 7, i)).collect();
        assert_eq!(ranges.first().unwrap().start, 0);
        assert_eq!(ranges.last().unwrap().end, 100);
        assert!(ranges.windows(2).all(|w| w[0].end == w[1].start));
    }
}
