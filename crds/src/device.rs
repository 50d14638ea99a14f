//! The `Device` resource: one field machine and its hub identity.

use std::collections::BTreeMap;

use cloudpillar_protocol::twin::CANCEL_KEY;
use kube::{CustomResource, ResourceExt};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::common::{FreeFormObject, LocalRef, SecretKeyRef};

mod status;

pub use status::{
    Connection, ConnectionState, DeviceAssignment, DeviceRecipeStatus, DeviceRolloutPhase,
    DeviceStatus, MAX_PREVIOUS_ASSIGNMENTS, ProvisioningUpgrade,
};

/// A device's identity, hub, credentials, agent mode, and the tags and desired properties
/// the operator keeps in its twin.
#[derive(CustomResource, Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[kube(
    group = "cloudpillar.io",
    version = "v1alpha1",
    kind = "Device",
    namespaced,
    status = "DeviceStatus",
    shortname = "dev",
    category = "cloudpillar",
    doc = "A field machine kept patched and observed by CloudPillar. The operator registers \
           it in its hub, writes its tags and desired properties into the device twin, and \
           mirrors what the device reports into status.",
    printcolumn = r#"{"name":"Hub","type":"string","jsonPath":".spec.hubRef.name"}"#,
    printcolumn = r#"{"name":"Mode","type":"string","jsonPath":".spec.mode"}"#,
    printcolumn = r#"{"name":"State","type":"string","jsonPath":".status.deviceState"}"#,
    printcolumn = r#"{"name":"Connection","type":"string","jsonPath":".status.connection.state"}"#,
    printcolumn = r#"{"name":"Recipe","type":"string","jsonPath":".status.recipe.id"}"#,
    printcolumn = r#"{"name":"Progress","type":"integer","jsonPath":".status.recipe.progress"}"#,
    printcolumn = r#"{"name":"Rollout","type":"string","priority":1,
                      "jsonPath":".status.assignment.rollout"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-validations" = [{
    "rule": "has(self.deviceId) == has(oldSelf.deviceId)",
    "message": "deviceId cannot be added or removed after the Device is created; delete and \
                recreate the Device instead",
}]))]
pub struct DeviceSpec {
    /// Identity of the device in its hub. Defaults to the Device's name, so a Device without
    /// it may have a name of at most 128 characters (every Kubernetes name character is
    /// allowed in a device id). Up to 128 ASCII
    /// letters, digits and `- . % _ * ? ! ( ) , : = @ $ '`; `+` and `#` (MQTT wildcards)
    /// and `;` (connection string separator) are refused. Cannot change once set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(
        length(min = 1, max = 128),
        extend("x-kubernetes-validations" = [{
            "rule": r"self.matches('^[A-Za-z0-9.%_*?!(),:=@$\'-]+$')",
            "message": "deviceId may only hold ASCII letters, digits and - . % _ * ? ! ( ) , : = \
                        @ $ '",
        }, {
            "rule": "self == oldSelf",
            "message": "deviceId cannot change: the hub identity and twin belong to the old id; \
                        delete and recreate the Device instead",
        }])
    )]
    pub device_id: Option<String>,

    /// The Hub (in this namespace) that holds the device's identity and twin. Defaults to
    /// the Hub named `default`.
    #[serde(default = "default_hub_ref")]
    pub hub_ref: LocalRef,

    /// How the device proves its identity: once to the provisioning service, then to the
    /// hub.
    #[serde(default)]
    pub authentication: DeviceAuthentication,

    /// How much the agent on the device may do: FULL runs every action, STRICT forbids
    /// shell steps and enforces file zones, COMM only communicates.
    #[serde(default)]
    pub mode: DeviceMode,

    /// Tags written to the device twin, for queries in the hub. Keys may not contain `.`,
    /// `$`, spaces or control characters (twin key rules).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    #[schemars(extend(
        "maxProperties" = 256,
        "x-kubernetes-validations" = [{
            "rule": r"self.all(k, size(k) <= 1024 && !k.matches('[.$ \\x00-\\x1f\\x7f]'))",
            "message": "tag keys may not contain '.', '$', spaces or control characters and \
                        are at most 1024 characters",
        }],
    ))]
    pub tags: BTreeMap<String, String>,

    /// Desired properties written to the device twin as they are, in addition to what
    /// Rollouts write. A key removed here is removed from the twin; keys written by
    /// others are left alone. `changeSpec`, `changeSign`, `changeCancel` and `provisioning` are
    /// reserved.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    #[schemars(schema_with = "desired_properties")]
    pub desired: FreeFormObject,
}

/// Name of the Hub a Device uses when `spec.hubRef` is not given.
pub const DEFAULT_HUB: &str = "default";

fn default_hub_ref() -> LocalRef {
    LocalRef::new(DEFAULT_HUB)
}

impl Default for DeviceSpec {
    fn default() -> Self {
        Self {
            device_id: None,
            hub_ref: default_hub_ref(),
            authentication: DeviceAuthentication::default(),
            mode: DeviceMode::default(),
            tags: BTreeMap::new(),
            desired: FreeFormObject::new(),
        }
    }
}

impl Device {
    /// The device id in the hub: `spec.deviceId`, or the object's name when unset.
    pub fn device_id(&self) -> String {
        self.spec
            .device_id
            .clone()
            .unwrap_or_else(|| self.name_any())
    }
}

