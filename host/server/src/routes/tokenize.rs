//! `POST /tokenize`, `POST /detokenize` and `GET /tokenizer_info`: the
//! model's tokenizer over HTTP, with the chat template when given messages
//! (vLLM's shapes, so clients that tokenize remotely, such as
//! lm-evaluation-harness's `tokenizer_backend=remote`, work unchanged).

use axum::{Extension, Json};
use axum::extract::State;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::AppState;
use crate::auth::Caller;
use crate::error::{ApiError, ErrorBody};
use crate::extract::{self, JsonBody};
use crate::openai::ChatMessageIn;
use crate::validate;

/// Either `prompt` (raw text, special-token markers parsed) or `messages`
/// (rendered through the chat template, contents as plain text).
#[derive(Debug, Deserialize, ToSchema)]
pub struct TokenizeRequest {
    model: Option<String>,
    prompt: Option<String>,
    messages: Option<Vec<ChatMessageIn>>,
    /// With `messages`: end with the assistant's turn opener. Default true.
    add_generation_prompt: Option<bool>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct TokenizeResponse {
    tokens: Vec<u32>,
    count: usize,
    max_model_len: usize,
}

/// Token ids of a prompt, or of a conversation through the chat template.
#[utoipa::path(post, path = "/tokenize", tag = "Tokenizer", request_body = TokenizeRequest,
    responses((status = 200, body = TokenizeResponse), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn tokenize(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    JsonBody(body): JsonBody,
) -> Result<Json<TokenizeResponse>, ApiError> {
    let req: TokenizeRequest = extract::view(&body)?;
    state.check_model(req.model.as_deref(), caller.principal())?;
    let tokenizer = state.tokenizer.clone();
    let tokens = match (req.prompt, req.messages) {
        (Some(prompt), None) => state.blocking(move || crate::prepare::encode_prompt(&tokenizer, &prompt)).await??,
        (None, Some(messages)) => {
            let messages = validate::chat_messages(&messages, state.select_tool_parser(None, None, None)?.as_ref())?;
            let template = state.template.clone().ok_or_else(|| ApiError::invalid("messages", "this model has no chat template"))?;
            let generation_prompt = req.add_generation_prompt.unwrap_or(true);
            state
                .blocking(move || template.encode(&tokenizer, &messages, generation_prompt))
                .await?
                .map_err(|e| ApiError::invalid("messages", e.to_string()))?
        }
        _ => return Err(ApiError::invalid("prompt", "give exactly one of `prompt` and `messages`")),
    };
    Ok(Json(TokenizeResponse { count: tokens.len(), tokens, max_model_len: state.model.context }))
}

#[derive(Debug, Deserialize, ToSchema)]
pub struct DetokenizeRequest {
    model: Option<String>,
    tokens: Vec<i64>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct DetokenizeResponse {
    prompt: String,
}

/// The text of token ids.
#[utoipa::path(post, path = "/detokenize", tag = "Tokenizer", request_body = DetokenizeRequest,
    responses((status = 200, body = DetokenizeResponse), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn detokenize(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    JsonBody(body): JsonBody,
) -> Result<Json<DetokenizeResponse>, ApiError> {
    let req: DetokenizeRequest = extract::view(&body)?;
    state.check_model(req.model.as_deref(), caller.principal())?;
    let vocab = state.model.vocab;
    let ids = req
        .tokens
        .iter()
        .map(|&t| {
            u32::try_from(t)
                .ok()
                .filter(|&t| (t as usize) < vocab)
                .ok_or_else(|| ApiError::invalid("tokens", format!("token ids must be in [0, {vocab}); given {t}")))
        })
        .collect::<Result<Vec<u32>, _>>()?;
    let tokenizer = state.tokenizer.clone();
    let prompt = state.blocking(move || tokenizer.decode(&ids, false)).await?.map_err(|e| ApiError::invalid("tokens", e.to_string()))?;
    Ok(Json(DetokenizeResponse { prompt }))
}

#[derive(Debug, Serialize, ToSchema)]
pub struct TokenizerInfo {
    /// The end-of-sequence token's text, if the model has one.
    eos_token: Option<String>,
    /// The beginning-of-sequence token's text, if the model has one.
    bos_token: Option<String>,
    /// Weft pads nothing: always `null`.
    pad_token: Option<String>,
    /// Whether prompts get the beginning-of-sequence token prepended.
    add_bos_token: bool,
    vocab_size: usize,
    model_max_length: usize,
}

/// The tokenizer's special tokens and sizes.
#[utoipa::path(get, path = "/tokenizer_info", tag = "Tokenizer", responses((status = 200, body = TokenizerInfo)))]
pub async fn tokenizer_info(State(state): State<AppState>) -> Json<TokenizerInfo> {
    let tk = &state.tokenizer;
    Json(TokenizerInfo {
        eos_token: tk.eos_token().and_then(|t| tk.token_text(t)),
        bos_token: tk.bos_token().and_then(|t| tk.token_text(t)),
        pad_token: None,
        add_bos_token: tk.adds_bos(),
        vocab_size: tk.vocab_size(),
        model_max_length: state.model.context,
    })
}
