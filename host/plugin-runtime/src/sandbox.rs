//! What a plugin's store holds, and the sandbox around it: resource table,
//! memory limits, and a WASI that grants nothing.
//!
//! Language runtimes (Rust's std, CPython, SpiderMonkey) import a few WASI
//! interfaces just to start: streams, environment, exit, clocks, random.
//! Those are linked, but empty: no arguments or environment, stdio closed,
//! clocks frozen at zero and randomness from a fixed seed — so nothing a
//! plugin computes can depend on the machine, the time or chance (requests
//! get their randomness from the host, seeded per request). A manifest may
//! grant the real clocks and stderr ([`Grants`]), and a language runtime's
//! filesystem and socket imports, linked inert (CPython imports them to
//! start; there is no directory to open and no network to reach). Without
//! that grant those imports are refused at load time; HTTP always is.

use std::time::Duration;

use wasmtime::component::ResourceTable;
use wasmtime::{StoreLimits, StoreLimitsBuilder};
use wasmtime_wasi::{Deterministic, HostMonotonicClock, HostWallClock, WasiCtx, WasiCtxBuilder, WasiCtxView, WasiView};

use crate::batch::{StepBuffers, StepView};
use crate::limits::{Grants, Limits};

/// Import names a plugin may have besides Weft's own interfaces.
const RUNTIME_SUPPORT: &[&str] = &[
    "wasi:io/",
    "wasi:cli/environment",
    "wasi:cli/exit",
    "wasi:cli/stdin",
    "wasi:cli/stdout",
    "wasi:cli/stderr",
    "wasi:cli/terminal-",
    "wasi:clocks/",
    "wasi:random/",
];

/// Imports a language runtime has (CPython's wasi-libc) that the
/// `language_runtime` grant links inert: no directory is preopened and no
/// address may be reached, so nothing can be opened or connected.
const INERT_FOR_RUNTIMES: &[&str] = &["wasi:filesystem/", "wasi:sockets/"];

/// Whether a component granted `grants` may import `name` (an interface
/// such as `wasi:io/streams@0.2.3`).
pub fn import_allowed(name: &str, grants: Grants) -> bool {
    name.starts_with("weft:plugin/")
        || RUNTIME_SUPPORT.iter().any(|p| name.starts_with(p))
        || (grants.language_runtime && INERT_FOR_RUNTIMES.iter().any(|p| name.starts_with(p)))
}

/// The data of one plugin store.
pub struct StoreState {
    pub table: ResourceTable,
    wasi: WasiCtx,
    pub limits: StoreLimits,
    /// The batch of the call in progress, if any.
    pub step: Option<StepView>,
    /// The buffers of earlier batches' views, reused by the next (a fresh
    /// 200 KB row buffer costs its page faults).
    pub step_buffers: StepBuffers,
    /// The model's tokenizer, for a guide's `tokenize` calls.
    pub tokenize: Option<crate::guide::Tokenize>,
    pub host_list_entries: usize,
}

impl StoreState {
    pub fn new(limits: &Limits) -> Self {
        Self {
            table: ResourceTable::new(),
            wasi: locked_down_wasi(limits.grants),
            limits: StoreLimitsBuilder::new()
                .memory_size(limits.memory_bytes)
                .table_elements(limits.table_elements)
                .trap_on_grow_failure(true)
                .build(),
            step: None,
            step_buffers: StepBuffers::default(),
            tokenize: None,
            host_list_entries: limits.host_list_entries,
        }
    }
}

impl WasiView for StoreState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView { ctx: &mut self.wasi, table: &mut self.table }
    }
}

/// A clock that always says zero.
struct FrozenClock;

impl HostWallClock for FrozenClock {
    fn resolution(&self) -> Duration {
        Duration::from_secs(1)
    }
    fn now(&self) -> Duration {
        Duration::ZERO
    }
}

impl HostMonotonicClock for FrozenClock {
    fn resolution(&self) -> u64 {
        1_000_000_000
    }
    fn now(&self) -> u64 {
        0
    }
}

fn locked_down_wasi(grants: Grants) -> WasiCtx {
    let mut builder = WasiCtxBuilder::new();
    if !grants.clock {
        builder.wall_clock(FrozenClock).monotonic_clock(FrozenClock);
    }
    if grants.stderr {
        builder.inherit_stderr();
    }
    builder
        .secure_random(Deterministic::new(vec![0x5e, 0xed]))
        .insecure_random(Deterministic::new(vec![0x5e, 0xed]))
        .insecure_random_seed(0)
        .allow_tcp(false)
        .allow_udp(false)
        .allow_ip_name_lookup(false);
    builder.build()
}
