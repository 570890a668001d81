//! `handoff demo --exit`: the main job on embedded defaults runs to the end
//! with zero failed requests and leaves nothing behind, whatever
//! `HANDOFF_TOKEN` / `HANDOFF_ADMIN` the shell has.

mod common;

use std::time::Duration;

use common::*;

#[test]
fn demo_runs_the_tour_with_zero_failed_requests() {
    let dir = tempfile::tempdir().unwrap();
    // As the README's tour leaves a shell: the demo runs its own daemon and
    // must not take these for its own (it used to fail reading its token).
    let mut p = Proc::spawn_env(
        &["demo", "--exit"],
        dir.path(),
        &[
            ("HANDOFF_TOKEN", "a-token-from-another-daemon"),
            ("HANDOFF_ADMIN", "http://127.0.0.1:1"),
        ],
    );
    let status = p.wait_exit(Duration::from_secs(180));
    let lines = p.all_lines();
    let all = lines.join("\n");
    assert!(status.success(), "demo failed:\n{all}\n{}", p.stderr());
    let row = |name: &str| -> Vec<String> {
        let l = lines
            .iter()
            .find(|l| l.starts_with(name))
            .unwrap_or_else(|| panic!("no row {name:?} in:\n{all}"));
        l[name.len()..]
            .split_whitespace()
            .map(str::to_string)
            .collect()
    };
    // in-place: "3.0 s  3.1 s  2/4  1.0 s  REQUESTS  FAILED  -" (measured,
    // then what plan predicted)
    let ip = row("in-place deploy to v2, batches of 2");
    assert_eq!(ip[4], "2/4", "batches of 2 of 4 keep 2 in service: {ip:?}");
    let (took, predicted): (f64, f64) = (ip[0].parse().unwrap(), ip[2].parse().unwrap());
    assert!(
        (took - predicted).abs() <= 0.5 + predicted / 4.0,
        "the plan was far off: {ip:?}"
    );
    assert_eq!(ip[ip.len() - 2], "0", "failed requests: {ip:?}");
    let bg = row("blue/green deploy to v3, 50% step");
    assert_eq!(bg[4], "4/4", "blue/green keeps full capacity: {bg:?}");
    assert_eq!(bg[bg.len() - 2], "0", "{bg:?}");
    let rb = row("rollback to v2 (blue is retained: a flip)");
    assert_eq!(rb[rb.len() - 3], "0", "{rb:?}");
    assert_eq!(rb[2], "-", "a flip has no plan of its own: {rb:?}");
    assert_eq!(
        rb.last().map(String::as_str),
        Some("ms"),
        "the flip is measured in ms: {rb:?}"
    );
    let total = lines
        .iter()
        .find(|l| l.starts_with("total:"))
        .unwrap_or_else(|| panic!("{all}"));
    assert!(total.ends_with(", 0 failed"), "{total}");
    let n: u64 = total.split_whitespace().nth(1).unwrap().parse().unwrap();
    assert!(n >= 500, "too little traffic to prove anything: {total}");
}
