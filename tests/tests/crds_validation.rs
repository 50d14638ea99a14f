//! The CloudPillar CRDs on a real API server: the field recipes go in as they are, and bad
//! YAML is refused at apply time with a message a person understands.

use cloudpillar_crds::{Device, Hub, Recipe, Rollout};
use cloudpillar_tests::{
    FIELD_MANAGER, delete_namespace, fixture_json, install_crds, kube_client, test_namespace,
};
use kube::Client;
use kube::api::{Api, ApiResource, DynamicObject, Patch, PatchParams};
use serde_json::{Value, json};

/// A namespace with the CRDs installed, for one test.
struct Scratch {
    client: Client,
    namespace: String,
}

impl Scratch {
    async fn new(prefix: &str) -> anyhow::Result<Self> {
        let client = kube_client().await?;
        install_crds(&client).await?;
        let namespace = test_namespace(&client, prefix).await?;
        Ok(Self { client, namespace })
    }

    fn api(&self, kind: &str) -> Api<DynamicObject> {
        let resource = match kind {
            "Hub" => ApiResource::erase::<Hub>(&()),
            "Device" => ApiResource::erase::<Device>(&()),
            "Recipe" => ApiResource::erase::<Recipe>(&()),
            "Rollout" => ApiResource::erase::<Rollout>(&()),
            other => panic!("not a CloudPillar kind: {other}"),
        };
        Api::namespaced_with(self.client.clone(), &self.namespace, &resource)
    }

    /// Applies `object` (server-side apply, strict field validation) and returns it as stored.
    async fn apply(&self, object: &Value) -> Result<Value, kube::Error> {
        let kind = object["kind"].as_str().expect("object has a kind");
        let name = object["metadata"]["name"]
            .as_str()
            .expect("object has a name");
        let params = PatchParams::apply(FIELD_MANAGER).validation_strict();
        let stored = self
            .api(kind)
            .patch(name, &params, &Patch::Apply(object))
            .await?;
        Ok(serde_json::to_value(stored).expect("stored object serializes"))
    }

    /// Applies `object`, expects the server to refuse it as invalid, and returns its message.
    async fn refused(&self, object: &Value) -> String {
        match self.apply(object).await {
            Ok(_) => panic!("server accepted an invalid object: {object}"),
            Err(kube::Error::Api(status)) => {
                assert_eq!(status.code, 422, "refused as invalid: {}", status.message);
                status.message
            }
            Err(other) => panic!("expected the server to refuse the object, got {other}"),
        }
    }

    async fn finish(self) -> anyhow::Result<()> {
        delete_namespace(&self.client, &self.namespace).await
    }
}

fn object(kind: &str, name: &str, spec: Value) -> Value {
    json!({
        "apiVersion": "cloudpillar.io/v1alpha1",
        "kind": kind,
        "metadata": { "name": name },
        "spec": spec,
    })
}

fn recipe_with_step(name: &str, stage: &str, step: Value) -> Value {
    object(
        "Recipe",
        name,
        json!({ "changeSpec": { "id": name, "patch": { stage: [step] } } }),
    )
}

fn rollout_with_waves(name: &str, waves: Value) -> Value {
    let spec = json!({
        "recipeRef": { "name": "fw" },
        "selector": { "matchLabels": { "site": "lab-3" } },
        "strategy": { "waves": waves },
    });
    object("Rollout", name, spec)
}

fn assert_says(message: &str, expected: &[&str]) {
    for text in expected {
        assert!(message.contains(text), "message lacks {text:?}: {message}");
    }
}

#[tokio::test]
async fn every_fixture_recipe_is_accepted_as_it_is() -> anyhow::Result<()> {
    let scratch = Scratch::new("crd-fixtures").await?;
    let fixtures = [
        (
            "windows-update",
            "windows-update-recipe.json",
            "/changeSpec",
        ),
        (
            "security-update",
            "security-update-desired.json",
            "/desired/changeSpec",
        ),
    ];
    for (name, file, pointer) in fixtures {
        let change_spec = fixture_json(file, pointer)?;
        let stored = scratch
            .apply(&object(
                "Recipe",
                name,
                json!({ "changeSpec": change_spec }),
            ))
            .await
            .map_err(|e| anyhow::anyhow!("server refused fixture {file}: {e}"))?;

        assert_eq!(
            stored["spec"]["changeSpec"], change_spec,
            "{file} is stored unchanged"
        );
        let typed: Recipe = serde_json::from_value(stored)?;
        assert_eq!(serde_json::to_value(&typed.spec.change_spec)?, change_spec);
    }
    scratch.finish().await
}

