//! The admin API under `/admin/v1`: always authenticated with the
//! configured bearer token (compared in constant time), even on loopback.
//! Model information, draining, and plugins (samplers and tool parsers):
//! deploy a version (it takes new requests at once, or a share of them as a
//! canary), list, show one, promote a canary, roll back, remove.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use axum::body::Bytes;
use axum::extract::multipart::MultipartRejection;
use axum::extract::rejection::{BytesRejection, QueryRejection};
use axum::extract::{Multipart, Path, Query, Request, State};
use axum::http::{StatusCode, header};
use axum::middleware::Next;
use axum::response::Response;
use axum::Json;
use serde::Serialize;
use utoipa::ToSchema;


use crate::AppState;
use crate::error::{ApiError, ErrorBody};
use crate::manifest::{Manifest, PluginKind, kind_name};
use crate::plugins::{Deployed, Of, PluginInfo};

/// Equal without an early exit, so response times do not reveal how much
/// of a guessed token was right.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Let a request through only with `authorization: Bearer <admin token>`.
pub async fn require_admin(State(state): State<AppState>, req: Request, next: Next) -> Result<Response, ApiError> {
    let Some(expected) = &state.config.admin_token else {
        let e = ApiError::Forbidden("the admin API is off: start the server with an admin token (--admin-token)".into());
        return Err(crate::auth::refuse(req, state.runtime.limits().component_bytes, e).await);
    };
    let given = req.headers().get(header::AUTHORIZATION).and_then(|v| v.to_str().ok()).and_then(|v| v.strip_prefix("Bearer "));
    let refused = match given {
        Some(token) if constant_time_eq(token.as_bytes(), expected.as_bytes()) => return Ok(next.run(req).await),
        Some(_) => ApiError::Unauthenticated("the admin token is wrong".into()),
        None => ApiError::Unauthenticated("the admin API needs `authorization: Bearer <admin token>`".into()),
    };
    Err(crate::auth::refuse(req, state.runtime.limits().component_bytes, refused).await)
}

/// What the server serves and how busy it is.
#[derive(Debug, Serialize, ToSchema)]
pub struct ModelStatus {
    id: String,
    context_length: usize,
    vocab_size: usize,
    kv_blocks: usize,
    kv_blocks_free: usize,
    running: usize,
    waiting: usize,
    admitted: usize,
    draining: bool,
}

#[utoipa::path(get, path = "/admin/v1/model", tag = "Admin", security(("admin_token" = [])), responses(
    (status = 200, body = ModelStatus), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody)))]
pub async fn model(State(state): State<AppState>) -> Json<ModelStatus> {
    let g = state.engine.gauges();
    Json(ModelStatus {
        id: state.model.name.clone(),
        context_length: state.model.context,
        vocab_size: state.model.vocab,
        kv_blocks: g.total_blocks.load(Ordering::Relaxed),
        kv_blocks_free: g.free_blocks.load(Ordering::Relaxed),
        running: g.running.load(Ordering::Relaxed),
        waiting: g.waiting.load(Ordering::Relaxed),
        admitted: state.engine.admitted(),
        draining: state.engine.is_draining(),
    })
}

/// Stop admitting requests (they get 503 `not_ready`; `/ready` turns 503
/// so a load balancer moves traffic away); in-flight requests finish.
#[utoipa::path(post, path = "/admin/v1/drain", tag = "Admin", security(("admin_token" = [])), responses(
    (status = 200, body = ModelStatus), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody)))]
pub async fn drain(state: State<AppState>) -> Json<ModelStatus> {
    state.engine.drain();
    model(state).await
}

/// Names a deploy may use: 1–64 of `a-z 0-9 - _ .`, not a builtin name.
fn check_name(name: &str) -> Result<(), ApiError> {
    let ok = (1..=64).contains(&name.len())
        && name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"-_.".contains(&b));
    if !ok {
        return Err(ApiError::invalid("name", format!("a plugin name is 1 to 64 of a-z, 0-9, `-`, `_`, `.`; given {name:?}")));
    }
    if name == "default" || name == "native" {
        return Err(ApiError::invalid("name", format!("`{name}` names a builtin sampler")));
    }
    if crate::tool_parsers::BUILTIN_FORMATS.contains(&name) {
        return Err(ApiError::invalid("name", format!("`{name}` names a builtin tool parser")));
    }
    Ok(())
}

