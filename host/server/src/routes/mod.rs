//! The HTTP routes and the fallbacks that keep every answer an OpenAI
//! error body (unknown path 404, wrong method 405).

pub(crate) mod admin;
pub(crate) mod chat;
pub(crate) mod completions;
pub(crate) mod models;
pub(crate) mod ops;
pub(crate) mod tokenize;

use axum::Router;
use axum::extract::Request;
use axum::http::Method;
use axum::routing::{get, post};

use crate::AppState;
use crate::error::ApiError;

pub fn router(state: AppState) -> Router {
    let admin = Router::new()
        .route("/admin/v1/model", get(admin::model))
        .route("/admin/v1/drain", post(admin::drain))
        .route(
            "/admin/v1/plugins",
            get(admin::list).post(admin::deploy_manifest).layer(axum::extract::DefaultBodyLimit::max(
                state.runtime.limits().component_bytes + crate::manifest::MAX_MANIFEST_BYTES + 4096,
            )),
        )
        .route("/admin/v1/plugins/{name}", get(admin::info).delete(admin::remove))
        .route("/admin/v1/plugins/{name}/rollback", post(admin::rollback))
        .route("/admin/v1/plugins/{name}/promote", post(admin::promote))
        .route(
            "/admin/v1/plugins/{name}/{version}",
            post(admin::deploy).layer(axum::extract::DefaultBodyLimit::max(state.runtime.limits().component_bytes)),
        )
        .route_layer(axum::middleware::from_fn_with_state(state.clone(), admin::require_admin));
    // The API: every request authenticated by the auth plugin, if any.
    let api = Router::new()
        .route("/v1/chat/completions", post(chat::chat_completions))
        .route("/v1/completions", post(completions::completions))
        .route("/v1/models", get(models::list))
        .route("/v1/models/{id}", get(models::get_one))
        .route("/tokenize", post(tokenize::tokenize))
        .route("/detokenize", post(tokenize::detokenize))
        .route("/tokenizer_info", get(tokenize::tokenizer_info))
        .route_layer(axum::middleware::from_fn_with_state(state.clone(), crate::auth::require_principal));
    Router::new()
        .merge(admin)
        .merge(api)
        .route("/health", get(ops::health))
        .route("/ready", get(ops::ready))
        .route("/metrics", get(ops::metrics))
        .route("/openapi.json", get(crate::openapi::serve))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .route_layer(axum::middleware::from_fn_with_state(state.clone(), ops::count_requests))
        .with_state(state)
}

async fn not_found(method: Method, req: Request) -> ApiError {
    ApiError::RouteNotFound { method: method.to_string(), path: req.uri().path().to_string() }
}

async fn method_not_allowed(method: Method, req: Request) -> ApiError {
    ApiError::MethodNotAllowed { method: method.to_string(), path: req.uri().path().to_string() }
}
