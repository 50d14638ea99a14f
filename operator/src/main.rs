//! `cloudpillar`: the operator, edge hub and backend services in one binary.

mod artifact_cmd;
mod health;
mod hub_cmd;
mod keyholder_args;
mod keyholder_signer;
mod keyholder_uploads;
mod roles_cmd;
mod run_cmd;

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
    /// Run everything in one process: edge hub, controllers, key holder, streamer, writer.
    Run(Box<run_cmd::RunArgs>),
    /// Run the controllers (Device, Recipe, Rollout) against a hub and a cluster.
    Operator(Box<roles_cmd::OperatorArgs>),
    /// Run the file streamer: range requests to C2D chunks, uploads into the blob store.
    Streamer(Box<roles_cmd::StreamerRoleArgs>),
    /// Run the history writer: twin changes and device records into MongoDB.
    Writer(Box<roles_cmd::StreamerArgs>),
    /// Run the key holder: signs recipes and blobs, publishes the trusted public keys.
    Keyholder(Box<roles_cmd::KeyholderRoleArgs>),
    /// Manage files devices download.
    #[command(subcommand)]
    Artifact(ArtifactCommand),
    /// Run the IoT-Hub-compatible edge hub (MQTT device endpoint and service REST API).
    Hub(Box<hub_cmd::HubCmdArgs>),
    /// Print the CustomResourceDefinitions, or write one file per CRD into a directory.
    Crds {
        /// Directory to write `<name>.yaml` files into (for example `charts/cloudpillar/crds`).
        #[arg(long)]
        out: Option<PathBuf>,
    },
}

#[derive(Debug, Subcommand)]
enum ArtifactCommand {
    /// Put a file into the patches container and sign it; prints the recipe's `sign` value.
    Put(Box<artifact_cmd::PutArgs>),
}

fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();

    match Cli::parse().command {
        Command::Crds { out } => write_crds(out),
        Command::Hub(args) => hub_cmd::run(&args),
        Command::Run(args) => runtime()?.block_on(run_cmd::run(*args)),
        Command::Operator(args) => runtime()?.block_on(roles_cmd::operator(*args)),
        Command::Streamer(args) => runtime()?.block_on(roles_cmd::streamer(*args)),
        Command::Writer(args) => runtime()?.block_on(roles_cmd::writer(*args)),
        Command::Keyholder(args) => runtime()?.block_on(roles_cmd::keyholder(*args)),
        Command::Artifact(ArtifactCommand::Put(args)) => {
            runtime()?.block_on(artifact_cmd::put(*args))
        }
    }
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")
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

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    #[test]
    fn every_subcommand_has_consistent_arguments() {
        super::Cli::command().debug_assert();
    }
}
