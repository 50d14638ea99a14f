//! Why a Recipe cannot be rolled out now, in words that name it (pure; no I/O).

use cloudpillar_crds::Recipe;
use cloudpillar_crds::conditions::{RECIPE_SIGNED, RECIPE_VALID, find};
use cloudpillar_crds::recipe::RECIPE_ARTIFACTS_AVAILABLE;
use kube::{Resource, ResourceExt};

/// The first thing that keeps `recipe` from being ready: invalid, files missing, unsigned, or
/// not looked at yet for its current spec.
pub fn why_not_ready(recipe: &Recipe) -> String {
    let name = recipe.name_any();
    let generation = recipe.meta().generation;
    let conditions = recipe
        .status
        .as_ref()
        .map(|s| s.conditions.as_slice())
        .unwrap_or_default();
    let condition = |type_| find(conditions, type_);
    let current = |type_| condition(type_).filter(|c| c.observed_generation == generation);
    let detail = |message: &str| match message {
        "" => String::new(),
        text => format!(": {text}"),
    };

    match current(RECIPE_VALID) {
        None => return format!("Recipe {name} is not validated yet"),
        Some(c) if c.status != "True" => {
            return format!("Recipe {name} is invalid{}", detail(&c.message));
        }
        Some(_) => {}
    }
    if let Some(c) = condition(RECIPE_ARTIFACTS_AVAILABLE).filter(|c| c.status == "False") {
        return format!("Recipe {name} is held back{}", detail(&c.message));
    }
    match current(RECIPE_SIGNED) {
        Some(c) if c.status == "True" => format!("Recipe {name} has no signature yet"),
        Some(c) => format!("Recipe {name} is unsigned{}", detail(&c.message)),
        None => format!("Recipe {name} is not signed yet"),
    }
}

#[cfg(test)]
mod tests {
    use cloudpillar_crds::RecipeStatus;
    use serde_json::json;

    use super::*;

    fn recipe(conditions: &[(&str, &str, &str)]) -> Recipe {
        let mut recipe: Recipe = serde_json::from_value(json!({
            "apiVersion": "cloudpillar.io/v1alpha1", "kind": "Recipe",
            "metadata": {"name": "fw-2", "generation": 3},
            "spec": {"changeSpec": {"id": "fw-2"}},
        }))
        .expect("recipe");
        let conditions = conditions
            .iter()
            .map(|(type_, status, message)| {
                crate::status::condition(type_, *status == "True", "R", *message, Some(3))
            })
            .collect();
        recipe.status = Some(RecipeStatus {
            conditions,
            ..RecipeStatus::default()
        });
        recipe
    }

    #[test]
    fn each_reason_names_the_recipe_and_says_what_is_wrong() {
        let invalid = recipe(&[(RECIPE_VALID, "False", "patch.installSteps[0]: no command")]);
        assert_eq!(
            why_not_ready(&invalid),
            "Recipe fw-2 is invalid: patch.installSteps[0]: no command"
        );
        let unsigned = recipe(&[
            (RECIPE_VALID, "True", ""),
            (RECIPE_SIGNED, "False", "no signing key configured"),
        ]);
        assert_eq!(
            why_not_ready(&unsigned),
            "Recipe fw-2 is unsigned: no signing key configured"
        );
        let missing = recipe(&[
            (RECIPE_VALID, "True", ""),
            (
                RECIPE_ARTIFACTS_AVAILABLE,
                "False",
                "not in the blob store: a.zip",
            ),
            (RECIPE_SIGNED, "True", ""),
        ]);
        assert_eq!(
            why_not_ready(&missing),
            "Recipe fw-2 is held back: not in the blob store: a.zip"
        );
        assert_eq!(
            why_not_ready(&recipe(&[])),
            "Recipe fw-2 is not validated yet"
        );
    }
}
