//! How a Rollout spreads: waves, concurrency, failure threshold, window, timeout.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use kube::core::Duration;
use schemars::{JsonSchema, Schema, SchemaGenerator, json_schema};
use serde::{Deserialize, Serialize};

use crate::common::{duration, optional_label_selector};

/// Most waves a Rollout may have.
pub const MAX_WAVES: usize = 20;

/// How fast a recipe spreads over the selected devices.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RolloutStrategy {
    /// Waves, run in order. Each wave starts `count` more devices, or `percent` of all
    /// selected devices (rounded up); the last wave also takes every device still left, so
    /// the rollout always reaches every selected device. A wave starts once every device of
    /// the previous wave has finished (or timed out, see `deviceTimeout`) and its pause is
    /// over. Defaults to one wave of 100 percent.
    #[serde(default = "one_wave")]
    #[schemars(
        length(min = 1, max = MAX_WAVES),
        extend("x-kubernetes-validations" = [
            {
                "rule": "self.filter(w, has(w.percent)).map(w, w.percent).sum() <= 100",
                "message": "the wave percentages add up to more than 100",
            },
            {
                "rule": "self.all(w, !has(w.name) || \
                         self.filter(v, has(v.name) && v.name == w.name).size() == 1)",
                "message": "wave names must be unique",
            },
            {
                "rule": "!has(self[size(self) - 1].selector)",
                "message": "the last wave takes every device left, so it has no selector",
            },
        ])
    )]
    pub waves: Vec<Wave>,

    /// Most devices running the recipe at the same time, across all waves. Devices wait
    /// (Pending) until a slot is free. Unset: every device of the current wave may run at
    /// once.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub max_concurrent: Option<u32>,

    /// When to stop because too many devices failed. Unset: failures never stop the
    /// rollout.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failure_threshold: Option<FailureThreshold>,

    /// When devices may start the recipe. Outside the window no device starts (waiting
    /// devices count as Deferred); devices already running finish. Unset: any time.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub maintenance_window: Option<MaintenanceWindow>,

    /// How long one device may take from receiving the recipe to finishing it before it
    /// counts as Failed (for example `6h`); its twin then gets a cancel request, so that the
    /// device stops the recipe or never starts it. Time spent unreachable counts too, time
    /// spent busy does not. A result the device reports afterwards is recorded (a late
    /// success counts as succeeded). Unset: no limit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "duration")]
    pub device_timeout: Option<Duration>,
}

impl Default for RolloutStrategy {
    fn default() -> Self {
        Self {
            waves: one_wave(),
            max_concurrent: None,
            failure_threshold: None,
            maintenance_window: None,
            device_timeout: None,
        }
    }
}

fn one_wave() -> Vec<Wave> {
    vec![Wave::percent(100)]
}

/// One step of a rollout: a number or a share of the selected devices.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-validations" = [{
    "rule": "has(self.count) != has(self.percent)",
    "message": "each wave needs exactly one of count (a number of devices) or percent (a share \
                of the selected devices)",
}]))]
pub struct Wave {
    /// Name shown in status and events, for example `canary`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(
        length(min = 1, max = 63),
        extend("x-kubernetes-validations" = [{
            "rule": "self.matches('^[a-z0-9]([-a-z0-9]*[a-z0-9])?$')",
            "message": "a wave name uses lowercase letters, digits and '-', and starts and ends \
                        with a letter or digit",
        }])
    )]
    pub name: Option<String>,

    /// Number of devices this wave starts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub count: Option<u32>,

    /// Share of all selected devices this wave starts, from 1 to 100 percent, rounded up
    /// to whole devices.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 100))]
    pub percent: Option<u32>,

    /// Only devices matching these labels join this wave (for example `ring: canary`),
    /// besides matching the Rollout's selector. The wave ends early when no such device is
    /// left, even below its count or percent. Not allowed on the last wave.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "optional_label_selector")]
    pub selector: Option<LabelSelector>,

    /// Wait after this wave's devices have finished, before the next wave starts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pause: Option<WavePause>,
}

impl Wave {
    /// A wave of `count` devices.
    pub fn count(count: u32) -> Self {
        Self {
            count: Some(count),
            ..Self::default()
        }
    }

    /// A wave of `percent` of the selected devices.
    pub fn percent(percent: u32) -> Self {
        Self {
            percent: Some(percent),
            ..Self::default()
        }
    }
}

/// A pause between two waves.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-validations" = [{
    "rule": "has(self.duration) != (has(self.untilResumed) && self.untilResumed)",
    "message": "a pause needs exactly one of duration (for example 1h) or untilResumed: true",
}]))]
pub struct WavePause {
    /// Wait this long, for example `30m` or `24h`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "duration")]
    pub duration: Option<Duration>,

    /// Wait until a person approves the next wave by raising `spec.approvedWave` to its
    /// number.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub until_resumed: Option<bool>,
}

