//! Operations endpoints: liveness, readiness, Prometheus metrics, and the
//! middleware that counts every request by route and status.

use std::sync::atomic::Ordering;

use axum::extract::{MatchedPath, Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use serde_json::json;

use crate::AppState;
use crate::error::ApiError;

/// Live: the process answers.
#[utoipa::path(get, path = "/health", tag = "Operations", responses((status = 200, description = "`{\"status\": \"ok\"}`")))]
pub async fn health() -> impl IntoResponse {
    axum::Json(json!({"status": "ok"}))
}

/// Ready: the model is loaded and the engine thread runs.
#[utoipa::path(get, path = "/ready", tag = "Operations", responses(
    (status = 200, description = "`{\"status\": \"ready\", \"model\": ...}`"),
    (status = 503, description = "The engine is not running, or the server is draining", body = crate::error::ErrorBody)))]
pub async fn ready(State(state): State<AppState>) -> Response {
    if state.engine.is_draining() {
        ApiError::NotReady("the server is draining".into()).into_response()
    } else if state.engine.gauges().alive.load(Ordering::Acquire) {
        axum::Json(json!({"status": "ready", "model": state.model.name})).into_response()
    } else {
        ApiError::NotReady("the engine thread is not running".into()).into_response()
    }
}

/// Prometheus metrics in the OpenMetrics text format.
#[utoipa::path(get, path = "/metrics", tag = "Operations", responses((status = 200, description = "OpenMetrics text", content_type = "application/openmetrics-text")))]
pub async fn metrics(State(state): State<AppState>) -> Response {
    match state.metrics.encode() {
        Ok(text) => {
            let mut response = (StatusCode::OK, text).into_response();
            response.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/openmetrics-text; version=1.0.0; charset=utf-8"),
            );
            response
        }
        Err(e) => ApiError::Internal(format!("encoding metrics: {e}")).into_response(),
    }
}

/// Count every routed request by route and status.
pub async fn count_requests(State(state): State<AppState>, req: Request, next: Next) -> Response {
    let route = req.extensions().get::<MatchedPath>().map_or("unmatched", |p| p.as_str()).to_string();
    let response = next.run(req).await;
    state.metrics.count_request(route, response.status().as_u16());
    response
}
