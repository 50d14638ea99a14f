//! The cancel request in the desired section: `changeCancel`.
//!
//! The operator writes `{"id": "<changeSpec.id>"}`; a bare string id is taken as well, for
//! tools and people writing the twin by hand. A device cancels the named recipe if it runs,
//! and never starts a recipe the desired section cancels.

use serde_json::{Value, json};

/// Desired (and reported) key of the cancel request and its answer.
pub const CANCEL_KEY: &str = "changeCancel";

/// The desired value that cancels recipe `id`.
pub fn cancel_request(id: &str) -> Value {
    json!({ "id": id })
}

/// The recipe id a desired `changeCancel` value names, in either form.
pub fn cancelled_id(value: &Value) -> Option<&str> {
    let id = match value {
        Value::String(id) => id.as_str(),
        Value::Object(members) => members.get("id")?.as_str()?,
        _ => return None,
    };
    (!id.is_empty()).then_some(id)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_written_request_names_its_recipe_and_a_bare_id_does_too() {
        assert_eq!(cancelled_id(&cancel_request("fw-2")), Some("fw-2"));
        assert_eq!(cancelled_id(&json!("fw-2")), Some("fw-2"));
        for nothing in [
            json!(null),
            json!(""),
            json!({"id": 7}),
            json!({}),
            json!(["fw-2"]),
        ] {
            assert_eq!(cancelled_id(&nothing), None, "{nothing}");
        }
    }
}
