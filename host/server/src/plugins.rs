//! The server's samplers by name: the versions deployed under each name,
//! the one taking new requests, and the engine sampler each version is.
//!
//! Deploying a version compiles and instantiates it off the request path,
//! hands it to the engine, then makes it the name's active version in one
//! step (a write lock held for a map update, never across an await). New
//! requests resolve the name at admission and keep the engine sampler id
//! they got, so requests in flight finish on the version they started with.
//! The last few versions stay loaded for rollback; older ones are retired,
//! and the engine drops them when their last request ends.

use std::collections::BTreeMap;
use std::sync::RwLock;

use serde::Serialize;
use utoipa::ToSchema;
use weft_engine::SamplerId;

use crate::error::ApiError;

/// Versions kept loaded per name (the active one and those rollback can
/// return to). Default 3.
pub const KEPT_VERSIONS: usize = 3;

#[derive(Debug)]
struct Version {
    version: semver::Version,
    sampler: SamplerId,
    /// The configuration it was deployed with (kept for the plugin store).
    config: BTreeMap<String, String>,
}

#[derive(Debug, Default)]
struct Entry {
    /// Oldest first; `active` indexes it.
    versions: Vec<Version>,
    active: usize,
}

/// A deployed name as the admin API shows it.
#[derive(Debug, Serialize, ToSchema)]
pub struct PluginInfo {
    pub name: String,
    pub kind: &'static str,
    pub active_version: String,
    /// Loaded versions, oldest first.
    pub versions: Vec<String>,
}

/// Names to engine samplers.
#[derive(Debug, Default)]
pub struct SamplerRegistry {
    entries: RwLock<BTreeMap<String, Entry>>,
}

/// What a deploy displaced: samplers the engine should retire.
pub type Retired = Vec<SamplerId>;

fn poisoned() -> ApiError {
    ApiError::Internal("the plugin registry lock is poisoned".into())
}

impl SamplerRegistry {
    /// Which engine sampler new requests naming `name` use.
    pub fn resolve(&self, name: &str) -> Result<SamplerId, ApiError> {
        let entries = self.entries.read().map_err(|_| poisoned())?;
        let entry = entries.get(name).ok_or_else(|| {
            let known: Vec<&str> = entries.keys().map(String::as_str).collect();
            ApiError::UnknownPlugin { name: name.to_string(), known: known.join(", ") }
        })?;
        Ok(entry.versions[entry.active].sampler)
    }

    /// Make `version` of `name` (running as engine sampler `sampler`) the
    /// active one. Versions newer than the active one (rolled back from)
    /// are dropped first, so history stays linear and rollback always
    /// returns to the version that was active before; beyond
    /// [`KEPT_VERSIONS`] the oldest go too. Returns the samplers to retire,
    /// or a conflict (and `sampler` should be retired) if the version is
    /// already there.
    pub fn activate(
        &self,
        name: &str,
        version: semver::Version,
        sampler: SamplerId,
        config: BTreeMap<String, String>,
    ) -> Result<Retired, ApiError> {
        let mut entries = self.entries.write().map_err(|_| poisoned())?;
        let entry = entries.entry(name.to_string()).or_default();
        if entry.versions.iter().any(|v| v.version == version) {
            return Err(ApiError::Conflict(format!("{name}@{version} is already deployed; deploy a new version")));
        }
        let mut retired: Retired =
            if entry.versions.is_empty() { Vec::new() } else { entry.versions.drain(entry.active + 1..).map(|v| v.sampler).collect() };
        entry.versions.push(Version { version, sampler, config });
        let excess = entry.versions.len().saturating_sub(KEPT_VERSIONS);
        retired.extend(entry.versions.drain(..excess).map(|v| v.sampler));
        entry.active = entry.versions.len() - 1;
        Ok(retired)
    }

    /// Whether `name` already has `version` loaded.
    pub fn has(&self, name: &str, version: &semver::Version) -> Result<bool, ApiError> {
        let entries = self.entries.read().map_err(|_| poisoned())?;
        Ok(entries.get(name).is_some_and(|e| e.versions.iter().any(|v| &v.version == version)))
    }

    /// Make the version before the active one active again.
    pub fn rollback(&self, name: &str) -> Result<PluginInfo, ApiError> {
        let mut entries = self.entries.write().map_err(|_| poisoned())?;
        let entry = entries.get_mut(name).ok_or_else(|| ApiError::UnknownPlugin { name: name.into(), known: String::new() })?;
        if entry.active == 0 {
            return Err(ApiError::invalid("name", format!("`{name}` has no earlier version loaded to roll back to")));
        }
        entry.active -= 1;
        Ok(info(name, entry))
    }

    /// Make the loaded `version` of `name` the active one (restoring a
    /// stored state).
    pub fn set_active(&self, name: &str, version: &semver::Version) -> Result<(), ApiError> {
        let mut entries = self.entries.write().map_err(|_| poisoned())?;
        let entry = entries.get_mut(name).ok_or_else(|| ApiError::UnknownPlugin { name: name.into(), known: String::new() })?;
        if let Some(i) = entry.versions.iter().position(|v| &v.version == version) {
            entry.active = i;
        }
        Ok(())
    }

    /// `name`'s loaded versions as the plugin store keeps them.
    pub fn stored(&self, name: &str) -> Result<crate::plugin_store::StoredName, ApiError> {
        let entries = self.entries.read().map_err(|_| poisoned())?;
        let entry = entries.get(name).ok_or_else(|| ApiError::UnknownPlugin { name: name.into(), known: String::new() })?;
        Ok(crate::plugin_store::StoredName {
            versions: entry
                .versions
                .iter()
                .map(|v| crate::plugin_store::StoredVersion { version: v.version.to_string(), config: v.config.clone() })
                .collect(),
            active: entry.versions[entry.active].version.to_string(),
        })
    }

    pub fn list(&self) -> Result<Vec<PluginInfo>, ApiError> {
        let entries = self.entries.read().map_err(|_| poisoned())?;
        Ok(entries.iter().map(|(name, e)| info(name, e)).collect())
    }
}

fn info(name: &str, e: &Entry) -> PluginInfo {
    PluginInfo {
        name: name.to_string(),
        kind: "sampler",
        active_version: e.versions[e.active].version.to_string(),
        versions: e.versions.iter().map(|v| v.version.to_string()).collect(),
    }
}
