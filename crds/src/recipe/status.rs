//! Observed state of a `Recipe`: validation, canonical digest, signature and artifacts.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::Condition;
use crate::common::conditions_list;

/// `Recipe` condition: every file the recipe downloads is in the blob store devices download
/// from (`False` names the missing ones; `Unknown` when the operator cannot look).
pub const RECIPE_ARTIFACTS_AVAILABLE: &str = "ArtifactsAvailable";

/// Observed state of a recipe.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RecipeStatus {
    /// Generation of the spec this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,

    /// SHA-512 of the canonical `changeSpec` (128 lowercase hex digits): what the signature
    /// covers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^[0-9a-f]{128}$"))]
    pub digest: Option<String>,

    /// Base64 ECDSA P-521 / SHA-512 signature of the canonical `changeSpec`, written to
    /// device twins as `desired.changeSign`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 1024))]
    pub signature: Option<String>,

    /// Identifies the key that made `signature`, so devices and people can tell keys apart.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 512))]
    pub key_id: Option<String>,

    /// Files the recipe downloads, with size and hashes once the operator found them in the
    /// blob store devices download from.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 500))]
    pub artifacts: Vec<Artifact>,

    /// Current state: `Valid` (the recipe may be rolled out; the reason and message say
    /// what is wrong when not), `Signed` (digest and signature are current) and
    /// `ArtifactsAvailable` (every downloaded file is in the blob store; a recipe with a
    /// missing file is not rolled out).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(schema_with = "conditions_list")]
    pub conditions: Vec<Condition>,
}

/// A file a recipe downloads.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Artifact {
    /// The `source` of the singularDownload step.
    pub name: String,

    /// Size in bytes, as stored in the blob store.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub size: Option<i64>,

    /// SHA-256 of the file, lowercase hex.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^[0-9a-f]{64}$"))]
    pub sha256: Option<String>,

    /// SHA-512 of the file, lowercase hex.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^[0-9a-f]{128}$"))]
    pub sha512: Option<String>,
}
