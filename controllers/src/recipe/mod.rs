//! Recipe controller: validates the `changeSpec`, signs its canonical form and records digest,
//! signature and key id in status, and looks the files it downloads up in the blob store. The
//! spec is never changed.

mod artifacts;
mod availability;
mod signer;

use std::sync::Arc;
use std::time::Duration;

use cloudpillar_crds::conditions::{FALSE, RECIPE_SIGNED, RECIPE_VALID};
use cloudpillar_crds::recipe::RECIPE_ARTIFACTS_AVAILABLE;
use cloudpillar_crds::{Recipe, RecipeSpec, RecipeStatus};
use cloudpillar_protocol::recipe::{normalize_crlf, validate};
use cloudpillar_protocol::signing::canonical_json;
use kube::api::Api;
use kube::runtime::controller::Action;
use kube::{Resource, ResourceExt};
use serde_json::Value;
use sha2::{Digest, Sha512};

pub use artifacts::{
    ArtifactError, ArtifactFacts, ArtifactStore, BlobArtifacts, DEVICE_UPLOADS_PREFIX,
    download_sources,
};
use availability::look_up_artifacts;
pub use signer::{KeySigner, NoSigner, RecipeSignature, SecretSigner, SignError, Signer};

use crate::error::{Error, Result};
use crate::runtime::{Context, key_of};
use crate::status::{apply_status, condition, manager, merge_conditions};

/// Controller name in metrics and logs.
pub const CONTROLLER: &str = "recipe";

/// Issues listed in the `Valid` condition's message at most.
const MAX_ISSUES_SHOWN: usize = 10;

/// How soon a recipe with a missing or unreadable artifact is looked at again: the file may
/// be published any moment, and the blob store sends no events.
const ARTIFACT_RECHECK: Duration = Duration::from_secs(15);

/// What gets signed and written to twins: the `changeSpec` with bash and sh scripts
/// normalized to LF (F19), its canonical bytes and their SHA-512.
#[derive(Debug, Clone, PartialEq)]
pub struct SignedForm {
    /// `desired.changeSpec` as devices receive it.
    pub value: Value,
    /// Canonical JSON bytes of `value`: what the signature covers.
    pub canonical: Vec<u8>,
    /// SHA-512 of `canonical`, lowercase hex.
    pub digest: String,
}

/// The signed form of a recipe spec.
pub fn signed_form(spec: &RecipeSpec) -> SignedForm {
    let mut value = serde_json::to_value(&spec.change_spec).unwrap_or(Value::Null);
    normalize_crlf(&mut value);
    let canonical = canonical_json(&value);
    let digest = Sha512::digest(&canonical)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    SignedForm {
        value,
        canonical,
        digest,
    }
}

/// Whether a Recipe may be rolled out now: Valid and Signed for its current spec, and no file
/// it downloads known to be missing.
pub fn is_ready(recipe: &Recipe) -> bool {
    let Some(status) = &recipe.status else {
        return false;
    };
    let current = |type_: &str| {
        cloudpillar_crds::conditions::find(&status.conditions, type_).is_some_and(|c| {
            c.status == "True" && c.observed_generation == recipe.meta().generation
        })
    };
    let missing =
        cloudpillar_crds::conditions::find(&status.conditions, RECIPE_ARTIFACTS_AVAILABLE)
            .is_some_and(|c| c.status == FALSE);
    current(RECIPE_VALID) && current(RECIPE_SIGNED) && status.signature.is_some() && !missing
}

