//! Key Vault signer against a loopback server speaking Key Vault's documented REST shape.
//!
//! Key Vault itself cannot be reached from here; the stand-in checks every request it gets
//! (path, `api-version`, bearer token, `alg`, base64url digest) and signs with a P-521 key the
//! way the vault does (raw `r || s`, base64url).

mod common;

use std::sync::{Arc, Mutex};

use axum::Json;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::routing::{get, post};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use cloudpillar_backend::keys::{KeyHolder, KeyVaultSigner, StaticToken};
use cloudpillar_protocol::signing::{SigningKey, TrustStore, canonical_json};
use p521::ecdsa::signature::hazmat::PrehashSigner;
use p521::pkcs8::DecodePrivateKey;
use serde_json::{Value, json};
use sha2::{Digest, Sha512};

/// One request the stand-in saw: route, `api-version`, `Authorization`, JSON body.
type Seen = Arc<Mutex<Vec<(String, String, String, Value)>>>;

#[derive(Clone)]
struct Vault {
    key: p521::ecdsa::SigningKey,
    seen: Seen,
    /// When set, the vault answers signatures with this key instead (a misconfigured vault).
    wrong_key: Option<p521::ecdsa::SigningKey>,
}

fn jwk(key: &p521::ecdsa::SigningKey) -> Value {
    let point = key.verifying_key().to_sec1_point(false);
    let bytes = point.as_bytes();
    json!({
        "kid": "https://vault.local/keys/recipes/v1",
        "kty": "EC", "crv": "P-521", "key_ops": ["sign", "verify"],
        "x": URL_SAFE_NO_PAD.encode(&bytes[1..67]),
        "y": URL_SAFE_NO_PAD.encode(&bytes[67..]),
    })
}

async fn get_key(
    State(vault): State<Vault>,
    Path((name, version)): Path<(String, String)>,
    Query(query): Query<std::collections::HashMap<String, String>>,
    headers: HeaderMap,
) -> (StatusCode, Json<Value>) {
    let auth = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_owned();
    let version_param = query.get("api-version").cloned().unwrap_or_default();
    vault.seen.lock().expect("lock").push((
        format!("GET {name}/{version}"),
        version_param,
        auth,
        Value::Null,
    ));
    (
        StatusCode::OK,
        Json(json!({ "key": jwk(&vault.key), "attributes": {"enabled": true} })),
    )
}

async fn sign(
    State(vault): State<Vault>,
    Path((name, version)): Path<(String, String)>,
    Query(query): Query<std::collections::HashMap<String, String>>,
    headers: HeaderMap,
    Json(body): Json<Value>,
) -> (StatusCode, Json<Value>) {
    let auth = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_owned();
    let version_param = query.get("api-version").cloned().unwrap_or_default();
    vault.seen.lock().expect("lock").push((
        format!("POST {name}/{version}/sign"),
        version_param,
        auth,
        body.clone(),
    ));
    let Some(digest) = body["value"]
        .as_str()
        .and_then(|v| URL_SAFE_NO_PAD.decode(v).ok())
    else {
        return (
            StatusCode::BAD_REQUEST,
            Json(json!({"error": {"code": "BadParameter"}})),
        );
    };
    let signer = vault.wrong_key.as_ref().unwrap_or(&vault.key);
    let signature: p521::ecdsa::Signature = signer.sign_prehash(&digest).expect("prehash sign");
    let value = URL_SAFE_NO_PAD.encode(signature.to_bytes());
    (
        StatusCode::OK,
        Json(json!({ "kid": "https://vault.local/keys/recipes/v1", "value": value })),
    )
}

async fn serve(vault: Vault) -> String {
    let app = axum::Router::new()
        .route("/keys/{name}/{version}", get(get_key))
        .route("/keys/{name}/{version}/sign", post(sign))
        .with_state(vault);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let base = format!("http://{}", listener.local_addr().expect("addr"));
    tokio::spawn(async move { axum::serve(listener, app).await });
    base
}

fn p521_key(key: &SigningKey) -> p521::ecdsa::SigningKey {
    let secret =
        p521::SecretKey::from_pkcs8_pem(&key.to_pkcs8_pem().expect("pem")).expect("secret");
    p521::ecdsa::SigningKey::from(secret)
}

#[tokio::test]
async fn key_vault_signer_sends_es512_requests_and_its_signatures_verify() {
    let key = SigningKey::generate().expect("key");
    let seen = Arc::new(Mutex::new(Vec::new()));
    let base = serve(Vault {
        key: p521_key(&key),
        seen: seen.clone(),
        wrong_key: None,
    })
    .await;
    let http = cloudpillar_backend::http_client().expect("client");
    let tokens = Arc::new(StaticToken("vault-token".into()));
    let signer = KeyVaultSigner::connect(&base, "recipes", "v1", tokens, http)
        .await
        .expect("connect");
    let holder = KeyHolder::new(Arc::new(signer));
    assert_eq!(
        holder.active_key_id(),
        key.key_id(),
        "key id from the vault's JWK"
    );

    let spec = json!({"id": "fw-2.1", "base": {"installSteps": []}});
    let signed = holder.sign_recipe(&spec).await.expect("sign");
    let mut trust = TrustStore::new();
    trust.add(key.verifying_key().clone());
    assert_eq!(
        trust.verify_json(&spec, &signed.text).expect("verifies"),
        key.key_id()
    );

    let seen = seen.lock().expect("lock").clone();
    assert_eq!(seen.len(), 2);
    let (get_route, get_version, get_auth, _) = &seen[0];
    assert_eq!(
        (get_route.as_str(), get_version.as_str()),
        ("GET recipes/v1", "7.4")
    );
    assert_eq!(get_auth, "Bearer vault-token");
    let (route, version, auth, body) = &seen[1];
    assert_eq!(
        (route.as_str(), version.as_str()),
        ("POST recipes/v1/sign", "7.4")
    );
    assert_eq!(auth, "Bearer vault-token");
    let digest = Sha512::digest(canonical_json(&spec));
    assert_eq!(
        body,
        &json!({"alg": "ES512", "value": URL_SAFE_NO_PAD.encode(digest)})
    );
}

#[tokio::test]
async fn key_vault_signature_from_another_key_is_refused() {
    let key = SigningKey::generate().expect("key");
    let other = SigningKey::generate().expect("other");
    let vault = Vault {
        key: p521_key(&key),
        seen: Arc::new(Mutex::new(Vec::new())),
        wrong_key: Some(p521_key(&other)),
    };
    let base = serve(vault).await;
    let http = cloudpillar_backend::http_client().expect("client");
    let tokens = Arc::new(StaticToken("t".into()));
    let signer = KeyVaultSigner::connect(&base, "recipes", "v1", tokens, http)
        .await
        .expect("connect");
    let error = KeyHolder::new(Arc::new(signer))
        .sign_recipe(&json!({"id": "x"}))
        .await;
    assert!(
        error
            .expect_err("refused")
            .to_string()
            .contains("recipes/v1")
    );
}