#[tokio::test]
async fn a_wave_over_100_percent_is_refused() -> anyhow::Result<()> {
    let scratch = Scratch::new("crd-wave").await?;
    let message = scratch
        .refused(&rollout_with_waves("big", json!([{ "percent": 150 }])))
        .await;
    assert_says(
        &message,
        &[
            "spec.strategy.waves[0].percent",
            "less than or equal to 100",
        ],
    );
    scratch.finish().await
}

#[tokio::test]
async fn waves_adding_up_to_more_than_100_percent_are_refused() -> anyhow::Result<()> {
    let scratch = Scratch::new("crd-wave-sum").await?;
    let waves = json!([{ "percent": 60 }, { "percent": 50 }]);
    let message = scratch.refused(&rollout_with_waves("sum", waves)).await;
    assert_says(
        &message,
        &[
            "spec.strategy.waves",
            "the wave percentages add up to more than 100",
        ],
    );
    scratch.finish().await
}

#[tokio::test]
async fn a_wave_with_both_count_and_percent_is_refused() -> anyhow::Result<()> {
    let scratch = Scratch::new("crd-wave-both").await?;
    let waves = json!([{ "count": 5, "percent": 10 }]);
    let message = scratch.refused(&rollout_with_waves("both", waves)).await;
    assert_says(
        &message,
        &[
            "spec.strategy.waves[0]",
            "each wave needs exactly one of count",
            "or percent",
        ],
    );

    let message = scratch
        .refused(&rollout_with_waves("neither", json!([{ "name": "x" }])))
        .await;
    assert_says(&message, &["each wave needs exactly one of count"]);
    scratch.finish().await
}

#[tokio::test]
async fn only_waves_before_the_last_may_have_a_selector() -> anyhow::Result<()> {
    let scratch = Scratch::new("crd-wave-selector").await?;
    let ring = json!({ "matchLabels": { "ring": "canary" } });
    let waves = json!([{ "count": 1 }, { "percent": 100, "selector": ring }]);
    let message = scratch.refused(&rollout_with_waves("last", waves)).await;
    assert_says(&message, &["the last wave takes every device left"]);

    let waves = json!([{ "count": 1, "selector": ring }, { "percent": 100 }]);
    scratch.apply(&rollout_with_waves("canary", waves)).await?;
    scratch.finish().await
}

#[tokio::test]
async fn a_pause_needs_a_duration_or_until_resumed() -> anyhow::Result<()> {
    let scratch = Scratch::new("crd-pause").await?;
    let waves = json!([{ "count": 1, "pause": {} }, { "percent": 100 }]);
    let message = scratch.refused(&rollout_with_waves("pause", waves)).await;
    assert_says(
        &message,
        &["spec.strategy.waves[0].pause", "duration", "untilResumed"],
    );

    let waves = json!([{ "count": 1, "pause": { "duration": "soon" } }]);
    let message = scratch.refused(&rollout_with_waves("soon", waves)).await;
    assert_says(
        &message,
        &["must be a positive duration such as 90s, 30m or 1h30m"],
    );
    scratch.finish().await
}

#[tokio::test]
async fn an_unknown_action_is_refused() -> anyhow::Result<()> {
    let scratch = Scratch::new("crd-action").await?;
    let step = json!({ "action": "rebootNow", "description": "reboot" });
    let message = scratch
        .refused(&recipe_with_step("reboot", "installSteps", step))
        .await;
    assert_says(
        &message,
        &[
            "spec.changeSpec.patch.installSteps[0].action",
            "\"rebootNow\"",
            "executeOnce",
        ],
    );
    scratch.finish().await
}

#[tokio::test]
async fn an_unknown_stage_is_refused() -> anyhow::Result<()> {
    let scratch = Scratch::new("crd-stage").await?;
    let step = json!({ "shell": "bash", "command": "true" });
    let message = scratch
        .refused(&recipe_with_step("typo", "installStepz", step))
        .await;
    assert_says(
        &message,
        &[
            "spec.changeSpec.patch",
            "unknown stage installStepz",
            "installSteps",
        ],
    );
    scratch.finish().await
}

