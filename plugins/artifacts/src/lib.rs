//! Weft's plugin components, built from source by this crate's build
//! script: the builtin plugins' bytes (embedded in the `weft` binary) and
//! the paths of the test fixtures. Nothing here runs a plugin; that is the
//! plugin runtime's job.

include!(concat!(env!("OUT_DIR"), "/artifacts.rs"));

/// The name the builtin guide plugin serves under.
pub const GUIDE_NAME: &str = "builtin:guide@0.1.0";

/// The name the builtin auth plugin serves under (as version 0.1.0; new
/// versions deploy under the same name).
pub const AUTH_NAME: &str = "auth";
