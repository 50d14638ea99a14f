//! Device twins: stored sections, versions, `$metadata`, and the writes that change them.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};

use cloudpillar_protocol::twin::merge_patch;

use crate::error::{HubError, Refusal};
use crate::events::rfc3339;
use crate::registry::{DeviceRecord, etag_for, if_match};
use crate::store::{Batch, DEVICES, txn_get};
use crate::validate::{Section, check_patch, check_section};

/// A twin as stored.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct StoredTwin {
    /// Tags (service only).
    pub tags: Value,
    /// Desired properties without `$version`/`$metadata`.
    pub desired: Value,
    /// Reported properties without `$version`/`$metadata`.
    pub reported: Value,
    /// `$metadata` of desired.
    pub desired_meta: Value,
    /// `$metadata` of reported.
    pub reported_meta: Value,
    /// Desired `$version`.
    pub desired_version: u64,
    /// Reported `$version`.
    pub reported_version: u64,
    /// Twin version, raised by every change.
    pub version: u64,
}

impl StoredTwin {
    /// A fresh twin: empty sections at version 1.
    pub fn new() -> Self {
        let empty = || Value::Object(Map::new());
        Self {
            tags: empty(),
            desired: empty(),
            reported: empty(),
            desired_meta: json!({ "$lastUpdated": now() }),
            reported_meta: json!({ "$lastUpdated": now() }),
            desired_version: 1,
            reported_version: 1,
            version: 1,
        }
    }

    /// The twin's ETag value.
    pub fn etag(&self) -> String {
        etag_for(self.version)
    }

    /// The document a device gets from `$iothub/twin/GET`.
    pub fn device_view(&self) -> Value {
        json!({
            "desired": with_version(&self.desired, None, self.desired_version),
            "reported": with_version(&self.reported, None, self.reported_version),
        })
    }

    /// The document the service API answers, with registry fields.
    pub fn service_view(&self, device: &DeviceRecord) -> Value {
        json!({
            "deviceId": device.device_id,
            "etag": self.etag(),
            "deviceEtag": device.etag,
            "status": device.status,
            "statusUpdateTime": device.status_updated_time,
            "connectionState": device.connection_state,
            "lastActivityTime": device.last_activity_time,
            "cloudToDeviceMessageCount": device.cloud_to_device_message_count,
            "authenticationType": device.authentication.kind,
            "x509Thumbprint": device.authentication.x509_thumbprint,
            "version": self.version,
            "tags": self.tags,
            "properties": {
                "desired": with_version(&self.desired, Some(&self.desired_meta), self.desired_version),
                "reported": with_version(&self.reported, Some(&self.reported_meta), self.reported_version),
            },
        })
    }
}

fn with_version(section: &Value, meta: Option<&Value>, version: u64) -> Value {
    let mut out = section.as_object().cloned().unwrap_or_default();
    if let Some(meta) = meta {
        out.insert("$metadata".into(), meta.clone());
    }
    out.insert("$version".into(), json!(version));
    Value::Object(out)
}

fn now() -> String {
    rfc3339(chrono::Utc::now())
}

/// Records `$lastUpdated` (and `$lastUpdatedVersion` when given) for every node `patch`
/// touches, and drops metadata of deleted keys.
fn touch_meta(meta: &mut Value, patch: &Value, at: &str, version: Option<u64>) {
    if !meta.is_object() {
        *meta = Value::Object(Map::new());
    }
    let Some(m) = meta.as_object_mut() else {
        return;
    };
    m.insert("$lastUpdated".into(), json!(at));
    if let Some(v) = version {
        m.insert("$lastUpdatedVersion".into(), json!(v));
    }
    let Some(members) = patch.as_object() else {
        return;
    };
    for (key, value) in members {
        if value.is_null() {
            m.remove(key);
        } else if value.is_object() {
            touch_meta(
                m.entry(key.clone()).or_insert(Value::Null),
                value,
                at,
                version,
            );
        } else {
            let mut leaf = json!({ "$lastUpdated": at });
            if let Some(v) = version {
                leaf["$lastUpdatedVersion"] = json!(v);
            }
            m.insert(key.clone(), leaf);
        }
    }
}

/// What a service-side twin write changed.
#[derive(Debug, Clone)]
pub struct ServiceWrite {
    /// The twin after the write.
    pub twin: StoredTwin,
    /// Its device, for the registry fields of the answer.
    pub device: DeviceRecord,
    /// The desired patch to push to the device, with `$version`, when desired changed.
    pub desired_notification: Option<(u64, Value)>,
}

/// Loads a twin and its device inside a write batch, or 404.
pub fn load(batch: &mut Batch<'_>, id: &str) -> Result<(DeviceRecord, StoredTwin), HubError> {
    let device: DeviceRecord =
        txn_get(batch.txn, DEVICES, id)?.ok_or_else(|| Refusal::device_not_found(id))?;
    let twin = batch.twin(id)?.cloned().unwrap_or_else(StoredTwin::new);
    Ok((device, twin))
}

