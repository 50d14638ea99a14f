//! The `Hub` resource: where device identities and twins live.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::Condition;
use crate::common::{SecretKeyRef, conditions_list};

/// Twin writes per second that Azure IoT Hub's S1 tier allows.
pub const DEFAULT_TWIN_WRITE_RATE_LIMIT: u32 = 50;

/// Which hub this is, where it is reached, and how the operator signs in to it. Devices name
/// their hub in `spec.hubRef`.
#[derive(CustomResource, Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[kube(
    group = "cloudpillar.io",
    version = "v1alpha1",
    kind = "Hub",
    namespaced,
    status = "HubStatus",
    shortname = "cphub",
    category = "cloudpillar",
    doc = "An IoT hub that holds device identities and twins: the CloudPillar edge hub or \
           Azure IoT Hub with its Device Provisioning Service.",
    printcolumn = r#"{"name":"Kind","type":"string","jsonPath":".spec.kind"}"#,
    printcolumn = r#"{"name":"Endpoint","type":"string","jsonPath":".spec.endpoint.serviceHost"}"#,
    printcolumn = r#"{"name":"Ready","type":"string",
                      "jsonPath":".status.conditions[?(@.type==\"Ready\")].status"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-validations" = [{
    "rule": "self.kind == 'edge' || !has(self.caBundle)",
    "message": "caBundle is only used with an edge hub; Azure IoT Hub presents a publicly \
                trusted certificate",
}]))]
pub struct HubSpec {
    /// Which kind of hub this is: `edge` for the CloudPillar edge hub (development and
    /// offline sites), `azure` for Azure IoT Hub with the Device Provisioning Service.
    pub kind: HubKind,

    /// Where the hub and its provisioning service are reached.
    pub endpoint: HubEndpoint,

    /// Secret holding the key of a shared access policy with registry read/write and
    /// service connect rights. The operator signs its SAS tokens with it; the key never
    /// appears in status, events or logs.
    pub access_policy: AccessPolicy,

    /// Most twin updates per second the operator sends to this hub. Azure IoT Hub S1 allows
    /// 50 per unit, S2 500 and S3 5000; staying under the tier's limit avoids throttling
    /// (HTTP 429) during large rollouts.
    #[serde(default = "default_twin_write_rate_limit")]
    #[schemars(range(min = 1, max = 100_000))]
    pub twin_write_rate_limit: u32,

    /// Secret key holding the PEM certificate authority bundle that signed an edge hub's
    /// serving certificate. Leave unset for Azure IoT Hub.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_bundle: Option<SecretKeyRef>,

    /// The hub's Event Hubs-compatible endpoint, where the operator reads twin change and
    /// connection events (AMQP over TLS) so that reported changes reach Device status within
    /// about a second. Without it an Azure hub's changes arrive with the periodic resync only,
    /// and an edge hub's through its `/events` stream. For Azure IoT Hub, copy the values from
    /// the hub's Built-in endpoints page.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub event_hub: Option<EventHubEndpoint>,
}

/// Where the operator reads a hub's events over AMQP 1.0.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct EventHubEndpoint {
    /// Host (and optional port, default 5671) of the Event Hubs-compatible endpoint: for Azure
    /// the `Endpoint` of the built-in endpoint without `sb://` and the final `/`, for example
    /// `ihsuprodamres001dednamespace.servicebus.windows.net`; for the edge hub its AMQP
    /// address, for example `edge-hub.cloudpillar.svc:5671`.
    #[schemars(schema_with = "host")]
    pub host: String,

    /// The Event Hubs-compatible name (`EntityPath`), for example `iothub-ehub-contoso-1234`;
    /// `edgehub` for the edge hub unless it was started with another name.
    #[schemars(length(min = 1, max = 256))]
    pub name: String,

    /// Consumer group the operator reads with. Give the operator a group of its own so that
    /// other readers of the endpoint do not compete with it.
    #[serde(default = "default_consumer_group")]
    #[schemars(length(min = 1, max = 256))]
    pub consumer_group: String,

    /// Shared access policy to sign in with (service connect rights are enough). Defaults to
    /// `accessPolicy`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub access_policy: Option<AccessPolicy>,
}

