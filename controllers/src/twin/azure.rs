//! [`TwinService`] over Azure IoT Hub's service REST API, also served by the edge hub.

use std::fmt;
use std::num::NonZeroU32;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use cloudpillar_protocol::messages::C2dMessage;
use futures::stream::BoxStream;
use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
use reqwest::{Method, StatusCode};
use serde::de::DeserializeOwned;
use serde_json::{Value, json};

use super::retry::{RetryPolicy, is_retryable_status};
use super::{
    Checkpoint, DeviceIdentity, DeviceRecord, EventHubConnection, IdentityAuth, QueryPage,
    TOKEN_TTL, Twin, TwinError, TwinEvent, TwinPatch, TwinService, eventhub, events, sas,
};

/// API version sent with every call.
pub const API_VERSION: &str = "2021-04-12";

/// Everything needed to reach one hub's service API.
#[derive(Clone)]
pub struct HubConnection {
    /// Host and optional port of the service API, for example `contoso.azure-devices.net`.
    pub service_host: String,
    /// Shared access policy name (`skn`).
    pub policy_name: String,
    /// Base64 key of the policy.
    pub policy_key: String,
    /// PEM CA bundle to trust instead of the system roots (edge hub).
    pub ca_bundle: Option<Vec<u8>>,
    /// Twin writes per second this client allows itself.
    pub write_rate_limit: u32,
    /// Retries on throttling and server errors.
    pub retry: RetryPolicy,
    /// Whether the hub serves the edge hub's `/events` stream.
    pub event_stream: bool,
    /// The Event Hubs-compatible endpoint to read events from; preferred over `/events`.
    pub event_hub: Option<EventHubConnection>,
}

impl fmt::Debug for HubConnection {
    /// Leaves the policy key out.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HubConnection")
            .field("service_host", &self.service_host)
            .field("policy_name", &self.policy_name)
            .field("write_rate_limit", &self.write_rate_limit)
            .field("event_stream", &self.event_stream)
            .field("event_hub", &self.event_hub)
            .finish_non_exhaustive()
    }
}

/// REST client for one hub, with a write rate limiter and retries.
pub struct AzureTwinService {
    pub(super) connection: HubConnection,
    pub(super) http: reqwest::Client,
    limiter: DefaultDirectRateLimiter,
    token: Mutex<Option<(String, u64)>>,
}

impl fmt::Debug for AzureTwinService {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AzureTwinService")
            .field("connection", &self.connection)
            .finish()
    }
}

/// Which calls count against the write rate limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Read,
    Write,
}

/// One HTTP call, described once and sent as often as retries need.
struct Call<'a> {
    operation: &'static str,
    device_id: &'a str,
    method: Method,
    path: String,
    body: Option<&'a Value>,
    if_match: Option<&'a str>,
    continuation: Option<&'a str>,
    kind: Kind,
}

