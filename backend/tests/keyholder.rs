//! Key holder: blob and recipe signatures, rotation, Secret layout and the HTTP API.

mod common;

use std::sync::Arc;

use bytes::Bytes;
use cloudpillar_backend::blob::{BlobConfig, BlobStores};
use cloudpillar_backend::keys::{
    KeyHolder, LocalSigner, PublishedKeys, SECRET_ACTIVE_KEY, SignAccess,
};
use cloudpillar_backend::roles::KeyholderArgs;
use cloudpillar_protocol::signing::{SigningKey, TrustStore, VerifyingKey};
use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use serde_json::json;
use sha2::{Digest, Sha512};

fn holder_with(key: &SigningKey) -> KeyHolder {
    KeyHolder::new(Arc::new(LocalSigner::new(key.clone())))
}

/// What an agent builds from `GET /v1/keys`.
fn agent_trust(published: &PublishedKeys) -> TrustStore {
    let mut trust = TrustStore::new();
    for entry in &published.keys {
        let key = VerifyingKey::from_base64(&entry.public_key).expect("published key");
        assert_eq!(key.key_id(), entry.key_id);
        trust.add(key);
    }
    trust
}

async fn fs_stores() -> (tempfile::TempDir, BlobStores) {
    let dir = tempfile::tempdir().expect("tempdir");
    let stores = BlobStores::open(&BlobConfig::Filesystem {
        root: dir.path().to_owned(),
    })
    .await
    .expect("open");
    (dir, stores)
}

#[tokio::test]
async fn signed_blob_verifies_and_a_tampered_copy_does_not() {
    let (_dir, stores) = fs_stores().await;
    let data = common::pattern(5 * 1024 * 1024 + 3, 5);
    stores
        .patches
        .put("fw/app.bin", Bytes::from(data.clone()))
        .await
        .expect("put");
    let holder = holder_with(&SigningKey::generate().expect("key"));

    let signed = holder
        .sign_blob(&stores.patches, "fw/app.bin")
        .await
        .expect("sign");
    assert_eq!(signed.size, data.len() as u64);
    assert_eq!(signed.sha512, hex::encode(Sha512::digest(&data)));
    assert!(
        signed
            .text
            .starts_with(&format!("{}:", holder.active_key_id()))
    );

    // The agent's side: trust the published keys, hash the file piece by piece, verify.
    let trust = agent_trust(&holder.published_keys().expect("keys"));
    let mut hasher = Sha512::new();
    data.chunks(49_152).for_each(|chunk| hasher.update(chunk));
    assert_eq!(
        trust.verify_digest(hasher, &signed.text).expect("verify"),
        holder.active_key_id()
    );

    let mut tampered = data.clone();
    tampered[4_000_000] ^= 0x01;
    assert!(trust.verify(&tampered, &signed.text).is_err());
}

#[tokio::test]
async fn key_rotation_keeps_old_signatures_valid_and_new_ones_name_the_new_key() {
    let step = json!({"executeOnce": {"shell": "bash", "command": "true"}});
    let spec = json!({"id": "fw-2.1", "patch": {"installSteps": [step]}});
    let old_key = SigningKey::generate().expect("old key");
    let new_key = SigningKey::generate().expect("new key");
    let before = holder_with(&old_key)
        .sign_recipe(&spec)
        .await
        .expect("old signature");

    let rotated = holder_with(&new_key).with_retired(old_key.verifying_key().clone());
    let after = rotated.sign_recipe(&spec).await.expect("new signature");
    assert_eq!(after.key_id, new_key.key_id());
    assert!(after.text.starts_with(&format!("{}:", new_key.key_id())));
    assert!(before.text.starts_with(&format!("{}:", old_key.key_id())));
    assert_eq!(before.sha512, after.sha512, "same canonical changeSpec");

    let published = rotated.published_keys().expect("keys");
    assert_eq!(published.active_key_id, new_key.key_id());
    let trust = agent_trust(&published);
    assert_eq!(
        trust.verify_json(&spec, &before.text).expect("old"),
        old_key.key_id()
    );
    assert_eq!(
        trust.verify_json(&spec, &after.text).expect("new"),
        new_key.key_id()
    );

    // Once the old key is dropped from the published set, its signatures stop verifying.
    let retired_dropped = agent_trust(&holder_with(&new_key).published_keys().expect("keys"));
    assert!(retired_dropped.verify_json(&spec, &before.text).is_err());
}