/// Deploy a sampler component (the request body: the `.wasm` bytes) as
/// `name` at semver `version`; query parameters become its configuration
/// (text values), except `canary`. Compiled and started off the request
/// path; on success the version takes every new request naming `name` —
/// or, with `canary=SHARE` (0 < SHARE < 1), that share of them beside the
/// active version until promoted — while requests in flight finish on the
/// version they started with.
#[utoipa::path(post, path = "/admin/v1/plugins/{name}/{version}", tag = "Admin", security(("admin_token" = [])),
    params(("name" = String, Path), ("version" = String, Path, description = "semver"),
        ("canary" = Option<f64>, Query, description = "Start as a canary taking this share of new requests")),
    request_body(content = Vec<u8>, content_type = "application/octet-stream", description = "The component (`.wasm`) bytes"),
    responses(
        (status = 201, body = PluginInfo),
        (status = 400, description = "Bad name, version or canary share, or the component was rejected", body = ErrorBody),
        (status = 401, body = ErrorBody), (status = 403, body = ErrorBody),
        (status = 409, description = "That version is already deployed", body = ErrorBody)))]
pub async fn deploy(
    State(state): State<AppState>,
    Path((name, version)): Path<(String, String)>,
    config: Result<Query<BTreeMap<String, String>>, QueryRejection>,
    component: Result<Bytes, BytesRejection>,
) -> Result<(StatusCode, Json<PluginInfo>), ApiError> {
    let Query(mut config) = config.map_err(|e| ApiError::invalid("query", e.body_text()))?;
    let component = component.map_err(|e| body_error(&state, e))?;
    let canary = canary_share(config.remove("canary").as_ref())?;
    let version = semver::Version::parse(&version)
        .map_err(|e| ApiError::invalid("version", format!("a plugin version is semver (1.2.3); given {version:?}: {e}")))?;
    let info = deploy_version(&state, Manifest::plain(&name, version, config), component, canary).await?;
    Ok((StatusCode::CREATED, Json(info)))
}

/// Deploy a plugin with its manifest: a `multipart/form-data` body with a
/// `manifest` part (the TOML manifest: name, kind, version, typed config,
/// limits, grants) and a `component` part (the `.wasm` bytes); `canary`
/// as for the plain deploy.
#[utoipa::path(post, path = "/admin/v1/plugins", tag = "Admin", security(("admin_token" = [])),
    params(("canary" = Option<f64>, Query, description = "Start as a canary taking this share of new requests")),
    request_body(content = Vec<u8>, content_type = "multipart/form-data", description = "Parts `manifest` (TOML) and `component` (.wasm)"),
    responses(
        (status = 201, body = PluginInfo),
        (status = 400, description = "A bad manifest or canary share, or the component was rejected", body = ErrorBody),
        (status = 401, body = ErrorBody), (status = 403, body = ErrorBody),
        (status = 409, description = "That version is already deployed", body = ErrorBody)))]
pub async fn deploy_manifest(
    State(state): State<AppState>,
    query: Result<Query<BTreeMap<String, String>>, QueryRejection>,
    form: Result<Multipart, MultipartRejection>,
) -> Result<(StatusCode, Json<PluginInfo>), ApiError> {
    let Query(query) = query.map_err(|e| ApiError::invalid("query", e.body_text()))?;
    let mut form = form.map_err(|e| ApiError::invalid("body", e.body_text()))?;
    let bad_form = |e: axum::extract::multipart::MultipartError| ApiError::invalid("body", format!("a bad multipart body: {e}"));
    let (mut manifest, mut component) = (None, None);
    while let Some(part) = form.next_field().await.map_err(bad_form)? {
        match part.name() {
            Some("manifest") => {
                let text = part.text().await.map_err(bad_form)?;
                manifest = Some(Manifest::from_toml(&text)?);
            }
            Some("component") => component = Some(part.bytes().await.map_err(bad_form)?),
            other => return Err(ApiError::invalid("body", format!("unknown part {other:?}: send `manifest` and `component`"))),
        }
    }
    let manifest = manifest.ok_or_else(|| ApiError::invalid("manifest", "the `manifest` part is missing"))?;
    let component = component.ok_or_else(|| ApiError::invalid("component", "the `component` part is missing"))?;
    let info = deploy_version(&state, manifest, component, canary_share(query.get("canary"))?).await?;
    Ok((StatusCode::CREATED, Json(info)))
}

/// A deploy body that could not be read: too large (the component size
/// cap) or broken.
fn body_error(state: &AppState, e: BytesRejection) -> ApiError {
    if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
        ApiError::PayloadTooLarge { limit: state.runtime.limits().component_bytes }
    } else {
        ApiError::invalid("body", e.body_text())
    }
}

