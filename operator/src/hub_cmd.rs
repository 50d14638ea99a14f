//! `cloudpillar hub`: runs the edge hub standalone.

use std::io::Write;

use cloudpillar_hub::standalone::{self, HubArgs};

/// Starts the hub, prints where it listens and where its CA and policy key are, and runs
/// until Ctrl-C or SIGTERM.
pub fn run(args: &HubArgs) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Runtime::new()?;
    runtime.block_on(async {
        let hub = standalone::start(args).await?;
        {
            let mut stdout = std::io::stdout().lock();
            write!(stdout, "{}", standalone::summary(&hub))?;
            stdout.flush()?;
        }
        standalone::wait_for_shutdown().await?;
        hub.shutdown().await;
        Ok(())
    })
}