#[tokio::test]
async fn a_destination_path_with_a_parent_segment_is_refused() -> anyhow::Result<()> {
    let scratch = Scratch::new("crd-path").await?;
    let climbing = [
        "../etc/cron.d/x",
        "./update/../../etc",
        "..\\Windows\\System32",
        "a\\..",
        "..",
    ];
    for (index, path) in climbing.into_iter().enumerate() {
        let step = json!({
            "action": "singularDownload", "source": "SPU.zip", "destinationPath": path,
        });
        let recipe = recipe_with_step(&format!("climb-{index}"), "transitPackage", step);
        let message = scratch.refused(&recipe).await;
        assert_says(
            &message,
            &["destinationPath", "may not contain a '..' segment"],
        );
    }

    // Dots inside a name are not a parent segment.
    let step = json!({
        "action": "singularDownload", "source": "SPU.zip", "destinationPath": "./v1..2/..data",
    });
    scratch
        .apply(&recipe_with_step("dots", "transitPackage", step))
        .await?;
    scratch.finish().await
}

#[tokio::test]
async fn a_step_missing_what_its_action_needs_is_refused() -> anyhow::Result<()> {
    let scratch = Scratch::new("crd-step").await?;
    let step = json!({ "action": "singularDownload", "source": "SPU.zip" });
    let message = scratch
        .refused(&recipe_with_step("nodest", "transitPackage", step))
        .await;
    assert_says(
        &message,
        &["a singularDownload step needs source and destinationPath"],
    );

    let step = json!({ "description": "a shell step without a command", "shell": "bash" });
    let message = scratch
        .refused(&recipe_with_step("nocmd", "installSteps", step))
        .await;
    assert_says(
        &message,
        &["an executeOnce step (the default action) needs shell and command"],
    );
    scratch.finish().await
}

#[tokio::test]
async fn a_changed_recipe_without_a_new_id_is_refused() -> anyhow::Result<()> {
    let scratch = Scratch::new("crd-recipe-id").await?;
    let step = json!({ "shell": "bash", "command": "echo one" });
    scratch
        .apply(&recipe_with_step("fw", "installSteps", step))
        .await?;

    let changed = recipe_with_step(
        "fw",
        "installSteps",
        json!({ "shell": "bash", "command": "echo two" }),
    );
    let message = scratch.refused(&changed).await;
    assert_says(&message, &["a changed recipe needs a new changeSpec.id"]);

    let mut renamed = changed.clone();
    renamed["spec"]["changeSpec"]["id"] = json!("fw-2");
    scratch.apply(&renamed).await?;
    scratch.finish().await
}

#[tokio::test]
async fn a_bad_device_id_is_refused() -> anyhow::Result<()> {
    let scratch = Scratch::new("crd-devid").await?;
    for bad in ["lab#3", "a+b", "semi;colon", "space here"] {
        let device = object("Device", "dev", json!({ "deviceId": bad }));
        let message = scratch.refused(&device).await;
        assert_says(
            &message,
            &[
                "spec.deviceId",
                "deviceId may only hold ASCII letters, digits",
            ],
        );
    }
    let device = object("Device", "dev", json!({ "deviceId": "x".repeat(129) }));
    let message = scratch.refused(&device).await;
    assert_says(&message, &["spec.deviceId", "128"]);

    let azure_style = "MRI-01:lab.3@site_(b)!$'";
    scratch
        .apply(&object("Device", "dev", json!({ "deviceId": azure_style })))
        .await?;
    scratch.finish().await
}

#[tokio::test]
async fn a_device_id_cannot_change_once_set() -> anyhow::Result<()> {
    let scratch = Scratch::new("crd-devid-fixed").await?;
    scratch
        .apply(&object("Device", "dev", json!({ "deviceId": "mri-01" })))
        .await?;

    let message = scratch
        .refused(&object("Device", "dev", json!({ "deviceId": "mri-02" })))
        .await;
    assert_says(&message, &["spec.deviceId", "deviceId cannot change"]);
    let message = scratch.refused(&object("Device", "dev", json!({}))).await;
    assert_says(&message, &["deviceId cannot be added or removed"]);
    scratch.finish().await
}

#[tokio::test]
async fn a_bad_mode_is_refused() -> anyhow::Result<()> {
    let scratch = Scratch::new("crd-mode").await?;
    let message = scratch
        .refused(&object("Device", "dev", json!({ "mode": "TURBO" })))
        .await;
    assert_says(
        &message,
        &["spec.mode", "\"TURBO\"", "FULL", "STRICT", "COMM"],
    );
    scratch.finish().await
}

