//! The host bindings generated from `wit/`: the only place they are
//! generated; everything else imports them from here.

wasmtime::component::bindgen!({
    path: "../../wit",
    world: "sampler-plugin",
    // Host calls may trap: a guest that passes a row or token out of range
    // loses its call, it does not get a wrong answer.
    imports: { default: trappable },
    with: {
        "weft:plugin/sampling.batch": crate::batch::BatchHandle,
    },
});

/// The guide world (it imports the model's tokenizer, and what a language
/// runtime needs from the empty WASI).
pub mod guide {
    wasmtime::component::bindgen!({
        path: "../../wit",
        world: "guide-plugin",
        // One set of shared types for every world.
        with: { "weft:plugin/types": crate::bindings::weft::plugin::types },
    });
}

/// The auth world (one call per request; imports only the empty WASI).
pub mod auth {
    wasmtime::component::bindgen!({
        path: "../../wit",
        world: "auth-plugin",
        // One set of shared types for every world.
        with: { "weft:plugin/types": crate::bindings::weft::plugin::types },
    });
}

/// The router world (one call per request; imports only the empty WASI).
pub mod router {
    wasmtime::component::bindgen!({
        path: "../../wit",
        world: "router-plugin",
        // One set of shared types for every world.
        with: { "weft:plugin/types": crate::bindings::weft::plugin::types },
    });
}

/// The tool-parser world (a few calls per request; imports only the empty
/// WASI).
pub mod tool_parser {
    wasmtime::component::bindgen!({
        path: "../../wit",
        world: "tool-parser-plugin",
        // One set of shared types for every world.
        with: { "weft:plugin/types": crate::bindings::weft::plugin::types },
    });
}
