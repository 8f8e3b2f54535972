//! The one error type of the serving layer and its one mapping to HTTP.
//!
//! Every failure a client can see is an [`ApiError`]. Its variant decides
//! the status code, the stable machine-readable `type` and `code` strings,
//! and the headers (`retry-after` when waiting helps, `x-should-retry:
//! false` when it never will). Bodies have OpenAI's shape,
//! `{"error": {"message", "type", "param", "code"}}`, so the official SDKs
//! raise the right exception class. Message text is for people; `type` and
//! `code` are the API.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use thiserror::Error;

/// A request the server did not complete.
#[derive(Debug, Error, Clone, PartialEq)]
pub enum ApiError {
    /// A field is missing, malformed or out of range.
    #[error("{message}")]
    InvalidRequest { message: String, param: Option<String> },
    /// The prompt and the requested output do not fit the context.
    #[error("{0}")]
    ContextLengthExceeded(String),
    /// A parameter that Weft accepts in the schema but does not implement yet.
    #[error("`{param}` is not supported yet: {why}")]
    Unsupported { param: String, why: &'static str },
    /// No or wrong credentials.
    #[error("{0}")]
    Unauthenticated(String),
    /// Valid credentials (or none needed) without the right to this.
    #[error("{0}")]
    Forbidden(String),
    /// A request named a plugin that is not there; `param` is the field
    /// that named it.
    #[error("no plugin named `{name}` is deployed (deployed: {known})")]
    UnknownPlugin { name: String, known: String, param: &'static str },
    /// An admin route names a plugin that is not deployed.
    #[error("no plugin named `{name}` is deployed (deployed: {known})")]
    PluginNotFound { name: String, known: String },
    /// A deploy whose component failed its checks, compile, link or init.
    #[error("{0}")]
    PluginRejected(String),
    /// The request conflicts with the current state (a version that exists).
    #[error("{0}")]
    Conflict(String),
    #[error("the model `{0}` does not exist; GET /v1/models lists the models this server has")]
    ModelNotFound(String),
    #[error("no route for {method} {path}")]
    RouteNotFound { method: String, path: String },
    #[error("{method} is not allowed on {path}")]
    MethodNotAllowed { method: String, path: String },
    #[error("the request body is larger than the limit of {limit} bytes")]
    PayloadTooLarge { limit: usize },
    #[error("the request body must be JSON: send `content-type: application/json` (got {got})")]
    UnsupportedMediaType { got: String },
    /// The tenant's rate-limit class allows no more requests just now.
    #[error("tenant `{tenant}` is over its rate limit (class `{class}`: {limit} requests per minute); retry after {retry_after_s} s")]
    RateLimited { tenant: String, class: String, limit: u32, retry_after_s: u32 },
    /// Admission is full: running and queued requests are at their limits.
    #[error("the server is at capacity ({limit} requests running or queued); retry after {retry_after_s} s")]
    Overloaded { limit: usize, retry_after_s: u32 },
    /// The engine is not serving (starting, shutting down, or it failed).
    #[error("the server is not ready: {0}")]
    NotReady(String),
    /// A plugin the request chose failed (trapped, overran its limits or
    /// answered something invalid) or refused. Deterministic: retrying the
    /// same request will not help.
    #[error("{0}")]
    PluginFailed(String),
    /// The plugin version the request chose faulted too often: its circuit
    /// breaker is open until a new version is deployed or the cooldown ends.
    #[error("the plugin {plugin} is failing and its circuit breaker is open; retry after {retry_after_s} s or deploy a fixed version")]
    PluginUnavailable { plugin: String, retry_after_s: u32, param: &'static str },
    /// The request's own deadline (`weft.deadline_ms`) passed first.
    #[error("the request's deadline of {0} ms passed before it finished")]
    DeadlineExceeded(u64),
    /// A bug: an invariant inside Weft broke. Never caused by input alone.
    #[error("internal error: {0}")]
    Internal(String),
}

impl ApiError {
    pub fn invalid(param: impl Into<String>, message: impl Into<String>) -> Self {
        Self::InvalidRequest { message: message.into(), param: Some(param.into()) }
    }

    pub fn status(&self) -> StatusCode {
        match self {
            Self::InvalidRequest { .. }
            | Self::ContextLengthExceeded(_)
            | Self::Unsupported { .. }
            | Self::UnknownPlugin { .. }
            | Self::PluginRejected(_) => StatusCode::BAD_REQUEST,
            Self::Conflict(_) => StatusCode::CONFLICT,
            Self::Unauthenticated(_) => StatusCode::UNAUTHORIZED,
            Self::Forbidden(_) => StatusCode::FORBIDDEN,
            Self::ModelNotFound(_) | Self::RouteNotFound { .. } | Self::PluginNotFound { .. } => StatusCode::NOT_FOUND,
            Self::MethodNotAllowed { .. } => StatusCode::METHOD_NOT_ALLOWED,
            Self::PayloadTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            Self::UnsupportedMediaType { .. } => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            Self::Overloaded { .. } | Self::NotReady(_) | Self::PluginUnavailable { .. } => StatusCode::SERVICE_UNAVAILABLE,
            Self::PluginFailed(_) | Self::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
            Self::DeadlineExceeded(_) => StatusCode::GATEWAY_TIMEOUT,
            Self::RateLimited { .. } => StatusCode::TOO_MANY_REQUESTS,
        }
    }

    /// OpenAI's error `type`.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::InvalidRequest { .. }
            | Self::ContextLengthExceeded(_)
            | Self::Unsupported { .. }
            | Self::UnknownPlugin { .. }
            | Self::PluginRejected(_)
            | Self::Conflict(_) => "invalid_request_error",
            Self::Unauthenticated(_) => "authentication_error",
            Self::Forbidden(_) => "permission_error",
            Self::ModelNotFound(_) | Self::RouteNotFound { .. } | Self::PluginNotFound { .. } => "not_found_error",
            Self::MethodNotAllowed { .. } | Self::PayloadTooLarge { .. } | Self::UnsupportedMediaType { .. } => {
                "invalid_request_error"
            }
            Self::Overloaded { .. } | Self::NotReady(_) | Self::PluginUnavailable { .. } => "service_unavailable_error",
            Self::PluginFailed(_) => "plugin_error",
            Self::DeadlineExceeded(_) => "timeout_error",
            Self::RateLimited { .. } => "requests",
            Self::Internal(_) => "internal_error",
        }
    }

    /// A stable code naming the failure precisely.
    pub fn code(&self) -> &'static str {
        match self {
            Self::InvalidRequest { .. } => "invalid_value",
            Self::ContextLengthExceeded(_) => "context_length_exceeded",
            Self::Unsupported { .. } => "unsupported_parameter",
            Self::UnknownPlugin { .. } => "unknown_plugin",
            Self::PluginRejected(_) => "plugin_rejected",
            Self::Conflict(_) => "conflict",
            Self::Unauthenticated(_) => "invalid_api_key",
            Self::Forbidden(_) => "forbidden",
            Self::ModelNotFound(_) => "model_not_found",
            Self::PluginNotFound { .. } => "plugin_not_found",
            Self::RouteNotFound { .. } => "unknown_route",
            Self::MethodNotAllowed { .. } => "method_not_allowed",
            Self::PayloadTooLarge { .. } => "payload_too_large",
            Self::UnsupportedMediaType { .. } => "unsupported_media_type",
            Self::Overloaded { .. } => "server_overloaded",
            Self::NotReady(_) => "not_ready",
            Self::PluginFailed(_) => "plugin_failed",
            Self::PluginUnavailable { .. } => "plugin_unavailable",
            Self::DeadlineExceeded(_) => "deadline_exceeded",
            Self::RateLimited { .. } => "rate_limit_exceeded",
            Self::Internal(_) => "internal_error",
        }
    }

