//! Small types and schema helpers shared by several resources.

use std::collections::BTreeMap;

use schemars::{JsonSchema, Schema, SchemaGenerator, json_schema};
use serde::{Deserialize, Serialize};

/// A key inside a Kubernetes Secret in the same namespace as the referring object.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SecretKeyRef {
    /// Name of the Secret, in the same namespace as this object.
    #[schemars(length(min = 1, max = 253))]
    pub name: String,

    /// Key inside the Secret's `data` whose value is used.
    #[schemars(length(min = 1, max = 253))]
    pub key: String,
}

/// A reference to another CloudPillar object by name, in the same namespace.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct LocalRef {
    /// Name of the referenced object, in the same namespace as this object.
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
}

impl LocalRef {
    /// A reference to the object called `name`.
    pub fn new(name: impl Into<String>) -> Self {
        Self { name: name.into() }
    }
}

/// A JSON object whose content the API server keeps as written, without a schema.
pub type FreeFormObject = BTreeMap<String, serde_json::Value>;

/// Schema of a [`FreeFormObject`]: any JSON object, kept as written.
pub fn free_form_object(_: &mut SchemaGenerator) -> Schema {
    json_schema!({
        "type": "object",
        "x-kubernetes-preserve-unknown-fields": true,
    })
}

/// Schema of an optional [`FreeFormObject`].
pub fn optional_free_form_object(generator: &mut SchemaGenerator) -> Schema {
    let mut schema = free_form_object(generator);
    schema.insert("nullable".into(), true.into());
    schema
}

/// Schema of an optional enum field that shows the field's own documentation.
///
/// Without it, the enum type's documentation replaces the field's in the generated CRD
/// (kube's rewrite of `Option<Enum>`), and `kubectl explain` loses the field text.
pub fn optional_enum<T: JsonSchema>(generator: &mut SchemaGenerator) -> Schema {
    let mut schema = generator.subschema_for::<T>();
    schema.remove("description");
    schema
}

/// Schema of a `conditions` list: keyed by `type` so that server-side apply merges
/// conditions one by one instead of replacing the list.
pub fn conditions_list(generator: &mut SchemaGenerator) -> Schema {
    let mut schema = generator.subschema_for::<Vec<crate::Condition>>();
    schema.insert("x-kubernetes-list-type".into(), "map".into());
    schema.insert(
        "x-kubernetes-list-map-keys".into(),
        serde_json::json!(["type"]),
    );
    schema.insert("maxItems".into(), 16.into());
    schema
}

/// Schema of a duration written like `90s`, `30m` or `1h30m` (Go and `metav1.Duration` style).
pub fn duration(_: &mut SchemaGenerator) -> Schema {
    json_schema!({
        "type": "string",
        "maxLength": 64,
        "x-kubernetes-validations": [{
            "rule": concat!(
                r"self.matches('^([0-9]+(\\.[0-9]+)?(ms|s|m|h))+$')",
                " && duration(self) > duration('0s')",
            ),
            "message": "must be a positive duration such as 90s, 30m or 1h30m",
        }],
    })
}
