//! Twin depth and size limits: field case F06.

use cloudpillar_protocol::limits::{LimitError, TwinLimits, check, depth, twin_size};
use serde_json::{Value, json};

/// `levels` objects nested inside each other, innermost holding a number.
fn nested(levels: usize) -> Value {
    (0..levels).fold(
        json!(1),
        |inner, level| json!({ format!("l{level}"): inner }),
    )
}

#[test]
fn depth_counts_one_for_a_flat_section() {
    assert_eq!(depth(&json!({"a": 1})), 1);
    assert_eq!(depth(&json!({"a": {"b": 1}})), 2);
    assert_eq!(depth(&json!({"a": [{"b": 1}]})), 2);
    assert_eq!(
        depth(&json!({"$metadata": {"a": {"$lastUpdated": "x"}}, "a": 1})),
        1
    );
}

#[test]
fn ten_levels_are_accepted_and_eleven_refused() {
    let limits = TwinLimits::default();
    assert_eq!(depth(&nested(10)), 10);
    assert_eq!(check(&nested(10), limits.reported_bytes, &limits), Ok(()));
    assert_eq!(
        check(&nested(11), limits.reported_bytes, &limits),
        Err(LimitError::TooDeep { depth: 11, max: 10 })
    );
}

#[test]
fn depth_limit_is_configurable() {
    let limits = TwinLimits {
        max_depth: 5,
        ..TwinLimits::default()
    };
    assert!(limits.check_reported(&nested(5)).is_ok());
    assert_eq!(
        limits.check_reported(&nested(6)),
        Err(LimitError::TooDeep { depth: 6, max: 5 })
    );
}

#[test]
fn size_follows_the_documented_rule() {
    assert_eq!(twin_size(&json!({"ab": "xyz", "n": 1, "t": true})), 19);
    assert_eq!(
        twin_size(&json!({"f": 1.5, "o": {"k": false}})),
        (1 + 8) + (1 + 1 + 4)
    );
    assert_eq!(twin_size(&json!({"ü": "é\u{1}\u{85}"})), 2 + 2);
    assert_eq!(twin_size(&json!({"a": null})), 1);
    assert_eq!(
        twin_size(&json!({"$version": 4, "$metadata": {"x": "y"}, "ab": "c"})),
        3
    );
}

#[test]
fn default_limits_match_iot_hub() {
    let limits = TwinLimits::default();
    assert_eq!(
        (
            limits.max_depth,
            limits.desired_bytes,
            limits.reported_bytes,
            limits.tags_bytes
        ),
        (10, 32 * 1024, 32 * 1024, 8 * 1024)
    );
}

#[test]
fn sections_over_their_size_are_refused() {
    let limits = TwinLimits::default();
    // One key byte plus the string: exactly at the limit, then one byte over.
    let at_limit = json!({"k": "x".repeat(8 * 1024 - 1)});
    assert_eq!(limits.check_tags(&at_limit), Ok(()));
    let over = json!({"k": "x".repeat(8 * 1024)});
    assert_eq!(
        limits.check_tags(&over),
        Err(LimitError::TooLarge {
            size: 8193,
            max: 8192
        })
    );
    assert_eq!(limits.check_desired(&over), Ok(()));

    let big = json!({"k": "x".repeat(32 * 1024)});
    assert!(matches!(
        limits.check_reported(&big),
        Err(LimitError::TooLarge { .. })
    ));
}
