//! The edge hub alone, the same code `cloudpillar hub` runs (used by restart tests).

use std::io::Write;

use clap::Parser;
use cloudpillar_hub::standalone::{self, HubArgs};

#[derive(Debug, Parser)]
#[command(name = "cloudpillar-hub", about = "IoT-Hub-compatible edge hub")]
struct Cli {
    #[command(flatten)]
    args: HubArgs,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    let hub = standalone::start(&cli.args).await?;
    {
        let mut stdout = std::io::stdout().lock();
        write!(stdout, "{}", standalone::summary(&hub))?;
        stdout.flush()?;
    }
    standalone::wait_for_shutdown().await?;
    hub.shutdown().await;
    Ok(())
}