#[tokio::test]
async fn keys_load_from_secret_data_with_retired_fields() {
    let active = SigningKey::generate().expect("active");
    let retired = SigningKey::generate().expect("retired");
    let mut data = std::collections::BTreeMap::new();
    let pem = |text: String| ByteString(text.into_bytes());
    data.insert(
        SECRET_ACTIVE_KEY.to_owned(),
        pem(active.to_pkcs8_pem().expect("pem")),
    );
    data.insert(
        "retired-2025.pem".to_owned(),
        pem(retired.verifying_key().to_pem().expect("public pem")),
    );
    let secret = Secret {
        data: Some(data),
        ..Default::default()
    };
    let holder = KeyHolder::from_secret_data("Secret cp/signing", &secret).expect("holder");
    assert_eq!(holder.active_key_id(), active.key_id());
    let ids: Vec<&str> = holder.trust_store().key_ids().collect();
    assert_eq!(ids.len(), 2);
    assert!(ids.contains(&retired.key_id()));

    let missing = Secret::default();
    let error = KeyHolder::from_secret_data("Secret cp/empty", &missing).expect_err("no key");
    assert!(error.to_string().contains("Secret cp/empty"), "{error}");
}

#[tokio::test]
async fn http_api_publishes_keys_and_guards_signing_with_the_token() {
    let (_dir, stores) = fs_stores().await;
    stores
        .patches
        .put("p.bin", Bytes::from_static(b"payload"))
        .await
        .expect("put");
    let holder = holder_with(&SigningKey::generate().expect("key"));
    let app = cloudpillar_backend::keys::router(
        holder.clone(),
        stores,
        SignAccess::Token("s3cret".into()),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let base = format!("http://{}", listener.local_addr().expect("addr"));
    tokio::spawn(async move { axum::serve(listener, app).await });
    let http = cloudpillar_backend::http_client().expect("client");

    let keys: PublishedKeys = http
        .get(format!("{base}/v1/keys"))
        .send()
        .await
        .expect("get")
        .json()
        .await
        .expect("json");
    assert_eq!(keys.active_key_id, holder.active_key_id());

    let body = json!({"changeSpec": {"id": "r1"}});
    let anonymous = http
        .post(format!("{base}/v1/sign/recipe"))
        .json(&body)
        .send()
        .await
        .expect("post");
    assert_eq!(anonymous.status(), 401);

    let signed: serde_json::Value = http
        .post(format!("{base}/v1/sign/recipe"))
        .bearer_auth("s3cret")
        .json(&body)
        .send()
        .await
        .expect("post")
        .json()
        .await
        .expect("json");
    let text = signed["signature"].as_str().expect("signature");
    agent_trust(&keys)
        .verify_json(&json!({"id": "r1"}), text)
        .expect("verifies");

    let blob = http
        .post(format!("{base}/v1/sign/blob"))
        .bearer_auth("s3cret")
        .json(&json!({"container": "patches", "path": "missing.bin"}))
        .send()
        .await
        .expect("post");
    assert_eq!(blob.status(), 404);
    let blob: serde_json::Value = http
        .post(format!("{base}/v1/sign/blob"))
        .bearer_auth("s3cret")
        .json(&json!({"container": "patches", "path": "p.bin"}))
        .send()
        .await
        .expect("post")
        .json()
        .await
        .expect("json");
    assert_eq!(blob["size"], 7);
    agent_trust(&keys)
        .verify(b"payload", blob["signature"].as_str().expect("sig"))
        .expect("ok");
}

/// The key holder settings as the binary parses them from `args`.
fn keyholder_args(args: &[&str]) -> KeyholderArgs {
    #[derive(clap::Parser)]
    struct Cli {
        #[command(flatten)]
        keys: KeyholderArgs,
    }
    let argv = std::iter::once("keyholder").chain(args.iter().copied());
    <Cli as clap::Parser>::try_parse_from(argv)
        .expect("arguments parse")
        .keys
}

#[tokio::test]
async fn signing_needs_the_token_the_file_holds_now_checked_before_the_body() {
    let (dir, stores) = fs_stores().await;
    let token_file = dir.path().join("sign-token");
    std::fs::write(&token_file, "first-token\n").expect("token written");
    let file_arg = token_file.display().to_string();
    let access = keyholder_args(&["--sign-token-file", &file_arg])
        .sign_access()
        .expect("a token file is enough");
    let holder = holder_with(&SigningKey::generate().expect("key"));
    let app = cloudpillar_backend::keys::router(holder, stores, access);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let url = format!(
        "http://{}/v1/sign/recipe",
        listener.local_addr().expect("addr")
    );
    tokio::spawn(async move { axum::serve(listener, app).await });
    let http = cloudpillar_backend::http_client().expect("client");
    let post = |authorization: &str, body: &'static str| {
        http.post(&url)
            .header("authorization", authorization)
            .header("content-type", "application/json")
            .body(body)
            .send()
    };
    let good = r#"{"changeSpec": {"id": "r1"}}"#;

    // A body that is not a request is refused for its missing token first.
    let status = |response: reqwest::Result<reqwest::Response>| response.expect("post").status();
    assert_eq!(status(post("Bearer wrong", "not json").await), 401);
    assert_eq!(status(post("Bearer first-token", "not json").await), 400);
    // The scheme in any case.
    assert_eq!(status(post("bearer first-token", good).await), 200);
    assert_eq!(status(post("BEARER  first-token", good).await), 200);
    assert_eq!(status(post("Basic first-token", good).await), 401);

    // A rotated token counts at once; the old one no longer does.
    std::fs::write(&token_file, "second-token").expect("token rotated");
    assert_eq!(status(post("Bearer first-token", good).await), 401);
    assert_eq!(status(post("Bearer second-token", good).await), 200);
    // An emptied file signs for nobody.
    std::fs::write(&token_file, "").expect("token emptied");
    assert_eq!(status(post("Bearer ", good).await), 503);
}

