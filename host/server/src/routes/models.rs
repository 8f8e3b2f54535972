//! `GET /v1/models` and `GET /v1/models/{id}`.

use axum::Json;
use axum::Extension;
use axum::extract::{Path, State};

use crate::AppState;
use crate::auth::Caller;
use crate::error::{ApiError, ErrorBody};
use crate::openai::{ModelCard, ModelList};

fn card(state: &AppState, id: &str) -> ModelCard {
    ModelCard { id: id.to_string(), object: "model", created: state.model.created, owned_by: "weft", max_model_len: state.model.context }
}

/// The served model under its id and under the alias `default`.
#[utoipa::path(get, path = "/v1/models", tag = "OpenAI", responses((status = 200, body = ModelList)))]
pub async fn list(State(state): State<AppState>) -> Json<ModelList> {
    Json(ModelList { object: "list", data: vec![card(&state, &state.model.name), card(&state, "default")] })
}

/// One model by id (`default` always exists).
#[utoipa::path(get, path = "/v1/models/{id}", tag = "OpenAI", params(("id" = String, Path, description = "A model id or `default`")),
    responses((status = 200, body = ModelCard), (status = 404, description = "Unknown model", body = ErrorBody)))]
pub async fn get_one(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
) -> Result<Json<ModelCard>, ApiError> {
    state.check_model(Some(&id), caller.principal())?;
    Ok(Json(card(&state, &id)))
}
