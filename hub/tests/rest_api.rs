//! The service REST API: registry, twins with ETags, query, service SAS, limits.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::TestHub;
use reqwest::Method;
use serde_json::{Value, json};

#[tokio::test]
async fn registry_generates_keys_refuses_duplicates_and_deletes() {
    let hub = TestHub::start().await;
    let (s, h, dev) = hub
        .call(
            Method::PUT,
            "/devices/r1",
            Some(json!({"deviceId": "r1"})),
            &[],
        )
        .await;
    assert_eq!(s, 200);
    assert!(h["etag"].to_str().unwrap().starts_with("W/\""));
    assert_eq!(dev["authentication"]["type"], "sas");
    assert!(
        dev["authentication"]["symmetricKey"]["secondaryKey"]
            .as_str()
            .unwrap()
            .len()
            >= 40
    );
    let (s, _, _) = hub
        .call(
            Method::PUT,
            "/devices/r1",
            Some(json!({"deviceId": "r1"})),
            &[],
        )
        .await;
    assert_eq!(s, 409);
    let thumb = "a".repeat(40);
    let body = json!({"deviceId": "r2", "authentication": {"type": "selfSigned", "x509Thumbprint": {"primaryThumbprint": thumb}}});
    let (s, _, dev) = hub.call(Method::PUT, "/devices/r2", Some(body), &[]).await;
    assert_eq!(s, 200, "{dev}");
    assert_eq!(
        dev["authentication"]["x509Thumbprint"]["primaryThumbprint"],
        thumb
    );
    let (s, h, body) = hub.call(Method::GET, "/devices/missing", None, &[]).await;
    assert_eq!(s, 404);
    assert_eq!(h["iothub-errorcode"], "DeviceNotFound");
    assert!(
        body["Message"]
            .as_str()
            .unwrap()
            .starts_with("ErrorCode:DeviceNotFound;")
    );
    let (s, _, _) = hub
        .call(Method::DELETE, "/devices/r1", None, &[("If-Match", "*")])
        .await;
    assert_eq!(s, 204);
    let (s, _, _) = hub.call(Method::GET, "/twins/r1", None, &[]).await;
    assert_eq!(s, 404);
}

#[tokio::test]
async fn twin_etags_guard_writes_and_412_changes_nothing() {
    let hub = TestHub::start().await;
    hub.add_device("t1").await;
    let (_, h, twin) = hub.call(Method::GET, "/twins/t1", None, &[]).await;
    let etag = h["etag"].to_str().unwrap().to_string();
    assert_eq!(etag, format!("W/\"{}\"", twin["etag"].as_str().unwrap()));
    let patch = json!({"tags": {"site": "lab"}, "properties": {"desired": {"x": 1}}});
    let (s, _, after) = hub
        .call(
            Method::PATCH,
            "/twins/t1",
            Some(patch.clone()),
            &[("If-Match", &etag)],
        )
        .await;
    assert_eq!(s, 200);
    assert_eq!(after["properties"]["desired"]["$version"], 2);
    let (s, _, _) = hub
        .call(
            Method::PATCH,
            "/twins/t1",
            Some(json!({"tags": {"site": "other"}})),
            &[("If-Match", &etag)],
        )
        .await;
    assert_eq!(s, 412);
    let (_, _, now) = hub.call(Method::GET, "/twins/t1", None, &[]).await;
    assert_eq!(now["tags"]["site"], "lab");
    // Replace drops keys absent from the new document.
    let (s, _, replaced) = hub
        .call(
            Method::PUT,
            "/twins/t1",
            Some(json!({"tags": {"floor": 2}, "properties": {"desired": {"y": 2}}})),
            &[],
        )
        .await;
    assert_eq!(s, 200);
    assert_eq!(replaced["tags"], json!({"floor": 2}));
    assert!(replaced["properties"]["desired"].get("x").is_none());
}