fn canary_share(given: Option<&String>) -> Result<Option<f64>, ApiError> {
    given
        .map(|share| share.parse::<f64>().map_err(|_| ApiError::invalid("canary", format!("a canary share is a number in (0, 1); given {share:?}"))))
        .transpose()
}

/// Check, compile, start and activate one plugin version, then persist it:
/// what every way of deploying does.
pub(crate) async fn deploy_version(
    state: &AppState,
    manifest: Manifest,
    component: Bytes,
    canary: Option<f64>,
) -> Result<PluginInfo, ApiError> {
    let started = std::time::Instant::now();
    let name = manifest.name.clone();
    let version = manifest.version.clone();
    let kind = manifest.kind;
    check_name(&name)?;
    let limits = manifest.limits(state.runtime.limits())?;
    if state.plugins.has(&name, &version)? {
        return Err(ApiError::Conflict(format!("{name}@{version} is already deployed; deploy a new version")));
    }
    if let Some(deployed) = state.plugins.kind_of(&name)
        && deployed != manifest.kind
    {
        return Err(ApiError::Conflict(format!(
            "`{name}` is deployed as a {} plugin; a {} cannot take its name",
            kind_name(deployed),
            kind_name(manifest.kind)
        )));
    }
    let runtime = Arc::clone(&state.runtime);
    let label = format!("{name}@{version}");
    let init = manifest.init_config();
    let bytes = component.clone();
    let rejected = |e: weft_plugin_runtime::PluginError| ApiError::PluginRejected(e.to_string());
    // When the new version took over: the registry's swap is all that
    // separates requests on the old version from those on the new.
    let swap;
    match manifest.kind {
        PluginKind::Guide => {
            let tokenizer = Arc::clone(&state.tokenizer);
            let guide = state
                .blocking(move || crate::guides::deployed(&runtime, &label, &bytes, limits, init, &tokenizer))
                .await?
                .map_err(rejected)?;
            let health = Some(guide.health());
            swap = std::time::Instant::now();
            state.plugins.guides.activate(&name, Deployed { manifest, handle: guide, health, canary })?;
        }
        PluginKind::Auth => {
            if let Some(current) = state.auth.get()
                && current != &name
            {
                return Err(ApiError::Conflict(format!(
                    "the server authenticates with `{current}`; deploy a new version of `{current}` instead of `{name}`"
                )));
            }
            let auth = state
                .blocking(move || runtime.load_auth(&label, &bytes, limits).and_then(|c| weft_plugin_runtime::WasmAuth::new(c, init)))
                .await?
                .map_err(rejected)?;
            let health = Some(auth.health());
            swap = std::time::Instant::now();
            state.plugins.auths.activate(&name, Deployed { manifest, handle: Arc::new(auth), health, canary })?;
            // The first auth deploy turns authentication on, for good.
            if state.auth.get_or_init(|| name.clone()) != &name {
                drop(state.plugins.auths.remove(&name));
                return Err(ApiError::Conflict(format!("the server started authenticating with `{}` meanwhile", state.auth.get().unwrap())));
            }
        }
        PluginKind::ToolParser => {
            let parser = state
                .blocking(move || {
                    runtime.load_tool_parser(&label, &bytes, limits).and_then(|c| weft_plugin_runtime::WasmToolParser::new(c, init))
                })
                .await?
                .map_err(rejected)?;
            let health = Some(parser.health());
            swap = std::time::Instant::now();
            state.plugins.tool_parsers.activate(&name, Deployed { manifest, handle: parser, health, canary })?;
        }
        _ => {
            let sampler = state
                .blocking(move || runtime.load_sampler_with(&label, &bytes, limits).and_then(|c| c.sampler(init)))
                .await?
                .map_err(rejected)?;
            let health = Some(sampler.health());
            let id = state.engine.add_sampler(Box::new(sampler)).await?;
            swap = std::time::Instant::now();
            let retired = state
                .plugins
                .samplers
                .activate(&name, Deployed { manifest, handle: id, health, canary })
                .inspect_err(|_| state.engine.retire_sampler(id))?;
            for old in retired {
                state.engine.retire_sampler(old);
            }
        }
    }
    let swapped = swap.elapsed();
    eprintln!(
        "weft: deployed {name}@{version} ({}): ready in {} ms, swapped in {} us",
        kind_name(kind),
        (swap - started).as_millis(),
        swapped.as_micros()
    );
    if let Some(store) = &state.plugin_store {
        let stored = state.plugins.stored(&name)?;
        store
            .save(&name, &stored, Some((&version.to_string(), &component)))
            .map_err(|e| ApiError::Internal(format!("{name}@{version} is deployed but was not persisted: {e}")))?;
    }
    state.plugins.get(&name)
}