#[test]
fn unauthenticated_signing_must_be_asked_for_and_stay_on_loopback() {
    let missing = keyholder_args(&[]).sign_access().expect_err("no token");
    assert!(
        missing.to_string().contains("--sign-token-file"),
        "{missing}"
    );
    let open = keyholder_args(&["--allow-unauthenticated-signing"]).sign_access();
    assert!(matches!(open, Ok(SignAccess::Open)), "{open:?}");
    let v6 = keyholder_args(&["--allow-unauthenticated-signing", "--listen", "[::1]:8090"]);
    assert!(matches!(v6.sign_access(), Ok(SignAccess::Open)));
    let exposed = keyholder_args(&[
        "--allow-unauthenticated-signing",
        "--listen",
        "0.0.0.0:8090",
    ])
    .sign_access()
    .expect_err("not on every address");
    assert!(exposed.to_string().contains("loopback"), "{exposed}");
    let dir = tempfile::tempdir().expect("tempdir");
    let empty = dir.path().join("empty");
    std::fs::write(&empty, "\n").expect("written");
    let empty = empty.display().to_string();
    let refused = keyholder_args(&["--sign-token-file", &empty])
        .sign_access()
        .expect_err("an empty token file");
    assert_eq!(
        refused.to_string(),
        format!("setting --sign-token-file is invalid: {empty} holds no token")
    );
}

#[tokio::test]
async fn keys_load_from_a_kubernetes_secret_on_the_api_server() {
    if std::env::var("KUBECONFIG").is_err() {
        panic!(
            "KUBECONFIG is not set: start the dev control plane with `k3s-dev/up` and export \
             its last output line (k3s-dev/test does both)"
        );
    }
    cloudpillar_backend::install_tls_provider();
    let client = kube::Client::try_default().await.expect("kube client");
    let secrets: kube::Api<Secret> = kube::Api::namespaced(client.clone(), "default");
    let name = common::unique("cp-signing-");
    let active = SigningKey::generate().expect("active");
    let retired = SigningKey::generate().expect("retired");
    let mut data = std::collections::BTreeMap::new();
    data.insert(
        SECRET_ACTIVE_KEY.to_owned(),
        ByteString(active.to_pkcs8_pem().expect("pem").into_bytes()),
    );
    data.insert(
        "retired-1.pem".to_owned(),
        ByteString(retired.verifying_key().to_pem().expect("pem").into_bytes()),
    );
    let secret = Secret {
        metadata: kube::api::ObjectMeta {
            name: Some(name.clone()),
            ..Default::default()
        },
        data: Some(data),
        ..Default::default()
    };
    secrets
        .create(&Default::default(), &secret)
        .await
        .expect("secret created");

    let holder = KeyHolder::from_secret(client, "default", &name).await;
    secrets
        .delete(&name, &Default::default())
        .await
        .expect("secret deleted");
    let holder = holder.expect("holder from secret");
    assert_eq!(holder.active_key_id(), active.key_id());
    assert!(holder.trust_store().get(retired.key_id()).is_some());
}