#[tokio::test]
async fn f01_f02_null_patches_delete_only_their_key_and_repeat_safely() {
    let hub = TestHub::start().await;
    hub.add_device("n1").await;
    let set = json!({"properties": {"desired": {"recipes": {"r1": {"rev": 3}}}}});
    hub.call(Method::PATCH, "/twins/n1", Some(set), &[]).await;
    let null_r2 = json!({"properties": {"desired": {"recipes": {"r2": null}}}});
    for _ in 0..2 {
        let (_, _, twin) = hub
            .call(Method::PATCH, "/twins/n1", Some(null_r2.clone()), &[])
            .await;
        assert_eq!(
            twin["properties"]["desired"]["recipes"],
            json!({"r1": {"rev": 3}})
        );
    }
    let steps = [
        json!({"a": null}),
        json!({"a": null}),
        json!({"a": {"b": null}}),
        json!({"a": null}),
    ];
    let expect = [Value::Null, Value::Null, json!({}), Value::Null];
    for (patch, want) in steps.iter().zip(expect) {
        let (_, _, twin) = hub
            .call(
                Method::PATCH,
                "/twins/n1",
                Some(json!({"tags": patch})),
                &[],
            )
            .await;
        assert_eq!(
            twin["tags"].get("a").cloned().unwrap_or(Value::Null),
            want,
            "{patch}"
        );
    }
}

#[tokio::test]
async fn query_filters_tags_and_reported_with_continuation() {
    let hub = TestHub::start().await;
    for (i, site) in ["a", "b", "a", "a"].iter().enumerate() {
        let id = format!("q{i}");
        hub.add_device(&id).await;
        hub.call(
            Method::PATCH,
            &format!("/twins/{id}"),
            Some(json!({"tags": {"site": site}})),
            &[],
        )
        .await;
    }
    let q = json!({"query": "SELECT * FROM devices WHERE tags.site = 'a' AND deviceId IN ['q0', 'q2', 'q3']"});
    let (page1, cont) = query_page(&hub, &q, None).await;
    assert_eq!(page1, ["q0", "q2"]);
    let (page2, last) = query_page(&hub, &q, cont.as_deref()).await;
    assert_eq!(page2, ["q3"]);
    assert!(last.is_none());
    let (s, _, _) = hub
        .call(
            Method::POST,
            "/devices/query",
            Some(json!({"query": "SELECT x FROM devices"})),
            &[],
        )
        .await;
    assert_eq!(s, 400);
}

#[tokio::test]
async fn query_continuation_resumes_after_the_last_device_when_earlier_ones_are_deleted() {
    let hub = TestHub::start().await;
    for id in ["p0", "p1", "p2", "p3"] {
        hub.add_device(id).await;
    }
    let q = json!({"query": "SELECT * FROM devices"});
    let (page1, cont) = query_page(&hub, &q, None).await;
    assert_eq!(page1, ["p0", "p1"]);

    // Devices already returned go away before the next page is read.
    for id in ["p0", "p1"] {
        let (s, _, _) = hub
            .call(Method::DELETE, &format!("/devices/{id}"), None, &[])
            .await;
        assert_eq!(s, 204);
    }
    let (page2, last) = query_page(&hub, &q, cont.as_deref()).await;
    assert_eq!(page2, ["p2", "p3"]);
    assert!(last.is_none());
}

/// One page of two twins: their device ids and the continuation token, if any.
async fn query_page(hub: &TestHub, q: &Value, cont: Option<&str>) -> (Vec<String>, Option<String>) {
    let mut headers = vec![("x-ms-max-item-count", "2")];
    headers.extend(cont.map(|c| ("x-ms-continuation", c)));
    let (s, h, page) = hub
        .call(Method::POST, "/devices/query", Some(q.clone()), &headers)
        .await;
    assert_eq!(s, 200, "{page}");
    let rows = page.as_array().unwrap().iter();
    let ids = rows
        .map(|t| t["deviceId"].as_str().unwrap().to_string())
        .collect();
    let next = h
        .get("x-ms-continuation")
        .map(|v| v.to_str().unwrap().to_string());
    (ids, next)
}

