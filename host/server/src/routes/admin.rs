//! The admin API under `/admin/v1`: always authenticated with the
//! configured bearer token (compared in constant time), even on loopback.
//! Model information and draining today; plugin deployment joins it with
//! the plugin registry.

use std::sync::atomic::Ordering;

use axum::extract::{Request, State};
use axum::http::header;
use axum::middleware::Next;
use axum::response::Response;
use axum::Json;
use serde::Serialize;
use utoipa::ToSchema;

use crate::AppState;
use crate::error::{ApiError, ErrorBody};

/// Equal without an early exit, so response times do not reveal how much
/// of a guessed token was right.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Let a request through only with `authorization: Bearer <admin token>`.
pub async fn require_admin(State(state): State<AppState>, req: Request, next: Next) -> Result<Response, ApiError> {
    let Some(expected) = &state.config.admin_token else {
        return Err(ApiError::Forbidden("the admin API is off: start the server with an admin token (--admin-token)".into()));
    };
    let given = req.headers().get(header::AUTHORIZATION).and_then(|v| v.to_str().ok()).and_then(|v| v.strip_prefix("Bearer "));
    match given {
        Some(token) if constant_time_eq(token.as_bytes(), expected.as_bytes()) => Ok(next.run(req).await),
        Some(_) => Err(ApiError::Unauthenticated("the admin token is wrong".into())),
        None => Err(ApiError::Unauthenticated("the admin API needs `authorization: Bearer <admin token>`".into())),
    }
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
