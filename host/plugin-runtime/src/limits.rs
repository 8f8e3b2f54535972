//! What one plugin instance may use, and what it is granted beyond the
//! sandbox. Every limit has a default chosen for the per-step plugin kinds
//! on the CPU engine, stated on its field.

use std::time::Duration;

/// Resource limits of a plugin.
#[derive(Clone, Debug)]
pub struct Limits {
    /// Wall-clock budget of one call into the plugin. Default 100 ms: a
    /// decode step of the default model takes 5–50 ms, so a call that runs
    /// longer is broken, and the requests in it fail rather than stall
    /// everyone. Enforced by epoch interruption, so an overrun is stopped
    /// within this budget plus one epoch tick ([`crate::EPOCH_TICK`]).
    pub call_deadline: Duration,
    /// Wall-clock budget of a setup call: a guide's `init` (building its
    /// token trie) and each constraint's compilation. Default 2 s; a
    /// compilation llguidance's own limits did not stop is ended here.
    pub setup_deadline: Duration,
    /// Linear memory of one instance. Default 64 MiB.
    pub memory_bytes: usize,
    /// Table elements of one instance. Default 20,000.
    pub table_elements: usize,
    /// Largest component accepted, in bytes. Default 32 MiB (a Python
    /// component is ~20 MiB).
    pub component_bytes: usize,
    /// Longest a component's compilation may take before the deploy is
    /// refused. Default 60 s (the builtin guide, the largest builtin,
    /// compiles in under 1 s on 2 cores; a 20 MiB Python component in ~10 s).
    /// Compilation cannot be interrupted: past the budget its thread
    /// finishes in the background and its result is dropped.
    pub compile_budget: Duration,
    /// Entries a single `adjust`/`ban`/`penalize` host call may carry (host
    /// allocation the guest controls). Default 4096.
    pub host_list_entries: usize,
    /// Capabilities beyond the sandbox's defaults. Default: none.
    pub grants: Grants,
}

/// Capabilities a plugin's manifest may ask for. Nothing else (files,
/// sockets, HTTP) can be granted: components importing those are refused.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Grants {
    /// The host's real wall and monotonic clocks, instead of clocks frozen
    /// at zero (a plugin that times itself or stamps its logs).
    pub clock: bool,
    /// The plugin's stderr goes to the server's stderr, instead of nowhere.
    pub stderr: bool,
    /// The WASI filesystem and sockets interfaces may be imported; they are
    /// linked inert (no preopened directory, no reachable address). For
    /// language runtimes that import them to start (componentize-py).
    pub language_runtime: bool,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            call_deadline: Duration::from_millis(100),
            setup_deadline: Duration::from_secs(2),
            memory_bytes: 64 << 20,
            table_elements: 20_000,
            component_bytes: 32 << 20,
            compile_budget: Duration::from_secs(60),
            host_list_entries: 4096,
            grants: Grants::default(),
        }
    }
}
