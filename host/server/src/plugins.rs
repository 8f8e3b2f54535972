//! The server's plugins by name, one [`Registry`] per deployable kind
//! ([`Plugins`]): the versions deployed under each name, the one taking new
//! requests (and a canary sharing them), what each version is to the
//! server (an engine sampler id, a tool-parser instance), and the circuit
//! breaker over each version's faults.
//!
//! Deploying a version compiles and instantiates it off the request path,
//! hands it to the engine, then makes it the name's active version (or its
//! canary) in one step (a write lock held for a map update, never across
//! an await). New requests resolve the name at admission and keep the
//! handle they got, so requests in flight finish on the version they
//! started with. The last few versions stay loaded for rollback; older
//! ones are retired, and the engine drops them when their last request
//! ends.
//!
//! Faults: every plugin call and fault is counted by the instance
//! ([`Health`]). A version with [`BreakerPolicy::faults`] faults within
//! [`BreakerPolicy::window`] is rolled back automatically when an earlier
//! version is loaded (a canary is withdrawn); otherwise its breaker opens
//! and requests naming it get a fast 503 until a new version is deployed
//! or, after [`BreakerPolicy::cooldown`], one trial request (half-open)
//! succeeds.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use serde::Serialize;
use utoipa::ToSchema;
use weft_engine::SamplerId;
use weft_plugin_runtime::{Health, WasmAuth, WasmGuide, WasmToolParser};

use crate::error::ApiError;
use crate::manifest::{Manifest, PluginKind};

/// Versions kept loaded per name (the active one and those rollback can
/// return to). Default 3.
pub const KEPT_VERSIONS: usize = 3;

/// When a version counts as broken, and for how long.
#[derive(Clone, Debug)]
pub struct BreakerPolicy {
    /// Faults that trip it. Default 5.
    pub faults: usize,
    /// Within this long. Default 60 s.
    pub window: Duration,
    /// How long an open breaker refuses before letting a trial request
    /// through. Default 30 s.
    pub cooldown: Duration,
}

impl Default for BreakerPolicy {
    fn default() -> Self {
        Self { faults: 5, window: Duration::from_secs(60), cooldown: Duration::from_secs(30) }
    }
}

#[derive(Clone, Copy, Debug)]
enum Breaker {
    /// Serving; faults since `since` count.
    Closed { since: Instant },
    /// Refusing until `until`.
    Open { until: Instant },
    /// Trial requests go through: a new fault reopens it, a call without
    /// one closes it.
    HalfOpen { faults_at: u64, calls_at: u64 },
}

impl Breaker {
    fn name(self) -> &'static str {
        match self {
            Self::Closed { .. } => "closed",
            Self::Open { .. } => "open",
            Self::HalfOpen { .. } => "half-open",
        }
    }
}

#[derive(Debug)]
struct Version<H> {
    version: semver::Version,
    handle: H,
    /// What it was deployed with (kept for the plugin store and `info`).
    manifest: Manifest,
    /// The instance's call and fault counts; `None` for the host's builtins.
    health: Option<Arc<Health>>,
    breaker: Mutex<Breaker>,
    /// Requests it was chosen for.
    requests: AtomicU64,
    /// Loaded from the server's own configuration at startup rather than
    /// deployed: not persisted (the next start loads it again).
    startup: bool,
}

impl<H> Version<H> {
    /// Whether it may take a request now, moving its breaker along;
    /// `Err(wait)` while the breaker is open.
    fn admit(&self, policy: &BreakerPolicy, now: Instant) -> Result<(), Duration> {
        let Some(health) = &self.health else { return Ok(()) };
        let Ok(mut breaker) = self.breaker.lock() else { return Ok(()) };
        match *breaker {
            Breaker::Closed { since } => {
                if health.faults_within(policy.window, since, now) >= policy.faults {
                    *breaker = Breaker::Open { until: now + policy.cooldown };
                    return Err(policy.cooldown);
                }
            }
            Breaker::Open { until } if now < until => return Err(until - now),
            Breaker::Open { .. } => *breaker = Breaker::HalfOpen { faults_at: health.faults(), calls_at: health.calls() },
            Breaker::HalfOpen { faults_at, calls_at } => {
                if health.faults() > faults_at {
                    *breaker = Breaker::Open { until: now + policy.cooldown };
                    return Err(policy.cooldown);
                }
                if health.calls() > calls_at {
                    *breaker = Breaker::Closed { since: now };
                }
            }
        }
        Ok(())
    }

