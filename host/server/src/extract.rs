//! Reading a JSON request body: media type, size cap, syntax, then typed
//! views of it with the failing field's path in the error.
//!
//! The size is checked against `content-length` before a byte is read and
//! enforced again while reading (chunked bodies), so an oversized body costs
//! at most the cap. serde_json's recursion limit (128) turns absurd nesting
//! into a 400 rather than a stack overflow; invalid UTF-8 is a parse error.
//! The body is parsed once into a JSON value; endpoints then read typed
//! views of it ([`view`], [`generation_view`]).

use axum::extract::{FromRequest, Request};
use axum::http::header;
use serde::de::DeserializeOwned;
use serde_json::Value;

use crate::AppState;
use crate::error::ApiError;
use crate::openai::SamplingFields;

/// A request body parsed as JSON, or the OpenAI error saying why not.
#[derive(Debug)]
pub struct JsonBody(pub Value);

impl FromRequest<AppState> for JsonBody {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &AppState) -> Result<Self, ApiError> {
        let limit = state.config.max_body_bytes;
        let content_type = req.headers().get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or("");
        let essence = content_type.split(';').next().unwrap_or("").trim().to_ascii_lowercase();
        if essence != "application/json" {
            let got = if content_type.is_empty() { "no content-type".to_string() } else { format!("{content_type:?}") };
            return Err(ApiError::UnsupportedMediaType { got });
        }
        let declared = req.headers().get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
        if declared.is_some_and(|n| n > limit as u64) {
            return Err(ApiError::PayloadTooLarge { limit });
        }
        let bytes = axum::body::to_bytes(req.into_body(), limit).await.map_err(|e| read_error(e, limit))?;
        serde_json::from_slice(&bytes)
            .map(JsonBody)
            .map_err(|e| ApiError::InvalidRequest { message: format!("the body is not valid JSON: {e}"), param: None })
    }
}

fn read_error(e: axum::Error, limit: usize) -> ApiError {
    // The only failure `to_bytes` reports for a healthy connection is the
    // length limit; anything else is a broken upload.
    let text = format!("{e:?}");
    if text.contains("LengthLimit") {
        ApiError::PayloadTooLarge { limit }
    } else {
        ApiError::invalid("body", format!("could not read the request body: {e}"))
    }
}

/// Read `body` as `T`, naming the field that failed.
pub fn view<T: DeserializeOwned>(body: &Value) -> Result<T, ApiError> {
    serde_path_to_error::deserialize(body).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        if path == "." || path.is_empty() {
            ApiError::InvalidRequest { message: format!("the body does not fit this endpoint: {inner}"), param: None }
        } else {
            ApiError::InvalidRequest { message: format!("`{path}`: {inner}"), param: Some(path) }
        }
    })
}

/// Read a generation request, whose type flattens the shared
/// [`SamplingFields`]. serde's `flatten` loses the path of a bad field, so
/// the shared fields are read on their own first and a bad one is reported
/// by name.
pub fn generation_view<T: DeserializeOwned>(body: &Value) -> Result<T, ApiError> {
    view::<SamplingFields>(body)?;
    view(body)
}