impl AzureTwinService {
    /// A client for `connection`. Fails when the CA bundle cannot be read.
    pub fn new(connection: HubConnection) -> Result<Arc<Self>, reqwest::Error> {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let mut builder = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(10))
            .timeout(Duration::from_secs(60))
            .pool_max_idle_per_host(64);
        if let Some(pem) = &connection.ca_bundle {
            builder = builder.tls_certs_only(reqwest::Certificate::from_pem_bundle(pem)?);
        }
        let rate = NonZeroU32::new(connection.write_rate_limit).unwrap_or(NonZeroU32::MIN);
        // A burst of a fifth of a second's budget keeps writes smooth instead of bunched.
        let burst = NonZeroU32::new(connection.write_rate_limit / 5).unwrap_or(NonZeroU32::MIN);
        let limiter = RateLimiter::direct(Quota::per_second(rate).allow_burst(burst));
        Ok(Arc::new(Self {
            http: builder.build()?,
            connection,
            limiter,
            token: Mutex::new(None),
        }))
    }

    /// `https://<service host>`.
    pub(super) fn base_url(&self) -> String {
        format!("https://{}", self.connection.service_host)
    }

    /// A SAS token for the hub, reused until ten minutes before it expires.
    pub(super) fn token(&self) -> Result<String, TwinError> {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let mut cached = self
            .token
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some((token, expiry)) = cached.as_ref()
            && *expiry > now + 600
        {
            return Ok(token.clone());
        }
        let (token, expiry) = fresh_token(&self.connection, now)?;
        *cached = Some((token.clone(), expiry));
        Ok(token)
    }

    /// Sends `call`, retrying on throttling, server errors and transport failures.
    async fn send(&self, call: &Call<'_>) -> Result<(StatusCode, reqwest::Response), TwinError> {
        let policy = self.connection.retry;
        let mut attempt = 0;
        loop {
            attempt += 1;
            if call.kind == Kind::Write {
                self.limiter.until_ready().await;
            }
            let separator = if call.path.contains('?') { '&' } else { '?' };
            let url = format!(
                "{}{}{separator}api-version={API_VERSION}",
                self.base_url(),
                call.path
            );
            let mut request = self
                .http
                .request(call.method.clone(), url)
                .header("Authorization", self.token()?);
            if let Some(etag) = call.if_match {
                request = request.header("If-Match", quoted(etag));
            }
            if let Some(token) = call.continuation {
                request = request.header("x-ms-continuation", token);
            }
            if let Some(body) = call.body {
                request = request.json(body);
            }
            let (status, retry_after) = match request.send().await {
                Ok(response) if !is_retryable_status(response.status().as_u16()) => {
                    return Ok((response.status(), response));
                }
                Ok(response) => (response.status().as_u16(), retry_after(&response)),
                Err(source) if attempt >= policy.max_attempts => {
                    return Err(TwinError::Transport {
                        operation: call.operation,
                        device_id: call.device_id.to_owned(),
                        source,
                    });
                }
                Err(error) => {
                    tracing::debug!(%error, operation = call.operation, "hub call failed; retrying");
                    (0, None)
                }
            };
            if attempt >= policy.max_attempts {
                return Err(TwinError::Unavailable {
                    operation: call.operation,
                    device_id: call.device_id.to_owned(),
                    status,
                });
            }
            tracing::debug!(
                status,
                attempt,
                operation = call.operation,
                "hub asked to retry"
            );
            tokio::time::sleep(policy.delay(attempt, retry_after)).await;
        }
    }

    /// The registry's identity document of `device_id`, keys included.
    pub(super) async fn identity(&self, device_id: &str) -> Result<Value, TwinError> {
        self.call_json(Call {
            operation: "get device",
            device_id,
            method: Method::GET,
            path: device_path("devices", device_id),
            body: None,
            if_match: None,
            continuation: None,
            kind: Kind::Read,
        })
        .await
    }

    /// Sends `call` and decodes a successful JSON answer; maps 404, 412 and other 4xx.
    async fn call_json<T: DeserializeOwned>(&self, call: Call<'_>) -> Result<T, TwinError> {
        let (status, response) = self.send(&call).await?;
        let text = response
            .text()
            .await
            .map_err(|source| TwinError::Transport {
                operation: call.operation,
                device_id: call.device_id.to_owned(),
                source,
            })?;
        check_status(&call, status, &text)?;
        let text = if text.is_empty() { "null" } else { &text };
        serde_json::from_str(text).map_err(|source| TwinError::Decode {
            operation: call.operation,
            device_id: call.device_id.to_owned(),
            source,
        })
    }
}

