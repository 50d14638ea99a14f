//! What a twin says about its device, in the shape of `Device.status` (pure; no I/O).

use std::time::Duration;

use chrono::{DateTime, Utc};
use cloudpillar_crds::{Connection, ConnectionState, DeviceRecipeStatus};
use cloudpillar_protocol::twin::{ConnectionState as TwinConnection, Twin};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use serde_json::Value;

/// Status fields mirrored from a twin.
#[derive(Debug, Clone, PartialEq)]
pub struct Mirrored {
    /// `reported.deviceState`.
    pub device_state: Option<String>,
    /// Connection state and since when.
    pub connection: Option<Connection>,
    /// When the hub last heard from the device.
    pub last_activity_time: Option<Time>,
    /// Desired `$version`.
    pub desired_version: Option<i64>,
    /// Reported `$version`.
    pub reported_version: Option<i64>,
    /// `reported.changeSpec` summarized.
    pub recipe: Option<DeviceRecipeStatus>,
}

/// Reads the twin. `previous` keeps `since` of a connection state that did not change; a
/// device the hub calls connected but that was silent for `stale_after` is `Stale`.
pub fn mirror(
    twin: &Twin,
    previous: Option<&Connection>,
    now: Timestamp,
    stale_after: Duration,
) -> Mirrored {
    let reported = &twin.properties.reported;
    let last_activity = twin
        .extra
        .get("lastActivityTime")
        .and_then(Value::as_str)
        .and_then(|text| text.parse::<DateTime<Utc>>().ok())
        .filter(|t| t.timestamp() > 0)
        .and_then(|t| Timestamp::from_second(t.timestamp()).ok());

    let state = match twin.connection_state {
        Some(TwinConnection::Connected) => {
            let silent = last_activity
                .map(|t| now.duration_since(t).unsigned_abs() > stale_after)
                .unwrap_or(false);
            if silent {
                ConnectionState::Stale
            } else {
                ConnectionState::Connected
            }
        }
        _ => ConnectionState::Disconnected,
    };
    let since = match previous {
        Some(p) if p.state == state => p.since.clone(),
        _ => Time(now),
    };

    Mirrored {
        device_state: reported
            .get("deviceState")
            .and_then(Value::as_str)
            .map(str::to_owned),
        connection: Some(Connection { state, since }),
        last_activity_time: last_activity.map(Time),
        desired_version: twin.desired_version().and_then(|v| i64::try_from(v).ok()),
        reported_version: twin.reported_version().and_then(|v| i64::try_from(v).ok()),
        recipe: reported.get("changeSpec").and_then(recipe_status),
    }
}

/// Summarizes `reported.changeSpec`: id, action path, overall status, fault and progress.
pub fn recipe_status(spec: &Value) -> Option<DeviceRecipeStatus> {
    let text = |key: &str| spec.get(key).and_then(Value::as_str).map(str::to_owned);
    let status = DeviceRecipeStatus {
        id: text("id"),
        action_path: text("actionPath"),
        status: text("Status"),
        progress: progress(spec),
        last_faulted_recipe: text("lastFaultedRecipe"),
        last_faulted_path: text("lastFaultedPath"),
        result_text: None,
    };
    // Only a finished, failed recipe has a reason; a retried step may have faulted earlier.
    let failed = matches!(status.status.as_deref(), Some("Failure" | "Refused"));
    let result_text = text("ResultText").filter(|_| failed).or_else(|| {
        let path = status.last_faulted_path.as_deref().filter(|_| failed)?;
        step_at(spec, path)?
            .get("ResultText")
            .and_then(Value::as_str)
            .map(str::to_owned)
    });
    let status = DeviceRecipeStatus {
        result_text: result_text.map(|t| clip(&t, RESULT_TEXT_LIMIT)),
        ..status
    };
    (status != DeviceRecipeStatus::default()).then_some(status)
}

/// Longest result text kept in status; devices may report whole logs.
const RESULT_TEXT_LIMIT: usize = 300;

/// The step entry an action path such as `changeSpec.patch.installSteps[0]` names.
fn step_at<'a>(spec: &'a Value, path: &str) -> Option<&'a Value> {
    let rest = path.strip_prefix("changeSpec.")?;
    let (section, stage) = rest.split_once('.')?;
    let (stage, index) = stage.strip_suffix(']')?.split_once('[')?;
    spec.get(section)?
        .get(stage)?
        .get(index.parse::<usize>().ok()?)
}

/// `text` cut to at most `limit` characters, marked when cut.
fn clip(text: &str, limit: usize) -> String {
    match text.char_indices().nth(limit) {
        Some((end, _)) => format!("{}…", &text[..end]),
        None => text.to_owned(),
    }
}

