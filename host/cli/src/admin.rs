//! `weft admin` and `weft plugin`: the admin API of a running server, from
//! the terminal. Every command prints the server's JSON answer.

use anyhow::{Context, Result, bail};
use clap::{Args, Subcommand};

/// Which server, and its admin token.
#[derive(Args, Clone, Debug)]
pub struct Connection {
    /// The server's HTTP base URL.
    #[arg(long, env = "WEFT_SERVER", default_value = "http://127.0.0.1:8080")]
    pub server: String,
    /// The server's admin token.
    #[arg(long, env = "WEFT_ADMIN_TOKEN", hide_env_values = true)]
    pub token: String,
}

#[derive(Args, Clone, Debug)]
pub struct AdminArgs {
    #[command(flatten)]
    pub connection: Connection,
    #[command(subcommand)]
    pub command: AdminCommand,
}

#[derive(Subcommand, Clone, Debug)]
pub enum AdminCommand {
    /// What the server serves and how busy it is.
    Model,
    /// Stop admitting requests and let those in flight finish.
    Drain,
}

#[derive(Args, Clone, Debug)]
pub struct PluginArgs {
    #[command(flatten)]
    pub connection: Connection,
    #[command(subcommand)]
    pub command: PluginCommand,
}

#[derive(Subcommand, Clone, Debug)]
pub enum PluginCommand {
    /// Deploy a sampler component as NAME@VERSION, or as its manifest says
    /// (--manifest); it takes new requests at once (or, with --canary, that
    /// share of them).
    Deploy {
        #[arg(required_unless_present = "manifest", conflicts_with = "manifest")]
        name: Option<String>,
        #[arg(required_unless_present = "manifest")]
        version: Option<String>,
        /// The component (.wasm).
        #[arg(required_unless_present = "manifest")]
        file: Option<std::path::PathBuf>,
        /// Configuration handed to the plugin, as KEY=VALUE text (repeatable).
        #[arg(long = "config", value_name = "KEY=VALUE", conflicts_with = "manifest")]
        config: Vec<String>,
        /// A TOML manifest (name, version, kind, component path relative to
        /// it, typed config, limits, grants) instead of NAME VERSION FILE.
        #[arg(long, value_name = "FILE")]
        manifest: Option<std::path::PathBuf>,
        /// Start as a canary taking this share of new requests (0 < SHARE < 1).
        #[arg(long, value_name = "SHARE")]
        canary: Option<f64>,
    },
    /// The deployed plugins.
    List,
    /// One plugin: versions, canary, health and breaker state.
    Info { name: String },
    /// Make NAME's canary take every new request.
    Promote { name: String },
    /// Withdraw NAME's canary, or make its previous version active again.
    Rollback { name: String },
    /// Unload every version of NAME (requests in flight finish).
    Remove { name: String },
}

/// Answers with the server's status as errors, so they can be reported.
fn agent() -> ureq::Agent {
    ureq::Agent::config_builder().http_status_as_error(false).build().into()
}

pub fn admin(args: AdminArgs) -> Result<()> {
    let c = &args.connection;
    let base = c.server.trim_end_matches('/');
    let auth = format!("Bearer {}", c.token);
    let agent = agent();
    let response = match args.command {
        AdminCommand::Model => agent.get(format!("{base}/admin/v1/model")).header("authorization", &auth).call(),
        AdminCommand::Drain => agent.post(format!("{base}/admin/v1/drain")).header("authorization", &auth).send_empty(),
    };
    print_answer(base, response)
}

pub fn plugin(args: PluginArgs) -> Result<()> {
    let c = &args.connection;
    let base = c.server.trim_end_matches('/');
    let auth = format!("Bearer {}", c.token);
    let agent = agent();
    let plugins = format!("{base}/admin/v1/plugins");
    let response = match args.command {
        PluginCommand::List => agent.get(&plugins).header("authorization", &auth).call(),
        PluginCommand::Info { name } => agent.get(format!("{plugins}/{name}")).header("authorization", &auth).call(),
        PluginCommand::Promote { name } => agent.post(format!("{plugins}/{name}/promote")).header("authorization", &auth).send_empty(),
        PluginCommand::Rollback { name } => agent.post(format!("{plugins}/{name}/rollback")).header("authorization", &auth).send_empty(),
        PluginCommand::Remove { name } => agent.delete(format!("{plugins}/{name}")).header("authorization", &auth).call(),
        PluginCommand::Deploy { manifest: Some(path), canary, .. } => {
            let (text, component) = read_manifest(&path)?;
            let boundary = format!("weft-{:016x}", std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH)?.as_nanos());
            let mut req = agent
                .post(&plugins)
                .header("authorization", &auth)
                .header("content-type", format!("multipart/form-data; boundary={boundary}"));
            if let Some(share) = canary {
                req = req.query("canary", share.to_string());
            }
            req.send(&multipart(&boundary, &text, &component)[..])
        }
        PluginCommand::Deploy { name, version, file, config, canary, manifest: None } => {
            let (Some(name), Some(version), Some(file)) = (name, version, file) else { bail!("deploy needs NAME VERSION FILE or --manifest") };
            let component = std::fs::read(&file).with_context(|| format!("reading {}", file.display()))?;
            let mut req = agent
                .post(format!("{plugins}/{name}/{version}"))
                .header("authorization", &auth)
                .header("content-type", "application/wasm");
            for pair in &config {
                let (key, value) = pair.split_once('=').with_context(|| format!("--config {pair:?} is not KEY=VALUE"))?;
                if key == "canary" {
                    bail!("`canary` is not a configuration key: use --canary SHARE");
                }
                req = req.query(key, value);
            }
            if let Some(share) = canary {
                req = req.query("canary", share.to_string());
            }
            req.send(&component[..])
        }
    };
    print_answer(base, response)
}

/// A manifest's text and the component it names (relative to it).
fn read_manifest(path: &std::path::Path) -> Result<(String, Vec<u8>)> {
    let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let table: toml::Table = toml::from_str(&text).with_context(|| format!("{} is not TOML", path.display()))?;
    let component = table
        .get("component")
        .and_then(|c| c.as_str())
        .with_context(|| format!("{} names no `component` file", path.display()))?;
    let file = path.parent().unwrap_or(std::path::Path::new(".")).join(component);
    let bytes = std::fs::read(&file).with_context(|| format!("reading the component {}", file.display()))?;
    Ok((text, bytes))
}

/// A `multipart/form-data` body with the `manifest` and `component` parts.
fn multipart(boundary: &str, manifest: &str, component: &[u8]) -> Vec<u8> {
    let mut body = Vec::with_capacity(component.len() + manifest.len() + 512);
    body.extend(format!("--{boundary}\r\ncontent-disposition: form-data; name=\"manifest\"\r\ncontent-type: application/toml\r\n\r\n").bytes());
    body.extend(manifest.bytes());
    body.extend(format!("\r\n--{boundary}\r\ncontent-disposition: form-data; name=\"component\"; filename=\"plugin.wasm\"\r\ncontent-type: application/wasm\r\n\r\n").bytes());
    body.extend(component);
    body.extend(format!("\r\n--{boundary}--\r\n").bytes());
    body
}

fn print_answer(base: &str, response: Result<ureq::http::Response<ureq::Body>, ureq::Error>) -> Result<()> {
    let mut response = response.with_context(|| format!("reaching {base}"))?;
    let status = response.status();
    let body = response.body_mut().read_to_string().context("reading the answer")?;
    if !status.is_success() {
        bail!("{base} answered {status}: {body}");
    }
    if !body.is_empty() {
        println!("{body}");
    }
    Ok(())
}