/// A new SAS token for the hub, valid for [`TOKEN_TTL`] from `now`, and its expiry.
pub(super) fn fresh_token(
    connection: &HubConnection,
    now: u64,
) -> Result<(String, u64), TwinError> {
    let expiry = now + TOKEN_TTL.as_secs();
    // The signed resource is the hub's host name, without a port (Azure's form).
    let host = connection
        .service_host
        .split(':')
        .next()
        .unwrap_or_default();
    let token = sas::service_token(
        &connection.policy_key,
        &connection.policy_name,
        host,
        expiry,
    )?;
    Ok((token, expiry))
}

fn check_status(call: &Call<'_>, status: StatusCode, text: &str) -> Result<(), TwinError> {
    let device_id = call.device_id.to_owned();
    match status.as_u16() {
        200..=299 => Ok(()),
        404 => Err(TwinError::NotFound { device_id }),
        412 => Err(TwinError::EtagMismatch { device_id }),
        code => Err(TwinError::Refused {
            operation: call.operation,
            device_id,
            status: code,
            message: super::refusal_message(text),
        }),
    }
}

fn retry_after(response: &reqwest::Response) -> Option<Duration> {
    let value = response.headers().get("Retry-After")?.to_str().ok()?;
    value.trim().parse::<u64>().ok().map(Duration::from_secs)
}

/// ETags travel quoted in `If-Match`; the twin JSON may carry them bare.
fn quoted(etag: &str) -> String {
    if etag == "*" || etag.starts_with('"') {
        etag.to_owned()
    } else {
        format!("\"{etag}\"")
    }
}

pub(super) fn device_path(kind: &str, device_id: &str) -> String {
    let id = percent_encoding::utf8_percent_encode(device_id, percent_encoding::NON_ALPHANUMERIC);
    format!("/{kind}/{id}")
}

fn identity_body(identity: &DeviceIdentity, etag: Option<&str>) -> Value {
    let authentication = match &identity.auth {
        IdentityAuth::Sas {
            primary_key,
            secondary_key,
        } => json!({
            "type": "sas",
            "symmetricKey": { "primaryKey": primary_key, "secondaryKey": secondary_key },
        }),
        IdentityAuth::X509 { thumbprint } => json!({
            "type": "selfSigned",
            "x509Thumbprint": { "primaryThumbprint": thumbprint, "secondaryThumbprint": thumbprint },
        }),
    };
    let mut body = json!({
        "deviceId": identity.device_id,
        "status": "enabled",
        "authentication": authentication,
    });
    if let Some(etag) = etag {
        body["etag"] = etag.into();
    }
    body
}

/// Whether the credentials the hub holds are the ones wanted.
fn same_credentials(current: &Value, wanted: &IdentityAuth) -> bool {
    let auth = &current["authentication"];
    match wanted {
        IdentityAuth::Sas {
            primary_key,
            secondary_key,
        } => {
            auth["symmetricKey"]["primaryKey"] == primary_key.as_str()
                && auth["symmetricKey"]["secondaryKey"] == secondary_key.as_str()
        }
        IdentityAuth::X509 { thumbprint } => auth["x509Thumbprint"]["primaryThumbprint"]
            .as_str()
            .is_some_and(|t| t.eq_ignore_ascii_case(thumbprint)),
    }
}

#[async_trait]
impl TwinService for AzureTwinService {
    async fn ensure_device(&self, identity: &DeviceIdentity) -> Result<DeviceRecord, TwinError> {
        let id = identity.device_id.as_str();
        let path = device_path("devices", id);
        let existing = match self.identity(id).await {
            Ok(current) => Some(current),
            Err(TwinError::NotFound { .. }) => None,
            Err(error) => return Err(error),
        };
        if let Some(current) = &existing
            && same_credentials(current, &identity.auth)
        {
            return decode_record(current.clone(), id, false);
        }

        // Register, or replace credentials guarded by the identity's ETag.
        let etag = existing
            .as_ref()
            .and_then(|c| c["etag"].as_str())
            .map(str::to_owned);
        let body = identity_body(identity, etag.as_deref());
        let write = Call {
            operation: "register device",
            device_id: id,
            method: Method::PUT,
            path,
            body: Some(&body),
            if_match: etag.as_deref(),
            continuation: None,
            kind: Kind::Write,
        };
        let written: Value = self.call_json(write).await?;
        decode_record(written, id, existing.is_none())
    }

