//! Figures read from outside the operator: the API server's request counters, a process's CPU
//! time and memory.

use std::collections::BTreeMap;

use kube::Client;

/// `apiserver_request_total` by `verb resource[/subresource] code` and the seconds spent
/// answering them (`apiserver_request_duration_seconds_sum`, key `seconds verb
/// resource[/subresource]`), for the resources the operator writes, and the server's
/// `process_cpu_seconds_total` (key `cpu`). Empty when the server does not let the caller read
/// `/metrics`.
pub async fn request_counts(client: &Client) -> BTreeMap<String, f64> {
    let Ok(request) = http::Request::get("/metrics").body(Vec::new()) else {
        return BTreeMap::new();
    };
    let Ok(text) = client.request_text(request).await else {
        return BTreeMap::new();
    };
    let mut counts = BTreeMap::new();
    for line in text.lines() {
        if let Some(value) = line.strip_prefix("process_cpu_seconds_total ") {
            counts.insert("cpu".to_owned(), value.trim().parse::<f64>().unwrap_or(0.0));
            continue;
        }
        let (seconds, labels) = match line.strip_prefix("apiserver_request_total{") {
            Some(rest) => (false, rest),
            None => match line.strip_prefix("apiserver_request_duration_seconds_sum{") {
                Some(rest) => (true, rest),
                None => continue,
            },
        };
        let Some((labels, value)) = labels.split_once("} ") else {
            continue;
        };
        let label = |name: &str| {
            labels
                .split(',')
                .find_map(|pair| pair.strip_prefix(&format!("{name}=\"")))
                .map(|v| v.trim_end_matches('"').to_owned())
                .unwrap_or_default()
        };
        let resource = label("resource");
        if !["devices", "secrets", "events", "leases"].contains(&resource.as_str()) {
            continue;
        }
        let subresource = label("subresource");
        let target = match subresource.as_str() {
            "" => resource,
            sub => format!("{resource}/{sub}"),
        };
        let key = match seconds {
            true => format!("seconds {} {target}", label("verb")),
            false => format!("{} {target} {}", label("verb"), label("code")),
        };
        *counts.entry(key).or_insert(0.0) += value.trim().parse::<f64>().unwrap_or(0.0);
    }
    counts
}

/// Prints how many requests of each kind the server answered between `before` and `after`.
pub fn print_request_delta(
    what: &str,
    before: &BTreeMap<String, f64>,
    after: &BTreeMap<String, f64>,
) {
    if after.is_empty() {
        println!("fleet: {what}: API server request counters not readable");
        return;
    }
    for (key, value) in after {
        let delta = value - before.get(key).copied().unwrap_or(0.0);
        if key == "cpu" {
            println!("fleet: {what}: API server used {delta:.1} s of CPU");
        } else if let Some(request) = key.strip_prefix("seconds ") {
            if delta >= 0.1 {
                println!("fleet: {what}: API server spent {delta:.1} s answering {request}");
            }
        } else if delta >= 1.0 {
            println!("fleet: {what}: API server answered {delta:.0} x {key}");
        }
    }
}

/// User plus system CPU seconds of a process so far (0 when unreadable).
pub fn cpu_seconds(pid: u32) -> f64 {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return 0.0;
    };
    // Fields after the command name, which is in parentheses and may hold spaces.
    let Some((_, rest)) = stat.rsplit_once(')') else {
        return 0.0;
    };
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |index: usize| fields.get(index).and_then(|v| v.parse::<f64>().ok());
    // utime and stime are fields 14 and 15 of the whole line: 12 and 13 after the name.
    // Linux counts them in USER_HZ, which is 100 on every architecture it runs on.
    match (ticks(11), ticks(12)) {
        (Some(user), Some(system)) => (user + system) / 100.0,
        _ => 0.0,
    }
}

/// A `/proc/<pid>/status` figure in KiB (0 when unreadable).
pub fn rss_kib(pid: u32, field: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|text| {
            text.lines()
                .find(|l| l.starts_with(field))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(0)
}

/// Value of an operator metric line starting with `name` (summed over its labels).
pub async fn operator_metric(addr: std::net::SocketAddr, name: &str) -> Option<f64> {
    let text = reqwest::get(format!("http://{addr}/metrics"))
        .await
        .ok()?
        .text()
        .await
        .ok()?;
    let values: Vec<f64> = text
        .lines()
        .filter(|l| l.starts_with(name))
        .filter_map(|l| l.rsplit_once(' ').and_then(|(_, v)| v.parse().ok()))
        .collect();
    (!values.is_empty()).then(|| values.iter().sum())
}