fn default_consumer_group() -> String {
    "$Default".into()
}

fn default_twin_write_rate_limit() -> u32 {
    DEFAULT_TWIN_WRITE_RATE_LIMIT
}

/// Kind of hub.
#[derive(Deserialize, Serialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum HubKind {
    /// The CloudPillar edge hub, compatible with the IoT Hub service and device APIs.
    #[default]
    Edge,
    /// Azure IoT Hub, with the Azure Device Provisioning Service for provisioning.
    Azure,
}

/// Host names of a hub's endpoints.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct HubEndpoint {
    /// Host (and optional port) of the service API the operator calls, for example
    /// `contoso.azure-devices.net` or `edge-hub.cloudpillar.svc:8443`.
    #[schemars(schema_with = "host")]
    pub service_host: String,

    /// Host (and optional port) that devices connect to over MQTT or AMQP. Defaults to
    /// `serviceHost`, which is right for Azure IoT Hub.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "host")]
    pub device_host: Option<String>,

    /// Host of the Device Provisioning Service, for example
    /// `global.azure-devices-provisioning.net`. Needed for devices that provision themselves.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "host")]
    pub provisioning_host: Option<String>,

    /// ID scope of the Device Provisioning Service instance (for example `0ne00ABC123`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(
        length(min = 1, max = 64),
        extend("x-kubernetes-validations" = [{
            "rule": "self.matches('^[A-Za-z0-9]+$')",
            "message": "idScope holds only letters and digits, for example 0ne00ABC123",
        }])
    )]
    pub id_scope: Option<String>,
}

fn host(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
    schemars::json_schema!({
        "type": "string",
        "maxLength": 261,
        "x-kubernetes-validations": [{
            "rule": "self.matches('^[A-Za-z0-9]([A-Za-z0-9.-]*[A-Za-z0-9])?(:[0-9]{1,5})?$')",
            "message": "must be a host name with an optional port, such as \
                        contoso.azure-devices.net or edge-hub:8443 (no scheme, no path)",
        }],
    })
}

impl HubEndpoint {
    /// The host devices connect to: `deviceHost`, or `serviceHost` when unset.
    pub fn device_host(&self) -> &str {
        self.device_host.as_deref().unwrap_or(&self.service_host)
    }
}

/// A shared access policy of the hub and the Secret key that holds its key.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct AccessPolicy {
    /// Name of the shared access policy in the hub (the `skn` of SAS tokens), for example
    /// `iothubowner` or a custom policy with registry write and service connect rights.
    #[serde(default = "default_policy_name")]
    #[schemars(length(min = 1, max = 64))]
    pub policy_name: String,

    /// Secret key holding the policy's base64 primary or secondary key.
    pub secret_ref: SecretKeyRef,
}

fn default_policy_name() -> String {
    "iothubowner".into()
}

/// Observed state of a hub.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct HubStatus {
    /// Generation of the spec this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,

    /// When the operator last reached the hub's service API successfully.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_contact_time: Option<Time>,

    /// Where the operator has read the hub's Event Hubs-compatible endpoint up to; it resumes
    /// there after a restart. Written every few seconds while events arrive.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub event_checkpoint: Option<EventCheckpoint>,

    /// Current state: `Ready` tells whether the hub answers with the given credentials.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(schema_with = "conditions_list")]
    pub conditions: Vec<Condition>,
}

/// A reader's place in a hub's event stream.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct EventCheckpoint {
    /// Partitions not listed are read from events enqueued after this instant (milliseconds
    /// since 1970): when the operator first read this hub's events.
    pub since_ms: i64,

    /// Next sequence number to read, by partition id.
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub partitions: std::collections::BTreeMap<String, i64>,
}