/// Every deployed sampler name with its active and loaded versions.
#[utoipa::path(get, path = "/admin/v1/plugins", tag = "Admin", security(("admin_token" = [])),
    responses((status = 200, body = Vec<PluginInfo>), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody)))]
pub async fn list(State(state): State<AppState>) -> Result<Json<Vec<PluginInfo>>, ApiError> {
    Ok(Json(state.plugins.list()?))
}

/// One deployed name: its versions, canary, per-version health and breaker
/// state, and the last automatic rollback.
#[utoipa::path(get, path = "/admin/v1/plugins/{name}", tag = "Admin", security(("admin_token" = [])),
    params(("name" = String, Path)),
    responses((status = 200, body = PluginInfo), (status = 404, description = "No such plugin", body = ErrorBody), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody)))]
pub async fn info(State(state): State<AppState>, Path(name): Path<String>) -> Result<Json<PluginInfo>, ApiError> {
    Ok(Json(state.plugins.get(&name)?))
}

/// Withdraw the canary, or else make the version before the active one
/// take new requests again.
#[utoipa::path(post, path = "/admin/v1/plugins/{name}/rollback", tag = "Admin", security(("admin_token" = [])),
    params(("name" = String, Path)),
    responses((status = 200, body = PluginInfo), (status = 400, body = ErrorBody), (status = 404, description = "No such plugin", body = ErrorBody), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody)))]
pub async fn rollback(State(state): State<AppState>, Path(name): Path<String>) -> Result<Json<PluginInfo>, ApiError> {
    let info = state.plugins.rollback(&name)?;
    persist(&state, &name, "rolled back")?;
    Ok(Json(info))
}

/// Make the canary take every new request.
#[utoipa::path(post, path = "/admin/v1/plugins/{name}/promote", tag = "Admin", security(("admin_token" = [])),
    params(("name" = String, Path)),
    responses((status = 200, body = PluginInfo), (status = 400, body = ErrorBody), (status = 404, description = "No such plugin", body = ErrorBody), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody)))]
pub async fn promote(State(state): State<AppState>, Path(name): Path<String>) -> Result<Json<PluginInfo>, ApiError> {
    let info = state.plugins.promote(&name)?;
    persist(&state, &name, "promoted")?;
    Ok(Json(info))
}

/// Unload every version of a name; requests in flight on them finish, new
/// ones naming it get 400 `unknown_plugin`. The auth plugin cannot be
/// removed (409): that would open the API.
#[utoipa::path(delete, path = "/admin/v1/plugins/{name}", tag = "Admin", security(("admin_token" = [])),
    params(("name" = String, Path)),
    responses((status = 204), (status = 400, body = ErrorBody), (status = 404, description = "No such plugin", body = ErrorBody), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody),
        (status = 409, description = "The name is the server's auth plugin", body = ErrorBody)))]
pub async fn remove(State(state): State<AppState>, Path(name): Path<String>) -> Result<StatusCode, ApiError> {
    check_name(&name)?;
    match state.plugins.of(&name) {
        Some(Of::Samplers(registry)) => {
            for sampler in registry.remove(&name)? {
                state.engine.retire_sampler(sampler);
            }
        }
        // A removed parser's or guide's instance goes with the last
        // request holding it.
        Some(Of::ToolParsers(registry)) => drop(registry.remove(&name)?),
        Some(Of::Guides(registry)) => drop(registry.remove(&name)?),
        // Removing it would open the API to everyone.
        Some(Of::Auths(_)) => {
            return Err(ApiError::Conflict(format!(
                "`{name}` authenticates every request and cannot be removed; deploy a new version or roll back"
            )));
        }
        None => return Err(state.plugins.get(&name).err().unwrap_or_else(|| ApiError::Internal("a name vanished".into()))),
    }
    if let Some(store) = &state.plugin_store {
        store.remove(&name).map_err(|e| ApiError::Internal(format!("{name} is removed but the change was not persisted: {e}")))?;
    }
    Ok(StatusCode::NO_CONTENT)
}

fn persist(state: &AppState, name: &str, what: &str) -> Result<(), ApiError> {
    if let Some(store) = &state.plugin_store {
        store
            .save(name, &state.plugins.stored(name)?, None)
            .map_err(|e| ApiError::Internal(format!("{name} is {what} but the change was not persisted: {e}")))?;
    }
    Ok(())
}
