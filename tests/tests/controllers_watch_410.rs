//! F20: a watch whose resource version expired lists again (scripted API server).
//!
//! The real API server cannot be made to expire a resource version on demand, so this test
//! uses a small scripted server for the two shapes of "410 Gone": an ERROR event inside a
//! watch stream, and an HTTP 410 answer to the watch request itself.

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use cloudpillar_controllers::runtime::Metrics;
use cloudpillar_controllers::runtime::watch::relisting_watcher;
use cloudpillar_crds::Device;
use cloudpillar_tests::controllers::eventually;
use futures::StreamExt;
use kube::api::Api;
use kube::runtime::controller::{Action, Controller};
use kube::runtime::{WatchStreamExt, reflector, watcher};
use kube::{Client, ResourceExt};
use serde_json::{Value, json};

/// How the scripted server refuses the first watch.
#[derive(Debug, Clone, Copy)]
enum Gone {
    /// 200 with an ERROR event of code 410 in the stream.
    InStream,
    /// HTTP 410 to the watch request.
    AtStart,
}

#[derive(Clone)]
struct Script {
    gone: Gone,
    lists: Arc<AtomicUsize>,
}

fn device(name: &str, version: &str) -> Value {
    json!({
        "apiVersion": "cloudpillar.io/v1alpha1", "kind": "Device",
        "metadata": { "name": name, "namespace": "f20", "uid": format!("uid-{name}"),
                      "resourceVersion": version },
        "spec": { "hubRef": { "name": "edge" } },
    })
}

fn gone_status() -> Value {
    json!({ "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
            "message": "too old resource version: 100 (150)", "reason": "Expired", "code": 410 })
}

async fn devices(
    State(script): State<Script>,
    Query(query): Query<Vec<(String, String)>>,
) -> Response {
    let param = |name: &str| {
        query
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    };
    if param("watch") != Some("true") {
        // LIST: A and B at 100 the first time; afterwards B is gone and C exists, at 200.
        let first = script.lists.fetch_add(1, Ordering::SeqCst) == 0;
        let (version, items) = if first {
            ("100", vec![device("a", "90"), device("b", "95")])
        } else {
            ("200", vec![device("a", "90"), device("c", "180")])
        };
        let list = json!({ "apiVersion": "cloudpillar.io/v1alpha1", "kind": "DeviceList",
                           "metadata": { "resourceVersion": version }, "items": items });
        return axum::Json(list).into_response();
    }
    match (param("resourceVersion"), script.gone) {
        (Some("100"), Gone::InStream) => {
            let line = format!("{}\n", json!({ "type": "ERROR", "object": gone_status() }));
            Response::new(Body::from(line))
        }
        (Some("100"), Gone::AtStart) => {
            (StatusCode::GONE, axum::Json(gone_status())).into_response()
        }
        // Any later watch stays open and quiet.
        _ => Response::new(Body::from_stream(futures::stream::pending::<
            Result<String, std::io::Error>,
        >())),
    }
}

async fn relists_after(gone: Gone) -> anyhow::Result<()> {
    let script = Script {
        gone,
        lists: Arc::new(AtomicUsize::new(0)),
    };
    let app = Router::new()
        .route(
            "/apis/cloudpillar.io/v1alpha1/namespaces/f20/devices",
            get(devices),
        )
        .with_state(script.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let server = tokio::spawn(async move { axum::serve(listener, app).await });

    let config = kube::Config::new(format!("http://{addr}").parse()?);
    let client = Client::try_from(config)?;
    let api: Api<Device> = Api::namespaced(client, "f20");
    let metrics = Arc::new(Metrics::new());
    let (reader, writer) = reflector::store_shared::<Device>(64);
    let subscriber = writer.subscribe().expect("shared store");
    let feed = relisting_watcher(api, watcher::Config::default(), "devices", metrics.clone())
        .default_backoff()
        .reflect_shared(writer)
        .for_each(|_| async {});
    let feed = tokio::spawn(feed);

    let reconciled = Arc::new(Mutex::new(Vec::<String>::new()));
    let log = reconciled.clone();
    let controller = Controller::for_shared_stream(subscriber, reader.clone())
        .run(
            |device: Arc<Device>, log: Arc<Mutex<Vec<String>>>| async move {
                log.lock().expect("log").push(device.name_any());
                Ok::<_, cloudpillar_controllers::Error>(Action::await_change())
            },
            |_, _, _| Action::await_change(),
            log,
        )
        .for_each(|_| async {});
    let controller = tokio::spawn(controller);

    eventually(
        "store holds exactly a and c",
        Duration::from_secs(30),
        || async {
            let names: BTreeSet<String> = reader.state().iter().map(|d| d.name_any()).collect();
            let expected: BTreeSet<String> = ["a", "c"].into_iter().map(String::from).collect();
            Ok((names == expected).then_some(()))
        },
    )
    .await?;
    eventually(
        "a and c reconciled after the relist",
        Duration::from_secs(30),
        || async {
            let log = reconciled.lock().expect("log").clone();
            let a = log.iter().filter(|n| *n == "a").count();
            Ok((a >= 2 && log.iter().any(|n| n == "c")).then_some(()))
        },
    )
    .await?;
    assert!(script.lists.load(Ordering::SeqCst) >= 2, "no second LIST");
    if matches!(gone, Gone::AtStart) {
        assert!(
            metrics
                .encode()
                .contains("cloudpillar_watch_relists_total{resource=\"devices\"} 1")
        );
    }
    controller.abort();
    feed.abort();
    server.abort();
    Ok(())
}

#[tokio::test]
async fn watch_lists_again_after_a_410_error_event_in_the_stream() -> anyhow::Result<()> {
    relists_after(Gone::InStream).await
}

#[tokio::test]
async fn watch_lists_again_when_the_watch_request_itself_answers_410() -> anyhow::Result<()> {
    relists_after(Gone::AtStart).await
}
