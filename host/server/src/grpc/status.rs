//! The one mapping from [`ApiError`] to gRPC status codes. The stable
//! error `code` (the same string as in HTTP error bodies) travels in the
//! `weft-error-code` metadata entry.

use tonic::{Code, Status};

use crate::error::ApiError;

pub fn code(e: &ApiError) -> Code {
    match e {
        ApiError::InvalidRequest { .. }
        | ApiError::Unsupported { .. }
        | ApiError::UnsupportedMediaType { .. }
        | ApiError::UnknownPlugin { .. }
        | ApiError::PluginRejected(_) => Code::InvalidArgument,
        ApiError::Conflict(_) => Code::AlreadyExists,
        ApiError::ContextLengthExceeded(_) => Code::OutOfRange,
        ApiError::Unauthenticated(_) => Code::Unauthenticated,
        ApiError::Forbidden(_) => Code::PermissionDenied,
        ApiError::ModelNotFound(_) | ApiError::RouteNotFound { .. } | ApiError::PluginNotFound { .. } => Code::NotFound,
        ApiError::MethodNotAllowed { .. } => Code::Unimplemented,
        ApiError::PayloadTooLarge { .. } | ApiError::RateLimited { .. } => Code::ResourceExhausted,
        // Waiting helps: clients retry UNAVAILABLE with back-off.
        ApiError::Overloaded { .. } | ApiError::NotReady(_) | ApiError::PluginUnavailable { .. } => Code::Unavailable,
        ApiError::PluginFailed(_) | ApiError::Internal(_) => Code::Internal,
        ApiError::DeadlineExceeded(_) => Code::DeadlineExceeded,
    }
}

pub fn to_status(e: ApiError) -> Status {
    let mut status = Status::new(code(&e), e.to_string());
    if let Ok(v) = e.code().parse() {
        status.metadata_mut().insert("weft-error-code", v);
    }
    if let Some(param) = e.param().and_then(|p| p.parse().ok()) {
        status.metadata_mut().insert("weft-error-param", param);
    }
    status
}
