//! The builtin auth plugin: a request's `authorization: Bearer <token>` in,
//! a principal (tenant, scopes, allowed models and plugins, rate-limit
//! class) or a denial out.
//!
//! A token with two dots is a JWT, verified with the configured HS256
//! secret, RS256 or ES256 public key, then checked for `exp` and `nbf`
//! (with leeway) and, when configured, `aud` and `iss`; its tenant is the
//! `tenant` claim or else `sub`. Any other token is an API key: its SHA-256
//! is compared, in constant time, with every configured key hash (keys are
//! never configured in the clear; several per tenant allow rotation).
//!
//! Configuration (all text unless noted; unknown keys are refused):
//!
//! | key | value |
//! | --- | --- |
//! | `key.<tenant>.<label>` | `sha256:<hex>` of an API key |
//! | `tenant.<tenant>.scopes` / `.models` / `.plugins` | comma-separated lists (empty: all) |
//! | `tenant.<tenant>.rate-limit-class` | a class name |
//! | `tenant.<tenant>.sampler` / `.guide` / `.tool-parser` | the plugin of that kind the tenant's requests use when they name none |
//! | `jwt.hs256-secret` | the shared secret |
//! | `jwt.rs256-public-key`, `jwt.es256-public-key` | a PEM `PUBLIC KEY` |
//! | `jwt.audience`, `jwt.issuer` | required `aud` / `iss` |
//! | `jwt.leeway-s` | integer seconds of clock skew allowed (default 30) |
//!
//! JWT claims `scope` (space-separated), `models`, `plugins` (arrays) and
//! `rate_limit_class` override the tenant's configured lists. Expiry needs
//! the real clock: the host grants this plugin `clock`.

wit_bindgen::generate!({
    path: "../../wit",
    world: "auth-plugin",
});

use std::cell::RefCell;
use std::collections::BTreeMap;

use base64::Engine as _;
use exports::weft::plugin::auth::{Decision, Guest, Principal, RequestHead};
use hmac::Mac;
use sha2::{Digest, Sha256};
use weft::plugin::types::{ConfigEntry, ConfigValue, PluginError};

#[derive(Default)]
struct Tenant {
    scopes: Vec<String>,
    models: Vec<String>,
    plugins: Vec<String>,
    rate_limit_class: String,
    /// (kind, plugin name) defaults.
    defaults: Vec<(String, String)>,
}

#[derive(Default)]
struct Config {
    /// (sha256 of the key, tenant).
    keys: Vec<([u8; 32], String)>,
    tenants: BTreeMap<String, Tenant>,
    hs256: Option<Vec<u8>>,
    rs256: Option<rsa::pkcs1v15::VerifyingKey<Sha256>>,
    es256: Option<p256::ecdsa::VerifyingKey>,
    audience: Option<String>,
    issuer: Option<String>,
    leeway: i64,
}

thread_local! {
    static CONFIG: RefCell<Config> = RefCell::new(Config::default());
}

fn bad_config(message: String) -> PluginError {
    PluginError { code: "bad-config".into(), message }
}

fn list(text: &str) -> Vec<String> {
    text.split(',').map(str::trim).filter(|s| !s.is_empty()).map(str::to_string).collect()
}

