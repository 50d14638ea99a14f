//! A real HTTPS file server on 127.0.0.1 for download tests: axum over rustls with a
//! certificate from a test CA (rcgen), range requests, an ETag, and knobs to pace the body,
//! hold it at a byte, or drop the connection mid-file.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::{Path as UrlPath, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::Response;
use axum_server::tls_rustls::RustlsConfig;
use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use tokio::sync::Notify;

/// Bytes per body frame the server writes.
const FRAME: usize = 16 * 1024;

/// ETag of every served file.
pub const ETAG: &str = "\"v1\"";

/// How the server misbehaves.
#[derive(Debug, Default)]
pub struct Knobs {
    /// Pause between body frames.
    pub pace: Duration,
    /// Responses left that end with a dropped connection, and after how many body bytes.
    pub drops: AtomicU32,
    /// Body bytes of a dropping response before the connection is dropped.
    pub drop_after: usize,
    /// Absolute file offset where the first body to reach it waits until `release` is
    /// notified; later bodies pass.
    pub hold_at: Option<u64>,
    /// Whether a body has held.
    pub held: AtomicBool,
    /// Wakes a held body.
    pub release: Notify,
}

/// One request as the server saw it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Seen {
    /// Path without the leading `/`.
    pub name: String,
    /// `Range` header.
    pub range: Option<String>,
    /// `If-Range` header.
    pub if_range: Option<String>,
}

impl Seen {
    /// Where a `Range: bytes={start}-` request starts.
    pub fn range_start(&self) -> Option<u64> {
        self.range
            .as_deref()?
            .strip_prefix("bytes=")?
            .strip_suffix('-')?
            .parse()
            .ok()
    }
}

struct Shared {
    files: HashMap<String, Arc<Vec<u8>>>,
    knobs: Arc<Knobs>,
    seen: Arc<Mutex<Vec<Seen>>>,
}

/// A running file server.
pub struct FileServer {
    /// `https://127.0.0.1:{port}`.
    pub base: String,
    /// PEM of the CA that signed the server certificate.
    pub ca_file: PathBuf,
    /// Requests so far.
    pub seen: Arc<Mutex<Vec<Seen>>>,
    /// The knobs, changeable while it runs.
    pub knobs: Arc<Knobs>,
}

impl FileServer {
    /// Serves `files` (name to bytes) with the CA written to `dir/download-ca.pem`.
    pub async fn start(dir: &Path, files: &[(&str, Arc<Vec<u8>>)], knobs: Knobs) -> Self {
        let ca_key = KeyPair::generate().unwrap();
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let ca_cert = ca_params.self_signed(&ca_key).unwrap();
        let issuer = Issuer::new(ca_params, ca_key);
        let key = KeyPair::generate().unwrap();
        let params = CertificateParams::new(vec!["localhost".into(), "127.0.0.1".into()]).unwrap();
        let cert = params.signed_by(&key, &issuer).unwrap();
        let ca_file = dir.join("download-ca.pem");
        std::fs::write(&ca_file, ca_cert.pem()).unwrap();

        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let tls = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(
                vec![CertificateDer::from(cert.der().to_vec())],
                PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der())),
            )
            .unwrap();

        let knobs = Arc::new(knobs);
        let seen = Arc::new(Mutex::new(Vec::new()));
        let shared = Arc::new(Shared {
            files: files
                .iter()
                .map(|(name, bytes)| ((*name).to_owned(), Arc::clone(bytes)))
                .collect(),
            knobs: Arc::clone(&knobs),
            seen: Arc::clone(&seen),
        });
        let app = axum::Router::new()
            .route("/{*name}", axum::routing::get(serve))
            .with_state(shared);
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let base = format!(
            "https://127.0.0.1:{}",
            listener.local_addr().unwrap().port()
        );
        let server =
            axum_server::from_tcp_rustls(listener, RustlsConfig::from_config(Arc::new(tls)))
                .unwrap();
        tokio::spawn(server.serve(app.into_make_service()));
        Self {
            base,
            ca_file,
            seen,
            knobs,
        }
    }

    /// The URL of `name`.
    pub fn url(&self, name: &str) -> String {
        format!("{}/{name}", self.base)
    }

    /// Requests so far.
    pub fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }
}

fn text(headers: &HeaderMap, name: header::HeaderName) -> Option<String> {
    headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
}

async fn serve(
    State(shared): State<Arc<Shared>>,
    UrlPath(name): UrlPath<String>,
    headers: HeaderMap,
) -> Response {
    let range = text(&headers, header::RANGE);
    shared.seen.lock().unwrap().push(Seen {
        name: name.clone(),
        range: range.clone(),
        if_range: text(&headers, header::IF_RANGE),
    });
    let Some(file) = shared.files.get(&name).cloned() else {
        return Response::builder()
            .status(StatusCode::NOT_FOUND)
            .body(Body::from("no such file"))
            .unwrap();
    };
    let len = file.len() as u64;
    let from: u64 = range
        .as_deref()
        .and_then(|r| r.strip_prefix("bytes="))
        .and_then(|r| r.strip_suffix('-'))
        .and_then(|r| r.parse().ok())
        .unwrap_or(0);
    let builder = Response::builder()
        .header(header::ETAG, ETAG)
        .header(header::ACCEPT_RANGES, "bytes");
    let builder = if range.is_some() {
        if from >= len {
            return builder
                .status(StatusCode::RANGE_NOT_SATISFIABLE)
                .header(header::CONTENT_RANGE, format!("bytes */{len}"))
                .body(Body::empty())
                .unwrap();
        }
        builder.status(StatusCode::PARTIAL_CONTENT).header(
            header::CONTENT_RANGE,
            format!("bytes {from}-{}/{len}", len - 1),
        )
    } else {
        builder.status(StatusCode::OK)
    };
    let dropping = shared
        .knobs
        .drops
        .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
        .is_ok();
    let body = body_stream(file, from, dropping, Arc::clone(&shared.knobs));
    builder
        .header(header::CONTENT_LENGTH, len - from)
        .body(Body::from_stream(body))
        .unwrap()
}

fn body_stream(
    file: Arc<Vec<u8>>,
    from: u64,
    dropping: bool,
    knobs: Arc<Knobs>,
) -> impl futures::Stream<Item = Result<Bytes, std::io::Error>> {
    let start = usize::try_from(from).unwrap();
    let stop = if dropping {
        (start + knobs.drop_after).min(file.len())
    } else {
        file.len()
    };
    futures::stream::unfold(Some(start), move |at| {
        let (file, knobs) = (Arc::clone(&file), Arc::clone(&knobs));
        async move {
            let at = at?;
            if at >= stop {
                return (stop < file.len()).then(|| {
                    let cut = std::io::Error::other("connection dropped on purpose");
                    (Err(cut), None)
                });
            }
            let hold = knobs.hold_at.filter(|_| !knobs.held.load(Ordering::SeqCst));
            if hold == Some(at as u64) {
                knobs.held.store(true, Ordering::SeqCst);
                knobs.release.notified().await;
            }
            if !knobs.pace.is_zero() {
                tokio::time::sleep(knobs.pace).await;
            }
            let mut end = (at + FRAME).min(stop);
            if let Some(hold) = hold.map(|h| h as usize).filter(|h| at < *h && *h < end) {
                end = hold;
            }
            Some((Ok(Bytes::copy_from_slice(&file[at..end])), Some(end)))
        }
    })
}