    async fn get_device(&self, device_id: &str) -> Result<Option<DeviceRecord>, TwinError> {
        match self.identity(device_id).await {
            Ok(current) => decode_record(current, device_id, false).map(Some),
            Err(TwinError::NotFound { .. }) => Ok(None),
            Err(error) => Err(error),
        }
    }

    async fn delete_device(&self, device_id: &str) -> Result<bool, TwinError> {
        let call = Call {
            operation: "delete device",
            device_id,
            method: Method::DELETE,
            path: device_path("devices", device_id),
            body: None,
            if_match: Some("*"),
            continuation: None,
            kind: Kind::Write,
        };
        match self.call_json::<Value>(call).await {
            Ok(_) => Ok(true),
            Err(TwinError::NotFound { .. }) => Ok(false),
            Err(error) => Err(error),
        }
    }

    async fn get_twin(&self, device_id: &str) -> Result<Twin, TwinError> {
        self.call_json(Call {
            operation: "get twin",
            device_id,
            method: Method::GET,
            path: device_path("twins", device_id),
            body: None,
            if_match: None,
            continuation: None,
            kind: Kind::Read,
        })
        .await
    }

    async fn patch_twin(
        &self,
        device_id: &str,
        patch: &TwinPatch,
        etag: Option<&str>,
    ) -> Result<Twin, TwinError> {
        let body = patch.to_body();
        self.call_json(Call {
            operation: "patch twin",
            device_id,
            method: Method::PATCH,
            path: device_path("twins", device_id),
            body: Some(&body),
            if_match: etag,
            continuation: None,
            kind: Kind::Write,
        })
        .await
    }

    async fn query(&self, query: &str, continuation: Option<&str>) -> Result<QueryPage, TwinError> {
        let body = json!({ "query": query });
        let call = Call {
            operation: "query",
            device_id: "-",
            method: Method::POST,
            path: "/devices/query".into(),
            body: Some(&body),
            if_match: None,
            continuation,
            kind: Kind::Read,
        };
        let (status, response) = self.send(&call).await?;
        let next = response
            .headers()
            .get("x-ms-continuation")
            .and_then(|v| v.to_str().ok())
            .filter(|v| !v.is_empty())
            .map(str::to_owned);
        let text = response
            .text()
            .await
            .map_err(|source| TwinError::Transport {
                operation: "query",
                device_id: "-".into(),
                source,
            })?;
        check_status(&call, status, &text)?;
        let items = serde_json::from_str(&text).map_err(|source| TwinError::Decode {
            operation: "query",
            device_id: "-".into(),
            source,
        })?;
        Ok(QueryPage {
            items,
            continuation: next,
        })
    }

    fn subscribe(&self, from: Checkpoint) -> BoxStream<'static, Result<TwinEvent, TwinError>> {
        match &self.connection.event_hub {
            Some(settings) => eventhub::subscribe(settings.clone(), from),
            None => events::subscribe(self, from),
        }
    }

    async fn device_key(&self, device_id: &str) -> Result<Option<String>, TwinError> {
        self.registry_key(device_id).await
    }

    async fn send_c2d(
        &self,
        device_id: &str,
        message: &C2dMessage,
        message_id: &str,
    ) -> Result<(), TwinError> {
        self.queue_c2d(device_id, message, message_id).await
    }
}

fn decode_record(value: Value, device_id: &str, created: bool) -> Result<DeviceRecord, TwinError> {
    let mut record: DeviceRecord =
        serde_json::from_value(value).map_err(|source| TwinError::Decode {
            operation: "read device",
            device_id: device_id.to_owned(),
            source,
        })?;
    record.created = created;
    Ok(record)
}