fn parse(entries: Vec<ConfigEntry>) -> Result<Config, PluginError> {
    let mut config = Config { leeway: 30, ..Config::default() };
    for ConfigEntry { key, value } in entries {
        let text = match &value {
            ConfigValue::Text(t) => t.clone(),
            ConfigValue::Integer(i) if key == "jwt.leeway-s" => i.to_string(),
            _ => return Err(bad_config(format!("`{key}` takes text"))),
        };
        let parts: Vec<&str> = key.splitn(3, '.').collect();
        match parts.as_slice() {
            ["key", tenant, _label] => {
                let hash = text
                    .strip_prefix("sha256:")
                    .and_then(|h| hex::decode(h).ok())
                    .and_then(|h| <[u8; 32]>::try_from(h).ok())
                    .ok_or_else(|| bad_config(format!("`{key}` is `sha256:` and 64 hex digits (keys are configured hashed)")))?;
                config.keys.push((hash, tenant.to_string()));
                config.tenants.entry(tenant.to_string()).or_default();
            }
            ["tenant", tenant, field] => {
                let t = config.tenants.entry(tenant.to_string()).or_default();
                match *field {
                    "scopes" => t.scopes = list(&text),
                    "models" => t.models = list(&text),
                    "plugins" => t.plugins = list(&text),
                    "rate-limit-class" => t.rate_limit_class = text,
                    kind @ ("sampler" | "guide" | "tool-parser") => {
                        t.defaults.retain(|(k, _)| k != kind);
                        t.defaults.push((kind.to_string(), text));
                    }
                    other => return Err(bad_config(format!("unknown tenant setting `{other}` in `{key}`"))),
                }
            }
            ["jwt", "hs256-secret"] => config.hs256 = Some(text.into_bytes()),
            ["jwt", "rs256-public-key"] => {
                use rsa::pkcs8::DecodePublicKey;
                let key = rsa::RsaPublicKey::from_public_key_pem(&text).map_err(|e| bad_config(format!("`{key}`: {e}")))?;
                config.rs256 = Some(rsa::pkcs1v15::VerifyingKey::new(key));
            }
            ["jwt", "es256-public-key"] => {
                use p256::pkcs8::DecodePublicKey;
                config.es256 =
                    Some(p256::ecdsa::VerifyingKey::from_public_key_pem(&text).map_err(|e| bad_config(format!("`{key}`: {e}")))?);
            }
            ["jwt", "audience"] => config.audience = Some(text),
            ["jwt", "issuer"] => config.issuer = Some(text),
            ["jwt", "leeway-s"] => config.leeway = text.parse().map_err(|_| bad_config(format!("`{key}` is whole seconds")))?,
            _ => return Err(bad_config(format!("unknown setting `{key}`"))),
        }
    }
    Ok(config)
}

struct Auth;

impl Guest for Auth {
    fn init(entries: Vec<ConfigEntry>) -> Result<(), PluginError> {
        let config = parse(entries)?;
        CONFIG.with(|c| *c.borrow_mut() = config);
        Ok(())
    }

    fn authenticate(head: RequestHead) -> Decision {
        let Some(value) = head.headers.iter().find(|(k, _)| k == "authorization").map(|(_, v)| v.as_str()) else {
            return Decision::Unauthenticated("send `authorization: Bearer <API key or JWT>`".into());
        };
        let Some(token) = value.strip_prefix("Bearer ").map(str::trim) else {
            return Decision::Unauthenticated("the authorization header is not `Bearer <token>`".into());
        };
        CONFIG.with(|c| {
            let config = c.borrow();
            let principal =
                if token.bytes().filter(|&b| b == b'.').count() == 2 { jwt(&config, token) } else { api_key(&config, token) };
            match principal {
                Ok(p) => Decision::Allow(p),
                Err(why) => Decision::Unauthenticated(why),
            }
        })
    }
}

/// Equal without an early exit.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

fn principal(config: &Config, tenant: &str) -> Principal {
    let t = config.tenants.get(tenant);
    Principal {
        tenant: tenant.to_string(),
        scopes: t.map(|t| t.scopes.clone()).unwrap_or_default(),
        allowed_models: t.map(|t| t.models.clone()).unwrap_or_default(),
        allowed_plugins: t.map(|t| t.plugins.clone()).unwrap_or_default(),
        rate_limit_class: t.map(|t| t.rate_limit_class.clone()).unwrap_or_default(),
        default_plugins: t.map(|t| t.defaults.clone()).unwrap_or_default(),
    }
}

fn api_key(config: &Config, token: &str) -> Result<Principal, String> {
    let digest: [u8; 32] = Sha256::digest(token.as_bytes()).into();
    // Compare with every key, so the time taken says nothing of which matched.
    let mut found: Option<&str> = None;
    for (hash, tenant) in &config.keys {
        if constant_time_eq(hash, &digest) {
            found = Some(tenant);
        }
    }
    found.map(|tenant| principal(config, tenant)).ok_or_else(|| "the API key is not valid".into())
}

fn now() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs() as i64)
}

