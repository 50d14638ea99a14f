//! Starting and stopping the hub: the embedding API.

use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::broadcast;

use crate::config::HubConfig;
use crate::core::Core;
use crate::error::StartError;
use crate::events::{EventBus, HubEvent};
use crate::mqtt::{self, MqttServer};
use crate::store::{Retention, Store};
use crate::{amqp, rest, sas, tls};

/// Entry point for embedding the hub.
#[derive(Debug)]
pub struct Hub;

/// A running hub.
#[derive(Debug)]
pub struct HubHandle {
    core: Arc<Core>,
    mqtt_addr: SocketAddr,
    http_addr: SocketAddr,
    amqp_addr: Option<SocketAddr>,
    mqtt: MqttServer,
    amqp: Option<amqp::AmqpServer>,
    http: axum_server::Handle<SocketAddr>,
    ca_cert: Option<PathBuf>,
    policy_key_file: PathBuf,
}

impl Hub {
    /// Opens the store under `config.data_dir` and starts both endpoints.
    pub async fn start(config: HubConfig) -> Result<HubHandle, StartError> {
        let dir = config.data_dir.clone();
        std::fs::create_dir_all(&dir).map_err(|source| StartError::Write {
            path: dir.display().to_string(),
            source,
        })?;
        if config.insecure_loopback {
            let addrs = [config.mqtt_addr, config.http_addr].into_iter();
            for addr in addrs.chain(config.amqp_addr) {
                if !addr.ip().is_loopback() {
                    return Err(StartError::PlainNotLoopback { addr });
                }
            }
        }
        let (policy_key, policy_key_file) = policy_key(&config, &dir)?;

        let bus = EventBus::new(0);
        let retention = Retention {
            max_age_ms: u64::try_from(config.event_retention.as_millis()).unwrap_or(u64::MAX),
            max_count: config.event_retention_count,
        };
        let store = Store::open(&dir, bus.clone(), retention)?;
        bus.set_last(store.counter("event_seq")?);
        let core = Arc::new(Core::new(config.clone(), store, bus, policy_key));
        match core.close_stale_connections().await {
            Ok(0) => {}
            Ok(closed) => tracing::info!(
                devices = closed,
                "connections left open by the last run closed"
            ),
            Err(error) => {
                tracing::warn!(%error, "connections left open by the last run not closed")
            }
        }

        let (mqtt_tls, http_tls, amqp_tls, ca_cert) = if config.insecure_loopback {
            (None, None, None, None)
        } else {
            let (chain, key) =
                tls::server_material(&dir, config.tls_cert.as_ref(), &config.hostname)?;
            let mqtt_cfg = tls::server_config(chain.clone(), key.clone_key(), true)?;
            let http_cfg = tls::server_config(chain.clone(), key.clone_key(), false)?;
            let amqp_cfg = tls::server_config(chain, key, false)?;
            let ca = config
                .tls_cert
                .is_none()
                .then(|| dir.join(tls::DEV_CA_FILE));
            (Some(mqtt_cfg), Some(http_cfg), Some(amqp_cfg), ca)
        };

        let mqtt_listener = bind("MQTT", config.mqtt_addr)?;
        let mqtt_addr = local(&mqtt_listener, config.mqtt_addr)?;
        let mqtt = mqtt::start(core.clone(), mqtt_listener, mqtt_tls)?;

        let (amqp, amqp_addr) = match config.amqp_addr {
            Some(addr) => {
                let listener = bind("AMQP", addr)?;
                let addr = local(&listener, addr)?;
                let server = amqp::start(core.clone(), listener, amqp_tls).map_err(|source| {
                    StartError::Bind {
                        what: "AMQP",
                        addr,
                        source,
                    }
                })?;
                (Some(server), Some(addr))
            }
            None => (None, None),
        };

        let http_listener = bind("HTTP", config.http_addr)?;
        let http_addr = local(&http_listener, config.http_addr)?;
        let http = axum_server::Handle::new();
        let app = rest::router(core.clone()).into_make_service();
        let bind_err = |source| StartError::Bind {
            what: "HTTP",
            addr: http_addr,
            source,
        };
        match http_tls {
            Some(cfg) => {
                let rustls = axum_server::tls_rustls::RustlsConfig::from_config(cfg);
                let server =
                    axum_server::from_tcp_rustls(http_listener, rustls).map_err(bind_err)?;
                tokio::spawn(server.handle(http.clone()).serve(app));
            }
            None => {
                let server = axum_server::from_tcp(http_listener).map_err(bind_err)?;
                tokio::spawn(server.handle(http.clone()).serve(app));
            }
        }
        tracing::info!(%mqtt_addr, %http_addr, ?amqp_addr, tls = !config.insecure_loopback, "edge hub listening");
        Ok(HubHandle {
            core,
            mqtt_addr,
            http_addr,
            amqp_addr,
            mqtt,
            amqp,
            http,
            ca_cert,
            policy_key_file,
        })
    }
}

