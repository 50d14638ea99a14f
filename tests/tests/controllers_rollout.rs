//! Recipes and Rollouts against the real API server and an embedded edge hub, with devices
//! reporting over MQTT as the agent does.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use cloudpillar_controllers::SecretLocation;
use cloudpillar_crds::{
    Device, DeviceAssignment, DeviceRolloutPhase, Recipe, Rollout, RolloutPhase,
};
use cloudpillar_protocol::signing::{SigningKey, TrustStore};
use cloudpillar_tests::controllers::{
    EdgeHub, Operator, SimDevice, apply, device_key, events_for, eventually, test_config,
};
use cloudpillar_tests::recording::RecordingConnector;
use cloudpillar_tests::{fixture_json, install_crds, kube_client, test_namespace};
use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use kube::{Client, ResourceExt};
use serde_json::{Value, json};

const WAIT: Duration = Duration::from_secs(40);

/// A namespace with an edge hub, a signing key in a Secret and the operator running.
struct Site {
    client: Client,
    ns: String,
    hub: EdgeHub,
    key: SigningKey,
    recorder: RecordingConnector,
    operator: Option<Operator>,
    links: BTreeMap<String, SimDevice>,
}

impl Site {
    async fn start(prefix: &str) -> anyhow::Result<Self> {
        let client = kube_client().await?;
        install_crds(&client).await?;
        let ns = test_namespace(&client, prefix).await?;
        let hub = EdgeHub::start(&client, &ns, "edge", 5000).await?;
        let key = SigningKey::generate()?;
        let secret = Secret {
            metadata: kube::api::ObjectMeta {
                name: Some("recipe-signing".into()),
                ..Default::default()
            },
            data: Some(BTreeMap::from([(
                "key.pem".to_owned(),
                ByteString(key.to_pkcs8_pem()?.into_bytes()),
            )])),
            ..Secret::default()
        };
        Api::<Secret>::namespaced(client.clone(), &ns)
            .create(&PostParams::default(), &secret)
            .await?;
        let mut site = Self {
            client,
            ns,
            hub,
            key,
            recorder: RecordingConnector::default(),
            operator: None,
            links: BTreeMap::new(),
        };
        site.start_operator();
        Ok(site)
    }

    fn start_operator(&mut self) {
        let mut config = test_config(&self.ns);
        config.connector = Arc::new(self.recorder.clone());
        config.signing_key = Some(SecretLocation {
            namespace: self.ns.clone(),
            name: "recipe-signing".into(),
            key: "key.pem".into(),
        });
        self.operator = Some(Operator::start(&self.client, config));
    }

    async fn restart_operator(&mut self) -> anyhow::Result<()> {
        if let Some(operator) = self.operator.take() {
            operator.stop().await?;
        }
        self.start_operator();
        Ok(())
    }

    async fn finish(mut self) -> anyhow::Result<()> {
        let timeout = Duration::from_secs(20);
        cloudpillar_tests::delete_namespace_and_wait(&self.client, &self.ns, timeout).await?;
        if let Some(operator) = self.operator.take() {
            operator.stop().await?;
        }
        Ok(())
    }

    async fn recipe(&self, name: &str, change_spec: Value) -> anyhow::Result<()> {
        let object = json!({
            "apiVersion": "cloudpillar.io/v1alpha1", "kind": "Recipe",
            "metadata": { "name": name }, "spec": { "changeSpec": change_spec },
        });
        apply::<Recipe>(&self.client, &self.ns, object).await?;
        Ok(())
    }

    /// Applies labelled Devices, waits until registered and connects each over MQTT.
    async fn devices(&mut self, names: &[&str], labels: Value) -> anyhow::Result<()> {
        self.register(names, labels).await?;
        for name in names {
            let key = device_key(&self.client, &self.ns, name).await?;
            let mut link = self.hub.connect(name, &key).await?;
            link.report(json!({"deviceState": "READY"})).await?;
            self.links.insert((*name).to_owned(), link);
        }
        Ok(())
    }

    /// Applies labelled Devices and waits until they are registered; no agent connects.
    async fn register(&self, names: &[&str], labels: Value) -> anyhow::Result<()> {
        for name in names {
            let object = json!({
                "apiVersion": "cloudpillar.io/v1alpha1", "kind": "Device",
                "metadata": { "name": name, "labels": labels },
                "spec": { "hubRef": { "name": "edge" } },
            });
            apply::<Device>(&self.client, &self.ns, object).await?;
        }
        let api: Api<Device> = Api::namespaced(self.client.clone(), &self.ns);
        for name in names {
            eventually(&format!("{name} registered"), WAIT, || async {
                let device = api.get_opt(name).await?;
                let conditions = device
                    .and_then(|d| d.status)
                    .map(|s| s.conditions)
                    .unwrap_or_default();
                Ok(cloudpillar_crds::conditions::is_true(&conditions, "Registered").then_some(()))
            })
            .await?;
        }
        Ok(())
    }

    async fn report(&mut self, device: &str, patch: Value) -> anyhow::Result<()> {
        self.links
            .get_mut(device)
            .expect("connected device")
            .report(patch)
            .await
    }