/// Reconciles one Recipe.
pub async fn reconcile(recipe: Arc<Recipe>, ctx: Arc<Context>) -> Result<Action> {
    let namespace = recipe
        .namespace()
        .ok_or(Error::Incomplete { what: "namespace" })?;
    let api: Api<Recipe> = Api::namespaced(ctx.client.clone(), &namespace);
    let object = key_of(recipe.as_ref());
    let generation = recipe.meta().generation;
    let previous = recipe.status.clone().unwrap_or_default();
    let form = signed_form(&recipe.spec);

    // Validate: an invalid recipe loses any signature so that no Rollout can use it.
    let issues = validate(&form.value);
    let mut status = previous.clone();
    status.observed_generation = generation;
    let mut lookup =
        look_up_artifacts(&form.value, ctx.config.artifacts.as_deref(), generation).await;
    status.artifacts = std::mem::take(&mut lookup.artifacts);
    let recheck = match lookup.complete {
        true => ctx.resync(),
        false => Action::requeue(ARTIFACT_RECHECK),
    };
    if !issues.is_empty() {
        let shown: Vec<String> = issues
            .iter()
            .take(MAX_ISSUES_SHOWN)
            .map(ToString::to_string)
            .collect();
        let more = issues.len().saturating_sub(MAX_ISSUES_SHOWN);
        let mut message = shown.join("; ");
        if more > 0 {
            message.push_str(&format!("; and {more} more"));
        }
        status.digest = None;
        status.signature = None;
        status.key_id = None;
        status.conditions = merge_conditions(
            &previous.conditions,
            vec![
                condition(
                    RECIPE_VALID,
                    false,
                    "ValidationFailed",
                    message.clone(),
                    generation,
                ),
                condition(
                    RECIPE_SIGNED,
                    false,
                    "Invalid",
                    "invalid recipes are not signed",
                    generation,
                ),
                lookup.condition,
            ],
        );
        if cloudpillar_crds::conditions::is_true(&previous.conditions, RECIPE_VALID)
            || previous.observed_generation != generation
        {
            ctx.publish(recipe.as_ref(), true, "ValidationFailed", message)
                .await;
        }
        write(&api, recipe.as_ref(), &previous, &status).await?;
        return Ok(recheck);
    }

    // Sign unless the current digest is already signed.
    let valid = condition(
        RECIPE_VALID,
        true,
        "Valid",
        "the recipe passed validation",
        generation,
    );
    let signed_already = status.digest.as_deref() == Some(form.digest.as_str())
        && status.signature.is_some()
        && cloudpillar_crds::conditions::is_true(&previous.conditions, RECIPE_SIGNED);
    let mut failure = None;
    let signed = if signed_already {
        condition(
            RECIPE_SIGNED,
            true,
            "Signed",
            signed_message(&status),
            generation,
        )
    } else {
        match ctx.signer.sign(&form.canonical).await {
            Ok(signature) => {
                status.digest = Some(form.digest.clone());
                status.signature = Some(signature.text);
                status.key_id = Some(signature.key_id);
                tracing::info!(recipe = %object, key_id = ?status.key_id, "recipe signed");
                ctx.publish(recipe.as_ref(), false, "Signed", signed_message(&status))
                    .await;
                condition(
                    RECIPE_SIGNED,
                    true,
                    "Signed",
                    signed_message(&status),
                    generation,
                )
            }
            Err(error) => {
                status.digest = Some(form.digest.clone());
                status.signature = None;
                status.key_id = None;
                let reason = match error {
                    SignError::NotConfigured => "SigningKeyNotConfigured",
                    _ => "SigningFailed",
                };
                let message = crate::runtime::ErrorChain(&error).to_string();
                let failed = condition(RECIPE_SIGNED, false, reason, message, generation);
                if !matches!(error, SignError::NotConfigured) {
                    failure = Some(Error::Sign {
                        object: object.clone(),
                        source: error,
                    });
                }
                failed
            }
        }
    };
    if lookup.newly_missing(&previous.conditions) {
        ctx.publish(
            recipe.as_ref(),
            true,
            "ArtifactsMissing",
            lookup.condition.message.clone(),
        )
        .await;
    }
    status.conditions =
        merge_conditions(&previous.conditions, vec![valid, signed, lookup.condition]);
    write(&api, recipe.as_ref(), &previous, &status).await?;
    match failure {
        Some(error) => Err(error),
        None => Ok(recheck),
    }
}

fn signed_message(status: &RecipeStatus) -> String {
    format!(
        "signed with key {}",
        status.key_id.as_deref().unwrap_or("?")
    )
}

async fn write(
    api: &Api<Recipe>,
    recipe: &Recipe,
    previous: &RecipeStatus,
    status: &RecipeStatus,
) -> Result<()> {
    if status != previous {
        apply_status(api, recipe, &manager(CONTROLLER), status).await?;
    }
    Ok(())
}
