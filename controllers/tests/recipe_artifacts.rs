//! Recipe artifacts against the real API server and the backend's filesystem blob store: the
//! status lists each downloaded file's size and hashes, a missing file is named in
//! `ArtifactsAvailable` and holds the recipe back until it is published.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use cloudpillar_backend::blob::{BlobConfig, BlobStores};
use cloudpillar_controllers::recipe::{BlobArtifacts, KeySigner, is_ready};
use cloudpillar_crds::Recipe;
use cloudpillar_crds::recipe::RECIPE_ARTIFACTS_AVAILABLE;
use cloudpillar_protocol::signing::SigningKey;
use cloudpillar_tests::controllers::{Operator, apply, eventually, test_config};
use cloudpillar_tests::{fixture_json, install_crds, kube_client, test_namespace};
use k8s_openapi::api::events::v1::Event;
use kube::api::{Api, ListParams};
use serde_json::json;
use sha2::{Digest, Sha256, Sha512};

const WAIT: Duration = Duration::from_secs(60);

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn availability(recipe: &Recipe) -> Option<(String, String, String)> {
    let conditions = recipe.status.as_ref()?.conditions.clone();
    cloudpillar_crds::conditions::find(&conditions, RECIPE_ARTIFACTS_AVAILABLE)
        .map(|c| (c.status.clone(), c.reason.clone(), c.message.clone()))
}

#[tokio::test]
async fn stored_files_get_size_and_hashes_and_a_missing_one_holds_the_recipe_back()
-> anyhow::Result<()> {
    let client = kube_client().await?;
    install_crds(&client).await?;
    let ns = test_namespace(&client, "ctl-artifacts").await?;

    // The blob store as `cloudpillar artifact put` fills it; one of the two files is there.
    let dir = tempfile::tempdir()?;
    let blobs = BlobConfig::Filesystem {
        root: dir.path().to_owned(),
    };
    let stores = BlobStores::open(&blobs).await?;
    let spu: Vec<u8> = (0..3 * 1024 * 1024).map(|i| (i % 251) as u8).collect();
    stores
        .patches
        .put("SPU.zip", Bytes::from(spu.clone()))
        .await?;

    let mut config = test_config(&ns);
    config.signer = Some(Arc::new(KeySigner(SigningKey::generate()?)));
    config.artifacts = Some(Arc::new(BlobArtifacts::new(stores.patches.store().clone())));
    let operator = Operator::start(&client, config);

    let change_spec = fixture_json("security-update-desired.json", "/desired/changeSpec")?;
    let recipe = json!({
        "apiVersion": "cloudpillar.io/v1alpha1", "kind": "Recipe",
        "metadata": { "name": "security" },
        "spec": { "changeSpec": change_spec },
    });
    apply::<Recipe>(&client, &ns, recipe).await?;
    let recipes: Api<Recipe> = Api::namespaced(client.clone(), &ns);

    let missing = eventually("the missing file named", WAIT, || async {
        let recipe = recipes.get("security").await?;
        let named = availability(&recipe)
            .is_some_and(|(status, reason, _)| status == "False" && reason == "ArtifactsMissing");
        Ok(named.then_some(recipe))
    })
    .await?;
    let (_, _, message) = availability(&missing).expect("condition");
    assert_eq!(message, "not in the blob store: mcaffeeV3_5150dat.zip");
    assert!(!is_ready(&missing), "a recipe with a missing file is ready");
    let artifacts = missing.status.clone().expect("status").artifacts;
    let found = artifacts
        .iter()
        .find(|a| a.name == "SPU.zip")
        .expect("SPU.zip listed");
    assert_eq!(found.size, Some(spu.len() as i64));
    assert_eq!(
        found.sha512.as_deref(),
        Some(hex(&Sha512::digest(&spu)).as_str())
    );
    assert_eq!(
        found.sha256.as_deref(),
        Some(hex(&Sha256::digest(&spu)).as_str())
    );
    let absent = artifacts
        .iter()
        .find(|a| a.name == "mcaffeeV3_5150dat.zip")
        .expect("missing file listed");
    assert_eq!((absent.size, absent.sha512.as_deref()), (None, None));

    let events: Api<Event> = Api::namespaced(client.clone(), &ns);
    let warned = events
        .list(&ListParams::default())
        .await?
        .items
        .iter()
        .any(|e| e.reason.as_deref() == Some("ArtifactsMissing"));
    assert!(warned, "no ArtifactsMissing event");

    // Publishing the file clears the condition without any change to the Recipe.
    let dat = b"virus definitions".repeat(1000);
    stores
        .patches
        .put("mcaffeeV3_5150dat.zip", Bytes::from(dat.clone()))
        .await?;
    let available = eventually("every file available", WAIT, || async {
        let recipe = recipes.get("security").await?;
        let all = availability(&recipe).is_some_and(|(status, _, _)| status == "True");
        Ok(all.then_some(recipe))
    })
    .await?;
    assert!(
        is_ready(&available),
        "signed recipe with every file is not ready"
    );
    let dat_status = available
        .status
        .expect("status")
        .artifacts
        .into_iter()
        .find(|a| a.name == "mcaffeeV3_5150dat.zip")
        .expect("listed");
    assert_eq!(dat_status.size, Some(dat.len() as i64));
    assert_eq!(dat_status.sha512, Some(hex(&Sha512::digest(&dat))));

    cloudpillar_tests::delete_namespace(&client, &ns).await?;
    operator.stop().await
}
