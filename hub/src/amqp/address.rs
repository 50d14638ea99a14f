//! Event Hubs addresses, partition assignment and the selector filter that sets where a
//! receiver starts.

use fe2o3_amqp::types::primitives::Value;

/// Filter-set key of Event Hubs' selector filter.
pub const SELECTOR_FILTER: &str = "apache.org:selector-filter:string";
/// Descriptor code of the selector filter's described value.
pub const SELECTOR_FILTER_CODE: u64 = 0x0000_468C_0000_0004;

/// The partition that carries the events of `device_id`, out of `count`.
///
/// FNV-1a over the id: stable across releases and restarts, so a device's events always stay
/// in one partition and keep their order there.
pub fn partition_of(device_id: &str, count: u32) -> u32 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in device_id.bytes() {
        hash ^= u64::from(byte);
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    u32::try_from(hash % u64::from(count.max(1))).unwrap_or(0)
}

/// A receiver address: `{eventHubName}/ConsumerGroups/{group}/Partitions/{id}`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartitionAddress {
    /// The Event Hubs-compatible name.
    pub event_hub: String,
    /// Consumer group (any name is accepted; groups do not keep state on this hub).
    pub group: String,
    /// Partition id.
    pub partition: u32,
}

impl PartitionAddress {
    /// Parses an address, with or without a leading `amqps://host/`.
    pub fn parse(address: &str) -> Option<Self> {
        let path = match address.split_once("://") {
            Some((_, rest)) => rest.split_once('/').map_or("", |(_, path)| path),
            None => address.trim_start_matches('/'),
        };
        let parts: Vec<&str> = path.split('/').collect();
        match parts.as_slice() {
            [hub, groups, group, partitions, id]
                if groups.eq_ignore_ascii_case("ConsumerGroups")
                    && partitions.eq_ignore_ascii_case("Partitions")
                    && !hub.is_empty()
                    && !group.is_empty() =>
            {
                Some(Self {
                    event_hub: (*hub).to_owned(),
                    group: (*group).to_owned(),
                    partition: id.parse().ok()?,
                })
            }
            _ => None,
        }
    }
}

/// Where a receiver starts reading.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StartAt {
    /// The first event still retained.
    Earliest,
    /// Only events enqueued after the link opens.
    Latest,
    /// The first event with this sequence number or a later one.
    Sequence(u64),
    /// The first event enqueued after this instant (milliseconds since 1970).
    EnqueuedAfter(u64),
}

/// Why a selector filter was not understood.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "unsupported selector filter {0:?}: expected amqp.annotation.x-opt-offset, \
         x-opt-sequence-number or x-opt-enqueued-time compared with > or >="
)]
pub struct FilterError(pub String);

impl StartAt {
    /// The start position a selector filter expression asks for. Offsets and sequence numbers
    /// are the same number on this hub, so both resume at the same event.
    pub fn from_selector(expression: &str) -> Result<Self, FilterError> {
        let bad = || FilterError(expression.to_owned());
        let rest = expression
            .trim()
            .strip_prefix("amqp.annotation.")
            .ok_or_else(bad)?;
        let (field, rest) = rest.split_once(' ').ok_or_else(bad)?;
        let rest = rest.trim_start();
        let (inclusive, value) = match rest.strip_prefix(">=") {
            Some(v) => (true, v),
            None => (false, rest.strip_prefix('>').ok_or_else(bad)?),
        };
        let value = value.trim().trim_matches('\'');
        let after = |n: u64| if inclusive { n } else { n.saturating_add(1) };
        match (field, value) {
            ("x-opt-offset", "-1") => Ok(Self::Earliest),
            ("x-opt-offset", "@latest") => Ok(Self::Latest),
            ("x-opt-offset" | "x-opt-sequence-number", n) => {
                let n: i64 = n.parse().map_err(|_| bad())?;
                Ok(Self::Sequence(u64::try_from(n).map_or(1, after).max(1)))
            }
            ("x-opt-enqueued-time", ms) => {
                let ms: u64 = ms.parse().map_err(|_| bad())?;
                Ok(Self::EnqueuedAfter(if inclusive {
                    ms.saturating_sub(1)
                } else {
                    ms
                }))
            }
            _ => Err(bad()),
        }
    }

    /// The start position named by a link source's filter set value, if it holds a selector.
    pub fn from_filter_value(value: &Value) -> Result<Self, FilterError> {
        match value {
            Value::Described(described) => match &described.value {
                Value::String(text) => Self::from_selector(text),
                other => Err(FilterError(format!("{other:?}"))),
            },
            Value::String(text) => Self::from_selector(text),
            other => Err(FilterError(format!("{other:?}"))),
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn partition_addresses_parse_with_or_without_a_host() {
        let want = PartitionAddress {
            event_hub: "edgehub".into(),
            group: "$Default".into(),
            partition: 3,
        };
        let plain = PartitionAddress::parse("edgehub/ConsumerGroups/$Default/Partitions/3");
        assert_eq!(plain.unwrap(), want);
        let full = "amqps://h:5671/edgehub/ConsumerGroups/$Default/Partitions/3";
        assert_eq!(PartitionAddress::parse(full).unwrap(), want);
        assert!(PartitionAddress::parse("edgehub/Partitions/3").is_none());
        assert!(PartitionAddress::parse("edgehub/ConsumerGroups/g/Partitions/x").is_none());
    }

    #[test]
    fn selector_filters_name_the_first_event_to_deliver() {
        let at = |s: &str| StartAt::from_selector(s).unwrap();
        assert_eq!(at("amqp.annotation.x-opt-offset > '-1'"), StartAt::Earliest);
        assert_eq!(
            at("amqp.annotation.x-opt-offset > '@latest'"),
            StartAt::Latest
        );
        assert_eq!(
            at("amqp.annotation.x-opt-offset > '41'"),
            StartAt::Sequence(42)
        );
        assert_eq!(
            at("amqp.annotation.x-opt-offset >= '41'"),
            StartAt::Sequence(41)
        );
        assert_eq!(
            at("amqp.annotation.x-opt-sequence-number > 9"),
            StartAt::Sequence(10)
        );
        assert_eq!(
            at("amqp.annotation.x-opt-enqueued-time > '1700000000000'"),
            StartAt::EnqueuedAfter(1_700_000_000_000)
        );
        assert!(StartAt::from_selector("amqp.annotation.x-opt-offset < '3'").is_err());
        assert!(StartAt::from_selector("sys.x > 1").is_err());
    }

    #[test]
    fn a_device_always_lands_in_the_same_partition() {
        let p = partition_of("mri-01", 4);
        assert!(p < 4);
        assert_eq!(p, partition_of("mri-01", 4));
        let spread: std::collections::BTreeSet<u32> = (0..64)
            .map(|i| partition_of(&format!("dev-{i}"), 4))
            .collect();
        assert_eq!(spread.len(), 4);
    }
}
