//! RunDiagnostics on the whole system: `cloudpillar run` (whose streamer signs uploads with the
//! key holder it runs) and a real agent process, provisioned through DPS, that trusts the
//! published signing key.

use std::time::Duration;

use cloudpillar_tests::system::{System, SystemOptions};
use serde_json::Value;

const STEPS: [&str; 5] = ["upload", "sign", "download", "verify", "compare"];

#[tokio::test]
async fn run_diagnostics_passes_on_cloudpillar_run_with_a_real_agent() {
    let mut system = System::start("sys-diag", SystemOptions::default())
        .await
        .expect("system");
    system
        .add_devices(&["diag-01"], &[])
        .await
        .expect("devices");
    let agent = system.agent("diag-01").expect("agent");
    system
        .wait_for("diag-01 connected", Duration::from_secs(60), || async {
            let (_, state) = agent.call("GET", "GetDeviceState", None).await?;
            Ok((state["reported"]["health"] == "connected").then_some(()))
        })
        .await
        .expect("the agent connects");

    let (status, report) = agent
        .call("GET", "RunDiagnostics", None)
        .await
        .expect("RunDiagnostics answers");
    assert_eq!(status, 200, "{report}\n{}", agent.log());
    assert_eq!(report["result"], "Success", "{report}");
    let steps: Vec<(&str, &str)> = report["steps"]
        .as_array()
        .expect("steps")
        .iter()
        .map(|s: &Value| {
            (
                s["name"].as_str().unwrap_or_default(),
                s["status"].as_str().unwrap_or_default(),
            )
        })
        .collect();
    assert_eq!(steps, STEPS.map(|name| (name, "Success")), "{report}");
    let file_id = report["fileId"].as_str().unwrap_or_default();
    assert!(
        file_id.starts_with("uploads/diag-01/diagnostics/"),
        "{report}"
    );
    system.shutdown().await.expect("shutdown");
}