#[tokio::test]
async fn forbidden_twin_key_refusal_names_the_key_and_the_reason() {
    let hub = TestHub::start().await;
    hub.add_device("k1").await;
    let (s, h, body) = hub
        .call(
            Method::PATCH,
            "/twins/k1",
            Some(json!({"tags": {"site": {"firmware.bin": 1}}})),
            &[],
        )
        .await;
    assert_eq!(s, 400);
    assert_eq!(h["iothub-errorcode"], "ArgumentInvalid");
    let message = body["Message"].as_str().unwrap();
    assert!(message.contains("firmware.bin"), "{message}");
    assert!(message.contains("'.'"), "{message}");
}

#[tokio::test]
async fn service_calls_need_a_valid_policy_token() {
    let hub = TestHub::start().await;
    let url = format!("{}/devices/x?api-version=2021-04-12", hub.base);
    let none = hub.http.get(&url).send().await.unwrap();
    assert_eq!(none.status(), 401);
    let forged = cloudpillar_hub::sas::generate(
        &cloudpillar_hub::sas::random_key(),
        hub.hub.hostname(),
        common::now() + 600,
        Some("iothubowner"),
    )
    .unwrap();
    assert_eq!(
        hub.http
            .get(&url)
            .header("Authorization", forged)
            .send()
            .await
            .unwrap()
            .status(),
        401
    );
    let expired = cloudpillar_hub::sas::generate(
        hub.hub.policy_key(),
        hub.hub.hostname(),
        common::now() - 400,
        Some("iothubowner"),
    )
    .unwrap();
    assert_eq!(
        hub.http
            .get(&url)
            .header("Authorization", expired)
            .send()
            .await
            .unwrap()
            .status(),
        401
    );
    assert_eq!(
        hub.http
            .get(&url)
            .header("Authorization", hub.token())
            .send()
            .await
            .unwrap()
            .status(),
        404
    );
}

#[tokio::test]
async fn f05_f06_bad_twin_writes_get_azure_status_and_change_nothing() {
    let hub = TestHub::start().await;
    hub.add_device("l1").await;
    let deep = (0..11).fold(json!(1), |inner, _| json!({ "k": inner }));
    let ten = (0..10).fold(json!(1), |inner, _| json!({ "k": inner }));
    let cases = [
        (json!({"tags": {"big": "x".repeat(8 * 1024)}}), 413),
        (
            json!({"properties": {"desired": {"big": "x".repeat(32 * 1024)}}}),
            413,
        ),
        (json!({"properties": {"desired": deep}}), 400),
        (json!({"properties": {"desired": {"a.b": 1}}}), 400),
        (json!({"tags": {"$x": 1}}), 400),
        (json!({"tags": ["not", "an", "object"]}), 400),
    ];
    for (body, want) in cases {
        let (s, _, _) = hub
            .call(Method::PATCH, "/twins/l1", Some(body.clone()), &[])
            .await;
        assert_eq!(s.as_u16(), want, "{body}");
    }
    let url = format!("{}/twins/l1?api-version=2021-04-12", hub.base);
    let resp = hub
        .http
        .patch(url)
        .header("Authorization", hub.token())
        .body("{oops")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 400);
    let (_, _, twin) = hub.call(Method::GET, "/twins/l1", None, &[]).await;
    assert_eq!(twin["version"], 1);
    let (s, _, _) = hub
        .call(
            Method::PATCH,
            "/twins/l1",
            Some(json!({"properties": {"desired": ten}})),
            &[],
        )
        .await;
    assert_eq!(s, 200);
}

#[tokio::test]
async fn shutdown_closes_the_store_so_the_hub_restarts_in_process() {
    let hub = TestHub::start().await;
    let key = hub.add_device("s1").await;
    let mut device = hub.connect("s1", &key, false).await;
    hub.call(
        Method::PATCH,
        "/twins/s1",
        Some(json!({"tags": {"k": "v"}})),
        &[],
    )
    .await;
    let TestHub {
        hub: handle, dir, ..
    } = hub;
    handle.shutdown().await;
    assert!(device.closed().await.is_some());
    let again = TestHub::start_in(dir).await;
    let (s, _, twin) = again.call(Method::GET, "/twins/s1", None, &[]).await;
    assert_eq!(s, 200);
    assert_eq!(twin["tags"]["k"], "v");
}

