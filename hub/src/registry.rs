//! The device identity registry (`/devices/{id}`), with Azure's JSON shape.

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use serde::{Deserialize, Serialize};

use crate::error::{HubError, Refusal};
use crate::sas::random_key;
use crate::store::{Batch, DEVICES, txn_get, txn_put};

/// Longest device id Azure accepts.
const MAX_DEVICE_ID: usize = 128;

/// Symmetric keys of a device.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SymmetricKey {
    /// Primary key, base64.
    #[serde(default)]
    pub primary_key: Option<String>,
    /// Secondary key, base64.
    #[serde(default)]
    pub secondary_key: Option<String>,
}

impl SymmetricKey {
    /// True when neither key is set.
    pub fn is_unset(&self) -> bool {
        self.primary_key.is_none() && self.secondary_key.is_none()
    }
}

/// X.509 thumbprints of a device (hex SHA-1 or SHA-256 of the DER certificate).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct X509Thumbprint {
    /// Primary thumbprint.
    #[serde(default)]
    pub primary_thumbprint: Option<String>,
    /// Secondary thumbprint.
    #[serde(default)]
    pub secondary_thumbprint: Option<String>,
}

/// How a device authenticates.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Authentication {
    /// `sas`, `selfSigned`, `certificateAuthority` or `none`.
    #[serde(rename = "type", default = "default_auth_type")]
    pub kind: String,
    /// Keys for `sas`.
    #[serde(default)]
    pub symmetric_key: SymmetricKey,
    /// Thumbprints for `selfSigned`.
    #[serde(default)]
    pub x509_thumbprint: X509Thumbprint,
}

impl Default for Authentication {
    fn default() -> Self {
        Self {
            kind: default_auth_type(),
            symmetric_key: SymmetricKey::default(),
            x509_thumbprint: X509Thumbprint::default(),
        }
    }
}

fn default_auth_type() -> String {
    "sas".into()
}

/// A registered device as stored and as answered over REST.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DeviceRecord {
    /// Device id.
    pub device_id: String,
    /// Changes each time the id is created anew.
    #[serde(default)]
    pub generation_id: String,
    /// Changes on every registry update.
    #[serde(default)]
    pub etag: String,
    /// `enabled` or `disabled`; disabled devices cannot connect.
    #[serde(default = "enabled")]
    pub status: String,
    /// Why the status was set.
    #[serde(default)]
    pub status_reason: Option<String>,
    /// Credentials.
    #[serde(default)]
    pub authentication: Authentication,
    /// `Connected` or `Disconnected` (filled in from live sessions when answered).
    #[serde(default = "disconnected")]
    pub connection_state: String,
    /// Last time the registry entry changed.
    #[serde(default)]
    pub status_updated_time: String,
    /// When `connection_state` last changed.
    #[serde(default)]
    pub connection_state_updated_time: String,
    /// Last device activity (stored at each connect and disconnect, live while connected).
    #[serde(default)]
    pub last_activity_time: String,
    /// Pending C2D messages (filled in when answered).
    #[serde(default)]
    pub cloud_to_device_message_count: u64,
    /// Update counter behind `etag`.
    #[serde(default, skip_serializing)]
    pub revision: u64,
}

/// What IoT Hub answers as `lastActivityTime` for a device that never connected.
pub const NEVER_ACTIVE: &str = "0001-01-01T00:00:00Z";

/// Stores a device's connection state, when it changed and when it was last active; a
/// deleted device is left alone. The etag does not change: a connection is not an update of
/// the identity.
pub fn record_connection(
    batch: &mut Batch<'_>,
    id: &str,
    connected: bool,
    at: String,
    last_active: String,
) -> Result<(), HubError> {
    let Some(mut device) = txn_get::<DeviceRecord>(batch.txn, DEVICES, id)? else {
        return Ok(());
    };
    device.connection_state = if connected {
        "Connected".into()
    } else {
        disconnected()
    };
    device.connection_state_updated_time = at;
    if !last_active.is_empty() {
        device.last_activity_time = last_active;
    }
    txn_put(batch.txn, DEVICES, id, &device)?;
    Ok(())
}

fn enabled() -> String {
    "enabled".into()
}

fn disconnected() -> String {
    "Disconnected".into()
}

impl DeviceRecord {
    /// Keys the device may sign SAS tokens with.
    pub fn keys(&self) -> Vec<&str> {
        let k = &self.authentication.symmetric_key;
        [&k.primary_key, &k.secondary_key]
            .into_iter()
            .flatten()
            .map(String::as_str)
            .collect()
    }

    /// Thumbprints the device may present, lower-case hex.
    pub fn thumbprints(&self) -> Vec<String> {
        let t = &self.authentication.x509_thumbprint;
        [&t.primary_thumbprint, &t.secondary_thumbprint]
            .into_iter()
            .flatten()
            .map(|s| s.to_ascii_lowercase().replace(':', ""))
            .collect()
    }

