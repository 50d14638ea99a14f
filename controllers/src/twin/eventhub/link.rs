//! One signed-in AMQP connection to an Event Hubs-compatible endpoint: TCP, TLS, SASL
//! ANONYMOUS, a session, a SAS token put on `$cbs`, and the `$management` READ that lists
//! the partitions.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use fe2o3_amqp::connection::ConnectionHandle;
use fe2o3_amqp::link::Receiver;
use fe2o3_amqp::sasl_profile::SaslProfile;
use fe2o3_amqp::session::SessionHandle;
use fe2o3_amqp::types::definitions::SenderSettleMode;
use fe2o3_amqp::types::messaging::{ApplicationProperties, Message, Source};
use fe2o3_amqp::types::primitives::Value;
use fe2o3_amqp::{Connection, Session};
use fe2o3_amqp_cbs::client::CbsClient;
use fe2o3_amqp_cbs::token::CbsToken;
use fe2o3_amqp_management::client::MgmtClient;
use fe2o3_amqp_management::error::Error as MgmtError;
use fe2o3_amqp_management::request::Request;
use fe2o3_amqp_management::response::Response;
use rustls::pki_types::ServerName;
use serde_amqp::described::Described;
use serde_amqp::descriptor::Descriptor;
use tokio::net::TcpStream;

use super::{EventHubConnection, StartAt};
use crate::twin::{TOKEN_TTL, TwinError, sas};

/// Filter-set key and descriptor code of Event Hubs' selector filter.
const SELECTOR_FILTER: &str = "apache.org:selector-filter:string";
const SELECTOR_FILTER_CODE: u64 = 0x0000_468C_0000_0004;
/// Longest wait for connecting and signing in.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(20);

/// A connection and its session; receivers attach to the session.
pub(super) struct Link {
    connection: ConnectionHandle<()>,
    session: SessionHandle<()>,
    settings: EventHubConnection,
}

impl Link {
    /// Connects and signs in with a SAS token for the event hub.
    pub(super) async fn open(settings: &EventHubConnection) -> Result<Self, TwinError> {
        tokio::time::timeout(CONNECT_TIMEOUT, Self::open_now(settings))
            .await
            .map_err(|_| settings.failed("connect", "timed out"))?
    }

    async fn open_now(settings: &EventHubConnection) -> Result<Self, TwinError> {
        let host = settings.host_name();
        let tcp = TcpStream::connect(settings.address())
            .await
            .map_err(|e| settings.failed("connect", e))?;
        let _ = tcp.set_nodelay(true);
        let builder = Connection::builder()
            .container_id(format!("cloudpillar-{}", std::process::id()))
            .hostname(host)
            .sasl_profile(SaslProfile::Anonymous);
        let mut connection = match &settings.tls {
            Some(tls) => {
                let name = ServerName::try_from(host.to_owned())
                    .map_err(|e| settings.failed("connect", e))?;
                let connector = tokio_rustls::TlsConnector::from(tls.clone());
                let stream = connector
                    .connect(name, tcp)
                    .await
                    .map_err(|e| settings.failed("TLS handshake", e))?;
                builder.open_with_stream(stream).await
            }
            None => builder.open_with_stream(tcp).await,
        }
        .map_err(|e| settings.failed("open connection", e))?;
        let session = Session::begin(&mut connection)
            .await
            .map_err(|e| settings.failed("begin session", e))?;
        let mut link = Self {
            connection,
            session,
            settings: settings.clone(),
        };
        link.put_token().await?;
        Ok(link)
    }

    /// Puts a SAS token for `sb://{host}/{event hub}` on `$cbs`.
    async fn put_token(&mut self) -> Result<(), TwinError> {
        let settings = &self.settings;
        let audience = settings.audience();
        let expiry = unix_now() + TOKEN_TTL.as_secs();
        let token = sas::service_token(
            &settings.policy_key,
            &settings.policy_name,
            &audience,
            expiry,
        )?;
        let mut cbs = CbsClient::attach(&mut self.session)
            .await
            .map_err(|e| settings.failed("attach $cbs", e))?;
        let token = CbsToken::new(token, "servicebus.windows.net:sastoken", None);
        let result = cbs.put_token(audience.as_str(), token).await;
        let _ = cbs.close().await;
        result.map_err(|e| settings.refused("put-token", answer(&e)))
    }

