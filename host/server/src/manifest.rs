//! A plugin's manifest: what it is (name, kind, semver version), the
//! configuration handed to its `init` as typed values, the limits it runs
//! under and the capabilities it is granted. Written in TOML next to the
//! component (`weft plugin deploy --manifest`, the watched folder) or
//! implied by a plain deploy (`POST /admin/v1/plugins/{name}/{version}`:
//! text configuration, the server's limits, no grants).
//!
//! ```toml
//! name = "my-sampler"
//! version = "1.2.0"
//! kind = "sampler"
//! component = "my_sampler.wasm"   # relative to this file
//!
//! [config]
//! temperature = 0.5
//! mode = "strict"
//!
//! [limits]
//! call-deadline-ms = 50   # at most the server's
//! memory-mib = 32         # at most the server's
//!
//! [grants]
//! clock = true    # real clocks instead of frozen ones
//! stderr = true   # the plugin's stderr in the server's log
//! language-runtime = true   # CPython's file/socket imports, linked inert
//! ```

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use weft_plugin_runtime::bindings::weft::plugin::types::ConfigValue;
use weft_plugin_runtime::{Grants, Limits};

use crate::error::ApiError;

/// Largest manifest accepted, in bytes.
pub const MAX_MANIFEST_BYTES: usize = 64 << 10;

#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct Manifest {
    pub name: String,
    pub version: semver::Version,
    #[serde(default)]
    pub kind: PluginKind,
    /// The component file, relative to the manifest (for the CLI and the
    /// watched folder; a deploy through the API carries the bytes).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub component: Option<PathBuf>,
    #[serde(default)]
    pub config: BTreeMap<String, ConfigScalar>,
    #[serde(default)]
    pub limits: ManifestLimits,
    #[serde(default)]
    pub grants: ManifestGrants,
}

/// The plugin kinds of `wit/worlds.wit`.
#[derive(Clone, Copy, Debug, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum PluginKind {
    #[default]
    Sampler,
    Guide,
    ToolParser,
    Auth,
    Router,
}

/// One configuration value: TOML's (and JSON's) scalars.
#[derive(Clone, Debug, Serialize, PartialEq)]
#[serde(untagged)]
pub enum ConfigScalar {
    Boolean(bool),
    Integer(i64),
    Number(f64),
    Text(String),
}

impl<'de> Deserialize<'de> for ConfigScalar {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Scalar;
        impl serde::de::Visitor<'_> for Scalar {
            type Value = ConfigScalar;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a configuration value: text, an integer, a number or a boolean")
            }
            fn visit_bool<E>(self, v: bool) -> Result<ConfigScalar, E> {
                Ok(ConfigScalar::Boolean(v))
            }
            fn visit_i64<E>(self, v: i64) -> Result<ConfigScalar, E> {
                Ok(ConfigScalar::Integer(v))
            }
            fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<ConfigScalar, E> {
                i64::try_from(v).map(ConfigScalar::Integer).map_err(|_| E::custom(format!("the integer {v} is out of range")))
            }
            fn visit_f64<E>(self, v: f64) -> Result<ConfigScalar, E> {
                Ok(ConfigScalar::Number(v))
            }
            fn visit_str<E>(self, v: &str) -> Result<ConfigScalar, E> {
                Ok(ConfigScalar::Text(v.to_string()))
            }
        }
        d.deserialize_any(Scalar)
    }
}

impl ConfigScalar {
    pub fn to_value(&self) -> ConfigValue {
        match self {
            Self::Boolean(b) => ConfigValue::Boolean(*b),
            Self::Integer(i) => ConfigValue::Integer(*i),
            Self::Number(n) => ConfigValue::Number(*n),
            Self::Text(t) => ConfigValue::Text(t.clone()),
        }
    }
}

/// Tighter limits than the server's; unset ones are the server's.
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct ManifestLimits {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub call_deadline_ms: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory_mib: Option<u64>,
}

#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct ManifestGrants {
    #[serde(default)]
    pub clock: bool,
    #[serde(default)]
    pub stderr: bool,
    /// A language runtime's filesystem and socket imports, linked inert.
    #[serde(default)]
    pub language_runtime: bool,
}

impl Manifest {
    /// A plain deploy's manifest: text configuration, nothing else.
    pub fn plain(name: &str, version: semver::Version, config: BTreeMap<String, String>) -> Self {
        Self {
            name: name.to_string(),
            version,
            kind: PluginKind::Sampler,
            component: None,
            config: config.into_iter().map(|(k, v)| (k, ConfigScalar::Text(v))).collect(),
            limits: ManifestLimits::default(),
            grants: ManifestGrants::default(),
        }
    }

    /// Parse a TOML manifest; a malformed one is a 400 naming the problem.
    pub fn from_toml(text: &str) -> Result<Self, ApiError> {
        if text.len() > MAX_MANIFEST_BYTES {
            return Err(ApiError::invalid("manifest", format!("a manifest is at most {MAX_MANIFEST_BYTES} bytes")));
        }
        toml::from_str(text).map_err(|e| {
            let line = e.span().map_or(String::new(), |span| format!(" (line {})", text[..span.start].lines().count().max(1)));
            ApiError::invalid("manifest", format!("the manifest is not valid{line}: {}", e.message()))
        })
    }

