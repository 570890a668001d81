//! `handoff plan` against the real executor: each predicted step within a
//! tolerance of what the deployment then measured, for both strategies,
//! and the plan's JSON shape kept stable for scripts.

mod common;

use std::collections::BTreeSet;

use std::time::Duration;

use common::scenario::*;
use common::*;

fn json_of(out: &str) -> serde_json::Value {
    let start = out.find('{').unwrap_or_else(|| panic!("no JSON in {out}"));
    serde_json::from_str(&out[start..]).unwrap_or_else(|e| panic!("{e}: {out}"))
}

fn keys(v: &serde_json::Value) -> BTreeSet<String> {
    v.as_object()
        .unwrap_or_else(|| panic!("not an object: {v}"))
        .keys()
        .cloned()
        .collect()
}

fn set(k: &[&str]) -> BTreeSet<String> {
    k.iter().map(|s| s.to_string()).collect()
}

/// A step's measured time is within 200 ms + 25 % of its prediction.
fn within(predicted: u64, measured: u64) -> bool {
    predicted.abs_diff(measured) <= 200 + predicted / 4
}

/// Deploys `rev` with `strategy` after asking `plan` about it; returns the
/// deployment's view (with its stored plan and the comparison).
fn plan_then_deploy(env: &Env, rev: &str, strategy: &str) -> serde_json::Value {
    let (ok, out) = env.cli(&["plan", "web", rev, "--strategy", strategy, "--json"]);
    assert!(ok, "{out}");
    let asked = json_of(&out);
    let (ok, out) = env.cli(&["deploy", "web", rev, "--strategy", strategy]);
    assert!(ok, "{out}");
    let (ok, out) = env.cli(&["history", "web", "--json"]);
    assert!(ok, "{out}");
    let list: serde_json::Value = serde_json::from_str(&out[out.find('[').unwrap()..]).unwrap();
    let latest = list[0]["id"].as_str().unwrap().to_string();
    let (ok, out) = env.cli(&["report", &latest, "--json"]);
    assert!(ok, "{out}");
    let view = json_of(&out);
    // The plan the deployment was created with says what `plan` said.
    let words = |p: &serde_json::Value| -> Vec<String> {
        p["steps"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| s["message"].as_str().unwrap().to_string())
            .collect()
    };
    assert_eq!(words(&asked["plans"][0]), words(&view["plan"]));
    view
}

fn assert_steps_within_tolerance(view: &serde_json::Value, expect_unfinished: usize) {
    let steps = view["comparison"]["steps"].as_array().unwrap();
    let mut checked = 0;
    let mut unfinished = 0;
    for s in steps {
        let p = s["predicted_ms"].as_u64().unwrap();
        match s["measured_ms"].as_u64() {
            Some(m) => {
                assert!(
                    within(p, m),
                    "step {} '{}': predicted {p} ms, measured {m} ms\n{:#}",
                    s["n"],
                    s["message"],
                    view["comparison"]
                );
                checked += 1;
            }
            None => unfinished += 1,
        }
    }
    assert_eq!(unfinished, expect_unfinished, "{:#}", view["comparison"]);
    assert!(checked >= 4, "{:#}", view["comparison"]);
    eprintln!(
        "{} {}: predicted {} ms, measured {} ms over {checked} steps",
        view["id"],
        view["strategy"],
        view["comparison"]["predicted_ms"],
        view["comparison"]["measured_ms"]
    );
}