#[tokio::test]
async fn desired_properties_the_operator_writes_are_refused_in_the_spec() -> anyhow::Result<()> {
    let scratch = Scratch::new("crd-desired").await?;
    let spec = json!({ "desired": { "logLevel": "debug", "changeSign": "AAEC" } });
    let message = scratch.refused(&object("Device", "dev", spec)).await;
    assert_says(&message, &["spec.desired", "written by the operator"]);
    let spec = json!({ "desired": { "changeCancel": { "id": "fw-1" } } });
    let message = scratch.refused(&object("Device", "dev", spec)).await;
    assert_says(
        &message,
        &["spec.desired", "changeCancel", "written by the operator"],
    );

    let spec = json!({ "tags": { "firmware.version": "2.1" } });
    let message = scratch.refused(&object("Device", "dev", spec)).await;
    assert_says(&message, &["spec.tags", "tag keys may not contain '.'"]);

    let spec =
        json!({ "desired": { "logLevel": "debug", "upload": { "every": 15, "paths": ["a"] } } });
    let stored = scratch
        .apply(&object("Device", "dev", spec.clone()))
        .await?;
    assert_eq!(
        stored["spec"]["desired"], spec["desired"],
        "free-form desired is kept as written"
    );
    scratch.finish().await
}

#[tokio::test]
async fn credentials_must_match_their_method() -> anyhow::Result<()> {
    let scratch = Scratch::new("crd-auth").await?;
    let spec = json!({ "authentication": { "permanent": { "method": "X509" } } });
    let message = scratch.refused(&object("Device", "dev", spec)).await;
    assert_says(
        &message,
        &["X509 authentication needs the certificate's thumbprint"],
    );

    let spec =
        json!({ "authentication": { "permanent": { "method": "X509", "thumbprint": "abc" } } });
    let message = scratch.refused(&object("Device", "dev", spec)).await;
    assert_says(
        &message,
        &["thumbprint must be 40 (SHA-1) or 64 (SHA-256) hexadecimal digits"],
    );
    scratch.finish().await
}

#[tokio::test]
async fn a_hub_endpoint_must_be_a_host() -> anyhow::Result<()> {
    let scratch = Scratch::new("crd-hub").await?;
    let hub = |service_host: &str, extra: Value| {
        let mut spec = json!({
            "kind": "azure",
            "endpoint": { "serviceHost": service_host },
            "accessPolicy": { "secretRef": { "name": "hub-policy", "key": "primaryKey" } },
        });
        if let (Some(spec), Value::Object(extra)) = (spec.as_object_mut(), extra) {
            spec.extend(extra);
        }
        object("Hub", "azure", spec)
    };

    let message = scratch
        .refused(&hub("https://contoso.azure-devices.net/", json!({})))
        .await;
    assert_says(
        &message,
        &["spec.endpoint.serviceHost", "no scheme, no path"],
    );
    let ca = json!({ "caBundle": { "name": "edge-ca", "key": "ca.crt" } });
    let message = scratch.refused(&hub("contoso.azure-devices.net", ca)).await;
    assert_says(&message, &["caBundle is only used with an edge hub"]);

    let stored = scratch
        .apply(&hub("contoso.azure-devices.net", json!({})))
        .await?;
    assert_eq!(
        stored["spec"]["twinWriteRateLimit"], 50,
        "defaults to the Azure S1 limit"
    );
    scratch.finish().await
}

#[tokio::test]
async fn every_step_field_of_the_twin_protocol_is_accepted() -> anyhow::Result<()> {
    let scratch = Scratch::new("crd-step-fields").await?;
    let step = json!({
        "action": "executeOnce", "description": "install", "shell": "pwsh",
        "command": "./Install-Update.ps1",
        "onPause": "Stop-Service x", "onResume": "Start-Service x",
        "successCodes": [3010], "timeout": 3600,
    });
    let stored = scratch
        .apply(&recipe_with_step("fields", "installSteps", step.clone()))
        .await?;
    assert_eq!(
        stored["spec"]["changeSpec"]["patch"]["installSteps"][0],
        step
    );

    let step = json!({ "action": "singularUpload", "filename": "/var/log/install.log" });
    scratch
        .apply(&recipe_with_step("upload", "postInstallConfig", step))
        .await?;
    scratch.finish().await
}

