//! Test helpers: a hub on free loopback ports with TLS, a REST client and rumqttc devices.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::time::Duration;

use cloudpillar_hub::{Hub, HubConfig, HubHandle, sas};
use reqwest::{Method, StatusCode, header::HeaderMap};
use rumqttc::{
    AsyncClient, Event, EventLoop, MqttOptions, Packet, Publish, QoS, TlsConfiguration, Transport,
};
use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;
use serde_json::{Value, json};
use tokio::sync::mpsc;

pub struct TestHub {
    pub hub: HubHandle,
    pub dir: tempfile::TempDir,
    pub http: reqwest::Client,
    pub base: String,
    pub tls: Arc<rustls::ClientConfig>,
}

pub fn client_tls(
    ca: &std::path::Path,
    client_cert: Option<(
        Vec<CertificateDer<'static>>,
        rustls::pki_types::PrivateKeyDer<'static>,
    )>,
) -> rustls::ClientConfig {
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(ca).unwrap() {
        roots.add(cert.unwrap()).unwrap();
    }
    let builder = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots);
    match client_cert {
        Some((chain, key)) => builder.with_client_auth_cert(chain, key).unwrap(),
        None => builder.with_no_client_auth(),
    }
}

impl TestHub {
    pub async fn start() -> Self {
        let dir = tempfile::tempdir().unwrap();
        Self::start_in(dir).await
    }

    pub async fn start_in(dir: tempfile::TempDir) -> Self {
        let config = HubConfig::new(dir.path());
        Self::start_with(dir, config).await
    }

    /// A hub in a fresh directory, with the configuration `adjust` changed.
    pub async fn start_adjusted(adjust: impl FnOnce(&mut HubConfig)) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let mut config = HubConfig::new(dir.path());
        adjust(&mut config);
        Self::start_with(dir, config).await
    }

    async fn start_with(dir: tempfile::TempDir, config: HubConfig) -> Self {
        let hub = Hub::start(config).await.unwrap();
        let tls = Arc::new(client_tls(hub.ca_cert_path().unwrap(), None));
        let http = reqwest::Client::builder()
            .use_preconfigured_tls((*tls).clone())
            .build()
            .unwrap();
        let base = format!("https://localhost:{}", hub.http_addr().port());
        Self {
            hub,
            dir,
            http,
            base,
            tls,
        }
    }

    pub fn token(&self) -> String {
        self.hub.service_token(Duration::from_secs(600))
    }

    pub async fn call(
        &self,
        method: Method,
        path: &str,
        body: Option<Value>,
        headers: &[(&str, &str)],
    ) -> (StatusCode, HeaderMap, Value) {
        let sep = if path.contains('?') { '&' } else { '?' };
        let url = format!("{}{path}{sep}api-version=2021-04-12", self.base);
        let mut req = self
            .http
            .request(method, url)
            .header("Authorization", self.token());
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        if let Some(b) = body {
            req = req
                .header("content-type", "application/json")
                .body(b.to_string());
        }
        let resp = req.send().await.unwrap();
        let (status, headers) = (resp.status(), resp.headers().clone());
        let text = resp.text().await.unwrap();
        let value = serde_json::from_str(&text).unwrap_or(Value::Null);
        (status, headers, value)
    }

    /// Registers a SAS device and returns its primary key.
    pub async fn add_device(&self, id: &str) -> String {
        let (status, _, body) = self
            .call(
                Method::PUT,
                &format!("/devices/{id}"),
                Some(json!({"deviceId": id})),
                &[],
            )
            .await;
        assert_eq!(status, 200, "{body}");
        body["authentication"]["symmetricKey"]["primaryKey"]
            .as_str()
            .unwrap()
            .to_string()
    }

    pub fn device_token(&self, id: &str, key: &str, expiry: u64) -> String {
        sas::generate(
            key,
            &format!("{}/devices/{id}", self.hub.hostname()),
            expiry,
            None,
        )
        .unwrap()
    }

    pub fn device_options(&self, id: &str, password: Option<String>, clean: bool) -> MqttOptions {
        let mut opts = MqttOptions::new(id, "localhost", self.hub.mqtt_addr().port());
        let user = format!("{}/{id}/?api-version=2021-04-12", self.hub.hostname());
        opts.set_credentials(user, password.unwrap_or_default());
        opts.set_clean_session(clean);
        opts.set_keep_alive(Duration::from_secs(30));
        opts.set_max_packet_size(512 * 1024, 512 * 1024);
        opts.set_transport(Transport::tls_with_config(TlsConfiguration::Rustls(
            self.tls.clone(),
        )));
        opts
    }

    pub async fn connect(&self, id: &str, key: &str, clean: bool) -> Device {
        let token = self.device_token(id, key, now() + 3600);
        Device::connect(self.device_options(id, Some(token), clean))
            .await
            .expect("connect")
    }

    /// Registers device `id`, connects it and subscribes to all its topics.
    pub async fn subscribed(&self, id: &str, clean: bool) -> Device {
        self.subscribed_with_key(id, clean).await.1
    }

    /// As [`TestHub::subscribed`], with the device's primary key.
    pub async fn subscribed_with_key(&self, id: &str, clean: bool) -> (String, Device) {
        let key = self.add_device(id).await;
        let dev = self.connect(id, &key, clean).await;
        dev.subscribe_all(id).await;
        (key, dev)
    }

    /// The first 1,000 events of the hub's event stream.
    pub async fn events(&self) -> Vec<Value> {
        let (_, _, page) = self
            .call(Method::GET, "/events?from=1&limit=1000", None, &[])
            .await;
        page["events"].as_array().cloned().unwrap_or_default()
    }
}

