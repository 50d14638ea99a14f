//! `cloudpillar-agent`: the device daemon.

fn main() -> anyhow::Result<()> {
    anyhow::bail!("the agent daemon is not wired yet")
}
