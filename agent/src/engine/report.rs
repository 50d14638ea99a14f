//! `reported.changeSpec`: the recipe's shape with each action replaced by its status.
//!
//! Field names follow the field format (`status`, `ResultCode`, `ResultText`, `Progress`,
//! `actionPath`, `Status`, `lastFaultedRecipe`, `lastFaultedPath`). When the document would
//! break the reported size budget (F06) detail is shed in steps: transfer counters first,
//! then long texts, then whole stages become summaries.

use cloudpillar_protocol::keys::encode_key;
use cloudpillar_protocol::limits::{TwinLimits, twin_size};
use cloudpillar_protocol::recipe::{Plan, action_path};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};

use super::journal::{RecipeStatus, Run};
use super::outcome::StepOutcome;

/// Bytes of the reported section left for everything but `changeSpec`.
const OTHER_REPORTED_BYTES: usize = 4 * 1024;

/// Live detail of the running step.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct LiveStep {
    /// Its action path.
    pub path: String,
    /// Percent done, when known.
    pub progress: Option<u8>,
    /// Transfer counters: bytes done and total.
    pub bytes: Option<(u64, u64)>,
    /// Transfer counters: chunks done and total.
    pub chunks: Option<(u64, u64)>,
    /// A short line about what it is doing.
    pub text: Option<String>,
}

fn recipe_status_name(status: RecipeStatus) -> &'static str {
    match status {
        RecipeStatus::InProgress => "InProgress",
        RecipeStatus::Success => "Success",
        RecipeStatus::Failure => "Failure",
        RecipeStatus::Cancelled => "Cancelled",
        RecipeStatus::Refused => "Refused",
    }
}

fn finished_entry(outcome: &StepOutcome, max_text: usize) -> Value {
    let mut text = outcome.text.clone();
    if text.len() > max_text {
        let mut cut = max_text;
        while !text.is_char_boundary(cut) {
            cut -= 1;
        }
        text.truncate(cut);
    }
    json!({ "status": outcome.status.as_str(), "ResultCode": outcome.code, "ResultText": text })
}

fn live_entry(live: &LiveStep, counters: bool) -> Value {
    let mut entry = Map::new();
    entry.insert("status".into(), json!("InProgress"));
    if let Some(p) = live.progress {
        entry.insert("Progress".into(), json!(p));
    }
    if let Some(text) = &live.text {
        entry.insert("ResultText".into(), json!(text));
    }
    if counters {
        if let Some((done, total)) = live.bytes {
            entry.insert("BytesDone".into(), json!(done));
            entry.insert("BytesTotal".into(), json!(total));
        }
        if let Some((done, total)) = live.chunks {
            entry.insert("ChunksDone".into(), json!(done));
            entry.insert("ChunksTotal".into(), json!(total));
        }
    }
    Value::Object(entry)
}

/// How much detail to keep.
#[derive(Debug, Clone, Copy)]
struct Detail {
    counters: bool,
    max_text: usize,
    summarize_stages: bool,
}

/// Builds `reported.changeSpec` for `run`, within the reported budget of `limits`.
pub fn build(
    run: &Run,
    plan: Option<&Plan>,
    live: Option<&LiveStep>,
    limits: &TwinLimits,
) -> Value {
    let budget = limits.reported_bytes.saturating_sub(OTHER_REPORTED_BYTES);
    let levels = [
        Detail {
            counters: true,
            max_text: 1024,
            summarize_stages: false,
        },
        Detail {
            counters: false,
            max_text: 1024,
            summarize_stages: false,
        },
        Detail {
            counters: false,
            max_text: 128,
            summarize_stages: false,
        },
        Detail {
            counters: false,
            max_text: 128,
            summarize_stages: true,
        },
    ];
    let mut doc = Value::Null;
    for detail in levels {
        doc = build_with(run, plan, live, detail);
        let wrapped = json!({ "changeSpec": doc });
        if twin_size(&wrapped) <= budget && limits.check_reported(&wrapped).is_ok() {
            return doc;
        }
    }
    doc
}

fn build_with(run: &Run, plan: Option<&Plan>, live: Option<&LiveStep>, d: Detail) -> Value {
    let mut top = Map::new();
    top.insert("id".into(), json!(run.id));
    let mut last_path = None;
    if let Some(plan) = plan {
        for section in &plan.sections {
            let mut stages = Map::new();
            for (stage, steps) in &section.stages {
                let entries: Vec<Value> = (0..steps.len())
                    .map(|i| {
                        let path = action_path(&section.name, *stage, i);
                        if let Some(outcome) = run.steps.get(&path) {
                            last_path = Some(path);
                            finished_entry(outcome, d.max_text)
                        } else if let Some(live) = live.filter(|l| l.path == path) {
                            last_path = Some(path);
                            live_entry(live, d.counters)
                        } else {
                            json!({ "status": "Pending" })
                        }
                    })
                    .collect();
                let value = if d.summarize_stages {
                    summarize(&entries)
                } else {
                    Value::Array(entries)
                };
                stages.insert(stage.name().to_owned(), value);
            }
            top.insert(encode_key(&section.name), Value::Object(stages));
        }
    }
    if let Some(path) = live.map(|l| l.path.clone()).or(last_path) {
        top.insert("actionPath".into(), json!(path));
    }
    top.insert("Status".into(), json!(recipe_status_name(run.status)));
    if let Some(section) = &run.last_faulted_recipe {
        top.insert("lastFaultedRecipe".into(), json!(section));
    }
    if let Some(path) = &run.last_faulted_path {
        top.insert("lastFaultedPath".into(), json!(path));
    }
    if let Some((code, text)) = &run.reason {
        top.insert("ResultCode".into(), json!(code));
        top.insert("ResultText".into(), json!(text));
    }
    Value::Object(top)
}

/// A stage reduced to counts by status.
fn summarize(entries: &[Value]) -> Value {
    let mut counts = Map::new();
    for entry in entries {
        let status = entry
            .get("status")
            .and_then(Value::as_str)
            .unwrap_or("Pending");
        let n = counts.get(status).and_then(Value::as_u64).unwrap_or(0);
        counts.insert(status.to_owned(), json!(n + 1));
    }
    json!({ "summary": counts })
}
