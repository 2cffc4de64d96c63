//! plexus-bench end to end: a quick run against a real server measures every scenario
//! without errors, with the counts its sizes imply, and samples the server's process.

use std::process::Command;

use serde_json::Value;

use crate::harness::TestServer;

/// The value of a metric of a scenario in a plexus-bench JSON report.
fn metric(scenario: &Value, key: &str) -> f64 {
    scenario["metrics"]
        .as_array()
        .and_then(|m| m.iter().find(|m| m["key"] == key))
        .and_then(|m| m["value"].as_f64())
        .unwrap_or_else(|| panic!("no metric {key:?} in {scenario}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quick_run_measures_every_scenario() {
    let server = TestServer::start().await;
    let dir = tempfile::tempdir().unwrap();
    let report_path = dir.path().join("report.json");
    // The server runs in this test process, so that is the process to sample.
    let args = [
        "run".to_owned(),
        "--hs".to_owned(),
        server.base.clone(),
        "--quick".to_owned(),
        "--pid".to_owned(),
        std::process::id().to_string(),
        "--json".to_owned(),
        report_path.display().to_string(),
    ];
    let output =
        tokio::task::spawn_blocking(move || Command::new(env!("CARGO_BIN_EXE_plexus-bench")).args(args).output())
            .await
            .unwrap()
            .expect("plexus-bench runs");
    assert!(output.status.success(), "plexus-bench failed: {}", String::from_utf8_lossy(&output.stderr));
    let report: Value = serde_json::from_str(&std::fs::read_to_string(&report_path).unwrap()).unwrap();
    let scenarios = report["scenarios"].as_array().unwrap();
    let names: Vec<&str> = scenarios.iter().map(|s| s["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["send", "fanout", "initial-sync", "join-storm", "federation", "sliding-sync"]);
    for s in scenarios {
        assert!(s["error"].is_null(), "{} failed: {}", s["name"], s["error"]);
        let notes = s["notes"].to_string();
        assert!(!notes.contains("WRONG ANSWER"), "{}: {notes}", s["name"]);
    }
    let [send, fanout, _initial, storm, federation, sliding] = scenarios.as_slice() else { unreachable!() };
    assert!(metric(send, "accepted messages") > 0.0);
    assert_eq!(metric(send, "failed sends"), 0.0);
    assert!(send["server"]["cpu_seconds"].as_f64().unwrap() > 0.0, "{}", send["server"]);
    assert!(send["server"]["rss_peak_mb"].as_f64().unwrap() > 0.0);
    // --quick: 10 receivers x 10 messages, 10 users in the storm.
    assert_eq!(metric(fanout, "deliveries"), 100.0);
    assert_eq!(metric(fanout, "missing deliveries"), 0.0);
    assert_eq!(fanout["latencies_ms"]["delivery"]["count"], 100);
    assert_eq!(metric(storm, "users who did not see all"), 0.0);
    assert_eq!(storm["latencies_ms"]["user sees all"]["count"], 10);
    assert!(federation["skipped"].as_str().unwrap().contains("--hs2"));
    // --quick: 10 messages, each into another of the 20 rooms, each carried by the long-poll.
    assert_eq!(metric(sliding, "updates"), 10.0);
    assert_eq!(metric(sliding, "missing updates"), 0.0);
    assert_eq!(sliding["latencies_ms"]["update"]["count"], 10);
}