    /// Reports the recipe `id` in `status` the way the agent does.
    async fn recipe_status(&mut self, device: &str, id: &str, status: &str) -> anyhow::Result<()> {
        let state = if status == "InProgress" {
            "PATCH_APPLYING"
        } else {
            "READY"
        };
        let patch = json!({
            "deviceState": state,
            "changeSpec": {
                "id": id, "Status": status, "actionPath": "changeSpec.patch.installSteps[0]",
                "patch": { "installSteps": [ { "status": status, "ResultCode": "0", "Progress": 40 } ] },
            },
        });
        self.report(device, patch).await
    }

    fn twin_recipe(&self, device: &str) -> Option<String> {
        let twin = self.hub.twin(device)?;
        twin.pointer("/properties/desired/changeSpec/id")
            .and_then(Value::as_str)
            .map(str::to_owned)
    }

    async fn rollout(&self, name: &str) -> anyhow::Result<Rollout> {
        Ok(Api::<Rollout>::namespaced(self.client.clone(), &self.ns)
            .get(name)
            .await?)
    }

    async fn wait_rollout(
        &self,
        name: &str,
        what: &str,
        check: impl Fn(&Rollout) -> bool,
    ) -> anyhow::Result<Rollout> {
        let api: Api<Rollout> = Api::namespaced(self.client.clone(), &self.ns);
        eventually(what, WAIT, || async {
            Ok(api.get_opt(name).await?.filter(|r| check(r)))
        })
        .await
    }

    async fn assignment_phase(&self, device: &str) -> anyhow::Result<Option<DeviceRolloutPhase>> {
        Ok(self.assignment(device).await?.map(|a| a.phase))
    }

    async fn assignment(&self, device: &str) -> anyhow::Result<Option<DeviceAssignment>> {
        let device = Api::<Device>::namespaced(self.client.clone(), &self.ns)
            .get(device)
            .await?;
        Ok(device.status.and_then(|s| s.assignment))
    }

    /// The twin's desired `changeCancel`, if any.
    fn twin_cancel(&self, device: &str) -> Option<Value> {
        self.hub
            .twin(device)?
            .pointer("/properties/desired/changeCancel")
            .cloned()
    }

    /// Checks the twin holds the Recipe's changeSpec and a changeSign that verifies.
    async fn assert_signed_recipe_in_twin(&self, device: &str, recipe: &str) -> anyhow::Result<()> {
        let recipe = Api::<Recipe>::namespaced(self.client.clone(), &self.ns)
            .get(recipe)
            .await?;
        let twin = self.hub.twin(device).expect("twin");
        let desired = &twin["properties"]["desired"];
        assert_eq!(
            desired["changeSpec"],
            serde_json::to_value(&recipe.spec.change_spec)?,
            "{device}"
        );
        let mut trust = TrustStore::new();
        trust.add(self.key.verifying_key().clone());
        let sign = desired["changeSign"].as_str().expect("changeSign");
        trust.verify_json(&desired["changeSpec"], sign)?;
        Ok(())
    }
}

fn phase_is(phase: RolloutPhase) -> impl Fn(&Rollout) -> bool {
    move |r| r.status.as_ref().is_some_and(|s| s.phase == phase)
}

fn paused_because(reason: &'static str) -> impl Fn(&Rollout) -> bool {
    move |r| {
        let conditions = r
            .status
            .as_ref()
            .map(|s| s.conditions.clone())
            .unwrap_or_default();
        cloudpillar_crds::conditions::find(&conditions, "Paused")
            .is_some_and(|c| c.status == "True" && c.reason == reason)
    }
}

#[tokio::test]
async fn field_recipes_are_signed_and_an_invalid_recipe_never_reaches_a_twin() -> anyhow::Result<()>
{
    let mut site = Site::start("ctl-recipe").await?;
    let windows = fixture_json("windows-update-recipe.json", "/changeSpec")?;
    let security = fixture_json("security-update-desired.json", "/desired/changeSpec")?;
    site.recipe("windows", windows).await?;
    site.recipe("security", security).await?;
    let mut invalid = fixture_json("windows-update-recipe.json", "/changeSpec")?;
    invalid["id"] = json!("invalid-1");
    invalid["patch"]["preTransitConfig"][0]["shell"] = json!("zsh");
    site.recipe("invalid", invalid).await?;

    let recipes: Api<Recipe> = Api::namespaced(site.client.clone(), &site.ns);
    let mut trust = TrustStore::new();
    trust.add(site.key.verifying_key().clone());
    for name in ["windows", "security"] {
        let signed = eventually(&format!("{name} signed"), WAIT, || async {
            let recipe = recipes.get(name).await?;
            Ok(cloudpillar_controllers::recipe::is_ready(&recipe).then_some(recipe))
        })
        .await?;
        let status = signed.status.clone().expect("status");
        let spec = serde_json::to_value(&signed.spec.change_spec)?;
        trust.verify_json(&spec, status.signature.as_deref().expect("signature"))?;
        assert_eq!(status.key_id.as_deref(), Some(site.key.key_id()));
        assert_eq!(status.digest.as_deref().map(str::len), Some(128));
        assert_eq!(
            signed.metadata.generation,
            Some(1),
            "the operator changed the spec"
        );
    }
    let security = recipes.get("security").await?;
    let artifacts: Vec<String> = security
        .status
        .expect("status")
        .artifacts
        .into_iter()
        .map(|a| a.name)
        .collect();
    assert_eq!(artifacts, vec!["mcaffeeV3_5150dat.zip", "SPU.zip"]);

    let refused = eventually("invalid recipe refused", WAIT, || async {
        let recipe = recipes.get("invalid").await?;
        let conditions = recipe
            .status
            .clone()
            .map(|s| s.conditions)
            .unwrap_or_default();
        let valid = cloudpillar_crds::conditions::find(&conditions, "Valid").cloned();
        Ok(valid.filter(|c| c.status == "False").map(|c| (recipe, c)))
    })
    .await?;
    assert!(refused.1.message.contains("shell"), "{}", refused.1.message);
    assert!(
        refused
            .0
            .status
            .as_ref()
            .is_some_and(|s| s.signature.is_none())
    );

    // A Rollout of the invalid recipe stays Pending and writes nothing.
    site.devices(&["dev-x"], json!({"fleet": "invalid"}))
        .await?;
    let rollout = json!({
        "apiVersion": "cloudpillar.io/v1alpha1", "kind": "Rollout", "metadata": { "name": "bad" },
        "spec": { "recipeRef": { "name": "invalid" }, "selector": { "matchLabels": { "fleet": "invalid" } } },
    });
    apply::<Rollout>(&site.client, &site.ns, rollout).await?;
    site.wait_rollout("bad", "rollout pending on an invalid recipe", |r| {
        r.status
            .as_ref()
            .is_some_and(|s| s.phase == RolloutPhase::Pending && s.observed_generation.is_some())
    })
    .await?;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(site.twin_recipe("dev-x"), None);
    site.finish().await
}

