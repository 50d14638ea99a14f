//! The MQTT 3.1.1 device endpoint (`ntex-mqtt`), in IoT Hub's device dialect.
//!
//! ntex runs its own single-threaded runtimes; the server lives on dedicated threads and
//! reaches the shared [`Core`] through thread-safe channels.

mod c2d;
mod connect;
mod ordered;
mod session;
pub mod topics;

use std::net::TcpListener;
use std::rc::Rc;
use std::sync::Arc;

use ntex_mqtt::{MqttServiceConfig, v3};
use ntex_service::Service as _;
use ntex_service::cfg::SharedCfg;
use rustls::ServerConfig;

use crate::core::Core;
use crate::error::StartError;
pub(crate) use session::Connection;
use session::Peer;

pub(crate) use crate::dps::mqtt::{dps_authenticate, dps_publish};
pub(crate) use connect::ConnectRefusal;

/// Largest MQTT packet accepted: a 256 KiB D2C body plus topic and properties fit.
pub const MAX_PACKET: u32 = 512 * 1024;

/// A failure that closes the connection.
#[derive(Debug, Clone)]
pub struct MqttFault(pub String);

impl From<()> for MqttFault {
    fn from((): ()) -> Self {
        Self("protocol error".into())
    }
}

impl std::fmt::Display for MqttFault {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for MqttFault {}

/// The running MQTT server.
#[derive(Debug)]
pub struct MqttServer {
    server: ntex_server::Server<ntex_server::net::Connection>,
    system: ntex_rt::System,
}

impl MqttServer {
    /// Stops accepting, closes connections and ends the server threads.
    pub async fn stop(self) {
        self.server.stop(false).await;
        self.system.stop();
    }
}

fn service_cfg() -> SharedCfg {
    SharedCfg::new("MQTT")
        .add(
            MqttServiceConfig::new()
                .set_max_size(MAX_PACKET)
                .set_max_qos(v3::QoS::AtLeastOnce)
                .set_max_send_size(2 * MAX_PACKET),
        )
        .into()
}

/// Builds the v3 server for one connection.
///
/// Each connection hands the hub one request at a time, in arrival order (see [`ordered`]), so
/// a device's writes apply in the order it sent them. Twin requests still pipeline, because
/// their handler only queues the write and answers once it is durable.
macro_rules! mqtt_service {
    ($core:expr) => {{
        let core: Arc<Core> = $core;
        v3::MqttServer::new(async |conn: &v3::Session<Rc<Connection>>, p: v3::Publish| {
            session::publish(conn, p).await
        })
        .protocol(
            async |conn: &v3::Session<Rc<Connection>>, m: v3::ProtocolMessage| {
                session::protocol(conn, m).await
            },
        )
        .control(
            async |conn: &v3::Session<Rc<Connection>>, c: ntex_mqtt::Control<MqttFault>| {
                if let ntex_mqtt::Control::Stop(reason) = &c {
                    tracing::debug!(?reason, "connection stopping");
                    if let Peer::Device(id) = &conn.peer {
                        conn.core.detach(id, conn.conn_id).await;
                    }
                    conn.c2d_wake.notify_one();
                }
                Ok::<_, MqttFault>(None)
            },
        )
        .middleware(ordered::Ordered)
        .build(async move |handshake: v3::Connect| connect::connect(core.clone(), handshake).await)
    }};
}

/// Starts the server on `listener` (TLS when `tls` is set) on its own threads.
pub fn start(
    core: Arc<Core>,
    listener: TcpListener,
    tls: Option<Arc<ServerConfig>>,
) -> Result<MqttServer, StartError> {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::Builder::new()
        .name("hub-mqtt".into())
        .spawn(move || {
            let system = ntex_rt::System::build()
                .name("hub-mqtt")
                .disable_signals()
                .build(ntex_net::DefaultRuntime);
            system.run(move || {
                let builder = ntex_server::net::build().workers(1).disable_signals();
                let core2 = core.clone();
                let built = match tls {
                    Some(tls) => builder.listen("mqtt", listener, service_cfg(), async move |_| {
                        ntex_tls::rustls::TlsAcceptor::new(tls.clone())
                            .map_err(|e| v3::MqttError::Service(MqttFault(e.to_string())))
                            .and_then(mqtt_service!(core2.clone()))
                    }),
                    None => builder.listen("mqtt", listener, service_cfg(), async move |_| {
                        mqtt_service!(core2.clone())
                    }),
                };
                match built {
                    Ok(b) => {
                        let _ = tx.send(Some((b.run(), ntex_rt::System::current())));
                    }
                    Err(error) => {
                        tracing::error!(%error, "MQTT listener failed");
                        let _ = tx.send(None);
                    }
                }
                Ok(())
            })
        })
        .map_err(|_| StartError::MqttThread)?;
    let (server, system) = rx.recv().ok().flatten().ok_or(StartError::MqttThread)?;
    Ok(MqttServer { server, system })
}