    /// Whether the device may connect.
    pub fn is_enabled(&self) -> bool {
        self.status.eq_ignore_ascii_case("enabled")
    }
}

/// Checks a device id against Azure's rules: up to 128 ASCII letters, digits and
/// `- . % _ * ? ! ( ) , : = @ $ ' +`.
pub fn validate_device_id(id: &str) -> Result<(), Refusal> {
    let ok_char = |c: char| c.is_ascii_alphanumeric() || "-.%_*?!(),:=@$'+".contains(c);
    if id.is_empty() || id.len() > MAX_DEVICE_ID || !id.chars().all(ok_char) {
        return Err(Refusal::bad_request(format!("invalid device id {id:?}")));
    }
    Ok(())
}

/// An ETag value for a revision counter.
pub fn etag_for(revision: u64) -> String {
    STANDARD.encode(revision.to_string())
}

/// True when an `If-Match` value (`*`, `"x"`, `W/"x"` or `x`) matches `etag`.
pub fn if_match(header: &str, etag: &str) -> bool {
    let h = header.trim();
    let h = h.strip_prefix("W/").unwrap_or(h).trim_matches('"');
    h == "*" || h == etag
}

/// Creates or updates a device inside a write batch, returning the stored record and whether
/// it was created. Keys are generated when a `sas` device comes without them.
pub fn put_device(
    batch: &mut Batch<'_>,
    id: &str,
    mut wanted: DeviceRecord,
    if_match_header: Option<&str>,
) -> Result<(DeviceRecord, bool), HubError> {
    validate_device_id(id)?;
    if wanted.device_id != id {
        return Err(Refusal::bad_request("deviceId in the body differs from the path").into());
    }
    let existing: Option<DeviceRecord> = txn_get(batch.txn, DEVICES, id)?;
    match (&existing, if_match_header) {
        (Some(_), None) => {
            return Err(Refusal::new(409, "DeviceAlreadyExists", format!("{id} exists")).into());
        }
        (Some(old), Some(h)) if !if_match(h, &old.etag) => {
            return Err(Refusal::precondition_failed(format!("etag of {id} changed")).into());
        }
        (None, Some(h)) if h.trim() != "*" => return Err(Refusal::device_not_found(id).into()),
        _ => {}
    }
    normalize_auth(&mut wanted.authentication)?;
    wanted.revision = existing.as_ref().map_or(1, |d| d.revision + 1);
    wanted.etag = etag_for(wanted.revision);
    wanted.generation_id = match &existing {
        Some(old) => old.generation_id.clone(),
        None => format!("{}", crate::events::now_ms()),
    };
    if wanted.status.is_empty() {
        wanted.status = enabled();
    }
    wanted.status_updated_time = crate::events::rfc3339(chrono::Utc::now());
    // Read-only: kept from the stored record whatever the request says.
    match &existing {
        Some(old) => {
            wanted.last_activity_time = old.last_activity_time.clone();
            wanted.connection_state = old.connection_state.clone();
            wanted.connection_state_updated_time = old.connection_state_updated_time.clone();
        }
        None => {
            wanted.last_activity_time = String::new();
            wanted.connection_state = disconnected();
            wanted.connection_state_updated_time = String::new();
        }
    }
    txn_put(batch.txn, DEVICES, id, &wanted)?;
    Ok((wanted, existing.is_none()))
}

fn normalize_auth(auth: &mut Authentication) -> Result<(), Refusal> {
    match auth.kind.as_str() {
        "sas" => {
            let keys = &mut auth.symmetric_key;
            for key in [&mut keys.primary_key, &mut keys.secondary_key] {
                match key {
                    Some(k) if !k.is_empty() => {
                        if STANDARD.decode(k.as_bytes()).map_or(true, |b| b.len() < 16) {
                            return Err(Refusal::bad_request(
                                "symmetric keys must be base64 of 16 to 64 bytes",
                            ));
                        }
                    }
                    _ => *key = Some(random_key()),
                }
            }
            auth.x509_thumbprint = X509Thumbprint::default();
        }
        "selfSigned" => {
            let t = &auth.x509_thumbprint;
            let valid = |s: &Option<String>| {
                s.as_deref().is_none_or(|s| {
                    let hex = s.replace(':', "");
                    (hex.len() == 40 || hex.len() == 64)
                        && hex.chars().all(|c| c.is_ascii_hexdigit())
                })
            };
            if t.primary_thumbprint.is_none()
                || !valid(&t.primary_thumbprint)
                || !valid(&t.secondary_thumbprint)
            {
                return Err(Refusal::bad_request(
                    "selfSigned needs hex SHA-1 or SHA-256 thumbprints",
                ));
            }
            auth.symmetric_key = SymmetricKey::default();
        }
        "certificateAuthority" | "none" => {}
        other => {
            return Err(Refusal::bad_request(format!(
                "unknown authentication type {other}"
            )));
        }
    }
    Ok(())
}
