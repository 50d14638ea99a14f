//! Line endings of bash and sh steps (field case F19).
//!
//! A script saved on Windows reaches the recipe with CRLF line endings and fails under bash
//! (`/bin/bash^M: bad interpreter`). The operator normalizes such steps when it admits a
//! recipe, before signing; an agent must not rewrite signed bytes, so it refuses a bash or sh
//! step that still holds a carriage return (`crlf_in_bash_script`).

use serde_json::Value;

use super::{Stage, raw_actions};

/// Members of an executeOnce step that hold script text.
const SCRIPT_MEMBERS: [&str; 3] = ["command", "onPause", "onResume"];

/// Shells whose scripts must use LF line endings.
const LF_SHELLS: [&str; 2] = ["bash", "sh"];

/// Rewrites CRLF (and lone CR) to LF in the script members of every bash and sh step.
/// Returns how many members changed. Run it at admission, before signing.
pub fn normalize_crlf(spec: &mut Value) -> usize {
    let places: Vec<(String, Stage, usize)> = raw_actions(spec)
        .into_iter()
        .filter(|found| runs_in_lf_shell(found.value))
        .map(|found| (found.section.to_owned(), found.stage, found.index))
        .collect();
    let mut changed = 0;
    for (section, stage, index) in places {
        let Some(action) = spec
            .get_mut(&section)
            .and_then(|stages| stages.get_mut(stage.name()))
            .and_then(|actions| actions.get_mut(index))
        else {
            continue;
        };
        for member in SCRIPT_MEMBERS {
            if let Some(Value::String(text)) = action.get_mut(member)
                && text.contains('\r')
            {
                *text = text.replace("\r\n", "\n").replace('\r', "\n");
                changed += 1;
            }
        }
    }
    changed
}

/// Path of the first bash or sh step whose script members hold a carriage return.
pub fn has_crlf_in_bash(spec: &Value) -> Option<String> {
    raw_actions(spec).into_iter().find_map(|found| {
        let has_cr = SCRIPT_MEMBERS
            .iter()
            .filter_map(|member| found.value.get(member).and_then(Value::as_str))
            .any(|text| text.contains('\r'));
        (runs_in_lf_shell(found.value) && has_cr).then_some(found.path)
    })
}

fn runs_in_lf_shell(action: &Value) -> bool {
    let is_execute = match action.get("action") {
        None => true,
        Some(kind) => kind == "executeOnce",
    };
    let shell = action.get("shell").and_then(Value::as_str);
    is_execute && shell.is_some_and(|shell| LF_SHELLS.contains(&shell))
}