    /// The limits this plugin runs under: the server's, tightened by the
    /// manifest (never loosened), with its grants.
    pub fn limits(&self, server: &Limits) -> Result<Limits, ApiError> {
        if self.kind == PluginKind::Router {
            return Err(ApiError::invalid(
                "kind",
                "`router` plugins are not deployable yet: a server routes only to its own engine until it has peers",
            ));
        }
        let mut limits = server.clone();
        if let Some(ms) = self.limits.call_deadline_ms {
            let asked = Duration::from_millis(ms);
            if ms == 0 || asked > server.call_deadline {
                return Err(ApiError::invalid(
                    "limits.call-deadline-ms",
                    format!("call-deadline-ms is in [1, {}]; given {ms}", server.call_deadline.as_millis()),
                ));
            }
            limits.call_deadline = asked;
        }
        if let Some(mib) = self.limits.memory_mib {
            let most = (server.memory_bytes >> 20) as u64;
            if mib == 0 || mib > most {
                return Err(ApiError::invalid("limits.memory-mib", format!("memory-mib is in [1, {most}]; given {mib}")));
            }
            limits.memory_bytes = (mib as usize) << 20;
        }
        // An auth plugin always reads the real clock: under the frozen one
        // every token would look unexpired.
        let clock = self.grants.clock || self.kind == PluginKind::Auth;
        limits.grants = Grants { clock, stderr: self.grants.stderr, language_runtime: self.grants.language_runtime };
        Ok(limits)
    }

    /// The configuration as the plugin's `init` receives it.
    pub fn init_config(&self) -> Vec<(String, ConfigValue)> {
        self.config.iter().map(|(k, v)| (k.clone(), v.to_value())).collect()
    }
}

/// A kind as manifests and the admin API spell it.
pub fn kind_name(kind: PluginKind) -> &'static str {
    match kind {
        PluginKind::Sampler => "sampler",
        PluginKind::Guide => "guide",
        PluginKind::ToolParser => "tool-parser",
        PluginKind::Auth => "auth",
        PluginKind::Router => "router",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_full_manifest_reads_with_typed_config_tighter_limits_and_grants() {
        let m = Manifest::from_toml(
            r#"
            name = "mine"
            version = "1.2.0"
            component = "mine.wasm"
            [config]
            temperature = 0.5
            depth = 3
            strict = true
            mode = "fast"
            [limits]
            call-deadline-ms = 50
            memory-mib = 16
            [grants]
            clock = true
            "#,
        )
        .unwrap();
        assert_eq!(m.kind, PluginKind::Sampler);
        assert_eq!(m.config["temperature"], ConfigScalar::Number(0.5));
        assert_eq!(m.config["depth"], ConfigScalar::Integer(3));
        assert_eq!(m.config["strict"], ConfigScalar::Boolean(true));
        assert_eq!(m.config["mode"], ConfigScalar::Text("fast".into()));
        let limits = m.limits(&Limits::default()).unwrap();
        assert_eq!((limits.call_deadline, limits.memory_bytes), (Duration::from_millis(50), 16 << 20));
        assert_eq!(limits.grants, Grants { clock: true, ..Grants::default() });
    }

    #[test]
    fn bad_manifests_name_what_is_wrong() {
        let param = |text: &str| match Manifest::from_toml(text).and_then(|m| m.limits(&Limits::default())) {
            Err(e) => (e.param().map(str::to_string), e.to_string()),
            Ok(_) => panic!("{text} was accepted"),
        };
        let base = "name = \"x\"\nversion = \"1.0.0\"\n";
        assert!(param("name = \"x\"").1.contains("version"), "a missing field");
        assert!(param(&format!("{base}colour = 1")).1.contains("colour"), "an unknown field");
        assert!(param("name = \"x\"\nversion = \"one\"").1.contains("manifest"));
        assert!(param(&format!("{base}[config]\nlist = [1, 2]")).1.contains("a configuration value: text"));
        assert_eq!(param(&format!("{base}[limits]\nmemory-mib = 4096")).0.as_deref(), Some("limits.memory-mib"));
        assert_eq!(param(&format!("{base}[limits]\ncall-deadline-ms = 0")).0.as_deref(), Some("limits.call-deadline-ms"));
        assert_eq!(param(&format!("{base}[grants]\nfilesystem = true")).0.as_deref(), Some("manifest"));
        assert_eq!(param(&format!("{base}kind = \"router\"")).0.as_deref(), Some("kind"));
    }

    #[test]
    fn an_auth_plugin_always_reads_the_real_clock() {
        let m = Manifest::from_toml("name = \"a\"\nversion = \"1.0.0\"\nkind = \"auth\"\n").unwrap();
        assert!(m.limits(&Limits::default()).unwrap().grants.clock);
    }
}
