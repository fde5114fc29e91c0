//! `lazymmu compare` with the MM-neighbour workloads: `--policy`, JSON rows
//! with a `policy` field, the known-bad variant's exit status, bad usage.

use assert_cmd::Command;
use predicates::str::contains;

fn lazymmu() -> Command {
    Command::cargo_bin("lazymmu").unwrap()
}

#[test]
fn ctxswitch_prints_every_policy() {
    lazymmu()
        .args(["compare", "--workload", "ctxswitch", "--cpus", "4"])
        .assert()
        .success()
        .stdout(contains("refcount"))
        .stdout(contains("shootdown"))
        .stdout(contains("x86"))
        .stdout(contains("line_transfers"));
}

#[test]
fn json_rows_carry_the_policy() {
    let output = lazymmu()
        .args([
            "compare",
            "--workload",
            "vmalloc-grow",
            "--processes",
            "10",
            "--policy",
            "push,prealloc",
            "--json",
        ])
        .output()
        .unwrap();
    assert!(output.status.success());
    let doc: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    let rows = doc["rows"].as_array().unwrap();
    let policies: Vec<&str> = rows.iter().map(|r| r["policy"].as_str().unwrap()).collect();
    assert_eq!(policies, ["push", "prealloc"]);
    for row in rows {
        assert_eq!(row["workload"], "vmalloc-grow");
        assert_eq!(row["violations"], 0);
        assert!(row["counts"]["top_level_syncs"].as_u64().unwrap() <= 256);
        assert!(row["cycles"].as_u64().unwrap() > 0);
    }
}

#[test]
fn the_known_bad_pgmap_variant_exits_1_with_a_reproduction() {
    lazymmu()
        .args([
            "compare",
            "--workload",
            "pgmap",
            "--policy",
            "percpu-preemptible",
        ])
        .assert()
        .code(1)
        .stdout(contains("preempted-in-window"))
        .stdout(contains(
            "lazymmu compare --workload pgmap --policy percpu-preemptible",
        ));
}

#[test]
fn bad_policies_and_costs_are_usage_errors() {
    lazymmu()
        .args(["compare", "--workload", "pgmap", "--policy", "refcount"])
        .assert()
        .code(2)
        .stderr(contains("unknown policy"));
    lazymmu()
        .args(["compare", "--workload", "ctxswitch", "--cost", "warp=3"])
        .assert()
        .code(2);
    lazymmu()
        .args([
            "compare",
            "--workload",
            "ctxswitch",
            "--cost",
            "line_transfer=1000",
        ])
        .assert()
        .success();
}
