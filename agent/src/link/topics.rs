//! Topic names of IoT Hub's MQTT 3.1.1 device dialect and of DPS over MQTT.

use std::collections::BTreeMap;

use cloudpillar_protocol::sas::encode_field as url_encode;
use percent_encoding::percent_decode_str;

/// API version sent in the MQTT user name.
pub const HUB_API_VERSION: &str = "2021-04-12";
/// API version of DPS over MQTT.
pub const DPS_API_VERSION: &str = "2019-03-31";

/// Filter for twin responses.
pub const TWIN_RESPONSES: &str = "$iothub/twin/res/#";
/// Filter for desired-property notifications.
pub const DESIRED_PATCHES: &str = "$iothub/twin/PATCH/properties/desired/#";
/// Filter for DPS responses.
pub const DPS_RESPONSES: &str = "$dps/registrations/res/#";

/// MQTT user name for a device.
pub fn hub_username(host: &str, device_id: &str) -> String {
    format!("{host}/{device_id}/?api-version={HUB_API_VERSION}")
}

/// SAS resource URI of a device.
pub fn device_resource_uri(host: &str, device_id: &str) -> String {
    format!("{host}/devices/{device_id}")
}

/// Filter for cloud-to-device messages.
pub fn c2d_filter(device_id: &str) -> String {
    format!("devices/{device_id}/messages/devicebound/#")
}

/// All filters a device subscribes to, in the order they are (re)subscribed (F09).
pub fn hub_filters(device_id: &str) -> [String; 3] {
    [
        TWIN_RESPONSES.to_owned(),
        DESIRED_PATCHES.to_owned(),
        c2d_filter(device_id),
    ]
}

/// Topic of a full twin GET.
pub fn twin_get(rid: u64) -> String {
    format!("$iothub/twin/GET/?$rid={rid}")
}

/// Topic of a reported-properties patch.
pub fn reported_patch(rid: u64) -> String {
    format!("$iothub/twin/PATCH/properties/reported/?$rid={rid}")
}

/// Topic of a device-to-cloud message with application properties.
pub fn d2c_event(device_id: &str, properties: &[(&str, &str)]) -> String {
    let bag: Vec<String> = properties
        .iter()
        .map(|(k, v)| format!("{}={}", url_encode(k), url_encode(v)))
        .collect();
    format!("devices/{device_id}/messages/events/{}", bag.join("&"))
}

/// An incoming publish, classified.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Incoming {
    /// Answer to a twin GET or reported patch.
    TwinResponse {
        /// HTTP-like status.
        status: u16,
        /// Request id.
        rid: Option<u64>,
        /// New reported version (patch answers).
        version: Option<u64>,
    },
    /// Desired properties changed.
    DesiredPatch {
        /// New desired version.
        version: Option<u64>,
    },
    /// A cloud-to-device message with its property bag.
    C2d {
        /// Decoded properties (system ones keep their `$.` prefix).
        properties: BTreeMap<String, String>,
    },
    /// A DPS answer.
    Dps {
        /// HTTP-like status.
        status: u16,
        /// Properties such as `$rid` and `retry-after`.
        properties: BTreeMap<String, String>,
    },
    /// Anything else.
    Other,
}

/// Classifies an incoming topic.
pub fn classify(topic: &str, device_id: &str) -> Incoming {
    if let Some(rest) = topic.strip_prefix("$iothub/twin/res/") {
        let (status, query) = rest.split_once('/').unwrap_or((rest, ""));
        let props = query_pairs(query.trim_start_matches('?'));
        return match status.parse() {
            Ok(status) => Incoming::TwinResponse {
                status,
                rid: props.get("$rid").and_then(|v| v.parse().ok()),
                version: props.get("$version").and_then(|v| v.parse().ok()),
            },
            Err(_) => Incoming::Other,
        };
    }
    if let Some(rest) = topic.strip_prefix("$iothub/twin/PATCH/properties/desired/") {
        let props = query_pairs(rest.trim_start_matches('?'));
        return Incoming::DesiredPatch {
            version: props.get("$version").and_then(|v| v.parse().ok()),
        };
    }
    let c2d_prefix = format!("devices/{device_id}/messages/devicebound/");
    if let Some(rest) = topic.strip_prefix(&c2d_prefix) {
        return Incoming::C2d {
            properties: query_pairs(rest),
        };
    }
    if let Some(rest) = topic.strip_prefix("$dps/registrations/res/") {
        let (status, query) = rest.split_once('/').unwrap_or((rest, ""));
        return match status.parse() {
            Ok(status) => Incoming::Dps {
                status,
                properties: query_pairs(query.trim_start_matches('?')),
            },
            Err(_) => Incoming::Other,
        };
    }
    Incoming::Other
}