fn jwt(config: &Config, token: &str) -> Result<Principal, String> {
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let mut parts = token.splitn(3, '.');
    let (Some(header), Some(payload), Some(signature)) = (parts.next(), parts.next(), parts.next()) else {
        return Err("the JWT is malformed".into());
    };
    let decode_json = |part: &str| -> Result<serde_json::Value, String> {
        let bytes = b64.decode(part).map_err(|_| "the JWT is not base64url".to_string())?;
        serde_json::from_slice(&bytes).map_err(|_| "the JWT is not JSON".to_string())
    };
    let head = decode_json(header)?;
    let claims = decode_json(payload)?;
    let signature = b64.decode(signature).map_err(|_| "the JWT signature is not base64url".to_string())?;
    let signed = &token[..header.len() + 1 + payload.len()];
    let verified = match head.get("alg").and_then(|a| a.as_str()) {
        Some("HS256") => config.hs256.as_ref().is_some_and(|secret| {
            let mut mac = hmac::Hmac::<Sha256>::new_from_slice(secret).expect("HMAC takes any key length");
            mac.update(signed.as_bytes());
            mac.verify_slice(&signature).is_ok()
        }),
        Some("RS256") => config.rs256.as_ref().is_some_and(|key| {
            use rsa::signature::Verifier;
            rsa::pkcs1v15::Signature::try_from(signature.as_slice()).is_ok_and(|s| key.verify(signed.as_bytes(), &s).is_ok())
        }),
        Some("ES256") => config.es256.as_ref().is_some_and(|key| {
            use p256::ecdsa::signature::Verifier;
            p256::ecdsa::Signature::from_slice(&signature).is_ok_and(|s| key.verify(signed.as_bytes(), &s).is_ok())
        }),
        Some(other) => return Err(format!("JWT algorithm {other:?} is not accepted (HS256, RS256, ES256)")),
        None => return Err("the JWT header has no `alg`".into()),
    };
    if !verified {
        return Err("the JWT signature does not verify with a configured key".into());
    }
    let now = now();
    let time = |name: &str| claims.get(name).and_then(|v| v.as_i64());
    match time("exp") {
        Some(exp) if now > exp + config.leeway => return Err("the JWT has expired".into()),
        None => return Err("the JWT has no `exp`".into()),
        _ => {}
    }
    if time("nbf").is_some_and(|nbf| now + config.leeway < nbf) {
        return Err("the JWT is not valid yet (`nbf`)".into());
    }
    if let Some(audience) = &config.audience {
        let aud = claims.get("aud");
        let matches = aud.and_then(|a| a.as_str()) == Some(audience.as_str())
            || aud.and_then(|a| a.as_array()).is_some_and(|all| all.iter().any(|a| a.as_str() == Some(audience.as_str())));
        if !matches {
            return Err(format!("the JWT is not for this audience ({audience:?})"));
        }
    }
    if let Some(issuer) = &config.issuer
        && claims.get("iss").and_then(|i| i.as_str()) != Some(issuer.as_str())
    {
        return Err(format!("the JWT is not from the expected issuer ({issuer:?})"));
    }
    let tenant = claims
        .get("tenant")
        .or_else(|| claims.get("sub"))
        .and_then(|t| t.as_str())
        .ok_or_else(|| "the JWT names no tenant (`tenant` or `sub`)".to_string())?;
    let mut p = principal(config, tenant);
    let strings = |v: &serde_json::Value| -> Vec<String> { v.as_array().map(|a| a.iter().filter_map(|s| s.as_str().map(str::to_string)).collect()).unwrap_or_default() };
    if let Some(scope) = claims.get("scope").and_then(|s| s.as_str()) {
        p.scopes = scope.split_whitespace().map(str::to_string).collect();
    }
    if let Some(models) = claims.get("models") {
        p.allowed_models = strings(models);
    }
    if let Some(plugins) = claims.get("plugins") {
        p.allowed_plugins = strings(plugins);
    }
    if let Some(class) = claims.get("rate_limit_class").and_then(|c| c.as_str()) {
        p.rate_limit_class = class.to_string();
    }
    Ok(p)
}

export!(Auth);