/// Desired-property keys only the operator writes (recipe assignment, cancel requests and
/// provisioning).
pub const RESERVED_DESIRED_KEYS: [&str; 4] =
    ["changeSpec", "changeSign", CANCEL_KEY, "provisioning"];

/// Longest Device name when the name is the device id: IoT Hub's limit on device ids.
pub const MAX_NAME_AS_DEVICE_ID: usize = 128;

/// Longest Device name whose generated key Secret (`NAME-device-key`) is still a valid
/// Kubernetes name (253 characters).
pub const MAX_NAME_WITH_KEY_SECRET: usize = 242;

/// Rules on the whole Device: they read `metadata.name`, which only the root of the schema
/// sees.
pub fn object_rules() -> serde_json::Value {
    serde_json::json!([
        {
            "rule": format!(
                "has(self.spec.deviceId) || size(self.metadata.name) <= {MAX_NAME_AS_DEVICE_ID}"
            ),
            "message": format!(
                "metadata.name is too long: a Device without spec.deviceId uses its name as the \
                 hub device id, which is at most {MAX_NAME_AS_DEVICE_ID} characters: shorten \
                 the name or set spec.deviceId"
            ),
        },
        {
            "rule": format!(
                "size(self.metadata.name) <= {MAX_NAME_WITH_KEY_SECRET} || \
                 (has(self.spec.authentication) && has(self.spec.authentication.permanent) && \
                 (self.spec.authentication.permanent.method == 'X509' || \
                 has(self.spec.authentication.permanent.secretRef)))"
            ),
            "message": format!(
                "metadata.name is too long: a Device whose keys the operator generates has a \
                 name of at most {MAX_NAME_WITH_KEY_SECRET} characters, as they are kept in the \
                 Secret NAME-device-key: shorten the name or set \
                 spec.authentication.permanent.secretRef"
            ),
        },
    ])
}

fn desired_properties(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
    // The reserved keys are declared so that the CEL rule can see them; every other key
    // is kept as written.
    schemars::json_schema!({
        "type": "object",
        "x-kubernetes-preserve-unknown-fields": true,
        "properties": {
            "changeSpec": { "type": "object", "x-kubernetes-preserve-unknown-fields": true,
                            "description": "Reserved: written by Rollouts." },
            "changeSign": { "type": "string", "description": "Reserved: written by Rollouts." },
            "changeCancel": { "type": "object", "x-kubernetes-preserve-unknown-fields": true,
                              "description": "Reserved: written by Rollouts." },
            "provisioning": { "type": "object", "x-kubernetes-preserve-unknown-fields": true,
                              "description": "Reserved: written by the operator." },
        },
        "x-kubernetes-validations": [{
            "rule": "!has(self.changeSpec) && !has(self.changeSign) && !has(self.changeCancel) \
                     && !has(self.provisioning)",
            "message": "changeSpec, changeSign, changeCancel and provisioning are written by the \
                        operator (assign recipes with a Rollout, cancel by deleting it); remove \
                        them from spec.desired",
        }],
    })
}

/// Operating mode of the agent on a device.
#[derive(Deserialize, Serialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "UPPERCASE")]
pub enum DeviceMode {
    /// Every recipe action is allowed.
    #[default]
    Full,
    /// No shell steps; uploads and downloads must fall within the device's file zones.
    Strict,
    /// Communication only: twin and messages, no recipe actions.
    Comm,
}

/// The credentials a device uses, for provisioning and afterwards.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct DeviceAuthentication {
    /// How the device authenticates to the Device Provisioning Service the first time.
    /// Leave unset when the operator registers the device in the hub directly.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub provisioning: Option<DeviceCredential>,

    /// How the device authenticates to the hub once provisioned. Defaults to SAS with a key
    /// the operator generates.
    #[serde(default)]
    pub permanent: DeviceCredential,
}

/// One way a device proves its identity.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-validations" = [
    {
        "rule": "self.method != 'X509' || has(self.thumbprint)",
        "message": "X509 authentication needs the certificate's thumbprint",
    },
    {
        "rule": "self.method != 'SAS' || !has(self.thumbprint)",
        "message": "thumbprint is only used with X509 authentication",
    },
]))]
pub struct DeviceCredential {
    /// `SAS` (symmetric key, shared access signature tokens) or `X509` (client certificate).
    #[serde(default)]
    pub method: AuthMethod,

    /// For SAS: the Secret key that holds the device's base64 symmetric key. When unset,
    /// the operator generates a key and keeps it in a Secret named after the Device.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret_ref: Option<SecretKeyRef>,

    /// For X509: SHA-1 (40 hex digits) or SHA-256 (64 hex digits) thumbprint of the
    /// device's client certificate.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(extend("x-kubernetes-validations" = [{
        "rule": "self.matches('^([0-9A-Fa-f]{40}|[0-9A-Fa-f]{64})$')",
        "message": "thumbprint must be 40 (SHA-1) or 64 (SHA-256) hexadecimal digits",
    }]))]
    pub thumbprint: Option<String>,
}

/// Authentication method of a device.
#[derive(Deserialize, Serialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
pub enum AuthMethod {
    /// Symmetric key; the device signs shared access signature tokens with it.
    #[default]
    #[serde(rename = "SAS")]
    Sas,
    /// X.509 client certificate.
    X509,
}
