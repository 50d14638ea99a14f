use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, RwLock};

use cloudpillar_protocol::signing::TrustStore;
use reqwest::StatusCode;
use serde_json::{Value, json};

use super::*;
use crate::config::Config;
use crate::engine::journal::Journal;
use crate::state::StateStore;
use crate::zones::Zones;

const SECRET: &str = "local-secret";

struct Api {
    base: String,
    client: reqwest::Client,
    _dir: tempfile::TempDir,
}

fn client() -> reqwest::Client {
    let _ = rustls::crypto::ring::default_provider().install_default();
    reqwest::Client::new()
}

async fn start() -> Api {
    let dir = tempfile::tempdir().expect("tempdir");
    let text = format!(
        "device_id = \"dev-1\"\nstate_dir = {:?}\nrequire_signatures = false\n",
        dir.path().display().to_string()
    );
    let config = Arc::new(Config::parse_with_env(&text, Path::new("t"), &[]).expect("config"));
    let reported = Arc::new(Reported::open(dir.path()));
    let device = Arc::new(Device::new(
        StateStore::open(dir.path()).expect("state"),
        Arc::clone(&reported),
    ));
    let zones = Arc::new(Zones::build(&config.zones).expect("zones"));
    let engine = Arc::new(Engine::new(
        Arc::clone(&config),
        zones,
        Journal::open(dir.path()).expect("journal"),
        Arc::clone(&reported),
        Arc::clone(&device),
        None,
        TrustStore::new(),
    ));
    let state = Arc::new(ApiState {
        secret: SECRET.into(),
        configured_id: Some("dev-1".into()),
        device,
        reported,
        engine,
        link: None,
        offline_desired: RwLock::new(json!({})),
        diagnostics: tokio::sync::Mutex::new(()),
    });
    let (addr, _task) = serve("127.0.0.1:0".parse().expect("addr"), None, state)
        .await
        .expect("serve");
    Api {
        base: format!("http://{addr}/api/v1"),
        client: client(),
        _dir: dir,
    }
}

impl Api {
    fn call(&self, method: reqwest::Method, route: &str) -> reqwest::RequestBuilder {
        self.client
            .request(method, format!("{}/{route}", self.base))
            .header("CP-DEVICE-ID", "dev-1")
            .header("CP-SECRET-KEY", SECRET)
    }

    async fn status(&self, method: reqwest::Method, route: &str) -> StatusCode {
        self.call(method, route)
            .send()
            .await
            .expect("send")
            .status()
    }
}

use reqwest::Method;

