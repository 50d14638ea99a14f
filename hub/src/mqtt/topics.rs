//! IoT Hub and DPS MQTT topic names and URL-encoded property bags.

use std::collections::BTreeMap;

use percent_encoding::percent_decode_str;

/// A topic a device (or DPS client) publishes to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Inbound {
    /// `devices/{id}/messages/events/{property bag}`.
    Telemetry {
        /// Device id in the topic.
        device: String,
        /// The raw property bag.
        bag: String,
    },
    /// `$iothub/twin/GET/?$rid={rid}`.
    TwinGet(String),
    /// `$iothub/twin/PATCH/properties/reported/?$rid={rid}`.
    TwinReported(String),
    /// `$iothub/methods/res/{status}/?$rid={rid}`.
    MethodResponse(u16, String),
    /// `$dps/registrations/PUT/iotdps-register/?$rid={rid}`.
    DpsRegister(String),
    /// `$dps/registrations/GET/iotdps-get-operationstatus/?$rid={rid}&operationId={op}`.
    DpsStatus(String, String),
    /// Anything else.
    Unknown,
}

/// What a subscription filter is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Feed {
    /// `devices/{id}/messages/devicebound/#`.
    C2d,
    /// `$iothub/twin/res/#`.
    TwinResponses,
    /// `$iothub/twin/PATCH/properties/desired/#`.
    Desired,
    /// `$iothub/methods/POST/#`.
    Methods,
    /// `$dps/registrations/res/#`.
    Dps,
}

/// The feed a device subscription asks for, or `None` when it reaches outside the device's
/// own topics.
pub fn device_feed(device: &str, filter: &str) -> Option<Feed> {
    if filter == format!("devices/{device}/messages/devicebound/#") {
        return Some(Feed::C2d);
    }
    match filter {
        "$iothub/twin/res/#" => Some(Feed::TwinResponses),
        "$iothub/twin/PATCH/properties/desired/#" => Some(Feed::Desired),
        "$iothub/methods/POST/#" => Some(Feed::Methods),
        _ => None,
    }
}

/// Parses the query part (`?$rid=1&$version=2`) of a topic.
pub fn query_of(topic: &str) -> BTreeMap<String, String> {
    topic
        .split_once('?')
        .map(|(_, q)| parse_bag(q))
        .unwrap_or_default()
}

/// Parses a URL-encoded `k=v&k2=v2` bag.
pub fn parse_bag(bag: &str) -> BTreeMap<String, String> {
    bag.split('&')
        .filter(|p| !p.is_empty())
        .map(|pair| {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            (decode(k), decode(v))
        })
        .collect()
}

/// Decodes one URL-encoded component (`+` is a space).
fn decode(s: &str) -> String {
    if !s.contains(['%', '+']) {
        return s.to_string();
    }
    percent_decode_str(&s.replace('+', " "))
        .decode_utf8_lossy()
        .into_owned()
}

/// The decoded value of one query parameter of a topic (`?$rid=1&...`), empty when absent.
fn query_param(topic: &str, key: &str) -> String {
    let Some((_, query)) = topic.split_once('?') else {
        return String::new();
    };
    query
        .split('&')
        .find_map(|pair| {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            (decode(k) == key).then(|| decode(v))
        })
        .unwrap_or_default()
}

/// Classifies a published topic.
pub fn classify(topic: &str) -> Inbound {
    let rid = || query_param(topic, "$rid");
    if let Some(rest) = topic.strip_prefix("devices/")
        && let Some((device, tail)) = rest.split_once('/')
        && let Some(bag) = tail.strip_prefix("messages/events")
    {
        return Inbound::Telemetry {
            device: device.to_string(),
            bag: bag.trim_start_matches('/').to_string(),
        };
    }
    let path = topic.split_once('?').map_or(topic, |(p, _)| p);
    match path {
        "$iothub/twin/GET/" => return Inbound::TwinGet(rid()),
        "$iothub/twin/PATCH/properties/reported/" => return Inbound::TwinReported(rid()),
        "$dps/registrations/PUT/iotdps-register/" => return Inbound::DpsRegister(rid()),
        "$dps/registrations/GET/iotdps-get-operationstatus/" => {
            return Inbound::DpsStatus(rid(), query_param(topic, "operationId"));
        }
        _ => {}
    }
    if let Some(status) = path.strip_prefix("$iothub/methods/res/")
        && let Ok(status) = status.trim_end_matches('/').parse::<u16>()
    {
        return Inbound::MethodResponse(status, rid());
    }
    Inbound::Unknown
}

/// Encodes a property bag for a C2D topic.
pub fn encode_bag(props: &[(String, String)]) -> String {
    let enc = |s: &str| crate::sas::encode_uri(s);
    props
        .iter()
        .map(|(k, v)| format!("{}={}", enc(k), enc(v)))
        .collect::<Vec<_>>()
        .join("&")
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn classifies_device_topics() {
        assert_eq!(
            classify("devices/d1/messages/events/$.ct=application%2Fjson&a=b"),
            Inbound::Telemetry {
                device: "d1".into(),
                bag: "$.ct=application%2Fjson&a=b".into()
            }
        );
        assert_eq!(
            classify("$iothub/twin/GET/?$rid=7"),
            Inbound::TwinGet("7".into())
        );
        assert_eq!(
            classify("$iothub/twin/PATCH/properties/reported/?$rid=8"),
            Inbound::TwinReported("8".into())
        );
        assert_eq!(
            classify("$iothub/methods/res/200/?$rid=ab"),
            Inbound::MethodResponse(200, "ab".into())
        );
        assert_eq!(classify("$iothub/other"), Inbound::Unknown);
        assert_eq!(
            classify("$iothub/twin/GET/?x=1&%24rid=a%20b+c"),
            Inbound::TwinGet("a b c".into())
        );
        assert_eq!(
            classify("$dps/registrations/GET/iotdps-get-operationstatus/?$rid=3&operationId=4.x"),
            Inbound::DpsStatus("3".into(), "4.x".into())
        );
        let bag = parse_bag("$.ct=application%2Fjson&a=b+c");
        assert_eq!(bag["$.ct"], "application/json");
        assert_eq!(bag["a"], "b c");
    }

    #[test]
    fn devices_subscribe_only_to_their_own_feeds() {
        assert_eq!(
            device_feed("d1", "devices/d1/messages/devicebound/#"),
            Some(Feed::C2d)
        );
        assert_eq!(device_feed("d1", "devices/d2/messages/devicebound/#"), None);
        assert_eq!(device_feed("d1", "#"), None);
        assert_eq!(
            device_feed("d1", "$iothub/twin/res/#"),
            Some(Feed::TwinResponses)
        );
    }
}
