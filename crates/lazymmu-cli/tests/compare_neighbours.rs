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
            "line_socket=1000",
        ])
        .assert()
        .success();
}

#[test]
fn the_switch_benchmark_runs_on_a_topology() {
    let output = lazymmu()
        .args([
            "compare",
            "--workload",
            "ctxswitch-bench",
            "--topology",
            "2x4x2",
            "--policy",
            "refcount,shootdown",
            "--json",
        ])
        .output()
        .unwrap();
    assert!(output.status.success(), "{output:?}");
    let doc: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    let rows = doc["rows"].as_array().unwrap();
    assert_eq!(rows.len(), 2);
    for row in rows {
        assert_eq!(row["cpus"], 16);
        assert_eq!(row["machine"], "2x4x2");
        assert_eq!(row["violations"], 0);
        let counts = &row["counts"];
        assert!(counts["switches_per_second"].as_u64().unwrap() > 0);
        // 2 sockets of 4 cores of 2 threads: the count's line travels at
        // every distance under refcount.
        if row["policy"] == "refcount" {
            for name in ["line_smt", "line_socket", "line_remote"] {
                assert!(counts[name].as_u64().unwrap() > 0, "{name}");
            }
        }
    }
}

#[test]
fn the_power8_run_is_printed_next_to_the_published_rates() {
    // Shootdown alone (refcount's queue takes seconds on 1,536 CPUs): its
    // row against the published 118 million, refcount's marked not run.
    let out = lazymmu()
        .args([
            "compare",
            "--workload",
            "ctxswitch-bench",
            "--topology",
            "power8-e880",
            "--policy",
            "shootdown",
        ])
        .env("COLUMNS", "100")
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(
        text.contains("ctxswitch-bench, power8-e880, 1,536 CPUs"),
        "{text}"
    );
    assert!(
        text.contains("ctxswitch-bench on power8-e880 (16x12x8, 1,536 CPUs)"),
        "{text}"
    );
    let row = |policy: &str| {
        text.lines()
            .find(|l| l.trim_start().starts_with(policy))
            .unwrap_or_else(|| panic!("no {policy} row in\n{text}"))
            .to_owned()
    };
    assert!(row("refcount").contains("not run"), "{text}");
    assert!(row("shootdown").contains("118 million"), "{text}");
    assert!(text.contains("Nicholas Piggin"), "{text}");
    assert!(text.lines().all(|l| l.chars().count() <= 100), "{text}");
    // Without --topology the benchmark runs on --cpus and says how to get
    // the comparison.
    lazymmu()
        .args([
            "compare",
            "--workload",
            "ctxswitch-bench",
            "--policy",
            "shootdown",
        ])
        .assert()
        .success()
        .stdout(contains("--topology power8-e880"));
}

#[test]
fn bad_topologies_and_cpu_counts_are_usage_errors() {
    for shape in ["16x12", "0x1x1", "32x16x8", "power9"] {
        lazymmu()
            .args([
                "compare",
                "--workload",
                "ctxswitch-bench",
                "--topology",
                shape,
            ])
            .assert()
            .code(2)
            .stderr(contains("--topology"));
    }
    lazymmu()
        .args(["compare", "--workload", "fork", "--cpus", "100"])
        .assert()
        .code(2)
        .stderr(contains("at most 64 CPUs"));
    lazymmu()
        .args(["compare", "--workload", "ctxswitch", "--cpus", "100"])
        .assert()
        .code(2);
    lazymmu()
        .args(["compare", "--workload", "ctxswitch-bench", "--cpus", "2049"])
        .assert()
        .code(2);
}