    fn breaker_state(&self) -> &'static str {
        self.breaker.lock().map_or("closed", |b| b.name())
    }
}

/// A new version taking a share of a name's requests beside the active one.
#[derive(Debug)]
struct Canary {
    share: f64,
    /// Requests resolved while it runs: the `n`-th goes to the canary when
    /// `⌊(n+1)·share⌋ > ⌊n·share⌋`, so it gets exactly its share.
    resolved: AtomicU64,
}

impl Canary {
    fn takes_next(&self) -> bool {
        let n = self.resolved.fetch_add(1, Ordering::Relaxed) as f64;
        ((n + 1.0) * self.share).floor() > (n * self.share).floor()
    }
}

#[derive(Debug)]
struct Entry<H> {
    /// Oldest first; `active` indexes it; with a canary, the canary is the
    /// version right after the active one.
    versions: Vec<Version<H>>,
    active: usize,
    canary: Option<Canary>,
    /// The last thing the server did to this name on its own.
    last_event: Option<String>,
}

impl<H> Default for Entry<H> {
    fn default() -> Self {
        Self { versions: Vec::new(), active: 0, canary: None, last_event: None }
    }
}

/// A deployed name as the admin API shows it.
#[derive(Debug, Serialize, ToSchema)]
pub struct PluginInfo {
    pub name: String,
    pub kind: &'static str,
    pub active_version: String,
    /// Loaded versions, oldest first.
    pub versions: Vec<String>,
    /// The version sharing new requests with the active one, if any.
    pub canary: Option<CanaryInfo>,
    /// Per loaded version: requests, calls, faults and breaker state.
    pub health: Vec<VersionHealth>,
    /// The last automatic rollback, if any.
    pub last_event: Option<String>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct CanaryInfo {
    pub version: String,
    /// Fraction of new requests it takes, in (0, 1).
    pub share: f64,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct VersionHealth {
    pub version: String,
    pub requests: u64,
    pub calls: u64,
    pub faults: u64,
    /// `closed` (serving), `open` (refusing) or `half-open` (on trial).
    pub breaker: &'static str,
}

/// Names of one plugin kind to what each version is to the server (`H`:
/// an engine sampler id, a tool-parser instance).
#[derive(Debug)]
pub struct Registry<H> {
    kind: PluginKind,
    entries: RwLock<BTreeMap<String, Entry<H>>>,
    policy: BreakerPolicy,
}

/// What a deploy displaced: versions to retire (the engine drops a retired
/// sampler when its last request ends; a tool parser goes with its last
/// holder).
pub type Retired<H> = Vec<H>;

/// The version a request gets, and whether resolving it changed the
/// registry (an automatic rollback the plugin store should record).
#[derive(Debug)]
pub struct Resolution<H> {
    pub handle: H,
    /// The version chosen.
    pub version: semver::Version,
    pub rolled_back: bool,
}

fn poisoned() -> ApiError {
    ApiError::Internal("the plugin registry lock is poisoned".into())
}

impl<H: Clone> Registry<H> {
    pub fn new(kind: PluginKind, policy: BreakerPolicy) -> Self {
        Self { kind, entries: RwLock::default(), policy }
    }

    /// The request field that names plugins of this kind.
    fn param(&self) -> &'static str {
        match self.kind {
            PluginKind::ToolParser => "weft.tool_parser",
            PluginKind::Guide => "weft.guide",
            PluginKind::Sampler => "weft.sampler",
            // Not named by requests.
            PluginKind::Auth | PluginKind::Router => "name",
        }
    }

    fn unknown(&self, name: &str, entries: &BTreeMap<String, Entry<H>>) -> ApiError {
        let known: Vec<&str> = entries.keys().map(String::as_str).collect();
        ApiError::UnknownPlugin { name: name.to_string(), known: known.join(", "), param: self.param() }
    }

    fn unavailable(&self, name: &str, version: &semver::Version, wait: Duration) -> ApiError {
        ApiError::PluginUnavailable {
            plugin: format!("{name}@{version}"),
            retry_after_s: wait.as_secs().max(1) as u32,
            param: self.param(),
        }
    }

    /// Whether `name` is deployed.
    pub fn contains(&self, name: &str) -> bool {
        self.entries.read().is_ok_and(|e| e.contains_key(name))
    }

    /// Which version a new request naming `name` uses: the canary
    /// for its share, else the active version; a version whose breaker is
    /// open falls back to the one before it (rolled back automatically),
    /// or is a 503 when there is none.
    pub fn resolve(&self, name: &str) -> Result<Resolution<H>, ApiError> {
        let now = Instant::now();
        {
            let entries = self.entries.read().map_err(|_| poisoned())?;
            let entry = entries.get(name).ok_or_else(|| self.unknown(name, &entries))?;
            let chosen = match &entry.canary {
                Some(c) if c.takes_next() => entry.active + 1,
                _ => entry.active,
            };
            let version = &entry.versions[chosen];
            match version.admit(&self.policy, now) {
                Ok(()) => {
                    version.requests.fetch_add(1, Ordering::Relaxed);
                    return Ok(Resolution { handle: version.handle.clone(), version: version.version.clone(), rolled_back: false });
                }
                Err(wait) if chosen == 0 => return Err(self.unavailable(name, &version.version, wait)),
                Err(_) => {}
            }
        }
        // The chosen version is broken and an earlier one is loaded.
        let mut entries = self.entries.write().map_err(|_| poisoned())?;
        let entry = entries.get_mut(name).ok_or_else(|| self.unknown(name, &BTreeMap::new()))?;
        // Re-checked under the write lock: another request may have rolled
        // back already, and a canary and the active version fail apart.
        let mut broken = None;
        if entry.canary.is_some() && entry.versions[entry.active + 1].admit(&self.policy, now).is_err() {
            entry.canary = None;
            broken = Some(entry.versions[entry.active + 1].version.clone());
        } else if entry.active > 0 && entry.versions[entry.active].admit(&self.policy, now).is_err() {
            entry.active -= 1;
            broken = Some(entry.versions[entry.active + 1].version.clone());
        }
        let rolled_back = broken.is_some();
        if let Some(broken) = broken {
            entry.last_event = Some(format!(
                "{name}@{broken} faulted {} times within {} s and was rolled back to {} automatically",
                self.policy.faults,
                self.policy.window.as_secs(),
                entry.versions[entry.active].version
            ));
        }
        let version = &entry.versions[entry.active];
        version.admit(&self.policy, now).map_err(|wait| self.unavailable(name, &version.version, wait))?;
        version.requests.fetch_add(1, Ordering::Relaxed);
        Ok(Resolution { handle: version.handle.clone(), version: version.version.clone(), rolled_back })
    }

    /// Make the deployed version of `name` the active one, or with `canary` a share of new requests beside the
    /// active one. Versions newer than the active one (rolled back from,
    /// or an earlier canary) are dropped first, so history stays linear and
    /// rollback always returns to the version that was active before;
    /// beyond [`KEPT_VERSIONS`] the oldest go too. Returns the versions to
    /// retire, or an error (and the deployed one should be retired).
    pub fn activate(&self, name: &str, deployed: Deployed<H>) -> Result<Retired<H>, ApiError> {
        let mut entries = self.entries.write().map_err(|_| poisoned())?;
        // Checked before the entry exists: a refused deploy leaves no trace.
        let loaded = entries.get(name).map_or(&[][..], |e| e.versions.as_slice());
        if loaded.iter().any(|v| v.version == deployed.manifest.version) {
            return Err(ApiError::Conflict(format!("{name}@{} is already deployed; deploy a new version", deployed.manifest.version)));
        }
        if let Some(share) = deployed.canary {
            if loaded.is_empty() {
                return Err(ApiError::invalid("canary", format!("`{name}` has no active version for a canary to share requests with")));
            }
            if !(share > 0.0 && share < 1.0) {
                return Err(ApiError::invalid("canary", format!("a canary share is in (0, 1); given {share}")));
            }
        }
        let entry = entries.entry(name.to_string()).or_default();
        let mut retired: Retired<H> =
            if entry.versions.is_empty() { Vec::new() } else { entry.versions.drain(entry.active + 1..).map(|v| v.handle).collect() };
        entry.versions.push(Version {
            version: deployed.manifest.version.clone(),
            handle: deployed.handle,
            manifest: deployed.manifest,
            health: deployed.health,
            breaker: Mutex::new(Breaker::Closed { since: Instant::now() }),
            requests: AtomicU64::new(0),
            startup: false,
        });
        let excess = entry.versions.len().saturating_sub(KEPT_VERSIONS);
        retired.extend(entry.versions.drain(..excess).map(|v| v.handle));
        entry.canary = deployed.canary.map(|share| Canary { share, resolved: AtomicU64::new(0) });
        entry.active = entry.versions.len() - if entry.canary.is_some() { 2 } else { 1 };
        Ok(retired)
    }

    /// [`Self::activate`] for a version from the server's own startup
    /// configuration, which is not persisted.
    pub fn activate_startup(&self, name: &str, deployed: Deployed<H>) -> Result<Retired<H>, ApiError> {
        let retired = self.activate(name, deployed)?;
        let mut entries = self.entries.write().map_err(|_| poisoned())?;
        if let Some(v) = entries.get_mut(name).and_then(|e| e.versions.last_mut()) {
            v.startup = true;
        }
        Ok(retired)
    }

    /// Whether `name` already has `version` loaded.
    pub fn has(&self, name: &str, version: &semver::Version) -> Result<bool, ApiError> {
        let entries = self.entries.read().map_err(|_| poisoned())?;
        Ok(entries.get(name).is_some_and(|e| e.versions.iter().any(|v| &v.version == version)))
    }

    /// Withdraw the canary, or else make the version before the active one
    /// active again.
    pub fn rollback(&self, name: &str) -> Result<PluginInfo, ApiError> {
        self.change(name, |entry| {
            if entry.canary.take().is_some() {
                return Ok(());
            }
            if entry.active == 0 {
                return Err(ApiError::invalid("name", format!("`{name}` has no earlier version loaded to roll back to")));
            }
            entry.active -= 1;
            Ok(())
        })
    }

    /// Make the canary the active version: it takes every new request.
    pub fn promote(&self, name: &str) -> Result<PluginInfo, ApiError> {
        self.change(name, |entry| {
            entry.canary.take().ok_or_else(|| ApiError::invalid("name", format!("`{name}` has no canary to promote")))?;
            entry.active += 1;
            Ok(())
        })
    }

    /// Unload every version of `name`: returns the versions to retire
    /// (requests in flight on them finish).
    pub fn remove(&self, name: &str) -> Result<Retired<H>, ApiError> {
        let mut entries = self.entries.write().map_err(|_| poisoned())?;
        let entry = entries.remove(name).ok_or_else(|| self.unknown(name, &entries))?;
        Ok(entry.versions.into_iter().map(|v| v.handle).collect())
    }

    fn change(&self, name: &str, edit: impl FnOnce(&mut Entry<H>) -> Result<(), ApiError>) -> Result<PluginInfo, ApiError> {
        let mut entries = self.entries.write().map_err(|_| poisoned())?;
        let entry = entries.get_mut(name).ok_or_else(|| self.unknown(name, &BTreeMap::new()))?;
        edit(entry)?;
        Ok(info(self.kind, name, entry))
    }

    /// Make the loaded `version` of `name` the active one, with a canary
    /// share for the version after it (restoring a stored state).
    pub fn set_active(&self, name: &str, version: &semver::Version, canary: Option<f64>) -> Result<(), ApiError> {
        let mut entries = self.entries.write().map_err(|_| poisoned())?;
        let entry = entries.get_mut(name).ok_or_else(|| self.unknown(name, &BTreeMap::new()))?;
        if let Some(i) = entry.versions.iter().position(|v| &v.version == version) {
            entry.active = i;
            entry.canary = canary
                .filter(|s| *s > 0.0 && *s < 1.0 && i + 1 < entry.versions.len())
                .map(|share| Canary { share, resolved: AtomicU64::new(0) });
        }
        Ok(())
    }

    /// `name`'s loaded versions as the plugin store keeps them.
    pub fn stored(&self, name: &str) -> Result<crate::plugin_store::StoredName, ApiError> {
        let entries = self.entries.read().map_err(|_| poisoned())?;
        let entry = entries.get(name).ok_or_else(|| self.unknown(name, &BTreeMap::new()))?;
        Ok(crate::plugin_store::StoredName {
            versions: entry.versions.iter().filter(|v| !v.startup).map(|v| crate::plugin_store::StoredVersion::of(&v.manifest)).collect(),
            active: entry.versions[entry.active].version.to_string(),
            canary: entry.canary.as_ref().map(|c| c.share),
        })
    }

    pub fn list(&self) -> Result<Vec<PluginInfo>, ApiError> {
        let entries = self.entries.read().map_err(|_| poisoned())?;
        Ok(entries.iter().map(|(name, e)| info(self.kind, name, e)).collect())
    }

    /// One name's info.
    pub fn get(&self, name: &str) -> Result<PluginInfo, ApiError> {
        let entries = self.entries.read().map_err(|_| poisoned())?;
        entries.get(name).map(|e| info(self.kind, name, e)).ok_or_else(|| self.unknown(name, &entries))
    }
}

/// A version to activate.
#[derive(Debug)]
pub struct Deployed<H> {
    pub manifest: Manifest,
    pub handle: H,
    pub health: Option<Arc<Health>>,
    /// Share of new requests, if it starts as a canary.
    pub canary: Option<f64>,
}

fn info<H>(kind: PluginKind, name: &str, e: &Entry<H>) -> PluginInfo {
    PluginInfo {
        name: name.to_string(),
        kind: crate::manifest::kind_name(kind),
        active_version: e.versions[e.active].version.to_string(),
        versions: e.versions.iter().map(|v| v.version.to_string()).collect(),
        canary: e.canary.as_ref().map(|c| CanaryInfo { version: e.versions[e.active + 1].version.to_string(), share: c.share }),
        health: e
            .versions
            .iter()
            .map(|v| VersionHealth {
                version: v.version.to_string(),
                requests: v.requests.load(Ordering::Relaxed),
                calls: v.health.as_ref().map_or(0, |h| h.calls()),
                faults: v.health.as_ref().map_or(0, |h| h.faults()),
                breaker: v.breaker_state(),
            })
            .collect(),
        last_event: e.last_event.clone(),
    }
}

/// Every deployable kind's registry. A name belongs to one kind: the admin
/// API finds it in whichever registry holds it.
#[derive(Debug)]
pub struct Plugins {
    pub samplers: Registry<SamplerId>,
    pub tool_parsers: Registry<WasmToolParser>,
    /// Deployed guides (the builtin one is the server's own, not here).
    pub guides: Registry<WasmGuide>,
    /// The auth plugin's versions: one name, the one every API request is
    /// authenticated with ([`crate::auth`]).
    pub auths: Registry<Arc<WasmAuth>>,
}

/// One name's registry, whichever kind it is.
pub enum Of<'a> {
    Samplers(&'a Registry<SamplerId>),
    ToolParsers(&'a Registry<WasmToolParser>),
    Guides(&'a Registry<WasmGuide>),
    Auths(&'a Registry<Arc<WasmAuth>>),
}

/// `$e` with `$r` bound to the registry of whichever kind `$of` is.
macro_rules! each_kind {
    ($of:expr, $r:ident => $e:expr) => {
        match $of {
            Of::Samplers($r) => $e,
            Of::ToolParsers($r) => $e,
            Of::Guides($r) => $e,
            Of::Auths($r) => $e,
        }
    };
}

impl Plugins {
    pub fn new(policy: BreakerPolicy) -> Self {
        Self {
            samplers: Registry::new(PluginKind::Sampler, policy.clone()),
            tool_parsers: Registry::new(PluginKind::ToolParser, policy.clone()),
            guides: Registry::new(PluginKind::Guide, policy.clone()),
            // Any caller's headers can make an auth plugin fault: a breaker
            // would let a stranger refuse everyone, an automatic rollback
            // would let one undo a fix. Faults are counted, never acted on.
            auths: Registry::new(PluginKind::Auth, BreakerPolicy { faults: usize::MAX, ..policy }),
        }
    }

    fn all(&self) -> [Of<'_>; 4] {
        [Of::Samplers(&self.samplers), Of::ToolParsers(&self.tool_parsers), Of::Guides(&self.guides), Of::Auths(&self.auths)]
    }

    /// The registry holding `name`, if any holds it.
    pub fn of(&self, name: &str) -> Option<Of<'_>> {
        self.all().into_iter().find(|of| each_kind!(of, r => r.contains(name)))
    }

    /// The kind `name` is deployed as, if it is.
    pub fn kind_of(&self, name: &str) -> Option<PluginKind> {
        self.of(name).map(|of| each_kind!(of, r => r.kind))
    }

    fn unknown(&self, name: &str) -> ApiError {
        let mut known: Vec<String> = self.list().map(|l| l.into_iter().map(|i| i.name).collect()).unwrap_or_default();
        known.sort();
        ApiError::PluginNotFound { name: name.to_string(), known: known.join(", ") }
    }

    /// Whether `name` has `version` loaded, as any kind.
    pub fn has(&self, name: &str, version: &semver::Version) -> Result<bool, ApiError> {
        for of in self.all() {
            if each_kind!(of, r => r.has(name, version))? {
                return Ok(true);
            }
        }
        Ok(false)
    }

    /// Every deployed name of every kind.
    pub fn list(&self) -> Result<Vec<PluginInfo>, ApiError> {
        let mut all = Vec::new();
        for of in self.all() {
            all.extend(each_kind!(of, r => r.list())?);
        }
        Ok(all)
    }

    pub fn get(&self, name: &str) -> Result<PluginInfo, ApiError> {
        each_kind!(self.of(name).ok_or_else(|| self.unknown(name))?, r => r.get(name))
    }

    pub fn rollback(&self, name: &str) -> Result<PluginInfo, ApiError> {
        each_kind!(self.of(name).ok_or_else(|| self.unknown(name))?, r => r.rollback(name))
    }

    pub fn promote(&self, name: &str) -> Result<PluginInfo, ApiError> {
        each_kind!(self.of(name).ok_or_else(|| self.unknown(name))?, r => r.promote(name))
    }

    pub fn stored(&self, name: &str) -> Result<crate::plugin_store::StoredName, ApiError> {
        each_kind!(self.of(name).ok_or_else(|| self.unknown(name))?, r => r.stored(name))
    }

    /// Make `version` of `name` active again with `canary` (restoring a
    /// stored state), whichever kind it is.
    pub fn set_active(&self, name: &str, version: &semver::Version, canary: Option<f64>) -> Result<(), ApiError> {
        match self.of(name) {
            Some(of) => each_kind!(of, r => r.set_active(name, version, canary)),
            None => Ok(()),
        }
    }
}