/// Applies a service `PATCH /twins/{id}` (merge) or `PUT /twins/{id}` (replace) of tags and
/// desired properties.
pub fn service_write(
    batch: &mut Batch<'_>,
    hub: &str,
    id: &str,
    body: &Value,
    if_match_header: Option<&str>,
    replace: bool,
) -> Result<ServiceWrite, HubError> {
    let (device, mut twin) = load(batch, id)?;
    if let Some(h) = if_match_header
        && !if_match(h, &twin.etag())
    {
        return Err(Refusal::precondition_failed(format!("twin etag of {id} changed")).into());
    }
    let Some(body) = body.as_object() else {
        return Err(Refusal::bad_request("twin body must be a JSON object").into());
    };
    // A replace takes back a twin as it was read; a patch that names reported properties
    // asks for what only the device may do, and is refused rather than half applied.
    if !replace && body.pointer_in("properties", "reported").is_some() {
        return Err(Refusal::bad_request(
            "properties.reported is written by the device only: a twin PATCH takes tags and properties.desired",
        )
        .into());
    }
    let tags = section_of(body.get("tags"), "tags")?;
    let desired = section_of(
        body.pointer_in("properties", "desired"),
        "properties.desired",
    )?;

    // The keys as sent: a replace drops null members before they would be checked.
    if let Some(tags) = tags {
        check_patch(Section::Tags, tags)?;
    }
    if let Some(desired) = desired {
        check_patch(Section::Desired, desired)?;
    }

    // Work out the new sections, then validate them all before writing anything.
    let (new_tags, tag_patch) = next_section(&twin.tags, tags, replace);
    let (new_desired, desired_patch) = next_section(&twin.desired, desired, replace);
    if let Some(p) = &tag_patch {
        check_patch(Section::Tags, p)?;
        check_section(Section::Tags, &new_tags)?;
    }
    if let Some(p) = &desired_patch {
        check_patch(Section::Desired, p)?;
        check_section(Section::Desired, &new_desired)?;
    }

    if new_tags == twin.tags && new_desired == twin.desired {
        // Nothing changes: no new version, no event, no notification.
        return Ok(ServiceWrite {
            twin,
            device,
            desired_notification: None,
        });
    }
    twin.version += 1;
    let at = now();
    let mut change = json!({ "version": twin.version });
    if let Some(p) = &tag_patch {
        twin.tags = new_tags;
        change["tags"] = p.clone();
    }
    let mut notification = None;
    if let Some(p) = desired_patch {
        twin.desired = new_desired;
        twin.desired_version += 1;
        touch_meta(&mut twin.desired_meta, &p, &at, Some(twin.desired_version));
        let mut pushed = p.as_object().cloned().unwrap_or_default();
        pushed.insert("$version".into(), json!(twin.desired_version));
        change["properties"] = json!({ "desired": pushed });
        notification = Some((twin.desired_version, Value::Object(pushed)));
    }
    batch.put_twin(id, twin.clone());
    let op = if replace { "replaceTwin" } else { "updateTwin" };
    batch.append_twin_change(hub, id, op, &change)?;
    Ok(ServiceWrite {
        twin,
        device,
        desired_notification: notification,
    })
}

/// Applies a device's reported-properties patch; returns the new reported `$version`.
///
/// The patch is checked, and merged into a copy of the reported section that is checked
/// again, before the cached twin changes: a refused patch changes nothing.
pub fn patch_reported(
    batch: &mut Batch<'_>,
    hub: &str,
    id: &str,
    patch: Value,
) -> Result<u64, HubError> {
    // Only the twin is read: a device that is connected is registered.
    let twin = batch
        .twin(id)?
        .ok_or_else(|| Refusal::device_not_found(id))?;
    if !patch.is_object() {
        return Err(Refusal::bad_request("reported patch must be a JSON object").into());
    }
    check_patch(Section::Reported, &patch)?;
    let mut next = twin.reported.clone();
    merge_patch(&mut next, &patch);
    check_section(Section::Reported, &next)?;

    twin.reported = next;
    twin.reported_version += 1;
    twin.version += 1;
    touch_meta(&mut twin.reported_meta, &patch, &now(), None);
    let (version, reported_version) = (twin.version, twin.reported_version);
    batch.twin_changed(id);
    let mut changed = match patch {
        Value::Object(members) => members,
        _ => Map::new(),
    };
    changed.insert("$version".into(), json!(reported_version));
    let change = json!({ "version": version, "properties": { "reported": changed } });
    batch.append_twin_change(hub, id, "updateTwin", &change)?;
    Ok(reported_version)
}

/// The new section and the patch that describes the change, or `None` when the request did
/// not touch the section. A replace sends the device the whole new document plus a `null`
/// for every top-level key it removed.
fn next_section(
    current: &Value,
    requested: Option<&Value>,
    replace: bool,
) -> (Value, Option<Value>) {
    let Some(requested) = requested else {
        return (current.clone(), None);
    };
    if replace {
        let mut replacement = Value::Object(Map::new());
        merge_patch(&mut replacement, requested);
        let mut patch = replacement.as_object().cloned().unwrap_or_default();
        for key in current.as_object().into_iter().flat_map(|m| m.keys()) {
            patch.entry(key.clone()).or_insert(Value::Null);
        }
        (replacement, Some(Value::Object(patch)))
    } else {
        let mut next = current.clone();
        merge_patch(&mut next, requested);
        (next, Some(requested.clone()))
    }
}

fn section_of<'a>(value: Option<&'a Value>, name: &str) -> Result<Option<&'a Value>, Refusal> {
    match value {
        None | Some(Value::Null) => Ok(None),
        Some(v @ Value::Object(_)) => Ok(Some(v)),
        Some(_) => Err(Refusal::bad_request(format!(
            "{name} must be a JSON object"
        ))),
    }
}

trait PointerIn {
    fn pointer_in(&self, a: &str, b: &str) -> Option<&Value>;
}

impl PointerIn for Map<String, Value> {
    fn pointer_in(&self, a: &str, b: &str) -> Option<&Value> {
        self.get(a).and_then(|v| v.get(b))
    }
}

/// Stores a fresh twin for a newly created device.
pub fn create(batch: &mut Batch<'_>, id: &str) {
    batch.put_twin(id, StoredTwin::new());
}
