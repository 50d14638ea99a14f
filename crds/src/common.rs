//! Small types and schema helpers shared by several resources.

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use schemars::{JsonSchema, Schema, SchemaGenerator, json_schema};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

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

/// Syntax of a label key: an optional DNS subdomain prefix and `/`, then a name of up to 63
/// letters, digits, `-`, `_` and `.` that starts and ends with a letter or digit.
const LABEL_KEY: &str = "^([a-z0-9]([-a-z0-9]*[a-z0-9])?([.][a-z0-9]([-a-z0-9]*[a-z0-9])?)*/)?\
                         [A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?$";

/// Syntax of a label value: empty, or up to 63 letters, digits, `-`, `_` and `.` that start
/// and end with a letter or digit.
const LABEL_VALUE: &str = "^([A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?)?$";

const LABEL_KEY_MESSAGE: &str = "a label key is an optional DNS subdomain prefix and '/', then \
    up to 63 letters, digits, '-', '_' or '.' starting and ending with a letter or digit, for \
    example cloudpillar.io/site";
const LABEL_VALUE_MESSAGE: &str = "a label value is empty or up to 63 letters, digits, '-', '_' \
    or '.' starting and ending with a letter or digit";

/// Schema of a label selector: Kubernetes' own, with the checks the API server makes on the
/// selectors of built-in kinds (known operators, values only with `In` and `NotIn`, label key
/// and value syntax), so that a selector that could never be read is refused at apply time.
pub fn label_selector(generator: &mut SchemaGenerator) -> Schema {
    let mut schema = Value::from(generator.subschema_for::<LabelSelector>());
    let rule = |rule: String, message: &str| json!([{ "rule": rule, "message": message }]);
    if let Some(labels) = schema.pointer_mut("/properties/matchLabels") {
        labels["maxProperties"] = 64.into();
        labels["x-kubernetes-validations"] = json!([
            { "rule": format!("self.all(k, size(k) <= 317 && k.matches('{LABEL_KEY}'))"),
              "message": LABEL_KEY_MESSAGE },
            { "rule": format!("self.all(k, self[k].matches('{LABEL_VALUE}'))"),
              "message": LABEL_VALUE_MESSAGE },
        ]);
        if let Some(values) = labels.get_mut("additionalProperties") {
            values["maxLength"] = 63.into();
        }
    }
    if let Some(expressions) = schema.pointer_mut("/properties/matchExpressions") {
        expressions["maxItems"] = 16.into();
    }
    if let Some(requirement) = schema.pointer_mut("/properties/matchExpressions/items") {
        requirement["x-kubernetes-validations"] = rule(
            "self.operator in ['In', 'NotIn'] ? (has(self.values) && size(self.values) > 0) \
             : (!has(self.values) || size(self.values) == 0)"
                .into(),
            "In and NotIn need at least one value; Exists and DoesNotExist take none",
        );
        let properties = &mut requirement["properties"];
        properties["key"]["maxLength"] = 317.into();
        properties["key"]["x-kubernetes-validations"] =
            rule(format!("self.matches('{LABEL_KEY}')"), LABEL_KEY_MESSAGE);
        properties["operator"]["enum"] = json!(["In", "NotIn", "Exists", "DoesNotExist"]);
        properties["values"]["maxItems"] = 32.into();
        properties["values"]["items"]["maxLength"] = 63.into();
        properties["values"]["items"]["x-kubernetes-validations"] = rule(
            format!("self.matches('{LABEL_VALUE}')"),
            LABEL_VALUE_MESSAGE,
        );
    }
    Schema::try_from(schema).unwrap_or_else(|_| generator.subschema_for::<LabelSelector>())
}

/// Schema of an optional label selector (see [`label_selector`]).
pub fn optional_label_selector(generator: &mut SchemaGenerator) -> Schema {
    let mut schema = label_selector(generator);
    schema.insert("nullable".into(), true.into());
    schema
}
