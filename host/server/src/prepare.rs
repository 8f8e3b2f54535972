//! From validated values to engine requests, shared by every transport
//! (HTTP and gRPC): tokenizing prompts or rendering conversations on the
//! blocking pool, settling `max_tokens` against the context, and fanning a
//! request out into its choices with their seeds.

use weft_engine::GenerationRequest;
use weft_engine::chat_template::ChatMessage;
use weft_engine::tokenizer::Tokenizer;
use weft_types::SamplingParams;

use crate::AppState;
use crate::error::ApiError;
use crate::generate::ChoiceRequest;
use crate::validate::{self, MAX_TOP_LOGPROBS, ValidPrompt, ValidSampling};

/// `max_tokens` default for raw prompts (OpenAI's completions default).
pub const DEFAULT_PROMPT_MAX_TOKENS: u32 = 16;

/// Check a requested number of alternatives per token.
pub fn top_logprobs(param: &str, k: i64) -> Result<u32, ApiError> {
    if !(0..=MAX_TOP_LOGPROBS).contains(&k) {
        return Err(ApiError::invalid(param, format!("`{param}` must be in [0, {MAX_TOP_LOGPROBS}]; given {k}")));
    }
    Ok(k as u32)
}

/// The `n` choices of one prompt, indexed from `first_index`.
fn fan_out(prompt: &[u32], prompt_index: usize, max_tokens: u32, valid: &ValidSampling, score_prompt: bool) -> Vec<ChoiceRequest> {
    (0..valid.n)
        .map(|k| ChoiceRequest {
            index: prompt_index * valid.n + k,
            prompt_index,
            request: GenerationRequest {
                prompt: prompt.to_vec(),
                params: SamplingParams { seed: validate::choice_seed(valid.params.seed, k), max_tokens, ..valid.params.clone() },
                tenant: valid.tenant.clone(),
                score_prompt,
                sampler: valid.sampler,
                guide: None,
            },
        })
        .collect()
}

/// A conversation's choices: rendered through the model's chat template
/// (contents as plain text), `max_tokens` defaulting to the room left.
pub async fn chat(state: &AppState, messages: Vec<ChatMessage>, valid: &ValidSampling) -> Result<Vec<ChoiceRequest>, ApiError> {
    let template = state
        .template
        .clone()
        .ok_or_else(|| ApiError::invalid("messages", "this model has no chat template; send a raw prompt instead"))?;
    let tokenizer = state.tokenizer.clone();
    let prompt = state
        .blocking(move || template.encode(&tokenizer, &messages, true))
        .await?
        .map_err(|e| ApiError::invalid("messages", e.to_string()))?;
    let limits = state.limits();
    let max_tokens = validate::settle_max_tokens(valid.max_tokens, None, prompt.len(), limits.context, limits.max_output)?;
    let mut choices = fan_out(&prompt, 0, max_tokens, valid, false);
    guide(state, valid, &mut choices).await?;
    Ok(choices)
}

/// Give every choice its own compiled guide when the request constrains its
/// output, on the deployed guide it chose or else the builtin one.
/// Compiling runs on the blocking pool.
async fn guide(state: &AppState, valid: &ValidSampling, choices: &mut [ChoiceRequest]) -> Result<(), ApiError> {
    let Some(constraint) = valid.constraint.clone() else { return Ok(()) };
    let count = choices.len();
    let guides = match valid.guide.clone() {
        Some(deployed) => state.blocking(move || crate::guides::compile_on(&deployed, &constraint, count)).await??,
        None => {
            let plugin = state
                .guide
                .clone()
                .ok_or_else(|| ApiError::Unsupported { param: constraint.param.into(), why: "this server runs without a guide plugin" })?;
            state.blocking(move || plugin.compile(&constraint, count)).await??
        }
    };
    for (choice, guide) in choices.iter_mut().zip(guides) {
        choice.request.guide = Some(Box::new(guide));
    }
    Ok(())
}

/// Raw prompts' choices (prompt `i`, choice `k` has index `i × n + k`), and
/// the prompts' tokens (for `echo`). `score_prompt` asks the engine for
/// every prompt position's log-probability.
pub async fn prompts(
    state: &AppState,
    prompts: Vec<ValidPrompt>,
    valid: &ValidSampling,
    score_prompt: bool,
) -> Result<(Vec<Vec<u32>>, Vec<ChoiceRequest>), ApiError> {
    let tokenizer = state.tokenizer.clone();
    let prompts: Vec<Vec<u32>> = state.blocking(move || tokenize_prompts(&tokenizer, prompts)).await??;
    let limits = state.limits();
    let mut choices = Vec::new();
    for (prompt_index, prompt) in prompts.iter().enumerate() {
        if prompt.is_empty() {
            return Err(ApiError::invalid("prompt", format!("prompt {prompt_index} is empty")));
        }
        let max_tokens = validate::settle_max_tokens(
            valid.max_tokens,
            Some(DEFAULT_PROMPT_MAX_TOKENS),
            prompt.len(),
            limits.context,
            limits.max_output,
        )?;
        choices.extend(fan_out(prompt, prompt_index, max_tokens, valid, score_prompt));
    }
    guide(state, valid, &mut choices).await?;
    Ok((prompts, choices))
}

fn tokenize_prompts(tokenizer: &Tokenizer, prompts: Vec<ValidPrompt>) -> Result<Vec<Vec<u32>>, ApiError> {
    prompts
        .into_iter()
        .map(|p| match p {
            ValidPrompt::Tokens(ids) => Ok(ids),
            ValidPrompt::Text(text) => encode_prompt(tokenizer, &text),
        })
        .collect()
}

/// A raw text prompt as the model sees it: special-token markers parsed,
/// and the BOS token first when the model wants one. `/tokenize` and the
/// gRPC `Tokenize` use it too, so their counts equal `usage.prompt_tokens`.
pub fn encode_prompt(tokenizer: &Tokenizer, text: &str) -> Result<Vec<u32>, ApiError> {
    let mut ids = Vec::new();
    if tokenizer.adds_bos()
        && let Some(bos) = tokenizer.bos_token()
    {
        ids.push(bos);
    }
    ids.extend(tokenizer.encode(text, true).map_err(|e| ApiError::invalid("prompt", e.to_string()))?);
    Ok(ids)
}