/// Decodes `a=1&b=2` with percent-decoding of names and values.
pub fn query_pairs(query: &str) -> BTreeMap<String, String> {
    let decode = |s: &str| percent_decode_str(s).decode_utf8_lossy().into_owned();
    query
        .split('&')
        .filter(|pair| !pair.is_empty())
        .map(|pair| {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            (decode(k), decode(v))
        })
        .collect()
}

/// MQTT user name for DPS.
pub fn dps_username(id_scope: &str, registration_id: &str) -> String {
    format!("{id_scope}/registrations/{registration_id}/api-version={DPS_API_VERSION}")
}

/// SAS resource URI for DPS.
pub fn dps_resource_uri(id_scope: &str, registration_id: &str) -> String {
    format!("{id_scope}/registrations/{registration_id}")
}

/// Topic of a DPS registration request.
pub fn dps_register(rid: u64) -> String {
    format!("$dps/registrations/PUT/iotdps-register/?$rid={rid}")
}

/// Topic of a DPS operation status poll.
pub fn dps_poll(rid: u64, operation_id: &str) -> String {
    format!(
        "$dps/registrations/GET/iotdps-get-operationstatus/?$rid={rid}&operationId={}",
        url_encode(operation_id)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn twin_topics_classify() {
        assert_eq!(
            classify("$iothub/twin/res/200/?$rid=7", "d"),
            Incoming::TwinResponse {
                status: 200,
                rid: Some(7),
                version: None
            }
        );
        assert_eq!(
            classify("$iothub/twin/res/204/?$rid=8&$version=12", "d"),
            Incoming::TwinResponse {
                status: 204,
                rid: Some(8),
                version: Some(12)
            }
        );
        assert_eq!(
            classify("$iothub/twin/PATCH/properties/desired/?$version=42", "d"),
            Incoming::DesiredPatch { version: Some(42) }
        );
    }

    #[test]
    fn c2d_property_bag_is_decoded() {
        let topic = "devices/dev-1/messages/devicebound/%24.mid=m1&%24.to=%2Fdevices%2Fdev-1\
                     %2Fmessages%2Fdevicebound&messageType=DownloadFileChunk";
        let Incoming::C2d { properties } = classify(topic, "dev-1") else {
            panic!("c2d")
        };
        assert_eq!(properties["$.mid"], "m1");
        assert_eq!(properties["$.to"], "/devices/dev-1/messages/devicebound");
        assert_eq!(properties["messageType"], "DownloadFileChunk");
        assert_eq!(
            classify("devices/other/messages/devicebound/x=1", "dev-1"),
            Incoming::Other
        );
    }

    #[test]
    fn outgoing_topics_follow_the_dialect() {
        assert_eq!(
            hub_username("h.net", "dev-1"),
            "h.net/dev-1/?api-version=2021-04-12"
        );
        assert_eq!(twin_get(3), "$iothub/twin/GET/?$rid=3");
        assert_eq!(
            reported_patch(4),
            "$iothub/twin/PATCH/properties/reported/?$rid=4"
        );
        assert_eq!(
            d2c_event("dev-1", &[("messageType", "StreamRange"), ("a b", "c/d")]),
            "devices/dev-1/messages/events/messageType=StreamRange&a%20b=c%2Fd"
        );
        assert_eq!(
            dps_username("0ne1", "dev-1"),
            "0ne1/registrations/dev-1/api-version=2019-03-31"
        );
        assert_eq!(
            dps_poll(5, "4.abc"),
            "$dps/registrations/GET/iotdps-get-operationstatus/?$rid=5&operationId=4.abc"
        );
        assert_eq!(
            classify("$dps/registrations/res/202/?$rid=1&retry-after=3", "x"),
            Incoming::Dps {
                status: 202,
                properties: BTreeMap::from([
                    ("$rid".into(), "1".into()),
                    ("retry-after".into(), "3".into())
                ])
            }
        );
    }
}
