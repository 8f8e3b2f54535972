//! End-to-end tests: one binary, a module per topic (one link step on two
//! cores). They use the real default model pulled by `weft pull` and the
//! committed reference fixtures under `tests/data/`.

mod auth;
mod grpc;
mod guided;
mod hf_reference;
mod hot_reload;
mod llamacpp_parity;
mod openapi;
mod perplexity;
mod plugins;
mod repo_rules;
mod router;
mod scheduling;
mod server;
mod text;
mod tool_parsers;
