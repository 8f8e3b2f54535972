//! `weft admin`: the admin API of a running server, from the terminal.

use anyhow::{Context, Result, bail};
use clap::{Args, Subcommand};

#[derive(Args, Clone, Debug)]
pub struct AdminArgs {
    /// The server's HTTP base URL.
    #[arg(long, env = "WEFT_SERVER", default_value = "http://127.0.0.1:8080")]
    pub server: String,
    /// The server's admin token.
    #[arg(long, env = "WEFT_ADMIN_TOKEN", hide_env_values = true)]
    pub token: String,
    #[command(subcommand)]
    pub command: AdminCommand,
}

#[derive(Subcommand, Clone, Debug)]
pub enum AdminCommand {
    /// What the server serves and how busy it is.
    Model,
    /// Stop admitting requests and let those in flight finish.
    Drain,
    /// The deployed sampler plugins.
    Plugins,
    /// Deploy a sampler component as NAME@VERSION; it takes new requests at once.
    Deploy {
        name: String,
        version: String,
        /// The component (.wasm).
        file: std::path::PathBuf,
        /// Configuration handed to the plugin, as KEY=VALUE (repeatable).
        #[arg(long = "config", value_name = "KEY=VALUE")]
        config: Vec<String>,
    },
    /// Make the previous version of NAME take new requests again.
    Rollback { name: String },
}

pub fn run(args: AdminArgs) -> Result<()> {
    let agent: ureq::Agent = ureq::Agent::config_builder().http_status_as_error(false).build().into();
    let base = args.server.trim_end_matches('/');
    let auth = format!("Bearer {}", args.token);
    let response = match args.command {
        AdminCommand::Model => agent.get(format!("{base}/admin/v1/model")).header("authorization", &auth).call(),
        AdminCommand::Plugins => agent.get(format!("{base}/admin/v1/plugins")).header("authorization", &auth).call(),
        AdminCommand::Drain => agent.post(format!("{base}/admin/v1/drain")).header("authorization", &auth).send_empty(),
        AdminCommand::Rollback { name } => {
            agent.post(format!("{base}/admin/v1/plugins/{name}/rollback")).header("authorization", &auth).send_empty()
        }
        AdminCommand::Deploy { name, version, file, config } => {
            let component = std::fs::read(&file).with_context(|| format!("reading {}", file.display()))?;
            let mut req = agent
                .post(format!("{base}/admin/v1/plugins/{name}/{version}"))
                .header("authorization", &auth)
                .header("content-type", "application/wasm");
            for pair in &config {
                let (key, value) = pair.split_once('=').with_context(|| format!("--config {pair:?} is not KEY=VALUE"))?;
                req = req.query(key, value);
            }
            req.send(&component[..])
        }
    };
    let mut response = response.with_context(|| format!("reaching {base}"))?;
    let status = response.status();
    let body = response.body_mut().read_to_string().context("reading the answer")?;
    if !status.is_success() {
        bail!("{base} answered {status}: {body}");
    }
    println!("{body}");
    Ok(())
}
