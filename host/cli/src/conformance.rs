//! `weft conformance`: the tool-parser conformance kit
//! (`weft_plugin_runtime::conformance`) run on a component, from the
//! terminal, so a plugin author checks a parser with one command.

use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use clap::Args;
use weft_plugin_runtime::bindings::weft::plugin::types::ConfigValue;
use weft_plugin_runtime::conformance::{self, Corpus};
use weft_plugin_runtime::{Limits, PluginRuntime, WasmToolParser};
use weft_server::manifest::{Manifest, PluginKind};

#[derive(Args, Clone, Debug)]
pub struct ConformanceArgs {
    /// The tool-parser component (.wasm), or `builtin` for Weft's own.
    #[arg(required_unless_present = "manifest")]
    component: Option<String>,
    /// The parser's manifest instead (its component, typed config, limits
    /// and grants, as a deploy would use them).
    #[arg(long, value_name = "FILE", conflicts_with_all = ["component", "config"])]
    manifest: Option<PathBuf>,
    /// The corpus: answers and the events each must give (JSON; see
    /// docs/plugins/README.md).
    #[arg(long)]
    corpus: PathBuf,
    /// Configuration handed to the parser's `init`, as KEY=VALUE text
    /// (repeatable), e.g. `format=mistral` for the builtin.
    #[arg(long = "config", value_name = "KEY=VALUE")]
    config: Vec<String>,
    /// Run only the corpus cases marked with this `format` (and those
    /// marked with none).
    #[arg(long)]
    format: Option<String>,
}

pub fn conformance(args: ConformanceArgs) -> Result<()> {
    let corpus = std::fs::read_to_string(&args.corpus).with_context(|| format!("reading {}", args.corpus.display()))?;
    let corpus = Corpus::parse(&corpus).map_err(anyhow::Error::msg).with_context(|| format!("in {}", args.corpus.display()))?;
    let runtime = PluginRuntime::new(Limits::default())?;
    let (label, bytes, limits, config) = match (&args.manifest, args.component.as_deref()) {
        (Some(path), _) => {
            let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
            let manifest = Manifest::from_toml(&text).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
            if manifest.kind != PluginKind::ToolParser {
                bail!("{} is not a tool-parser manifest (kind = \"tool-parser\")", path.display());
            }
            let component = manifest.component.as_ref().with_context(|| format!("{} names no `component`", path.display()))?;
            let file = path.parent().unwrap_or(std::path::Path::new(".")).join(component);
            let bytes = std::fs::read(&file).with_context(|| format!("reading {}", file.display()))?;
            let limits = manifest.limits(runtime.limits()).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
            (manifest.name.clone(), bytes, limits, manifest.init_config())
        }
        (None, Some(component)) => {
            let bytes = match component {
                "builtin" => weft_plugin_artifacts::TOOL_PARSER.to_vec(),
                path => std::fs::read(path).with_context(|| format!("reading {path}"))?,
            };
            let mut config = Vec::new();
            for pair in &args.config {
                let (key, value) = pair.split_once('=').with_context(|| format!("--config {pair:?} is not KEY=VALUE"))?;
                config.push((key.to_string(), ConfigValue::Text(value.to_string())));
            }
            (component.to_string(), bytes, runtime.limits().clone(), config)
        }
        (None, None) => bail!("give a component or --manifest"),
    };
    let component = runtime.load_tool_parser(&label, &bytes, limits)?;
    let parser = WasmToolParser::new(component, config)?;
    let report = conformance::check(&parser, &corpus, args.format.as_deref());
    // Per failed case: its first failing replay, and how many failed.
    let mut failed_cases: std::collections::BTreeMap<&str, usize> = std::collections::BTreeMap::new();
    for failure in &report.failures {
        let count = failed_cases.entry(&failure.case).or_default();
        if *count == 0 {
            println!("FAIL {} ({}): {}", failure.case, failure.replay, failure.detail);
        }
        *count += 1;
    }
    for (case, count) in &failed_cases {
        println!("     {case}: {count} replays failed");
    }
    println!(
        "{} of {} cases pass ({} replays, {} failed)",
        report.cases - failed_cases.len(),
        report.cases,
        report.replays,
        report.failures.len()
    );
    if report.cases == 0 {
        bail!("no case of the corpus ran (check --format)");
    }
    if !report.failures.is_empty() {
        bail!("the tool parser does not conform");
    }
    Ok(())
}