#[tokio::test]
async fn missing_or_wrong_credentials_answer_401() {
    let api = start().await;
    let url = format!("{}/GetDeviceState", api.base);
    let none = api.client.get(&url).send().await.expect("send");
    assert_eq!(none.status(), StatusCode::UNAUTHORIZED);
    let wrong_key = api
        .client
        .get(&url)
        .header("CP-DEVICE-ID", "dev-1")
        .header("CP-SECRET-KEY", "nope")
        .send()
        .await
        .expect("send");
    assert_eq!(wrong_key.status(), StatusCode::UNAUTHORIZED);
    let wrong_id = api
        .client
        .get(&url)
        .header("CP-DEVICE-ID", "dev-2")
        .header("CP-SECRET-KEY", SECRET)
        .send()
        .await
        .expect("send");
    assert_eq!(wrong_id.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(
        api.status(Method::GET, "GetDeviceState").await,
        StatusCode::OK
    );
}

#[tokio::test]
async fn busy_answers_503_except_state_provisioning_and_ready() {
    let api = start().await;
    assert_eq!(api.status(Method::POST, "SetBusy").await, StatusCode::OK);
    let state: Value = api
        .call(Method::GET, "GetDeviceState")
        .send()
        .await
        .expect("send")
        .json()
        .await
        .expect("json");
    assert_eq!(state["deviceState"], "BUSY");
    assert_eq!(state["reported"]["deviceState"], "BUSY");
    assert_eq!(
        api.status(Method::POST, "SetBusy").await,
        StatusCode::SERVICE_UNAVAILABLE
    );
    assert_eq!(
        api.status(Method::GET, "RunDiagnostics").await,
        StatusCode::SERVICE_UNAVAILABLE
    );
    let add = api
        .call(Method::POST, "AddRecipe")
        .json(&json!({"changeSpec": {"id": "x"}}));
    assert_eq!(
        add.send().await.expect("send").status(),
        StatusCode::SERVICE_UNAVAILABLE
    );
    let props = api
        .call(Method::PUT, "UpdateReportedProps")
        .json(&json!({"properties": []}));
    assert_eq!(
        props.send().await.expect("send").status(),
        StatusCode::SERVICE_UNAVAILABLE
    );
    // InitiateProvisioning passes the gate and is refused by the state machine with a reason.
    let provisioning = api
        .call(Method::POST, "InitiateProvisioning")
        .send()
        .await
        .expect("send");
    assert_eq!(provisioning.status(), StatusCode::CONFLICT);
    let body: Value = provisioning.json().await.expect("json");
    assert_eq!(body["error"], "provisioning is not allowed while BUSY");
    assert_eq!(api.status(Method::POST, "SetReady").await, StatusCode::OK);
    assert_eq!(
        api.status(Method::GET, "GetDeviceState").await,
        StatusCode::OK
    );
}

#[tokio::test]
async fn a_body_over_the_limit_answers_413_with_the_reason() {
    let api = start().await;
    let padding = "x".repeat(json::BODY_LIMIT);
    let answer = api
        .call(Method::POST, "AddRecipe")
        .json(&json!({"changeSpec": {"id": "big", "note": padding}}))
        .send()
        .await
        .expect("send");
    assert_eq!(answer.status(), StatusCode::PAYLOAD_TOO_LARGE);
    let body: Value = answer.json().await.expect("json");
    let reason = body["error"].as_str().expect("reason");
    assert!(
        reason.contains(&format!("limit of {} bytes", json::BODY_LIMIT)),
        "{body}"
    );
}

#[tokio::test]
async fn strict_json_answers_400_with_a_reason() {
    let api = start().await;
    let unknown = api
        .call(Method::PUT, "UpdateReportedProps")
        .json(&json!({"properties": [{"name": "a", "value": 1, "extra": true}]}))
        .send()
        .await
        .expect("send");
    assert_eq!(unknown.status(), StatusCode::BAD_REQUEST);
    let body: Value = unknown.json().await.expect("json");
    assert!(
        body["error"]
            .as_str()
            .expect("reason")
            .contains("unknown field `extra`"),
        "{body}"
    );

    let syntax = api
        .call(Method::PUT, "UpdateReportedProps")
        .header("content-type", "application/json")
        .body("{\"properties\": [")
        .send()
        .await
        .expect("send");
    assert_eq!(syntax.status(), StatusCode::BAD_REQUEST);
    let not_json = api
        .call(Method::PUT, "UpdateReportedProps")
        .body("x")
        .send()
        .await
        .expect("s");
    assert_eq!(not_json.status(), StatusCode::BAD_REQUEST);
    for name in [
        "deviceState",
        "provisioning",
        "changeCancel",
        "d2cDropped",
        "lastUploadDenial",
    ] {
        let owned = api
            .call(Method::PUT, "UpdateReportedProps")
            .json(&json!({"properties": [{"name": name, "value": 0}]}))
            .send()
            .await
            .expect("send");
        assert_eq!(owned.status(), StatusCode::BAD_REQUEST, "{name}");
    }
    let bad_recipe = api
        .call(Method::POST, "AddRecipe")
        .json(&json!({"changeSpec": {"patch": {}}}))
        .send()
        .await
        .expect("send");
    assert_eq!(bad_recipe.status(), StatusCode::BAD_REQUEST);
    let body: Value = bad_recipe.json().await.expect("json");
    assert_eq!(body["error"], "changeSpec has no string id");
    let empty_id = api
        .call(Method::POST, "AddRecipe")
        .json(&json!({"changeSpec": {"id": "", "patch": {}}}))
        .send()
        .await
        .expect("send");
    assert_eq!(empty_id.status(), StatusCode::BAD_REQUEST);
    let body: Value = empty_id.json().await.expect("json");
    assert_eq!(body["error"], "changeSpec id is empty");
}

#[tokio::test]
async fn reported_props_are_patched_with_encoded_keys() {
    let api = start().await;
    let put = api
        .call(Method::PUT, "UpdateReportedProps")
        .json(&json!({"properties": [
            {"name": "app.version", "value": "2.1"},
            {"name": "n", "value": 3}
        ]}))
        .send()
        .await
        .expect("send");
    assert_eq!(put.status(), StatusCode::NO_CONTENT);
    let state: Value = api
        .call(Method::GET, "GetDeviceState")
        .send()
        .await
        .expect("send")
        .json()
        .await
        .expect("json");
    let reported = state["reported"].as_object().expect("object");
    assert_eq!(reported["n"], 3);
    let encoded = cloudpillar_protocol::keys::encode_key("app.version");
    assert_eq!(reported[&encoded], "2.1");
}

#[tokio::test]
async fn add_recipe_runs_the_windows_fixture_and_reports_it() {
    let api = start().await;
    let body = crate::fixtures::read("windows-update-recipe.json");
    let answer = api
        .call(Method::POST, "AddRecipe")
        .header("content-type", "application/json")
        .body(body.clone())
        .send()
        .await
        .expect("send");
    assert_eq!(answer.status(), StatusCode::ACCEPTED);
    let json: Value = answer.json().await.expect("json");
    assert_eq!(
        json,
        json!({"id": "1.14.61047.38115.20230418180125", "result": "started"})
    );
    let again = api
        .call(Method::POST, "AddRecipe")
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await
        .expect("send");
    assert_eq!(again.status(), StatusCode::OK);
}

#[tokio::test]
async fn openapi_document_lists_the_seven_routes() {
    let api = start().await;
    let doc: Value = api
        .client
        .get(format!("{}/openapi.json", api.base))
        .send()
        .await
        .expect("send")
        .json()
        .await
        .expect("json");
    let paths: Vec<&String> = doc["paths"].as_object().expect("paths").keys().collect();
    for name in [
        "InitiateProvisioning",
        "SetBusy",
        "SetReady",
        "UpdateReportedProps",
        "GetDeviceState",
        "AddRecipe",
        "RunDiagnostics",
    ] {
        assert!(
            paths.iter().any(|p| p.ends_with(name)),
            "{name} missing in {paths:?}"
        );
    }
}

fn offline_state(dir: &Path) -> Arc<ApiState> {
    let text = format!(
        "device_id = \"dev-1\"\nstate_dir = {:?}\nrequire_signatures = false\n",
        dir.display().to_string()
    );
    let config = Arc::new(Config::parse_with_env(&text, Path::new("t"), &[]).expect("config"));
    let reported = Arc::new(Reported::in_memory());
    let device = Arc::new(Device::new(
        StateStore::open(dir).expect("state"),
        Arc::clone(&reported),
    ));
    let engine = Arc::new(Engine::new(
        Arc::clone(&config),
        Arc::new(Zones::default()),
        Journal::open(dir).expect("journal"),
        Arc::clone(&reported),
        Arc::clone(&device),
        None,
        TrustStore::new(),
    ));
    Arc::new(ApiState {
        secret: SECRET.into(),
        configured_id: Some("dev-1".into()),
        device,
        reported,
        engine,
        link: None,
        offline_desired: RwLock::new(json!({})),
        diagnostics: tokio::sync::Mutex::new(()),
    })
}

#[tokio::test]
async fn non_loopback_bind_is_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    for addr in ["0.0.0.0:0", "192.0.2.1:7070", "[::]:0"] {
        let addr: SocketAddr = addr.parse().expect("addr");
        let err = serve(addr, None, offline_state(dir.path()))
            .await
            .expect_err("refused");
        assert!(matches!(err, ServeError::NotLoopback(_)), "{addr}");
    }
}