    pub fn param(&self) -> Option<&str> {
        match self {
            Self::InvalidRequest { param, .. } => param.as_deref(),
            Self::Unsupported { param, .. } => Some(param),
            Self::ContextLengthExceeded(_) => Some("messages"),
            Self::ModelNotFound(_) => Some("model"),
            Self::UnknownPlugin { param, .. } | Self::PluginUnavailable { param, .. } => Some(param),
            _ => None,
        }
    }

    /// Seconds after which the same request may succeed, if waiting helps.
    fn retry_after(&self) -> Option<u32> {
        match self {
            Self::Overloaded { retry_after_s, .. }
            | Self::PluginUnavailable { retry_after_s, .. }
            | Self::RateLimited { retry_after_s, .. } => Some(*retry_after_s),
            Self::NotReady(_) => Some(1),
            _ => None,
        }
    }

    /// The JSON body, also sent as the last event of a failed stream.
    pub fn body(&self) -> ErrorBody {
        ErrorBody {
            error: ErrorDetail {
                message: self.to_string(),
                kind: self.kind(),
                param: self.param().map(str::to_string),
                code: self.code(),
            },
        }
    }
}

/// `{"error": {...}}`.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct ErrorDetail {
    pub message: String,
    #[serde(rename = "type")]
    pub kind: &'static str,
    pub param: Option<String>,
    pub code: &'static str,
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut response = (self.status(), axum::Json(self.body())).into_response();
        let headers = response.headers_mut();
        match self.retry_after() {
            Some(s) => {
                headers.insert(header::RETRY_AFTER, HeaderValue::from(s));
            }
            // Only 408/409/429/5xx are retried by the OpenAI SDKs; say so
            // explicitly for a 500 too, since a bug will not go away.
            None => {
                headers.insert("x-should-retry", HeaderValue::from_static("false"));
            }
        }
        response
    }
}

impl From<weft_types::DecisionError> for ApiError {
    fn from(e: weft_types::DecisionError) -> Self {
        match e {
            weft_types::DecisionError::Backend(_) => Self::Internal(e.to_string()),
            _ => Self::PluginFailed(e.to_string()),
        }
    }
}

impl From<weft_engine::EngineError> for ApiError {
    fn from(e: weft_engine::EngineError) -> Self {
        use weft_engine::EngineError as E;
        match e {
            E::TooLong { .. } => Self::ContextLengthExceeded(e.to_string()),
            E::EmptyPrompt => Self::invalid("prompt", e.to_string()),
            E::TokenOutOfRange { .. } => Self::invalid("prompt", e.to_string()),
            // A sampler version retired between a request resolving its
            // name and reaching the engine: the name now means another one.
            E::UnknownSampler(_) => Self::NotReady(format!("{e}: the plugin version changed under the request; retry")),
        }
    }
}
