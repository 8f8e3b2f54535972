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
    /// Deploy a sampler component as NAME@VERSION; it takes new requests at
    /// once (or, with --canary, that share of them).
    Deploy {
        name: String,
        version: String,
        /// The component (.wasm).
        file: std::path::PathBuf,
        /// Configuration handed to the plugin, as KEY=VALUE (repeatable).
        #[arg(long = "config", value_name = "KEY=VALUE")]
        config: Vec<String>,
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
        PluginCommand::Deploy { name, version, file, config, canary } => {
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