#[tokio::test]
async fn a_rollout_with_an_empty_selector_is_refused() -> anyhow::Result<()> {
    let scratch = Scratch::new("crd-selector").await?;
    let mut rollout = rollout_with_waves("everyone", json!([{ "percent": 100 }]));
    rollout["spec"]["selector"] = json!({});
    let message = scratch.refused(&rollout).await;
    assert_says(
        &message,
        &["spec.selector", "an empty selector would pick every Device"],
    );

    rollout["spec"]["selector"] = json!({
        "matchExpressions": [{ "key": "cloudpillar.io/fleet", "operator": "Exists" }],
    });
    scratch.apply(&rollout).await?;
    scratch.finish().await
}

#[tokio::test]
async fn a_device_name_that_cannot_serve_as_its_device_id_is_refused() -> anyhow::Result<()> {
    let scratch = Scratch::new("crd-devname").await?;
    let message = scratch
        .refused(&object("Device", &"a".repeat(129), json!({})))
        .await;
    assert_says(
        &message,
        &[
            "metadata.name is too long",
            "128 characters",
            "set spec.deviceId",
        ],
    );
    scratch
        .apply(&object("Device", &"a".repeat(128), json!({})))
        .await?;
    scratch
        .apply(&object(
            "Device",
            &"b".repeat(200),
            json!({ "deviceId": "pc-02" }),
        ))
        .await?;

    // The generated key Secret is named NAME-device-key and must be a valid name too.
    let long = "c".repeat(250);
    let message = scratch
        .refused(&object("Device", &long, json!({ "deviceId": "pc-03" })))
        .await;
    assert_says(&message, &["metadata.name is too long", "242", "secretRef"]);
    let own_keys = json!({
        "deviceId": "pc-03",
        "authentication": { "permanent": { "secretRef": { "name": "k", "key": "primaryKey" } } },
    });
    scratch.apply(&object("Device", &long, own_keys)).await?;

    // Every character a Kubernetes name may hold is allowed in a device id.
    let every_name_character = "abcdefghijklmnopqrstuvwxyz-0123456789.";
    scratch
        .apply(&object(
            "Device",
            "charset",
            json!({ "deviceId": every_name_character }),
        ))
        .await?;
    scratch.finish().await
}

#[tokio::test]
async fn a_recipe_id_outside_the_safe_characters_is_refused() -> anyhow::Result<()> {
    let scratch = Scratch::new("crd-recipe-idchars").await?;
    let step = json!({ "shell": "bash", "command": "true" });
    for (index, id) in [
        "../etc",
        "a b",
        ".hidden",
        "fw/1",
        "ünïcode",
        "nul\u{0}x",
        "a;b",
    ]
    .into_iter()
    .enumerate()
    {
        let mut recipe = recipe_with_step(&format!("id-{index}"), "installSteps", step.clone());
        recipe["spec"]["changeSpec"]["id"] = json!(id);
        let message = scratch.refused(&recipe).await;
        assert_says(
            &message,
            &["spec.changeSpec.id", "may only hold ASCII letters, digits"],
        );
    }
    let mut recipe = recipe_with_step("dotted", "installSteps", step);
    recipe["spec"]["changeSpec"]["id"] = json!("1.14.61047_rc-2");
    scratch.apply(&recipe).await?;
    scratch.finish().await
}

#[tokio::test]
async fn a_recipe_without_steps_is_refused() -> anyhow::Result<()> {
    let scratch = Scratch::new("crd-recipe-empty").await?;
    for (index, sections) in [
        json!({ "patch": {} }),
        json!({ "patch": { "installSteps": [] }, "base": {} }),
    ]
    .into_iter()
    .enumerate()
    {
        let mut change_spec = json!({ "id": format!("empty-{index}") });
        if let (Some(spec), Value::Object(sections)) = (change_spec.as_object_mut(), sections) {
            spec.extend(sections);
        }
        let recipe = object(
            "Recipe",
            &format!("empty-{index}"),
            json!({ "changeSpec": change_spec }),
        );
        let message = scratch.refused(&recipe).await;
        assert_says(&message, &["spec.changeSpec", "changeSpec has no steps"]);
    }
    let step = json!({ "shell": "bash", "command": "true" });
    let recipe = object(
        "Recipe",
        "one-step",
        json!({ "changeSpec": { "id": "one", "patch": { "installSteps": [] },
                                "base": { "postInstallConfig": [step] } } }),
    );
    scratch.apply(&recipe).await?;
    scratch.finish().await
}