#[tokio::test]
async fn https_api_uses_a_self_generated_certificate_kept_in_the_state_dir() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().expect("tempdir");
    let tls_dir = dir.path().join("tls");
    let (addr, _task) = serve(
        "127.0.0.1:0".parse().expect("addr"),
        Some(tls_dir.clone()),
        offline_state(dir.path()),
    )
    .await
    .expect("serve");
    let cert = std::fs::read_to_string(tls_dir.join(tls::CERT_FILE)).expect("cert");
    assert!(cert.starts_with("-----BEGIN CERTIFICATE-----"));
    let key_mode = std::fs::metadata(tls_dir.join("api-key.pem"))
        .expect("key")
        .permissions()
        .mode();
    assert_eq!(key_mode & 0o777, 0o600);
    // A plain HTTP request to the TLS port does not get an answer from the API.
    let plain = client()
        .get(format!("http://{addr}/api/v1/openapi.json"))
        .send()
        .await;
    assert!(plain.is_err() || !plain.expect("resp").status().is_success());
    // The certificate survives a restart unchanged.
    let _ = tls::server_config(&tls_dir).await.expect("reload");
    assert_eq!(
        std::fs::read_to_string(tls_dir.join(tls::CERT_FILE)).expect("cert"),
        cert
    );
}
