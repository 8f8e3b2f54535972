//! Deployed plugins on disk: every loaded plugin version's component bytes
//! and manifest, the version each name has active and its canary, in a sled
//! database under the server's state directory. Deploys and rollbacks are
//! written before they are answered; on startup the server loads them back
//! into the engine in deploy order.

use std::collections::BTreeMap;
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::manifest::{ConfigScalar, Manifest, ManifestGrants, ManifestLimits, PluginKind};

/// A sled failure, with what was being done.
#[derive(Debug, thiserror::Error)]
#[error("the plugin store: {what}: {source}")]
pub struct StoreError {
    what: String,
    #[source]
    source: sled::Error,
}

/// One name's loaded versions (oldest first) and the active one.
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
pub struct StoredName {
    pub versions: Vec<StoredVersion>,
    pub active: String,
    /// The share of the canary (the version after the active one), if any.
    #[serde(default)]
    pub canary: Option<f64>,
}

/// A version's manifest less its name (stored under it). Records written
/// before manifests had typed config read their text values as text, and
/// no limits or grants.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
pub struct StoredVersion {
    pub version: String,
    /// Records written before other kinds were deployable are samplers.
    #[serde(default)]
    pub kind: PluginKind,
    pub config: BTreeMap<String, ConfigScalar>,
    #[serde(default)]
    pub limits: ManifestLimits,
    #[serde(default)]
    pub grants: ManifestGrants,
}

impl StoredVersion {
    pub fn of(manifest: &Manifest) -> Self {
        Self {
            version: manifest.version.to_string(),
            kind: manifest.kind,
            config: manifest.config.clone(),
            limits: manifest.limits.clone(),
            grants: manifest.grants.clone(),
        }
    }

    /// The manifest it was deployed with.
    pub fn manifest(&self, name: &str, version: semver::Version) -> Manifest {
        Manifest {
            name: name.to_string(),
            version,
            kind: self.kind,
            component: None,
            config: self.config.clone(),
            limits: self.limits.clone(),
            grants: self.grants.clone(),
        }
    }
}

#[derive(Debug)]
pub struct PluginStore {
    names: sled::Tree,
    components: sled::Tree,
}

fn key(name: &str, version: &str) -> Vec<u8> {
    format!("{name}@{version}").into_bytes()
}

impl PluginStore {
    pub fn open(dir: &Path) -> Result<Self, StoreError> {
        let err = |what: &str| {
            let what = format!("{what} in {}", dir.display());
            move |source| StoreError { what, source }
        };
        // No background flusher: `save` flushes itself, and without the
        // thread the file lock goes when the store is dropped, so a server
        // restarted in the same process can reopen it at once.
        let db = sled::Config::new().path(dir.join("plugins.sled")).flush_every_ms(None).open().map_err(err("opening the database"))?;
        Ok(Self { names: db.open_tree("names").map_err(err("opening"))?, components: db.open_tree("components").map_err(err("opening"))? })
    }

    /// Every stored name with its versions' components, in name order.
    pub fn load(&self) -> Vec<(String, StoredName, Vec<Vec<u8>>)> {
        self.names
            .iter()
            .filter_map(Result::ok)
            .filter_map(|(k, v)| {
                let name = String::from_utf8(k.to_vec()).ok()?;
                let stored: StoredName = serde_json::from_slice(&v).ok()?;
                let components = stored
                    .versions
                    .iter()
                    .map(|v| self.components.get(key(&name, &v.version)).ok().flatten().map(|c| c.to_vec()))
                    .collect::<Option<Vec<_>>>()?;
                Some((name, stored, components))
            })
            .collect()
    }

    /// Record `name`'s loaded versions and active one; `new` is a version's
    /// component to keep (its key written before the name refers to it).
    pub fn save(&self, name: &str, stored: &StoredName, new: Option<(&str, &[u8])>) -> Result<(), StoreError> {
        let err = |what: &str| {
            let what = format!("{what} {name}");
            move |source| StoreError { what, source }
        };
        if let Some((version, component)) = new {
            self.components.insert(key(name, version), component).map_err(err("saving the component of"))?;
        }
        let old: Option<StoredName> =
            self.names.get(name).map_err(err("reading"))?.and_then(|v| serde_json::from_slice(&v).ok());
        let record = serde_json::to_vec(stored).expect("a stored name serialises");
        self.names.insert(name, record).map_err(err("saving"))?;
        for gone in old.iter().flat_map(|o| &o.versions).filter(|v| !stored.versions.iter().any(|s| s.version == v.version)) {
            self.components.remove(key(name, &gone.version)).map_err(err("dropping an old version of"))?;
        }
        self.names.flush().map_err(err("flushing"))?;
        self.components.flush().map_err(err("flushing"))?;
        Ok(())
    }

    /// Forget `name` and every component stored for it.
    pub fn remove(&self, name: &str) -> Result<(), StoreError> {
        let err = |what: &str| {
            let what = format!("{what} {name}");
            move |source| StoreError { what, source }
        };
        let old: Option<StoredName> =
            self.names.remove(name).map_err(err("removing"))?.and_then(|v| serde_json::from_slice(&v).ok());
        for v in old.iter().flat_map(|o| &o.versions) {
            self.components.remove(key(name, &v.version)).map_err(err("dropping a version of"))?;
        }
        self.names.flush().map_err(err("flushing"))?;
        self.components.flush().map_err(err("flushing"))?;
        Ok(())
    }
}
