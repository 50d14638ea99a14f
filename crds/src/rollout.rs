//! The `Rollout` resource: a Recipe brought to the Devices a label selector picks, in waves.
//!
//! # Where per-device progress lives
//!
//! A Rollout may cover 10,000 devices. One record per device in the Rollout's own status
//! would approach etcd's 1.5 MiB object limit and rewrite the whole list on every progress
//! change, so the Rollout status keeps only counts, per-wave counts and a short list of
//! failures. Each device's record lives on its own Device (`status.assignment`: rollout,
//! UID, wave, phase), written by the Rollout controller when it picks the device for a
//! wave, and the device twin stays the source of truth for what was assigned: before
//! writing, the controller reads the twin and writes (ETag-guarded) only if
//! `desired.changeSpec.id` is not already this recipe. After a restart, the records on the
//! Devices tell which devices each wave already took, so none is repeated or skipped.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::common::{LocalRef, label_selector};

mod status;
mod strategy;

pub use status::{
    DeviceCounts, FailedDevice, MAX_FAILED_DEVICES, RolloutPhase, RolloutStatus, WaveStatus,
};
pub use strategy::{
    FailureAction, FailureThreshold, MAX_WAVES, MaintenanceWindow, RolloutStrategy,
    SCHEDULE_EXAMPLES, Wave, WavePause,
};

/// Which recipe goes to which devices, and how fast.
#[derive(CustomResource, Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[kube(
    group = "cloudpillar.io",
    version = "v1alpha1",
    kind = "Rollout",
    namespaced,
    status = "RolloutStatus",
    shortname = "ro",
    category = "cloudpillar",
    doc = "Brings a Recipe to the Devices a label selector picks, wave by wave, with a limit \
           on devices running at once, a failure threshold and an optional maintenance window.",
    printcolumn = r#"{"name":"Recipe","type":"string","jsonPath":".spec.recipeRef.name"}"#,
    printcolumn = r#"{"name":"Phase","type":"string","jsonPath":".status.phase"}"#,
    printcolumn = r#"{"name":"Wave","type":"integer","jsonPath":".status.currentWave"}"#,
    printcolumn = r#"{"name":"Devices","type":"integer","priority":1,
                      "jsonPath":".status.counts.total"}"#,
    printcolumn = r#"{"name":"Succeeded","type":"integer","jsonPath":".status.counts.succeeded"}"#,
    printcolumn = r#"{"name":"Failed","type":"integer","jsonPath":".status.counts.failed"}"#,
    printcolumn = r#"{"name":"Deferred","type":"integer","jsonPath":".status.counts.deferred"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct RolloutSpec {
    /// The Recipe (in this namespace) to bring to the devices. It must be Valid and Signed
    /// before any device receives it.
    #[schemars(extend("x-kubernetes-validations" = [{
        "rule": "self == oldSelf",
        "message": "recipeRef cannot change; create a new Rollout for another recipe",
    }]))]
    pub recipe_ref: LocalRef,

    /// Which Devices (in this namespace) receive the recipe, by label. Devices that match
    /// later join the current or a later wave, until the Rollout has ended (Succeeded,
    /// Failed or Aborted). A Rollout whose selector has matched no Device yet stays Pending
    /// (condition Progressing=False, reason `NoDevicesSelected`) and starts when one matches.
    /// An empty selector is refused, so that no rollout reaches every device by accident.
    /// Operators are In, NotIn, Exists and DoesNotExist; label keys and values follow
    /// Kubernetes label syntax.
    #[schemars(schema_with = "label_selector")]
    #[schemars(extend("x-kubernetes-validations" = [{
        "rule": "(has(self.matchLabels) && size(self.matchLabels) > 0) || \
                 (has(self.matchExpressions) && size(self.matchExpressions) > 0)",
        "message": "selector needs at least one label or expression: an empty selector would \
                    pick every Device in the namespace",
    }]))]
    pub selector: LabelSelector,

    /// How fast the recipe spreads: waves, concurrency, failure threshold, maintenance
    /// window and per-device timeout.
    #[serde(default)]
    pub strategy: RolloutStrategy,

    /// Set to true to stop starting devices; devices already running finish their recipe.
    /// Set back to false to continue. The operator never changes this field.
    #[serde(default)]
    pub paused: bool,

    /// Number of the last wave a person has approved to start. A wave whose predecessor
    /// pauses `untilResumed` starts once this number reaches it, for example
    /// `kubectl patch rollout NAME --type merge -p '{"spec":{"approvedWave":2}}'`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = MAX_WAVES))]
    pub approved_wave: Option<u32>,
}

impl RolloutSpec {
    /// A rollout of `recipe` to the devices with label `key=value`, in one wave.
    pub fn for_label(recipe: &str, key: &str, value: &str) -> Self {
        Self {
            recipe_ref: LocalRef::new(recipe),
            selector: LabelSelector {
                match_labels: Some([(key.to_owned(), value.to_owned())].into()),
                ..LabelSelector::default()
            },
            ..Self::default()
        }
    }
}