pub fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

#[derive(Debug)]
pub enum Ev {
    ConnAck(bool),
    Msg(Publish),
    Down(String),
}

pub struct Device {
    pub client: AsyncClient,
    pub rx: mpsc::UnboundedReceiver<Ev>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Device {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn pump(mut el: EventLoop, tx: mpsc::UnboundedSender<Ev>) {
    loop {
        match el.poll().await {
            Ok(Event::Incoming(Packet::ConnAck(a))) => {
                let _ = tx.send(Ev::ConnAck(a.session_present));
            }
            Ok(Event::Incoming(Packet::Publish(p))) => {
                let _ = tx.send(Ev::Msg(p));
            }
            Ok(_) => {}
            Err(e) => {
                let _ = tx.send(Ev::Down(e.to_string()));
                return;
            }
        }
    }
}

impl Device {
    /// Connects; Err with the reason when the broker refuses or the link fails.
    pub async fn connect(opts: MqttOptions) -> Result<Device, String> {
        let (client, el) = AsyncClient::new(opts, 64);
        let (tx, mut rx) = mpsc::unbounded_channel();
        let task = tokio::spawn(pump(el, tx));
        match tokio::time::timeout(Duration::from_secs(10), rx.recv()).await {
            Ok(Some(Ev::ConnAck(_present))) => {}
            Ok(Some(Ev::Down(e))) => return Err(e),
            other => return Err(format!("{other:?}")),
        }
        Ok(Device { client, rx, task })
    }

    pub async fn connect_with_ack(opts: MqttOptions) -> (Device, bool) {
        let (client, el) = AsyncClient::new(opts, 64);
        let (tx, mut rx) = mpsc::unbounded_channel();
        let task = tokio::spawn(pump(el, tx));
        match tokio::time::timeout(Duration::from_secs(10), rx.recv())
            .await
            .unwrap()
        {
            Some(Ev::ConnAck(present)) => (Device { client, rx, task }, present),
            other => panic!("no connack: {other:?}"),
        }
    }

    pub async fn subscribe_all(&self, id: &str) {
        for f in [
            "$iothub/twin/res/#",
            "$iothub/twin/PATCH/properties/desired/#",
            "$iothub/methods/POST/#",
        ] {
            self.client.subscribe(f, QoS::AtMostOnce).await.unwrap();
        }
        self.client
            .subscribe(
                format!("devices/{id}/messages/devicebound/#"),
                QoS::AtLeastOnce,
            )
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_millis(300)).await;
    }

    /// Next publish whose topic starts with `prefix`, within 10 s.
    pub async fn next(&mut self, prefix: &str) -> Publish {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        loop {
            match tokio::time::timeout_at(deadline, self.rx.recv()).await {
                Ok(Some(Ev::Msg(p))) if p.topic.starts_with(prefix) => return p,
                Ok(Some(Ev::Down(e))) => panic!("link down waiting for {prefix}: {e}"),
                Ok(Some(_)) => {}
                _ => panic!("nothing on {prefix}"),
            }
        }
    }

    /// Waits until the link goes down; returns the reason.
    pub async fn closed(&mut self) -> Option<String> {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        loop {
            match tokio::time::timeout_at(deadline, self.rx.recv()).await {
                Ok(Some(Ev::Down(e))) => return Some(e),
                Ok(Some(_)) => {}
                _ => return None,
            }
        }
    }

    pub async fn twin_request(&mut self, topic: &str, body: Value) -> Publish {
        self.client
            .publish(topic, QoS::AtMostOnce, false, body.to_string())
            .await
            .unwrap();
        self.next("$iothub/twin/res/").await
    }
}

/// Status code from a `$iothub/twin/res/{status}/...` topic.
pub fn status_of(topic: &str) -> u16 {
    topic
        .trim_start_matches("$iothub/twin/res/")
        .split('/')
        .next()
        .unwrap()
        .parse()
        .unwrap()
}