/// Percent of steps finished over every section and stage the device lists.
///
/// A stage is either a list of step entries (`{"status": ...}`) or, when the device shed
/// detail to stay within the twin size limit, a `{"summary": {"Success": 3, ...}}` of counts.
fn progress(spec: &Value) -> Option<i32> {
    let (mut done, mut total) = (0_u64, 0_u64);
    let sections = spec.as_object()?.values().filter_map(Value::as_object);
    for stage in sections.flat_map(|s| s.values()) {
        match stage {
            Value::Array(entries) => {
                total += entries.len() as u64;
                done += entries
                    .iter()
                    .filter(|e| e.get("status").and_then(Value::as_str).is_some_and(is_done))
                    .count() as u64;
            }
            Value::Object(members) => {
                let Some(Value::Object(summary)) = members.get("summary") else {
                    continue;
                };
                for (status, count) in summary {
                    let count = count.as_u64().unwrap_or(0);
                    total += count;
                    if is_done(status) {
                        done += count;
                    }
                }
            }
            _ => {}
        }
    }
    if total == 0 {
        return None;
    }
    i32::try_from(done * 100 / total).ok()
}

fn is_done(status: &str) -> bool {
    matches!(status, "Success" | "Failure" | "Cancelled")
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn twin(doc: Value) -> Twin {
        serde_json::from_value(doc).expect("twin document")
    }

    fn at(second: i64) -> Timestamp {
        Timestamp::from_second(second).expect("valid time")
    }

    #[test]
    fn mirrors_the_field_sample_with_progress_and_fault() {
        let path = cloudpillar_protocol::fixtures::path("reported-sample.json");
        let sample = std::fs::read_to_string(path)
            .expect("the field fixture reported-sample.json is readable");
        let sample: Value = serde_json::from_str(&sample).expect("fixture is JSON");
        let status = recipe_status(&sample["reported"]["changeSpec"]).expect("recipe status");
        assert_eq!(
            status.id.as_deref(),
            Some("1.14.61047.38115.20230418180125")
        );
        assert_eq!(
            status.action_path.as_deref(),
            Some("changeSpec.patch.postInstallConfig[1]")
        );
        assert_eq!(status.status.as_deref(), Some("InProgress"));
        assert_eq!(
            status.last_faulted_path.as_deref(),
            Some("changeSpec.patch.transitPackage[1]")
        );
        assert_eq!(status.progress, Some(100));
        assert_eq!(
            status.result_text, None,
            "a recipe still running has no failure reason"
        );
    }

    #[test]
    fn a_failed_recipe_carries_its_failed_steps_result_text() {
        let spec = json!({
            "id": "r",
            "Status": "Failure",
            "lastFaultedPath": "changeSpec.patch.installSteps[1]",
            "patch": {
                "installSteps": [
                    {"status": "Success", "ResultCode": 0, "ResultText": "ok"},
                    {"status": "Failure", "ResultCode": 3, "ResultText": "exit code 3: disk full"},
                ],
            },
        });
        let status = recipe_status(&spec).expect("status");
        assert_eq!(
            status.result_text.as_deref(),
            Some("exit code 3: disk full")
        );

        let refused = json!({
            "id": "r", "Status": "Refused", "ResultCode": "bad_signature",
            "ResultText": "x".repeat(1000),
        });
        let text = recipe_status(&refused)
            .and_then(|s| s.result_text)
            .expect("text");
        assert_eq!(
            text.chars().count(),
            RESULT_TEXT_LIMIT + 1,
            "clipped and marked"
        );
    }

    #[test]
    fn progress_counts_summaries_and_pending_steps() {
        let spec = json!({
            "id": "r",
            "patch": {
                "preTransitConfig": [{"status": "Success"}, {"status": "InProgress"}],
                "installSteps": {"summary": {"Success": 1, "Pending": 2}},
            },
        });
        assert_eq!(recipe_status(&spec).and_then(|s| s.progress), Some(40));
    }

    #[test]
    fn connected_device_silent_too_long_is_stale_and_keeps_since_while_unchanged() {
        let doc = json!({
            "deviceId": "d", "etag": "e", "version": 3, "connectionState": "Connected",
            "lastActivityTime": "1970-01-01T00:16:40Z",
            "properties": {"desired": {"$version": 2}, "reported": {"$version": 5,
                "deviceState": "BUSY"}},
        });
        let twin = twin(doc);
        let fresh = mirror(&twin, None, at(1100), Duration::from_secs(300));
        let connection = fresh.connection.clone().expect("connection");
        assert_eq!(connection.state, ConnectionState::Connected);
        assert_eq!(fresh.device_state.as_deref(), Some("BUSY"));
        assert_eq!(fresh.reported_version, Some(5));

        let later = mirror(&twin, Some(&connection), at(1200), Duration::from_secs(300));
        assert_eq!(later.connection.as_ref().map(|c| c.since.0), Some(at(1100)));

        let stale = mirror(&twin, Some(&connection), at(1400), Duration::from_secs(300));
        let stale = stale.connection.expect("connection");
        assert_eq!(stale.state, ConnectionState::Stale);
        assert_eq!(stale.since.0, at(1400));
    }
}