#[tokio::test]
async fn rollout_walks_two_waves_defers_busy_devices_pauses_on_failures_and_survives_restart()
-> anyhow::Result<()> {
    let mut site = Site::start("ctl-rollout").await?;
    let windows = fixture_json("windows-update-recipe.json", "/changeSpec")?;
    let id = windows["id"].as_str().expect("id").to_owned();
    site.recipe("windows", windows).await?;
    let names = ["dev-0", "dev-1", "dev-2", "dev-3", "dev-4", "dev-5"];
    site.devices(&names, json!({"fleet": "ro"})).await?;
    site.report("dev-5", json!({"deviceState": "BUSY"})).await?;

    // Watch the twins throughout: never more than maxConcurrent devices hold an unfinished recipe.
    let peak = Arc::new(AtomicUsize::new(0));
    let watcher = {
        let (core, peak, id) = (site.hub.handle.core().clone(), peak.clone(), id.clone());
        tokio::spawn(async move {
            loop {
                let running = (0..7)
                    .filter_map(|i| core.get_twin(&format!("dev-{i}")).ok())
                    .filter(|t| t.pointer("/properties/desired/changeSpec/id") == Some(&json!(id)))
                    .filter(|t| {
                        let status = t
                            .pointer("/properties/reported/changeSpec/Status")
                            .and_then(Value::as_str);
                        !matches!(status, Some("Success" | "Failure" | "Cancelled"))
                    })
                    .count();
                peak.fetch_max(running, Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        })
    };

    let rollout = json!({
        "apiVersion": "cloudpillar.io/v1alpha1", "kind": "Rollout", "metadata": { "name": "ro-1" },
        "spec": {
            "recipeRef": { "name": "windows" },
            "selector": { "matchLabels": { "fleet": "ro" } },
            "strategy": {
                "waves": [ { "name": "canary", "count": 2 }, { "percent": 100 } ],
                "maxConcurrent": 2,
                "failureThreshold": { "count": 0, "action": "Pause" },
            },
        },
    });
    apply::<Rollout>(&site.client, &site.ns, rollout).await?;

    // Wave 1: the first two devices (by name) get the signed recipe; no one else.
    site.wait_rollout("ro-1", "wave 1 assigned", |r| {
        r.status.as_ref().is_some_and(|s| s.counts.assigned == 2)
    })
    .await?;
    eventually("recipe in wave 1 twins", WAIT, || async {
        Ok(
            (site.twin_recipe("dev-0").is_some() && site.twin_recipe("dev-1").is_some())
                .then_some(()),
        )
    })
    .await?;
    site.assert_signed_recipe_in_twin("dev-0", "windows")
        .await?;
    site.assert_signed_recipe_in_twin("dev-1", "windows")
        .await?;
    for other in ["dev-2", "dev-3", "dev-4", "dev-5"] {
        assert_eq!(
            site.twin_recipe(other),
            None,
            "{other} got the recipe in wave 1"
        );
    }
    let status = site.rollout("ro-1").await?.status.expect("status");
    assert_eq!(
        (status.phase, status.current_wave, status.counts.pending),
        (RolloutPhase::Progressing, Some(1), 4)
    );

    // Devices report progress, then success: wave 2 starts with the free slots.
    site.recipe_status("dev-0", &id, "InProgress").await?;
    site.wait_rollout("ro-1", "in progress counted", |r| {
        r.status.as_ref().is_some_and(|s| s.counts.in_progress == 1)
    })
    .await?;
    site.recipe_status("dev-0", &id, "Success").await?;
    site.recipe_status("dev-1", &id, "Success").await?;
    let wave2 = site
        .wait_rollout("ro-1", "wave 2 started", |r| {
            r.status
                .as_ref()
                .is_some_and(|s| s.current_wave == Some(2) && s.counts.assigned == 2)
        })
        .await?;
    let counts = wave2.status.clone().expect("status").counts;
    assert_eq!(
        (counts.succeeded, counts.deferred, counts.pending),
        (2, 1, 1),
        "{counts:?}"
    );
    assert_eq!(
        site.assignment_phase("dev-5").await?,
        Some(DeviceRolloutPhase::Deferred)
    );
    assert!(site.twin_recipe("dev-2").is_some() && site.twin_recipe("dev-3").is_some());

    // The operator restarts mid-rollout; a device that matches late joins the wave.
    site.restart_operator().await?;
    site.devices(&["dev-6"], json!({"fleet": "ro"})).await?;

    // The first failure crosses a threshold of zero: paused with the reason and an Event,
    // and the slot it frees is not used.
    site.recipe_status("dev-2", &id, "Failure").await?;
    site.wait_rollout(
        "ro-1",
        "paused on a failure",
        paused_because("FailureThreshold"),
    )
    .await?;
    site.recipe_status("dev-3", &id, "Failure").await?;
    let paused = site
        .wait_rollout("ro-1", "second failure counted", |r| {
            paused_because("FailureThreshold")(r)
                && r.status.as_ref().is_some_and(|s| s.counts.failed == 2)
        })
        .await?;
    assert_eq!(
        paused.status.as_ref().map(|s| s.phase),
        Some(RolloutPhase::Paused)
    );
    let failed: Vec<String> = paused
        .status
        .expect("status")
        .failed_devices
        .into_iter()
        .map(|f| f.name)
        .collect();
    assert_eq!(failed.len(), 2);
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(
        site.twin_recipe("dev-4"),
        None,
        "a device started while paused"
    );

    // Raising the threshold resumes; the busy device starts once it is ready.
    let raise = json!({"spec": {"strategy": {"failureThreshold": {"count": 5}}}});
    Api::<Rollout>::namespaced(site.client.clone(), &site.ns)
        .patch("ro-1", &PatchParams::default(), &Patch::Merge(&raise))
        .await?;
    eventually("dev-4 started", WAIT, || async {
        Ok(site.twin_recipe("dev-4").map(|_| ()))
    })
    .await?;
    assert_eq!(
        site.assignment_phase("dev-5").await?,
        Some(DeviceRolloutPhase::Deferred)
    );
    site.recipe_status("dev-4", &id, "Success").await?;
    site.report("dev-5", json!({"deviceState": "READY"}))
        .await?;
    eventually("dev-5 started", WAIT, || async {
        Ok(site.twin_recipe("dev-5").map(|_| ()))
    })
    .await?;
    eventually("dev-6 started", WAIT, || async {
        Ok(site.twin_recipe("dev-6").map(|_| ()))
    })
    .await?;
    site.recipe_status("dev-5", &id, "Success").await?;
    site.recipe_status("dev-6", &id, "Success").await?;

    let done = site
        .wait_rollout("ro-1", "rollout finished", phase_is(RolloutPhase::Failed))
        .await?;
    let status = done.status.expect("status");
    assert_eq!(
        (
            status.counts.total,
            status.counts.succeeded,
            status.counts.failed
        ),
        (7, 5, 2)
    );
    assert!(status.completion_time.is_some());
    assert!(
        peak.load(Ordering::Relaxed) <= 2,
        "{} devices ran at once",
        peak.load(Ordering::Relaxed)
    );
    watcher.abort();

    // Every device received the recipe exactly once, across the restart.
    for device in names.iter().copied().chain(["dev-6"]) {
        let writes = site
            .recorder
            .patches_for(device)
            .into_iter()
            .filter(|p| {
                p.desired
                    .as_ref()
                    .is_some_and(|d| d.get("changeSpec").is_some())
            })
            .count();
        assert_eq!(writes, 1, "{device} got the recipe {writes} times");
    }
    site.finish().await
}

#[tokio::test]
async fn a_second_rollout_waits_and_cancelling_leaves_reported_progress_untouched()
-> anyhow::Result<()> {
    let mut site = Site::start("ctl-cancel").await?;
    let windows = fixture_json("windows-update-recipe.json", "/changeSpec")?;
    let security = fixture_json("security-update-desired.json", "/desired/changeSpec")?;
    let (first_id, second_id) = (
        windows["id"].as_str().expect("id").to_owned(),
        security["id"].as_str().expect("id").to_owned(),
    );
    site.recipe("windows", windows).await?;
    site.recipe("security", security).await?;
    site.devices(&["dev-a"], json!({"fleet": "one"})).await?;
    let rollout = |name: &str, recipe: &str| {
        json!({
            "apiVersion": "cloudpillar.io/v1alpha1", "kind": "Rollout", "metadata": { "name": name },
            "spec": { "recipeRef": { "name": recipe }, "selector": { "matchLabels": { "fleet": "one" } } },
        })
    };
    apply::<Rollout>(&site.client, &site.ns, rollout("first", "windows")).await?;
    eventually("first recipe in twin", WAIT, || async {
        Ok((site.twin_recipe("dev-a").as_deref() == Some(first_id.as_str())).then_some(()))
    })
    .await?;

    // A second Rollout over the same device waits for the first, and says which one.
    apply::<Rollout>(&site.client, &site.ns, rollout("second", "security")).await?;
    let waiting = site
        .wait_rollout("second", "second waits", paused_because("RecipeBusy"))
        .await?;
    let conditions = waiting.status.map(|s| s.conditions).unwrap_or_default();
    let paused = cloudpillar_crds::conditions::find(&conditions, "Paused").expect("Paused");
    assert_eq!(
        paused.message,
        "dev-a waits for Rollout first to finish (a device runs one recipe at a time)"
    );
    site.recipe_status("dev-a", &first_id, "Success").await?;
    site.wait_rollout(
        "first",
        "first succeeded",
        phase_is(RolloutPhase::Succeeded),
    )
    .await?;
    eventually("second recipe in twin", WAIT, || async {
        Ok((site.twin_recipe("dev-a").as_deref() == Some(second_id.as_str())).then_some(()))
    })
    .await?;
    site.assert_signed_recipe_in_twin("dev-a", "security")
        .await?;

    // The finished first Rollout keeps its count though dev-a now belongs to the second.
    let first = site.rollout("first").await?.status.unwrap_or_default();
    assert_eq!((first.counts.total, first.counts.succeeded), (1, 1));

    // A Rollout whose Recipe does not exist names it.
    apply::<Rollout>(&site.client, &site.ns, rollout("third", "absent")).await?;
    site.wait_rollout("third", "third names its recipe", |r| {
        let conditions = r.status.clone().map(|s| s.conditions).unwrap_or_default();
        cloudpillar_crds::conditions::find(&conditions, "Progressing").is_some_and(|c| {
            c.reason == "RecipeNotReady" && c.message == "Recipe absent does not exist"
        })
    })
    .await?;

    // F22: the device is mid-download when the Rollout is deleted.
    site.recipe_status("dev-a", &second_id, "InProgress")
        .await?;
    site.wait_rollout("second", "second in progress", |r| {
        r.status.as_ref().is_some_and(|s| s.counts.in_progress == 1)
    })
    .await?;
    let before =
        site.hub.twin("dev-a").expect("twin")["properties"]["reported"]["changeSpec"].clone();
    let rollouts: Api<Rollout> = Api::namespaced(site.client.clone(), &site.ns);
    rollouts.delete("second", &DeleteParams::default()).await?;
    let cancel = eventually("cancel in desired", WAIT, || async {
        Ok(site
            .hub
            .twin("dev-a")
            .and_then(|t| t.pointer("/properties/desired/changeCancel").cloned()))
    })
    .await?;
    assert_eq!(cancel, json!({ "id": second_id }));
    let after =
        site.hub.twin("dev-a").expect("twin")["properties"]["reported"]["changeSpec"].clone();
    assert_eq!(before, after, "the operator touched reported progress");
    assert!(
        rollouts.get_opt("second").await?.is_some(),
        "the Rollout went before the device answered"
    );
    assert_ne!(
        site.assignment_phase("dev-a").await?,
        Some(DeviceRolloutPhase::Cancelled)
    );

    // The device confirms: only now is it Cancelled, and the Rollout goes away.
    site.recipe_status("dev-a", &second_id, "Cancelled").await?;
    eventually("second removed", WAIT, || async {
        Ok(rollouts.get_opt("second").await?.is_none().then_some(()))
    })
    .await?;
    assert_eq!(
        site.assignment_phase("dev-a").await?,
        Some(DeviceRolloutPhase::Cancelled)
    );
    let _ = site.rollout("first").await?.name_any();
    site.finish().await
}

#[tokio::test]
async fn a_rollout_whose_time_zone_is_unknown_shows_why_in_status_and_an_event()
-> anyhow::Result<()> {
    let site = Site::start("ctl-ro-invalid").await?;
    let rollout = |time_zone: &str| {
        json!({
            "apiVersion": "cloudpillar.io/v1alpha1", "kind": "Rollout",
            "metadata": { "name": "mars" },
            "spec": {
                "recipeRef": { "name": "windows" },
                "selector": { "matchLabels": { "fleet": "mars" } },
                "strategy": { "maintenanceWindow": {
                    "schedule": "0 2 * * *", "duration": "2h", "timeZone": time_zone,
                } },
            },
        })
    };
    apply::<Rollout>(&site.client, &site.ns, rollout("Mars/Olympus")).await?;

    // The API server cannot know the IANA database; the Rollout says what is wrong.
    let invalid = site
        .wait_rollout("mars", "rollout Invalid", phase_is(RolloutPhase::Invalid))
        .await?;
    let status = invalid.status.clone().unwrap_or_default();
    let progressing = cloudpillar_crds::conditions::find(&status.conditions, "Progressing")
        .cloned()
        .expect("Progressing condition");
    assert_eq!(
        (progressing.status.as_str(), progressing.reason.as_str()),
        ("False", "InvalidSpec")
    );
    assert!(
        progressing.message.contains("\"Mars/Olympus\" is unknown"),
        "{}",
        progressing.message
    );
    assert_eq!(status.observed_generation, invalid.metadata.generation);
    let events: Api<k8s_openapi::api::events::v1::Event> =
        Api::namespaced(site.client.clone(), &site.ns);
    let warning = eventually("InvalidSpec Event", WAIT, || async {
        let list = events.list(&Default::default()).await?;
        Ok(list.items.into_iter().find(|e| {
            e.reason.as_deref() == Some("InvalidSpec") && e.type_.as_deref() == Some("Warning")
        }))
    })
    .await?;
    assert!(
        warning.note.unwrap_or_default().contains("Mars/Olympus"),
        "the Event says what is wrong"
    );

    // Fixed, the Rollout carries on: here it waits for its Recipe.
    apply::<Rollout>(&site.client, &site.ns, rollout("Europe/Berlin")).await?;
    site.wait_rollout(
        "mars",
        "rollout valid again",
        phase_is(RolloutPhase::Pending),
    )
    .await?;
    site.finish().await
}

/// A recipe of one quick shell step.
fn quick_recipe(id: &str) -> Value {
    json!({ "id": id, "patch": { "installSteps": [ { "shell": "bash", "command": "true" } ] } })
}

#[tokio::test]
async fn two_rollouts_over_the_same_devices_take_turns_and_both_finish() -> anyhow::Result<()> {
    let mut site = Site::start("ctl-turns").await?;
    site.recipe("quick5", quick_recipe("quick5")).await?;
    site.recipe("quick6", quick_recipe("quick6")).await?;
    let names = ["pc-01", "pc-02", "pc-03", "pc-04"];
    site.devices(&names, json!({"fleet": "rev"})).await?;
    let rollout = |name: &str, recipe: &str, waves: Value| {
        json!({
            "apiVersion": "cloudpillar.io/v1alpha1", "kind": "Rollout", "metadata": { "name": name },
            "spec": {
                "recipeRef": { "name": recipe },
                "selector": { "matchLabels": { "fleet": "rev" } },
                "strategy": { "waves": waves },
            },
        })
    };
    let canary = json!([{ "name": "canary", "count": 1 }, { "name": "rest", "percent": 100 }]);
    let all = json!([{ "percent": 100 }]);
    let (first, second) = tokio::join!(
        apply::<Rollout>(
            &site.client,
            &site.ns,
            rollout("canary-first", "quick5", canary)
        ),
        apply::<Rollout>(
            &site.client,
            &site.ns,
            rollout("all-at-once", "quick6", all)
        ),
    );
    first?;
    second?;

    // Every device runs whatever recipe its twin holds and succeeds. Neither Rollout's
    // counts ever go back, also when the other one takes a device it finished with.
    let rollouts: Api<Rollout> = Api::namespaced(site.client.clone(), &site.ns);
    let mut reported: Vec<(String, String)> = Vec::new();
    let mut seen: BTreeMap<&str, (u32, u32)> = BTreeMap::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(90);
    loop {
        for device in names {
            if let Some(id) = site.twin_recipe(device)
                && !reported.contains(&(device.to_owned(), id.clone()))
            {
                site.recipe_status(device, &id, "Success").await?;
                reported.push((device.to_owned(), id));
            }
        }
        let mut finished = 0;
        for name in ["canary-first", "all-at-once"] {
            let status = rollouts.get(name).await?.status.unwrap_or_default();
            let now = (status.counts.total, status.counts.succeeded);
            let before = seen.insert(name, now).unwrap_or_default();
            assert!(
                now.0 >= before.0 && now.1 >= before.1,
                "{name} went back from {before:?} to {now:?}"
            );
            if status.phase == RolloutPhase::Succeeded {
                finished += 1;
            }
        }
        if finished == 2 {
            break;
        }
        if tokio::time::Instant::now() > deadline {
            let status = |r: Rollout| {
                let s = r.status.unwrap_or_default();
                (s.phase, s.counts, s.conditions)
            };
            anyhow::bail!(
                "the Rollouts did not both finish: {:?} / {:?}",
                status(rollouts.get("canary-first").await?),
                status(rollouts.get("all-at-once").await?)
            );
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    for name in ["canary-first", "all-at-once"] {
        let counts = site.rollout(name).await?.status.expect("status").counts;
        assert_eq!(
            (counts.total, counts.succeeded),
            (4, 4),
            "{name}: {counts:?}"
        );
    }

    // Each device received each recipe exactly once.
    for device in names {
        let ids: Vec<String> = site
            .recorder
            .patches_for(device)
            .into_iter()
            .filter_map(|p| {
                p.desired?
                    .pointer("/changeSpec/id")?
                    .as_str()
                    .map(str::to_owned)
            })
            .collect();
        let mut sorted = ids.clone();
        sorted.sort();
        assert_eq!(sorted, vec!["quick5", "quick6"], "{device} got {ids:?}");
    }
    site.finish().await
}

#[tokio::test]
async fn timed_out_and_aborted_devices_are_cancelled_and_a_late_result_is_recorded()
-> anyhow::Result<()> {
    let mut site = Site::start("ctl-abort").await?;
    site.recipe("quick7", quick_recipe("quick7")).await?;
    // Two devices whose agents never come, and one that turns busy mid-run.
    site.register(&["pc-01", "pc-02"], json!({"fleet": "late"}))
        .await?;
    site.devices(&["pc-03"], json!({"fleet": "late"})).await?;
    let rollout = json!({
        "apiVersion": "cloudpillar.io/v1alpha1", "kind": "Rollout", "metadata": { "name": "timed" },
        "spec": {
            "recipeRef": { "name": "quick7" },
            "selector": { "matchLabels": { "fleet": "late" } },
            "strategy": {
                "deviceTimeout": "5s",
                "failureThreshold": { "percent": 40, "action": "Abort" },
            },
        },
    });
    apply::<Rollout>(&site.client, &site.ns, rollout).await?;
    eventually("recipe in pc-03's twin", WAIT, || async {
        Ok(site.twin_recipe("pc-03").map(|_| ()))
    })
    .await?;
    site.recipe_status("pc-03", "quick7", "InProgress").await?;
    site.report("pc-03", json!({"deviceState": "BUSY"})).await?;

    // The silent devices time out and the Rollout aborts: every unfinished device, timed
    // out or still running, gets a cancel request in its twin.
    let aborted = site
        .wait_rollout("timed", "rollout aborted", phase_is(RolloutPhase::Aborted))
        .await?;
    let failed = aborted.status.expect("status").failed_devices;
    assert_eq!(failed.len(), 2, "{failed:?}");
    for entry in &failed {
        assert_eq!(entry.reason, "Timeout");
        assert_eq!(
            entry.message.as_deref(),
            Some("Timeout: no result within 5s of receiving the recipe")
        );
    }
    for device in ["pc-01", "pc-02", "pc-03"] {
        let cancel = eventually(&format!("cancel in {device}'s twin"), WAIT, || async {
            Ok(site.twin_cancel(device))
        })
        .await?;
        assert_eq!(cancel, json!({ "id": "quick7" }), "{device}");
    }
    let running = site.assignment("pc-03").await?.expect("assignment");
    assert_eq!(
        running.reason.as_deref(),
        Some("CancelRequested: the Rollout was aborted")
    );

    // pc-01 had run the recipe after all and its result arrives late: it is recorded as it
    // is, saying so; pc-03 confirms the cancel. The Rollout stays Aborted, counting both.
    let late = json!({"changeSpec": {"id": "quick7", "Status": "Success"}, "deviceState": "READY"});
    site.hub.handle.core().patch_reported("pc-01", late).await?;
    site.recipe_status("pc-03", "quick7", "Cancelled").await?;
    let counted = site
        .wait_rollout("timed", "late results counted", |r| {
            r.status.as_ref().is_some_and(|s| {
                (s.counts.succeeded, s.counts.failed, s.counts.cancelled) == (1, 1, 1)
            })
        })
        .await?;
    let status = counted.status.expect("status");
    assert_eq!(status.phase, RolloutPhase::Aborted);
    assert_eq!(status.counts.total, 3);
    assert_eq!(
        status
            .failed_devices
            .iter()
            .map(|f| f.name.as_str())
            .collect::<Vec<_>>(),
        vec!["pc-02"]
    );
    let record = site.assignment("pc-01").await?.expect("assignment");
    assert_eq!(record.phase, DeviceRolloutPhase::Succeeded);
    assert_eq!(
        record.reason.as_deref(),
        Some("FinishedLate: the device reported Success after it had timed out")
    );
    assert_eq!(
        site.assignment_phase("pc-03").await?,
        Some(DeviceRolloutPhase::Cancelled)
    );

    // Deleting the aborted Rollout leaves every twin it wrote cancelled.
    let rollouts: Api<Rollout> = Api::namespaced(site.client.clone(), &site.ns);
    rollouts.delete("timed", &DeleteParams::default()).await?;
    eventually("rollout removed", WAIT, || async {
        Ok(rollouts.get_opt("timed").await?.is_none().then_some(()))
    })
    .await?;
    assert_eq!(site.twin_cancel("pc-02"), Some(json!({ "id": "quick7" })));
    site.finish().await
}

#[tokio::test]
async fn a_recipe_the_twin_refuses_fails_its_device_with_the_hubs_words() -> anyhow::Result<()> {
    let mut site = Site::start("ctl-refused").await?;
    // Just inside the Recipe's own 32 KB check; pc-big's twin also holds a long note.
    let command = format!("echo {}", "x".repeat(31_800));
    let big = json!({ "id": "big-1", "patch": { "installSteps": [ { "shell": "bash", "command": command } ] } });
    site.recipe("big", big).await?;
    site.devices(&["pc-big", "pc-ok"], json!({"fleet": "big"}))
        .await?;
    let noted = json!({
        "apiVersion": "cloudpillar.io/v1alpha1", "kind": "Device",
        "metadata": { "name": "pc-big", "labels": { "fleet": "big" } },
        "spec": { "hubRef": { "name": "edge" }, "desired": { "note": "n".repeat(3_000) } },
    });
    apply::<Device>(&site.client, &site.ns, noted).await?;
    eventually("note in pc-big's twin", WAIT, || async {
        let twin = site.hub.twin("pc-big");
        Ok(twin
            .and_then(|t| t.pointer("/properties/desired/note").cloned())
            .map(drop))
    })
    .await?;
    let rollout = json!({
        "apiVersion": "cloudpillar.io/v1alpha1", "kind": "Rollout", "metadata": { "name": "big" },
        "spec": { "recipeRef": { "name": "big" }, "selector": { "matchLabels": { "fleet": "big" } } },
    });
    apply::<Rollout>(&site.client, &site.ns, rollout).await?;

    // The hub will never take the recipe into pc-big's twin: that device fails with the
    // hub's words and a Warning Event; pc-ok runs the recipe and the Rollout ends.
    let refused = site
        .wait_rollout("big", "pc-big failed", |r| {
            r.status.as_ref().is_some_and(|s| s.counts.failed == 1)
        })
        .await?;
    let failed = &refused.status.expect("status").failed_devices[0];
    assert_eq!(
        (failed.name.as_str(), failed.reason.as_str()),
        ("pc-big", "TwinRefused")
    );
    let reason = site.assignment("pc-big").await?.and_then(|a| a.reason);
    let reason = reason.unwrap_or_default();
    assert!(
        reason.starts_with("TwinRefused: the twin refused the recipe: ")
            && reason.contains("twin section is ")
            && reason.ends_with(" bytes, more than 32768"),
        "{reason}"
    );
    let events = events_for(&site.client, &site.ns, "big").await?;
    let warning = events
        .iter()
        .find(|e| e.reason.as_deref() == Some("TwinRefused"))
        .expect("a TwinRefused Event");
    assert_eq!(warning.type_.as_deref(), Some("Warning"));
    assert!(
        warning
            .note
            .as_deref()
            .is_some_and(|n| n.contains("pc-big") && n.contains("more than 32768")),
        "{:?}",
        warning.note
    );

    eventually("recipe in pc-ok's twin", WAIT, || async {
        Ok(site.twin_recipe("pc-ok").map(drop))
    })
    .await?;
    site.recipe_status("pc-ok", "big-1", "Success").await?;
    site.wait_rollout("big", "rollout ended", phase_is(RolloutPhase::Failed))
        .await?;
    site.finish().await
}

#[tokio::test]
async fn a_rollout_that_selects_no_device_waits_for_one_and_then_runs() -> anyhow::Result<()> {
    let mut site = Site::start("ctl-nobody").await?;
    site.recipe("quick8", quick_recipe("quick8")).await?;
    let rollout = json!({
        "apiVersion": "cloudpillar.io/v1alpha1", "kind": "Rollout", "metadata": { "name": "nobody" },
        "spec": { "recipeRef": { "name": "quick8" }, "selector": { "matchLabels": { "fleet": "later" } } },
    });
    apply::<Rollout>(&site.client, &site.ns, rollout).await?;

    // Nothing matches: the Rollout waits and says why, rather than succeeding with 0 of 0.
    let no_devices = |r: &Rollout| {
        let conditions = r.status.clone().map(|s| s.conditions).unwrap_or_default();
        cloudpillar_crds::conditions::find(&conditions, "Progressing")
            .is_some_and(|c| c.status == "False" && c.reason == "NoDevicesSelected")
    };
    let waiting = site
        .wait_rollout("nobody", "no devices selected", no_devices)
        .await?;
    let status = waiting.status.expect("status");
    assert_eq!(status.phase, RolloutPhase::Pending);
    let progressing =
        cloudpillar_crds::conditions::find(&status.conditions, "Progressing").expect("condition");
    assert_eq!(
        progressing.message,
        "no Device in this namespace matches the selector fleet=later; \
         the Rollout starts when one does"
    );
    let events = events_for(&site.client, &site.ns, "nobody").await?;
    assert!(
        events
            .iter()
            .any(|e| e.reason.as_deref() == Some("NoDevicesSelected")
                && e.type_.as_deref() == Some("Warning")),
        "{events:?}"
    );
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(
        site.rollout("nobody").await?.status.map(|s| s.phase),
        Some(RolloutPhase::Pending)
    );

    // A Device labelled to match joins, and the Rollout runs to its end.
    site.devices(&["pc-late"], json!({"fleet": "later"}))
        .await?;
    eventually("recipe in pc-late's twin", WAIT, || async {
        Ok(site.twin_recipe("pc-late").map(drop))
    })
    .await?;
    site.recipe_status("pc-late", "quick8", "Success").await?;
    let done = site
        .wait_rollout(
            "nobody",
            "rollout succeeded",
            phase_is(RolloutPhase::Succeeded),
        )
        .await?;
    assert_eq!(done.status.expect("status").counts.succeeded, 1);
    site.finish().await
}

#[tokio::test]
async fn a_device_refused_as_a_duplicate_id_is_not_rolled_out_to() -> anyhow::Result<()> {
    let mut site = Site::start("ctl-ro-dup").await?;
    site.recipe("quick9", quick_recipe("quick9")).await?;
    site.devices(&["pc-01"], json!({"fleet": "dup"})).await?;
    // A second Device naming pc-01's device id, with the Rollout's labels.
    let impostor = json!({
        "apiVersion": "cloudpillar.io/v1alpha1", "kind": "Device",
        "metadata": { "name": "impostor", "labels": { "fleet": "dup" } },
        "spec": { "deviceId": "pc-01", "hubRef": { "name": "edge" } },
    });
    apply::<Device>(&site.client, &site.ns, impostor).await?;
    let devices: Api<Device> = Api::namespaced(site.client.clone(), &site.ns);
    eventually("the impostor refused", WAIT, || async {
        let conditions = devices
            .get("impostor")
            .await?
            .status
            .map(|s| s.conditions)
            .unwrap_or_default();
        Ok(
            cloudpillar_crds::conditions::find(&conditions, "Registered")
                .filter(|c| c.reason == "DuplicateDeviceId")
                .map(|_| ()),
        )
    })
    .await?;

    let rollout = json!({
        "apiVersion": "cloudpillar.io/v1alpha1", "kind": "Rollout", "metadata": { "name": "dup" },
        "spec": { "recipeRef": { "name": "quick9" }, "selector": { "matchLabels": { "fleet": "dup" } } },
    });
    apply::<Rollout>(&site.client, &site.ns, rollout).await?;
    eventually("the recipe in pc-01's twin", WAIT, || async {
        Ok(site.twin_recipe("pc-01").filter(|id| id == "quick9"))
    })
    .await?;
    site.recipe_status("pc-01", "quick9", "Success").await?;
    let done = site
        .wait_rollout(
            "dup",
            "rollout succeeded",
            phase_is(RolloutPhase::Succeeded),
        )
        .await?;
    let counts = done.status.expect("status").counts;
    assert_eq!((counts.succeeded, counts.total), (1, 1), "{counts:?}");
    assert_eq!(site.assignment("impostor").await?, None);
    site.finish().await
}