fn bind(what: &'static str, addr: SocketAddr) -> Result<TcpListener, StartError> {
    let listener =
        TcpListener::bind(addr).map_err(|source| StartError::Bind { what, addr, source })?;
    listener
        .set_nonblocking(true)
        .map_err(|source| StartError::Bind { what, addr, source })?;
    Ok(listener)
}

fn local(listener: &TcpListener, addr: SocketAddr) -> Result<SocketAddr, StartError> {
    listener.local_addr().map_err(|source| StartError::Bind {
        what: "listener",
        addr,
        source,
    })
}

/// The configured policy key, else the one kept in `policy.key`, else a new one written there
/// with mode 0600.
fn policy_key(config: &HubConfig, dir: &Path) -> Result<(String, PathBuf), StartError> {
    let file = dir.join("policy.key");
    let write_err = |source| StartError::Write {
        path: file.display().to_string(),
        source,
    };
    if let Some(key) = &config.policy_key {
        return Ok((key.clone(), file));
    }
    if let Ok(text) = std::fs::read_to_string(&file) {
        return Ok((text.trim().to_string(), file));
    }
    let key = sas::random_key();
    std::fs::write(&file, format!("{key}\n")).map_err(write_err)?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o600))
            .map_err(write_err)?;
    }
    Ok((key, file))
}

impl HubHandle {
    /// Where the MQTT device endpoint listens.
    pub fn mqtt_addr(&self) -> SocketAddr {
        self.mqtt_addr
    }

    /// Where the service REST API listens.
    pub fn http_addr(&self) -> SocketAddr {
        self.http_addr
    }

    /// Where the Event Hubs-compatible AMQP endpoint listens, when it is served.
    pub fn amqp_addr(&self) -> Option<SocketAddr> {
        self.amqp_addr
    }

    /// The Event Hubs-compatible name receivers address.
    pub fn event_hub_name(&self) -> &str {
        &self.core.config.event_hub_name
    }

    /// The host name used in SAS resource URIs and device user names.
    pub fn hostname(&self) -> &str {
        &self.core.config.hostname
    }

    /// The DPS ID scope.
    pub fn id_scope(&self) -> &str {
        &self.core.config.id_scope
    }

    /// The shared access policy name.
    pub fn policy_name(&self) -> &str {
        &self.core.config.policy_name
    }

    /// The shared access policy key (base64).
    pub fn policy_key(&self) -> &str {
        &self.core.policy_key
    }

    /// The file the policy key is kept in (unless it was configured).
    pub fn policy_key_file(&self) -> &Path {
        &self.policy_key_file
    }

    /// The generated development CA certificate clients should trust, when TLS uses one.
    pub fn ca_cert_path(&self) -> Option<&Path> {
        self.ca_cert.as_deref()
    }

    /// A service SAS token for the `Authorization` header, valid for `ttl`.
    pub fn service_token(&self, ttl: Duration) -> String {
        let expiry = rest::unix_now() + ttl.as_secs();
        sas::generate(
            &self.core.policy_key,
            self.hostname(),
            expiry,
            Some(self.policy_name()),
        )
        .unwrap_or_default()
    }

    /// Live committed events (D2C, twin changes, connection events). For gap-free reading
    /// across restarts, read the log with [`Core::read_events`] from a checkpoint instead.
    pub fn events(&self) -> broadcast::Receiver<Arc<HubEvent>> {
        self.core.bus.subscribe()
    }

    /// The shared hub state, for in-process callers.
    pub fn core(&self) -> &Arc<Core> {
        &self.core
    }

    /// Stops both endpoints and closes the store, so the same data directory can be opened
    /// again in this process.
    pub async fn shutdown(self) {
        self.http.shutdown();
        if let Some(amqp) = self.amqp {
            amqp.stop();
        }
        self.mqtt.stop().await;
        let db = self.core.store.database();
        let core = self.core;
        // Connections and request handlers let go of the shared state as they wind down;
        // the writer thread ends when the last store handle is gone.
        if !wait_until(|| Arc::strong_count(&core) == 1).await {
            tracing::warn!("hub state still in use after shutdown; store stays open");
            return;
        }
        drop(core);
        if !wait_until(|| Arc::strong_count(&db) == 1).await {
            tracing::warn!("store writer did not stop");
        }
        tracing::info!("edge hub stopped");
    }
}

/// Polls `done` for up to five seconds.
async fn wait_until(done: impl Fn() -> bool) -> bool {
    for _ in 0..500 {
        if done() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    done()
}
