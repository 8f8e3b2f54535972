//! Who an API request comes from: the auth plugin asked once per request
//! (HTTP middleware over the API routes, and each gRPC call), and what the
//! answer allows.
//!
//! Without an auth plugin (none at startup, `Server::enable_auth`, and
//! none deployed since) the API is open and every request is the empty
//! tenant. The auth plugin is a deployable kind with one name: a new
//! version (or a canary) authenticates new requests from the moment it is
//! activated, and rollback is one call; its faults never open a breaker
//! nor roll it back, since any caller can provoke them. With one, a request is let
//! through only with a principal: no or bad credentials are a 401, a route
//! outside the principal's scopes a 403; a model or a sampler plugin
//! outside its allowed lists is a 403 when the request names it. The
//! principal's tenant keys the prefix cache, so tenants never share cached
//! prompts; its rate-limit class bounds its requests per minute
//! ([`crate::rate_limit`], 429 beyond). The auth plugin fails closed: if it faults, the request is
//! refused with 503 and the next request gets a fresh instance.
//! `/health`, `/ready`, `/metrics` and `/openapi.json` stay open (load
//! balancers and scrapers); the admin API has its own token.

use axum::extract::{Request, State};
use axum::http::HeaderMap;
use axum::middleware::Next;
use axum::response::Response;
use weft_plugin_runtime::{AuthDecision, Principal};

use crate::AppState;
use crate::error::ApiError;

/// Headers handed to the plugin: at most this many, …
const MAX_HEADERS: usize = 64;
/// … of at most this many bytes in all.
const MAX_HEADER_BYTES: usize = 16 << 10;

/// The request's headers as the plugin sees them: lower-case names, text
/// values only (others are skipped), bounded in count and size.
pub fn headers_of<'a>(headers: impl IntoIterator<Item = (&'a str, &'a [u8])>) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut bytes = 0;
    for (name, value) in headers {
        let Ok(value) = std::str::from_utf8(value) else { continue };
        bytes += name.len() + value.len();
        if out.len() == MAX_HEADERS || bytes > MAX_HEADER_BYTES {
            break;
        }
        out.push((name.to_ascii_lowercase(), value.to_string()));
    }
    out
}

/// The scope a route needs: `chat`, `completions` (also gRPC `Generate`
/// and `GenerateStream`), `models` or `tokenize`.
pub fn scope_of(path: &str) -> &'static str {
    match path {
        p if p.starts_with("/v1/chat/") => "chat",
        p if p.starts_with("/v1/completions") || p.starts_with("/weft.v1.Generation/Generate") => "completions",
        p if p.starts_with("/v1/models") || p == "/weft.v1.Generation/ListModels" => "models",
        _ => "tokenize",
    }
}

/// Ask the auth plugin about a request (on the blocking pool); `None` when
/// the server has no auth plugin.
pub async fn authenticate(state: &AppState, method: &str, path: &str, headers: Vec<(String, String)>) -> Result<Option<Principal>, ApiError> {
    let Some(name) = state.auth.get() else { return Ok(None) };
    let auth = state.plugins.auths.resolve(name)?.handle;
    let (method, path_owned) = (method.to_string(), path.to_string());
    let decision = state
        .blocking(move || auth.authenticate(&method, &path_owned, headers))
        .await?
        .map_err(|e| ApiError::NotReady(format!("authentication is unavailable (the auth plugin failed: {e})")))?;
    match decision {
        AuthDecision::Allow(principal) => {
            let scope = scope_of(path);
            if !principal.scopes.is_empty() && !principal.scopes.iter().any(|s| s == scope) {
                return Err(ApiError::Forbidden(format!("tenant `{}` lacks the `{scope}` scope this route needs", principal.tenant)));
            }
            state.rate_limiter.admit(&principal.tenant, &principal.rate_limit_class)?;
            Ok(Some(principal))
        }
        AuthDecision::Unauthenticated(why) => Err(ApiError::Unauthenticated(why)),
        AuthDecision::Forbidden(why) => Err(ApiError::Forbidden(why)),
    }
}

/// The caller of an HTTP request, as [`require_principal`] left it.
#[derive(Clone, Debug, Default)]
pub struct Caller(pub Option<Principal>);

impl Caller {
    pub fn principal(&self) -> Option<&Principal> {
        self.0.as_ref()
    }

    /// The prefix-cache tenant: the principal's, else the shared one.
    pub fn tenant(&self) -> String {
        self.0.as_ref().map(|p| p.tenant.clone()).unwrap_or_default()
    }
}

/// Middleware over the API routes: authenticate, and hand the handler its
/// [`Caller`].
pub async fn require_principal(State(state): State<AppState>, mut req: Request, next: Next) -> Result<Response, ApiError> {
    let headers = request_headers(req.headers());
    match authenticate(&state, req.method().as_str(), req.uri().path(), headers).await {
        Ok(principal) => {
            req.extensions_mut().insert(Caller(principal));
            Ok(next.run(req).await)
        }
        Err(e) => Err(refuse(req, state.config.max_body_bytes, e).await),
    }
}

/// Answer `e` to `req` after reading (and dropping, chunk by chunk) its
/// body, up to `limit` bytes, so the connection stays usable: a client
/// that reuses it for its next request must not find it closed under that
/// request.
pub async fn refuse(req: Request, limit: usize, e: ApiError) -> ApiError {
    use futures_util::StreamExt;
    let mut body = req.into_body().into_data_stream();
    let mut seen = 0;
    while let Some(Ok(chunk)) = body.next().await {
        seen += chunk.len();
        if seen > limit {
            break;
        }
    }
    e
}

fn request_headers(headers: &HeaderMap) -> Vec<(String, String)> {
    headers_of(headers.iter().map(|(k, v)| (k.as_str(), v.as_bytes())))
}

/// A model the principal may not use is a 403.
pub fn check_model(principal: Option<&Principal>, model: &str, served: &str) -> Result<(), ApiError> {
    match principal {
        Some(p) if !p.allowed_models.is_empty() && !p.allowed_models.iter().any(|m| m == model || m == served) => {
            Err(ApiError::Forbidden(format!("tenant `{}` may not use the model `{model}`", p.tenant)))
        }
        _ => Ok(()),
    }
}

/// A sampler plugin the principal may not use is a 403.
pub fn check_plugin(principal: Option<&Principal>, plugin: &str) -> Result<(), ApiError> {
    match principal {
        Some(p) if !p.allowed_plugins.is_empty() && !p.allowed_plugins.iter().any(|m| m == plugin) => {
            Err(ApiError::Forbidden(format!("tenant `{}` may not use the plugin `{plugin}`", p.tenant)))
        }
        _ => Ok(()),
    }
}