#[test]
fn each_predicted_step_is_within_tolerance_of_the_real_executor() {
    let env = setup_with(2, "300ms", "[50]", "");
    let l = load(env.web, 2);
    l.wait_for_requests(50);
    // A first deployment gives the service measured start-up, drain and
    // stop times; predictions after it are from this service's own history.
    let (ok, out) = env.cli(&["deploy", "web", "v2", "--batch", "1"]);
    assert!(ok, "{out}");

    // Under load, `--batch auto` sizes the batch from what the proxy
    // measured and says so (once the meter has a second sample of it).
    let why = poll(
        "the load meter to see the load",
        Duration::from_secs(10),
        || {
            let (ok, out) = env.cli(&[
                "plan",
                "web",
                "v9",
                "--strategy",
                "in-place",
                "--batch",
                "auto",
                "--json",
            ]);
            assert!(ok, "{out}");
            let why = json_of(&out)["plans"][0]["batch_choice"]
                .as_str()
                .unwrap_or_default()
                .to_string();
            (!why.contains("no load measured")).then_some(why)
        },
    );
    assert!(
        why.starts_with("auto: ") && why.contains(" req/s and ") && why.ends_with(" of 2"),
        "{why}"
    );

    let view = plan_then_deploy(&env, "v3", "in-place");
    assert_eq!(view["status"], "succeeded");
    assert_steps_within_tolerance(&view, 0);
    let basis = view["plan"]["steps"][3]["basis"][0].as_str().unwrap();
    assert!(basis.contains("median of the last"), "{basis}");

    // Blue/green returns once green serves and blue is retained (30 s):
    // every step up to the retention is measured, the retention is not.
    let view = plan_then_deploy(&env, "v4", "blue-green");
    assert_eq!(view["status"], "retained");
    assert_steps_within_tolerance(&view, 3);

    let (ok, out) = env.cli(&["report", view["id"].as_str().unwrap()]);
    assert!(ok, "{out}");
    assert!(out.contains("predicted beside measured:"), "{out}");
    let (ok, out) = env.cli(&["history", "web"]);
    assert!(ok, "{out}");
    assert!(
        out.contains("predicted") && out.contains("v2 → v3"),
        "{out}"
    );
    l.finish();
    stop(env);
}

#[test]
fn the_plan_json_keeps_its_shape() {
    let env = setup(3, "");
    let (ok, out) = env.cli(&["plan", "web", "v2", "--strategy", "all", "--json"]);
    assert!(ok, "{out}");
    let v = json_of(&out);
    assert_eq!(keys(&v), set(&["schema", "service", "from", "to", "plans"]));
    assert_eq!(v["schema"], 1);
    let plans = v["plans"].as_array().unwrap();
    let names: Vec<&str> = plans
        .iter()
        .map(|p| p["strategy"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["in-place", "blue-green", "all-at-once"]);
    for p in plans {
        assert_eq!(
            keys(p),
            set(&[
                "strategy",
                "batch_size",
                "batches",
                "batch_choice",
                "desired",
                "steps",
                "capacity",
                "duration_ms",
                "serving_ms",
                "capacity_floor",
                "mixed_window_ms",
                "peak_instances",
                "extra_instances",
                "rollback",
                "timings",
            ])
        );
        for s in p["steps"].as_array().unwrap() {
            assert_eq!(
                keys(s),
                set(&[
                    "n",
                    "kind",
                    "message",
                    "at_ms",
                    "ms",
                    "in_service_min",
                    "in_service_end",
                    "running",
                    "basis",
                ])
            );
        }
        assert_eq!(
            keys(&p["rollback"]),
            set(&["flip_ms", "retained_ms", "redeploy_ms", "summary"])
        );
        assert_eq!(
            keys(&p["timings"]),
            set(&[
                "boot",
                "more_probes_ms",
                "min_healthy_ms",
                "early_exit_ms",
                "drain",
                "drain_timeout_ms",
                "stop",
                "hooks",
                "bake_ms",
                "retention_ms",
                "flip_ms",
            ])
        );
        assert_eq!(keys(&p["timings"]["boot"]), set(&["ms", "source"]));
        assert!(p["capacity"][0].as_array().unwrap().len() == 2);
    }
    // The seed's comparison, for this service: blue/green keeps capacity
    // and needs the fleet again; in-place dips; all-at-once goes to zero.
    assert_eq!(plans[0]["capacity_floor"], 1);
    assert_eq!(plans[1]["capacity_floor"], 3);
    assert_eq!(plans[1]["extra_instances"], 3);
    assert_eq!(plans[2]["capacity_floor"], 0);
    // Nothing changed: v1 still serves, and no deployment was recorded.
    let (ok, out) = env.cli(&["history", "web", "--json"]);
    assert!(ok, "{out}");
    assert_eq!(out.trim(), "[]");
    // Bad requests name what is wrong.
    let (ok, out) = env.cli(&["plan", "web", "v2", "--strategy", "sideways"]);
    assert!(!ok);
    assert!(
        out.contains("'sideways'") && out.contains("unknown strategy; use in-place"),
        "{out}"
    );
    let (ok, out) = env.cli(&["plan", "web", "v1"]);
    assert!(!ok);
    assert!(out.contains("already serves"), "{out}");
    let (ok, out) = env.cli(&["deploy", "web", "v2", "--strategy", "all"]);
    assert!(!ok);
    assert!(out.contains("'all' is for `handoff plan`"), "{out}");
    stop(env);
}