fn rollout_with_selector(name: &str, selector: Value) -> Value {
    let mut rollout = rollout_with_waves(name, json!([{ "percent": 100 }]));
    rollout["spec"]["selector"] = selector;
    rollout
}

#[tokio::test]
async fn a_selector_that_could_never_be_read_is_refused() -> anyhow::Result<()> {
    let scratch = Scratch::new("crd-selector-syntax").await?;
    let expression = |key: &str, operator: &str, values: Value| {
        let mut requirement = json!({ "key": key, "operator": operator });
        if !values.is_null() {
            requirement["values"] = values;
        }
        json!({ "matchExpressions": [requirement] })
    };
    let refused = [
        (
            expression("fleet", "Foo", json!(["x"])),
            vec![
                "spec.selector.matchExpressions[0].operator",
                "\"Foo\"",
                "DoesNotExist",
            ],
        ),
        (
            expression("fleet", "In", Value::Null),
            vec!["In and NotIn need at least one value"],
        ),
        (
            expression("fleet", "Exists", json!(["x"])),
            vec!["Exists and DoesNotExist take none"],
        ),
        (
            expression("a b", "Exists", Value::Null),
            vec!["spec.selector.matchExpressions[0].key", "a label key is"],
        ),
        (
            expression("fleet", "In", json!(["x y"])),
            vec!["a label value is"],
        ),
        (
            json!({ "matchLabels": { "a b": "x" } }),
            vec!["spec.selector.matchLabels", "a label key is"],
        ),
        (
            json!({ "matchLabels": { "site": "-lab" } }),
            vec!["spec.selector.matchLabels", "a label value is"],
        ),
    ];
    for (index, (selector, expected)) in refused.into_iter().enumerate() {
        let message = scratch
            .refused(&rollout_with_selector(&format!("bad-{index}"), selector))
            .await;
        assert_says(&message, &expected);
    }

    // A wave's own selector is held to the same rules.
    let waves = json!([
        { "count": 1, "selector": expression("ring", "Near", json!(["canary"])) },
        { "percent": 100 },
    ]);
    let message = scratch.refused(&rollout_with_waves("wave", waves)).await;
    assert_says(&message, &["spec.strategy.waves[0].selector", "\"Near\""]);

    let fine = json!({
        "matchLabels": { "cloudpillar.io/site": "lab-3", "empty": "" },
        "matchExpressions": [
            { "key": "ring", "operator": "NotIn", "values": ["canary", "Lab_2.b"] },
            { "key": "retired", "operator": "DoesNotExist" },
        ],
    });
    scratch.apply(&rollout_with_selector("fine", fine)).await?;
    scratch.finish().await
}

#[tokio::test]
async fn a_maintenance_schedule_out_of_range_is_refused() -> anyhow::Result<()> {
    let scratch = Scratch::new("crd-schedule").await?;
    let with_schedule = |name: &str, schedule: &str| {
        let mut rollout = rollout_with_waves(name, json!([{ "percent": 100 }]));
        rollout["spec"]["strategy"]["maintenanceWindow"] =
            json!({ "schedule": schedule, "duration": "2h" });
        rollout
    };
    let bad = [
        "99 99 * * *",
        "60 0 * * *",
        "0 24 * * *",
        "0 0 32 * *",
        "0 0 0 * *",
        "0 0 * 13 *",
        "0 0 * * 8",
        "0 0 * * FUNDAY",
        "0 2 * *",
        "0 2 * * * *",
    ];
    for (index, schedule) in bad.into_iter().enumerate() {
        let message = scratch
            .refused(&with_schedule(&format!("bad-{index}"), schedule))
            .await;
        assert_says(
            &message,
            &[
                "spec.strategy.maintenanceWindow.schedule",
                "minute (0-59), hour (0-23)",
            ],
        );
    }
    // The operator's cron reader takes each of them (its window tests read the same list).
    for (index, schedule) in cloudpillar_crds::rollout::SCHEDULE_EXAMPLES
        .into_iter()
        .enumerate()
    {
        scratch
            .apply(&with_schedule(&format!("good-{index}"), schedule))
            .await
            .map_err(|e| anyhow::anyhow!("schedule {schedule:?} refused: {e}"))?;
    }
    scratch.finish().await
}
