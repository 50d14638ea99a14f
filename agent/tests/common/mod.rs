//! Test rig: an edge hub embedded in the test process and agents configured against it.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use cloudpillar_hub::{Hub, HubConfig, HubHandle};
use cloudpillar_protocol::signing::SigningKey;
use reqwest::Method;
use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;
use serde_json::{Value, json};

pub struct TestHub {
    pub hub: HubHandle,
    pub dir: tempfile::TempDir,
    pub http: reqwest::Client,
    pub base: String,
    pub signer: SigningKey,
}

impl TestHub {
    pub async fn start() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let hub = Hub::start(HubConfig::new(dir.path().join("hub")))
            .await
            .unwrap();
        let mut roots = rustls::RootCertStore::empty();
        for cert in CertificateDer::pem_file_iter(hub.ca_cert_path().unwrap()).unwrap() {
            roots.add(cert.unwrap()).unwrap();
        }
        let tls = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
        let http = reqwest::Client::builder()
            .tls_backend_preconfigured(tls)
            .build()
            .unwrap();
        let base = format!("https://localhost:{}", hub.http_addr().port());
        Self {
            hub,
            dir,
            http,
            base,
            signer: SigningKey::generate().unwrap(),
        }
    }

    pub async fn call(&self, method: Method, path: &str, body: Option<Value>) -> (u16, Value) {
        self.call_with(method, path, body.map(|b| b.to_string().into_bytes()), &[])
            .await
    }

    pub async fn call_with(
        &self,
        method: Method,
        path: &str,
        body: Option<Vec<u8>>,
        headers: &[(&str, &str)],
    ) -> (u16, Value) {
        let sep = if path.contains('?') { '&' } else { '?' };
        let url = format!("{}{path}{sep}api-version=2021-04-12", self.base);
        let mut req = self.http.request(method, url).header(
            "Authorization",
            self.hub.service_token(Duration::from_secs(600)),
        );
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        if let Some(body) = body {
            req = req.header("content-type", "application/json").body(body);
        }
        let resp = req.send().await.unwrap();
        let status = resp.status().as_u16();
        let text = resp.text().await.unwrap();
        (status, serde_json::from_str(&text).unwrap_or(Value::Null))
    }

    /// Registers a SAS device; returns its primary key.
    pub async fn add_device(&self, id: &str) -> String {
        let (status, body) = self
            .call(
                Method::PUT,
                &format!("/devices/{id}"),
                Some(json!({"deviceId": id})),
            )
            .await;
        assert_eq!(status, 200, "{body}");
        body["authentication"]["symmetricKey"]["primaryKey"]
            .as_str()
            .unwrap()
            .to_owned()
    }

    pub async fn twin(&self, id: &str) -> Value {
        self.call(Method::GET, &format!("/twins/{id}"), None)
            .await
            .1
    }

    pub async fn patch_desired(&self, id: &str, desired: Value) {
        let (status, body) = self
            .call(
                Method::PATCH,
                &format!("/twins/{id}"),
                Some(json!({"properties": {"desired": desired}})),
            )
            .await;
        assert!(status == 200, "{status} {body}");
    }

    pub async fn send_c2d(&self, id: &str, body: Vec<u8>, message_type: &str) {
        let (status, answer) = self
            .call_with(
                Method::POST,
                &format!("/devices/{id}/messages/deviceBound"),
                Some(body),
                &[("iothub-app-messageType", message_type)],
            )
            .await;
        assert!(status < 300, "{status} {answer}");
    }

    /// Waits until `check` holds for the device's reported section.
    pub async fn wait_reported(
        &self,
        id: &str,
        what: &str,
        check: impl Fn(&Value) -> bool,
    ) -> Value {
        for _ in 0..300 {
            let twin = self.twin(id).await;
            let reported = &twin["properties"]["reported"];
            if check(reported) {
                return reported.clone();
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("timed out waiting for {what}: {}", self.twin(id).await);
    }

    pub fn signer_pem(&self, dir: &Path) -> PathBuf {
        let path = dir.join("signer.pem");
        std::fs::write(&path, self.signer.verifying_key().to_pem().unwrap()).unwrap();
        path
    }

    /// Where the hub (and its DPS) listens, as `[hub]` and `[dps]` take it.
    fn endpoint(&self) -> String {
        format!(
            "host = \"{}\"\naddress = \"127.0.0.1\"\nport = {}\nca_file = \"{}\"\n",
            self.hub.hostname(),
            self.hub.mqtt_addr().port(),
            self.hub.ca_cert_path().unwrap().display()
        )
    }

    /// An agent configuration for device `id` in `dir`.
    pub async fn agent_config(&self, id: &str, dir: &Path, extra: &str) -> String {
        let key = self.add_device(id).await;
        let key_file = dir.join("device.key");
        write_0600(&key_file, &key);
        let secret = dir.join("api.secret");
        write_0600(&secret, "s3cret");
        format!(
            r#"device_id = "{id}"
state_dir = "{state}"
trusted_keys = ["{signer}"]
{extra}

[hub]
{endpoint}
[auth]
kind = "sas"
key_file = "{key}"

[api]
bind = "127.0.0.1:0"
secret_key_file = "{secret}"

[transfer]
stall_secs = 2
"#,
            state = dir.join("state").display(),
            signer = self.signer_pem(dir).display(),
            endpoint = self.endpoint(),
            key = key_file.display(),
            secret = secret.display(),
        )
    }

    /// An agent configuration for DPS only, with a group enrollment `lab` created in the hub
    /// and its key in `dir/group.key`; the agent registers as `pc-0042`.
    pub async fn dps_agent_config(&self, dir: &Path, extra: &str) -> String {
        let group_key = cloudpillar_hub::sas::random_key();
        let enrollment = json!({"attestation": {"type": "symmetricKey",
            "symmetricKey": {"primaryKey": group_key, "secondaryKey": group_key}}});
        let (status, body) = self
            .call(Method::PUT, "/enrollmentGroups/lab", Some(enrollment))
            .await;
        assert_eq!(status, 200, "{body}");
        let key_file = dir.join("group.key");
        write_0600(&key_file, &group_key);
        let secret = dir.join("api.secret");
        write_0600(&secret, "s3cret");
        format!(
            r#"state_dir = "{state}"
trusted_keys = ["{signer}"]
{extra}
[hub]
{endpoint}[dps]
{endpoint}id_scope = "{scope}"
registration_id = "pc-0042"
key_file = "{key}"
group = true
[api]
bind = "127.0.0.1:0"
secret_key_file = "{secret}"
"#,
            state = dir.join("state").display(),
            signer = self.signer_pem(dir).display(),
            endpoint = self.endpoint(),
            scope = self.hub.id_scope(),
            key = key_file.display(),
            secret = secret.display(),
        )
    }

    /// Signs a changeSpec as the keyholder would.
    pub fn sign(&self, spec: &Value) -> String {
        let signature = self.signer.sign_json(spec);
        cloudpillar_protocol::signing::SignedText::new(&self.signer, &signature).to_string()
    }
}

/// A field recipe fixture (see `cloudpillar_protocol::fixtures`).
pub fn fixture(name: &str) -> Vec<u8> {
    std::fs::read(cloudpillar_protocol::fixtures::path(name)).unwrap()
}

/// Writes a secret file the agent accepts (mode 0600).
pub fn write_0600(path: &Path, text: &str) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::write(path, text).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).unwrap();
}

pub fn parse_config(text: &str) -> cloudpillar_agent::config::Config {
    cloudpillar_agent::config::Config::parse_with_env(text, Path::new("agent.toml"), &[]).unwrap()
}
pub mod files;
pub mod process;
pub mod relay;
pub mod streamer;
pub mod swtpm;

/// Like [`parse_config`] with `CP_AGENT_*` overrides.
pub fn parse_config_with(text: &str, vars: &[(&str, &str)]) -> cloudpillar_agent::config::Config {
    let vars: Vec<(String, String)> = vars
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    cloudpillar_agent::config::Config::parse_with_env(text, Path::new("agent.toml"), &vars).unwrap()
}