/// When failures stop a rollout.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-validations" = [{
    "rule": "has(self.count) != has(self.percent)",
    "message": "failureThreshold needs exactly one of count or percent",
}]))]
pub struct FailureThreshold {
    /// Stop when more than this many devices have failed (0: at the first failure).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub count: Option<u32>,

    /// Stop when more than this percentage of the devices started so far has failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = 100))]
    pub percent: Option<u32>,

    /// What to do when the threshold is crossed: `Pause` (default) stops starting devices
    /// until a person intervenes, and devices already running finish; `Abort` ends the
    /// rollout as Aborted and asks every device that has not finished to cancel the recipe
    /// (one that never received or started it counts as Cancelled at once).
    #[serde(default)]
    pub action: FailureAction,
}

/// Action on crossing the failure threshold.
#[derive(Deserialize, Serialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
pub enum FailureAction {
    /// Stop starting devices; the rollout's phase becomes Paused.
    #[default]
    Pause,
    /// End the rollout; its phase becomes Aborted.
    Abort,
}

/// A recurring window during which devices may start the recipe.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct MaintenanceWindow {
    /// When the window opens, as a five-field cron expression (minute, hour, day of month,
    /// month, day of week), for example `0 2 * * 6` for Saturdays at 02:00. Each value must
    /// lie in its field's range; lists, ranges, steps, month and weekday names, `L`, `nW` and
    /// `n#k` are allowed.
    #[schemars(schema_with = "schedule")]
    pub schedule: String,

    /// How long the window stays open, for example `4h`.
    #[schemars(schema_with = "duration")]
    pub duration: Duration,

    /// IANA time zone the schedule is read in, for example `Europe/Berlin`. Defaults to
    /// `UTC`.
    #[serde(default = "utc")]
    #[schemars(
        length(min = 1, max = 64),
        extend("x-kubernetes-validations" = [{
            "rule": r"self.matches('^[A-Za-z][A-Za-z0-9_+-]*(/[A-Za-z0-9_+-]+)*$')",
            "message": "timeZone must be an IANA time zone name such as UTC or Europe/Berlin",
        }])
    )]
    pub time_zone: String,
}

fn utc() -> String {
    "UTC".into()
}

/// One schedule of each form the `schedule` rule accepts: lists, ranges, steps, month and
/// weekday names in any case, `L`, `nW`, `nL`, `n#k`, `?`, a leading `+` on the day of week,
/// and surrounding spaces.
pub const SCHEDULE_EXAMPLES: [&str; 9] = [
    "0 2 * * 6",
    "*/15 1-5 * * MON-FRI",
    "0 2 L * *",
    "0 3 15W * ?",
    "30 1 * JAN,jul 5L",
    "0 0 1 */3 0#2",
    "0 2 * * 7",
    "0,30 22-23 1-7 * sun",
    " 5 4 * * +1 ",
];

/// Schema of a maintenance window schedule: five cron fields, each a list of values, ranges
/// and steps within the field's range, as the operator's cron reader takes them. A schedule
/// that passes and still cannot be read shows in the Rollout's status.
fn schedule(_: &mut SchemaGenerator) -> Schema {
    const MONTHS: &str = "(?i:jan|feb|mar|apr|may|jun|jul|aug|sep|oct|nov|dec)";
    const DAYS: &str = "(?i:sun|mon|tue|wed|thu|fri|sat)";
    const DAY: &str = "0?[1-9]|[12][0-9]|3[01]";
    // One field: items separated by commas; an item is `*`, a value or a range, with an
    // optional step, or one of the field's special forms.
    let field = |value: &str, special: &str| {
        let item = format!("([*]|({value})(-({value}))?)(/[0-9]{{1,3}})?{special}");
        format!("({item})(,({item}))*")
    };
    let weekday = format!("0?[0-7]|{DAYS}");
    let fields = [
        field("[0-5]?[0-9]", ""),
        field("[01]?[0-9]|2[0-3]", ""),
        field(DAY, &format!("|({DAY})[Ww]|[Ll]|[?]")),
        field(&format!("0?[1-9]|1[0-2]|{MONTHS}"), ""),
        format!(
            "[+]?{}",
            field(&weekday, &format!("|({weekday})([Ll]|#[1-5])|[Ll]|[?]"))
        ),
    ];
    let pattern = format!("^[[:space:]]*{}[[:space:]]*$", fields.join("[[:space:]]+"));
    json_schema!({
        "type": "string",
        "maxLength": 128,
        "x-kubernetes-validations": [{
            "rule": format!("self.matches('{pattern}')"),
            "message": "schedule must be a cron expression with five fields: minute (0-59), \
                        hour (0-23), day of month (1-31, L, nW), month (1-12 or JAN-DEC) and \
                        day of week (0-7 or SUN-SAT, nL, n#k), for example '0 2 * * 6'",
        }],
    })
}
