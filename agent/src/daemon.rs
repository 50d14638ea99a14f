//! Wiring: state, engine, link, transfers and the local API of one agent process.

use std::net::SocketAddr;
use std::sync::{Arc, RwLock};

use serde_json::json;

use crate::api::{self, ApiState, LinkControl};
use crate::config::{Config, read_secret_file};
use crate::engine::Engine;
use crate::engine::journal::Journal;
use crate::link::Link;
use crate::link::desired::DesiredTracker;
use crate::reported::Reported;
use crate::state::{Device, StateStore};
use crate::transfer::https::HttpsDownloads;
use crate::transfer::{Router, Transfers};
use crate::zones::Zones;

/// A running agent.
#[derive(Debug)]
pub struct Agent {
    /// Where the local API listens.
    pub api_addr: SocketAddr,
    /// The engine.
    pub engine: Arc<Engine>,
    /// The link, when a hub or DPS is configured.
    pub link: Option<Arc<Link>>,
    /// The device state.
    pub device: Arc<Device>,
    /// The reported document.
    pub reported: Arc<Reported>,
    /// The lock on the state directory, released when the agent is dropped.
    _lock: crate::state_dir::StateDirLock,
}

/// Starts every part of the agent for `config`.
pub async fn start(config: Config) -> anyhow::Result<Agent> {
    use anyhow::Context as _;
    let config = Arc::new(config);
    // Before anything in it is read: one agent per state directory.
    let lock = crate::state_dir::open(&config.state_dir)?;
    std::fs::create_dir_all(config.work_dir()).context("failed to create the work dir")?;

    let reported = Arc::new(Reported::open(&config.state_dir));
    let store = StateStore::open(&config.state_dir).context("failed to open the device state")?;
    let device = Arc::new(Device::new(store, Arc::clone(&reported)));
    let zones = Arc::new(Zones::build(&config.zones).context("failed to compile zones")?);
    let trust = crate::engine::verify::load_trust(&config.trusted_keys)
        .context("failed to load trusted keys")?;

    crate::keystore::KeyStore::new(&config)
        .import_at_start(&config)
        .await
        .context("failed to prepare the device key")?;

    let link = if config.hub.is_some() || config.dps.is_some() {
        let desired =
            DesiredTracker::open(&config.state_dir).context("failed to open the desired cache")?;
        let link = Link::new(
            Arc::clone(&config),
            desired,
            Arc::clone(&reported),
            Arc::clone(&device),
        )
        .context("failed to open the device-to-cloud queue")?;
        Some(link)
    } else {
        None
    };
    let hub_transfers: Option<Arc<dyn Transfers>> = match &link {
        Some(link) => Some(crate::transfer::hub::HubTransfers::start(
            Arc::clone(&config),
            Arc::clone(&zones),
            Arc::clone(link),
        )?),
        None => None,
    };
    let https = HttpsDownloads::new(
        Arc::clone(&config),
        Arc::clone(&zones),
        Arc::clone(&device),
        trust.clone(),
    );
    let transfers: Arc<dyn Transfers> = Arc::new(Router::new(hub_transfers, https));
    let journal = Journal::open(&config.state_dir).context("failed to open the journal")?;
    let engine = Arc::new(Engine::new(
        Arc::clone(&config),
        zones,
        journal,
        Arc::clone(&reported),
        Arc::clone(&device),
        Some(transfers),
        trust,
    ));
    if let Some(link) = &link {
        link.set_engine(Arc::clone(&engine));
        tokio::spawn(Arc::clone(link).run());
    }
    engine.resume().await;

    let secret = api_secret(&config)?;
    let state = Arc::new(ApiState {
        secret,
        configured_id: config.device_id.clone(),
        device: Arc::clone(&device),
        reported: Arc::clone(&reported),
        engine: Arc::clone(&engine),
        link: link.clone().map(|l| l as Arc<dyn LinkControl>),
        offline_desired: RwLock::new(json!({})),
        diagnostics: tokio::sync::Mutex::new(()),
    });
    let tls_dir = config.api.tls.then(|| config.state_dir.join("api-tls"));
    let (api_addr, _task) = api::serve(config.api.bind, tls_dir, state).await?;
    Ok(Agent {
        api_addr,
        engine,
        link,
        device,
        reported,
        _lock: lock,
    })
}

impl Agent {
    /// Stops for SIGTERM or SIGINT: the running shell step's process group is stopped and the
    /// step left to run again at the next start. State is written as it changes (journal,
    /// reported document, step records), so nothing else waits to be saved.
    pub async fn shut_down(&self) {
        self.engine.shut_down().await;
    }
}

/// The local API secret: from the configured file, or generated once into the state dir.
fn api_secret(config: &Config) -> anyhow::Result<String> {
    use anyhow::Context as _;
    if let Some(path) = &config.api.secret_key_file {
        return Ok(read_secret_file(path)?);
    }
    let path = config.state_dir.join("api-secret");
    if path.exists() {
        return Ok(read_secret_file(&path)?);
    }
    let mut bytes = [0u8; 24];
    rand::fill(&mut bytes);
    let secret = cloudpillar_protocol::encoding::encode_base64(&bytes);
    crate::link::identity::write_secret(&path, &secret)
        .with_context(|| format!("failed to write {}", path.display()))?;
    tracing::info!(path = %path.display(), "generated the local API secret");
    Ok(secret)
}
