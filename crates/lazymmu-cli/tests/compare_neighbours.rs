//! `lazymmu compare` with the MM-neighbour workloads: `--policy`, the
//! compact table and the detail, JSON rows that say which policy ran, the
//! known-bad variant's exit status, bad usage.

use assert_cmd::Command;
use predicates::str::contains;

fn lazymmu() -> Command {
    Command::cargo_bin("lazymmu").unwrap()
}

#[test]
fn ctxswitch_prints_every_policy() {
    let out = lazymmu()
        .args(["compare", "--workload", "ctxswitch", "--cpus", "4"])
        .output()
        .unwrap();
    assert!(out.status.success());
    let text = String::from_utf8(out.stdout).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    let header = lines
        .iter()
        .position(|l| l.starts_with("lazy TLB (active_mm)"))
        .expect("the lazy TLB table");
    let policies: Vec<&str> = lines[header].split_whitespace().skip(3).collect();
    assert_eq!(policies, ["refcount", "shootdown", "x86"]);
    let row: Vec<&str> = lines[header + 1].split_whitespace().collect();
    assert_eq!(&row[..3], ["ctxswitch,", "4", "CPUs"]);
    assert_eq!(row[3], "1.000", "the first policy is the baseline");
    assert!(row[4..].iter().all(|c| c.parse::<f64>().is_ok()));
    assert!(
        !text.contains("line_transfers"),
        "counts only with --detail"
    );

    lazymmu()
        .args([
            "compare",
            "--workload",
            "ctxswitch",
            "--cpus",
            "4",
            "--detail",
        ])
        .assert()
        .success()
        .stdout(contains("ctxswitch refcount, 4 CPUs:"))
        .stdout(contains("line_transfers="));
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
        assert_eq!(row["processes"], 10);
        for absent in ["backend", "mode", "design", "lazy_eager"] {
            assert!(row.get(absent).is_none(), "{absent} in {row}");
        }
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
        .stdout(contains("percpu-preemptible, 4 CPUs: "))
        .stdout(contains(
            "  lazymmu compare --workload pgmap --policy percpu-preemptible --cpus 4\n",
        ));
}

#[test]
fn bad_policies_and_costs_are_usage_errors() {
    lazymmu()
        .args(["compare", "--workload", "pgmap", "--policy", "refcount"])
        .assert()
        .code(2)
        .stderr(contains(
            "policy `refcount` applies to none of the selected workloads",
        ))
        .stderr(contains("pgmap takes task|percpu|percpu-preemptible"));
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
