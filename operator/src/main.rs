//! `cloudpillar`: the operator, edge hub and backend services in one binary.

mod hub_cmd;

use std::path::PathBuf;

use anyhow::Context;
use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(
    name = "cloudpillar",
    version,
    about = "Keeps a fleet of field machines patched and observed"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the IoT-Hub-compatible edge hub (MQTT device endpoint and service REST API).
    Hub(cloudpillar_hub::standalone::HubArgs),
    /// Print the CustomResourceDefinitions, or write one file per CRD into a directory.
    Crds {
        /// Directory to write `<name>.yaml` files into (for example `charts/cloudpillar/crds`).
        #[arg(long)]
        out: Option<PathBuf>,
    },
}

fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();

    match Cli::parse().command {
        Command::Crds { out } => write_crds(out),
        Command::Hub(args) => hub_cmd::run(&args),
    }
}

fn write_crds(out: Option<PathBuf>) -> anyhow::Result<()> {
    let rendered = cloudpillar_crds::rendered().context("rendering CRDs")?;
    match out {
        Some(dir) => {
            std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
            for (file, yaml) in rendered {
                let path = dir.join(file);
                std::fs::write(&path, yaml)
                    .with_context(|| format!("writing {}", path.display()))?;
                tracing::info!(path = %path.display(), "wrote CRD");
            }
        }
        None => {
            use std::io::Write;
            let mut stdout = std::io::stdout().lock();
            for (_, yaml) in rendered {
                writeln!(stdout, "---\n{yaml}")?;
            }
        }
    }
    Ok(())
}