    /// The partition ids of the event hub (`$management` READ).
    pub(super) async fn partition_ids(&mut self) -> Result<Vec<String>, TwinError> {
        let settings = &self.settings;
        let mut management = MgmtClient::builder()
            .management_node_address("$management")
            .client_node_addr("cloudpillar-management")
            .attach(&mut self.session)
            .await
            .map_err(|e| settings.failed("attach $management", e))?;
        let request = ReadEventHub {
            name: settings.name.clone(),
        };
        let result = management.call(request).await;
        let _ = management.close().await;
        let ids = result.map_err(|e| settings.refused("read event hub", answer(&e)))?;
        Ok(ids.0)
    }

    /// A receiver of one partition starting at `start`, its sender settling every event
    /// itself (no acknowledgement round trips: the checkpoint decides what is read again).
    pub(super) async fn receiver(
        &mut self,
        partition: &str,
        start: StartAt,
    ) -> Result<Receiver, TwinError> {
        let settings = &self.settings;
        let address = format!(
            "{}/ConsumerGroups/{}/Partitions/{partition}",
            settings.name, settings.consumer_group
        );
        let selector = Described {
            descriptor: Descriptor::Code(SELECTOR_FILTER_CODE),
            value: Value::String(start.selector()),
        };
        let source = Source::builder()
            .address(address.clone())
            .add_to_filter(SELECTOR_FILTER, selector)
            .build();
        Receiver::builder()
            .name(format!("cloudpillar-{partition}"))
            .source(source)
            .target("cloudpillar")
            .sender_settle_mode(SenderSettleMode::Settled)
            .attach(&mut self.session)
            .await
            .map_err(|e| settings.failed("attach receiver", e))
    }

    /// Ends the session and closes the connection.
    pub(super) async fn close(mut self) {
        let _ = self.session.end().await;
        let _ = self.connection.close().await;
    }
}

/// A management answer as `<status>: <description>`, or the client's error.
fn answer(error: &MgmtError) -> String {
    match error {
        MgmtError::Status(status) => format!(
            "{}: {}",
            status.code.0,
            status.description.as_deref().unwrap_or("no description")
        ),
        other => other.to_string(),
    }
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// `READ` of `com.microsoft:eventhub` on `$management`.
struct ReadEventHub {
    name: String,
}

/// The partition ids from the answer.
struct PartitionIds(Vec<String>);

impl Request for ReadEventHub {
    const OPERATION: &'static str = "READ";
    type Response = PartitionIds;
    type Body = ();

    fn manageable_entity_type(&mut self) -> Option<String> {
        Some("com.microsoft:eventhub".into())
    }

    fn encode_application_properties(&mut self) -> Option<ApplicationProperties> {
        Some(
            ApplicationProperties::builder()
                .insert("name", self.name.clone())
                .build(),
        )
    }

    fn encode_body(self) -> Self::Body {}
}

impl Response for PartitionIds {
    const STATUS_CODE: u16 = 200;
    type Body = Value;
    type Error = fe2o3_amqp_management::error::Error;

    fn decode_message(message: Message<Self::Body>) -> Result<Self, Self::Error> {
        let ids = match message.body {
            Value::Map(map) => match map.get(&Value::from("partition_ids")) {
                Some(Value::Array(ids)) => ids.0.iter().filter_map(text).collect(),
                Some(Value::List(ids)) => ids.iter().filter_map(text).collect(),
                _ => Vec::new(),
            },
            _ => Vec::new(),
        };
        Ok(Self(ids))
    }
}

fn text(value: &Value) -> Option<String> {
    match value {
        Value::String(s) => Some(s.clone()),
        _ => None,
    }
}

/// A TLS client configuration trusting `ca_pem` only, or the system roots without it.
pub(super) fn tls_config(ca_pem: Option<&[u8]>) -> Result<Arc<rustls::ClientConfig>, String> {
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject;
    use rustls_platform_verifier::BuilderVerifierExt;

    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?;
    let config = match ca_pem {
        Some(pem) => {
            let mut roots = rustls::RootCertStore::empty();
            for cert in CertificateDer::pem_slice_iter(pem) {
                roots
                    .add(cert.map_err(|e| e.to_string())?)
                    .map_err(|e| e.to_string())?;
            }
            builder.with_root_certificates(roots).with_no_client_auth()
        }
        None => builder
            .with_platform_verifier()
            .map_err(|e| e.to_string())?
            .with_no_client_auth(),
    };
    Ok(Arc::new(config))
}

impl StartAt {
    /// The selector filter expression for this start position.
    fn selector(&self) -> String {
        match self {
            Self::Latest => "amqp.annotation.x-opt-offset > '@latest'".into(),
            Self::Sequence(n) => format!("amqp.annotation.x-opt-sequence-number >= '{n}'"),
            Self::EnqueuedAfter(ms) => format!("amqp.annotation.x-opt-enqueued-time > '{ms}'"),
        }
    }
}
