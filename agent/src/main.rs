//! `cloudpillar-agent`: the device daemon.

use std::path::PathBuf;

use anyhow::Context as _;
use clap::Parser;

/// The CloudPillar device agent.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Cli {
    /// Configuration file (TOML); `CP_AGENT_*` variables override its values.
    #[arg(long, env = "CP_AGENT_CONFIG")]
    config: PathBuf,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("CP_AGENT_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        // Colours only on a terminal: logs in files and journals stay plain text.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let cli = Cli::parse();
    let config = cloudpillar_agent::config::Config::load(&cli.config)
        .with_context(|| format!("failed to load {}", cli.config.display()))?;
    let agent = cloudpillar_agent::daemon::start(config).await?;
    tracing::info!(api = %agent.api_addr, "agent started");

    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
    tracing::info!("agent stopping");
    agent.shut_down().await;
    tracing::info!("agent stopped");
    Ok(())
}
