//! The `Recipe` resource: a `changeSpec` in the twin's field format, validated and signed.

use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

mod schema;
mod status;

pub use cloudpillar_protocol::recipe::{Action, ActionKind, ChangeSpec, Section, Stage};
pub use schema::{MAX_ACTIONS_PER_STAGE, SECTIONS, change_spec_schema};
pub use status::{Artifact, RECIPE_ARTIFACTS_AVAILABLE, RecipeStatus};

/// The recipe, written exactly as the device twin's `desired.changeSpec`.
#[derive(CustomResource, Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[kube(
    group = "cloudpillar.io",
    version = "v1alpha1",
    kind = "Recipe",
    namespaced,
    status = "RecipeStatus",
    shortname = "rcp",
    category = "cloudpillar",
    doc = "A recipe: the steps a device runs, written exactly as the device twin's \
           desired.changeSpec. The operator validates and signs it; Rollouts bring it to \
           devices. The operator never changes the spec.",
    printcolumn = r#"{"name":"ID","type":"string","jsonPath":".spec.changeSpec.id"}"#,
    printcolumn = r#"{"name":"Valid","type":"string",
                      "jsonPath":".status.conditions[?(@.type==\"Valid\")].status"}"#,
    printcolumn = r#"{"name":"Signed","type":"string",
                      "jsonPath":".status.conditions[?(@.type==\"Signed\")].status"}"#,
    printcolumn = r#"{"name":"Key","type":"string","jsonPath":".status.keyId"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-validations" = [{
    "rule": "self.changeSpec.id != oldSelf.changeSpec.id || self.changeSpec == oldSelf.changeSpec",
    "message": "a changed recipe needs a new changeSpec.id: devices tell recipe versions \
                apart by id",
}]))]
pub struct RecipeSpec {
    /// The recipe in the device twin's field format: an `id` and one or more sections
    /// (`patch`, `base`), each holding stages that run in this order: preTransitConfig,
    /// transitPackage, preInstallConfig, installSteps, postInstallConfig.
    #[schemars(schema_with = "change_spec_schema")]
    pub change_spec: ChangeSpec,
}