#[tokio::test]
async fn last_activity_is_kept_after_a_disconnect_and_never_connected_devices_show_year_one() {
    let hub = TestHub::start().await;
    hub.add_device("quiet").await;
    let (_, _, quiet) = hub.call(Method::GET, "/devices/quiet", None, &[]).await;
    assert_eq!(quiet["lastActivityTime"], "0001-01-01T00:00:00Z");
    let (_, _, twin) = hub.call(Method::GET, "/twins/quiet", None, &[]).await;
    assert_eq!(twin["lastActivityTime"], "0001-01-01T00:00:00Z");

    let device = hub.subscribed("seen", true).await;
    let (_, _, live) = hub.call(Method::GET, "/devices/seen", None, &[]).await;
    assert_eq!(live["connectionState"], "Connected");
    let active = live["lastActivityTime"].as_str().expect("time").to_owned();
    assert!(active.starts_with("20"), "{active}");
    device.client.disconnect().await.expect("disconnect");
    drop(device);

    let mut after = Value::Null;
    for _ in 0..100 {
        after = hub.call(Method::GET, "/devices/seen", None, &[]).await.2;
        if after["connectionState"] == "Disconnected" {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert_eq!(after["connectionState"], "Disconnected");
    assert_eq!(after["lastActivityTime"], active.as_str(), "{after}");

    // The field is read-only: an update of the identity neither sets nor clears it.
    let mut update = after.clone();
    update["lastActivityTime"] = json!("2000-01-01T00:00:00Z");
    let etag = after["etag"].as_str().expect("etag").to_owned();
    let (s, _, updated) = hub
        .call(
            Method::PUT,
            "/devices/seen",
            Some(update),
            &[("If-Match", &format!("\"{etag}\""))],
        )
        .await;
    assert_eq!(s, 200, "{updated}");
    assert_eq!(updated["lastActivityTime"], active.as_str());
}

#[tokio::test]
async fn a_twin_patch_naming_reported_properties_is_refused_and_changes_nothing() {
    let hub = TestHub::start().await;
    hub.add_device("ro").await;
    let (_, _, before) = hub.call(Method::GET, "/twins/ro", None, &[]).await;
    let patch = json!({
        "tags": {"site": "lab"},
        "properties": {"desired": {"x": 1}, "reported": {"deviceState": "READY"}}
    });
    let (s, _, answer) = hub.call(Method::PATCH, "/twins/ro", Some(patch), &[]).await;
    assert_eq!(s, 400, "{answer}");
    assert!(
        answer.to_string().contains("properties.reported"),
        "the reason names the section: {answer}"
    );
    let (_, _, after) = hub.call(Method::GET, "/twins/ro", None, &[]).await;
    assert_eq!(after["version"], before["version"], "nothing written");
    assert!(after["tags"].get("site").is_none());
}

#[tokio::test]
async fn an_empty_twin_key_is_refused() {
    let hub = TestHub::start().await;
    hub.add_device("ek").await;
    for patch in [
        json!({"properties": {"desired": {"": 1}}}),
        json!({"tags": {"site": {"": "x"}}}),
    ] {
        let (s, _, answer) = hub.call(Method::PATCH, "/twins/ek", Some(patch), &[]).await;
        assert_eq!(s, 400, "{answer}");
        assert!(answer.to_string().contains("empty"), "{answer}");
    }
}

#[tokio::test]
async fn c2d_properties_count_in_the_size_limit_and_ids_and_ttls_are_checked() {
    let hub = TestHub::start().await;
    hub.add_device("c2").await;
    let send = "/devices/c2/messages/deviceBound";
    let long_id = "m".repeat(4000);
    let (s, _, answer) = hub
        .call(
            Method::POST,
            send,
            Some(json!("x")),
            &[("iothub-messageid", &long_id)],
        )
        .await;
    assert_eq!(
        s, 413,
        "properties that cannot fit the device's topic: {answer}"
    );
    let big = "p".repeat(3000);
    let headers: Vec<(String, String)> = (0..30)
        .map(|i| (format!("iothub-app-p{i}"), big.clone()))
        .collect();
    let headers: Vec<(&str, &str)> = headers
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    let (s, _, answer) = hub
        .call(Method::POST, send, Some(json!("x")), &headers)
        .await;
    assert_eq!(s, 413, "properties count in the 64 KiB: {answer}");
    let body = json!("b".repeat(65_000));
    let (s, _, answer) = hub
        .call(
            Method::POST,
            send,
            Some(body),
            &[("iothub-app-k", &"v".repeat(1000))],
        )
        .await;
    assert_eq!(s, 413, "body and properties over 64 KiB together: {answer}");

    for ttl in ["0", "172801"] {
        let path = format!("{send}?ttlSeconds={ttl}");
        let (s, _, answer) = hub.call(Method::POST, &path, Some(json!("x")), &[]).await;
        assert_eq!(s, 400, "ttlSeconds={ttl}: {answer}");
    }
    let (s, _, sent) = hub
        .call(
            Method::POST,
            send,
            Some(json!("x")),
            &[("iothub-messageid", "")],
        )
        .await;
    assert_eq!(s, 200);
    assert!(
        !sent["messageId"].as_str().unwrap_or_default().is_empty(),
        "{sent}"
    );
    let (_, _, device) = hub.call(Method::GET, "/devices/c2", None, &[]).await;
    assert_eq!(
        device["cloudToDeviceMessageCount"], 1,
        "only the good message queued"
    );

    let method = json!({"methodName": "n".repeat(5000), "payload": {}});
    let (s, _, answer) = hub
        .call(Method::POST, "/twins/c2/methods", Some(method), &[])
        .await;
    assert_eq!(
        s, 400,
        "method name too long for the device's topic: {answer}"
    );
}

#[tokio::test]
async fn patches_may_not_name_version_or_metadata_and_writes_that_change_nothing_keep_the_version()
{
    let hub = TestHub::start().await;
    hub.add_device("md").await;
    for patch in [
        json!({"properties": {"desired": {"$metadata": {"evil": 1}, "a": 1}}}),
        json!({"properties": {"desired": {"$version": "abc"}}}),
        json!({"tags": {"$version": 3}}),
        json!({"properties": {"reported": null}}),
    ] {
        let (s, _, answer) = hub
            .call(Method::PATCH, "/twins/md", Some(patch.clone()), &[])
            .await;
        assert_eq!(s, 400, "{patch}: {answer}");
    }
    for replace in [
        json!({"tags": {"a": {"b": {"": null}}}}),
        json!({"properties": {"desired": {"": null}}}),
    ] {
        let (s, _, answer) = hub
            .call(Method::PUT, "/twins/md", Some(replace.clone()), &[])
            .await;
        assert_eq!(s, 400, "{replace}: {answer}");
    }
    let (_, _, before) = hub.call(Method::GET, "/twins/md", None, &[]).await;
    for nothing in [
        json!({"foo": 1}),
        json!({"tags": {}}),
        json!({"properties": {}}),
    ] {
        let (s, _, answer) = hub
            .call(Method::PATCH, "/twins/md", Some(nothing.clone()), &[])
            .await;
        assert_eq!(s, 200, "{nothing}: {answer}");
        assert_eq!(
            answer["version"], before["version"],
            "{nothing} changed nothing"
        );
        assert_eq!(answer["etag"], before["etag"]);
    }
    // A write's answer carries the live registry fields a GET shows.
    hub.call(
        Method::POST,
        "/devices/md/messages/deviceBound",
        Some(json!("x")),
        &[],
    )
    .await;
    let patch = json!({"tags": {"site": "lab"}});
    let (_, _, written) = hub.call(Method::PATCH, "/twins/md", Some(patch), &[]).await;
    let (_, _, read) = hub.call(Method::GET, "/twins/md", None, &[]).await;
    for field in [
        "lastActivityTime",
        "connectionState",
        "cloudToDeviceMessageCount",
    ] {
        assert_eq!(written[field], read[field], "{field}");
    }
    assert_eq!(written["lastActivityTime"], "0001-01-01T00:00:00Z");
    assert_eq!(written["cloudToDeviceMessageCount"], 1);
}
