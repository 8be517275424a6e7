//! The `bench` program at a tiny size, on SQLite and the mock cluster (no
//! server needed): it runs, and prints the JSON lines it promises.

use std::process::Command;

#[test]
fn bench_runs_tiny_scenarios_and_prints_one_json_object_per_run() {
    let output = Command::new(env!("CARGO_BIN_EXE_bench"))
        .args(["drain", "enqueue", "memory", "--json", "--quick"])
        .args(["--events", "50", "--database-url", "sqlite"])
        .output()
        .expect("the bench program starts");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "bench failed:\n{stderr}");
    let runs: Vec<serde_json::Value> = String::from_utf8_lossy(&output.stdout)
        .lines()
        .map(|line| serde_json::from_str(line).expect("each line of stdout is JSON"))
        .collect();
    let names: Vec<(&str, &str)> = runs
        .iter()
        .map(|run| {
            (
                run["scenario"].as_str().unwrap(),
                run["relay"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        names,
        [
            ("drain", "outbox"),
            ("drain", "seed"),
            ("drain", "floor"),
            ("drain", "floor-db"),
            ("enqueue", "none"),
            ("memory", "outbox")
        ],
        "{stderr}"
    );
    assert!(
        runs[0]["note"]
            .as_str()
            .is_some_and(|note| note.contains("statements per event")),
        "the relay's run says what each event cost: {}",
        runs[0]
    );
    for run in &runs {
        for field in [
            "backend",
            "sink",
            "events",
            "keys",
            "relays",
            "seconds",
            "events_per_s",
        ] {
            assert!(run.get(field).is_some(), "no {field} in {run}");
        }
        assert_eq!(run["backend"], "sqlite");
        assert_eq!(run["events"], 50);
    }
    assert!(runs[4]["per_event_ms"].is_number());
    assert!(runs[5]["peak_rss_mb"].as_f64().unwrap() > 0.0);
}
