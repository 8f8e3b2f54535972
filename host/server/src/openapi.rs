//! The OpenAPI 3.1 document of the HTTP API, generated from the handlers'
//! annotations and the wire types themselves, served at `/openapi.json`
//! and committed as `docs/api/openapi.json` (a test fails when the two
//! drift apart).

use axum::Json;
use utoipa::OpenApi;

use crate::routes::{admin, chat, completions, models, ops, tokenize};

#[derive(OpenApi)]
#[openapi(
    info(
        title = "Weft HTTP API",
        description = "OpenAI-compatible generation, the tokenizer, and operations endpoints. \
                       Every error has OpenAI's body shape; docs/api/errors.md lists the codes.",
        license(name = "Apache-2.0"),
    ),
    paths(
        chat::chat_completions,
        completions::completions,
        models::list,
        models::get_one,
        tokenize::tokenize,
        tokenize::detokenize,
        tokenize::tokenizer_info,
        ops::health,
        ops::ready,
        ops::metrics,
        serve,
        admin::model,
        admin::drain,
        admin::deploy,
        admin::deploy_manifest,
        admin::list,
        admin::info,
        admin::rollback,
        admin::promote,
        admin::remove,
    ),
    modifiers(&AdminToken),
    tags(
        (name = "OpenAI", description = "The OpenAI API subset Weft implements"),
        (name = "Tokenizer", description = "The model's tokenizer"),
        (name = "Operations", description = "Health, readiness, metrics and this document"),
        (name = "Admin", description = "Operator endpoints, behind the admin bearer token"),
    )
)]
pub struct ApiDoc;

/// Declares the admin API's bearer-token scheme.
struct AdminToken;

impl utoipa::Modify for AdminToken {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
        let scheme = SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build());
        openapi.components.get_or_insert_with(Default::default).add_security_scheme("admin_token", scheme);
    }
}

/// The document as pretty-printed JSON (what is committed).
pub fn document() -> String {
    ApiDoc::openapi().to_pretty_json().expect("the document serializes")
}

/// This document.
#[utoipa::path(get, path = "/openapi.json", tag = "Operations", responses((status = 200, description = "The OpenAPI 3.1 document")))]
pub async fn serve() -> Json<utoipa::openapi::OpenApi> {
    Json(ApiDoc::openapi())
}
