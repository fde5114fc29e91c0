//! `lazymmu compare` from the outside: output shape, exit status, bad
//! options.

use assert_cmd::Command;
use predicates::prelude::*;

fn lazymmu() -> Command {
    Command::cargo_bin("lazymmu").expect("the lazymmu binary is built")
}

#[test]
fn json_has_one_row_per_backend_workload_and_mode() {
    let out = lazymmu()
        .args([
            "compare",
            "--json",
            "--backend",
            "xen-pv,arm64",
            "--workload",
            "fork,vmalloc",
            "--pages",
            "512",
        ])
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let doc: serde_json::Value = serde_json::from_slice(&out.stdout).expect("one JSON document");
    let rows = doc["rows"].as_array().expect("an object with a rows array");
    assert_eq!(rows.len(), 2 * 2 * 2);
    for row in rows {
        for key in ["backend", "workload", "mode", "design"] {
            assert!(row[key].is_string(), "{key} in {row}");
        }
        assert!(["eager", "lazy"].contains(&row["mode"].as_str().unwrap()));
        assert!(row["counts"].is_object());
        assert!(row["counts"]["pte_write"].as_u64().unwrap() > 0);
        assert!(row["cycles"].as_u64().unwrap() > 0);
        assert_eq!(row["violations"].as_u64(), Some(0));
    }
    let xen_lazy = rows
        .iter()
        .find(|r| r["backend"] == "xen-pv" && r["workload"] == "fork" && r["mode"] == "lazy")
        .unwrap();
    assert!(
        xen_lazy["counts"]["multicall_entry"].as_u64().unwrap() > 0,
        "lazy Xen batches"
    );
    assert_eq!(doc["designs"].as_array().map(Vec::len), Some(3));
}

#[test]
fn the_table_lists_every_backend_and_workload() {
    let out = lazymmu()
        .args(["compare", "--pages", "256"])
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).unwrap();
    for backend in [
        "x86",
        "xen-pv",
        "arm64",
        "ppc-hash",
        "sparc64",
        "s390",
        "x86-pks",
        "arm64-poe",
    ] {
        assert!(
            text.lines().any(|l| l.starts_with(&format!("{backend} "))),
            "{backend}"
        );
    }
    for workload in [
        "fork",
        "munmap",
        "exit",
        "mprotect",
        "mremap",
        "vmalloc",
        "kasan",
        "debug-pagealloc",
    ] {
        assert!(text.contains(&format!(" {workload} ")), "{workload}");
    }
    assert!(text.contains("lazy MMU designs"));
    assert!(
        out.stderr.is_empty(),
        "no progress bar when stderr is not a terminal"
    );
}

#[test]
fn a_violation_exits_with_status_1() {
    lazymmu()
        .args([
            "compare",
            "--backend",
            "xen-pv",
            "--workload",
            "kasan",
            "--pages",
            "512",
            "--kasan-read-back",
        ])
        .assert()
        .code(1)
        .stdout(predicate::str::contains("stale-read-back"));
}

#[test]
fn bad_usage_exits_with_status_2() {
    lazymmu()
        .args(["compare", "--no-such-option"])
        .assert()
        .code(2);
    lazymmu()
        .args(["compare", "--backend", "vax"])
        .assert()
        .code(2)
        .stderr(predicate::str::contains("unknown backend"));
    lazymmu()
        .args(["compare", "--workload", "nope"])
        .assert()
        .code(2)
        .stderr(predicate::str::contains("unknown workload"));
    lazymmu()
        .args(["compare", "--design", "global"])
        .assert()
        .code(2)
        .stderr(predicate::str::contains("unknown design"));
    lazymmu()
        .args(["compare", "--cost", "warp=3"])
        .assert()
        .code(2)
        .stderr(predicate::str::contains("unknown primitive"));
    lazymmu()
        .args(["compare", "--cost", "dsb=lots"])
        .assert()
        .code(2);
    lazymmu().args(["compare", "--pages", "0"]).assert().code(2);
    lazymmu().args(["compare", "--cpus", "65"]).assert().code(2);
}

#[test]
fn cost_overrides_change_the_cycles() {
    let cycles = |extra: &[&str]| {
        let mut args = vec![
            "compare",
            "--json",
            "--backend",
            "arm64",
            "--workload",
            "vmalloc",
            "--pages",
            "512",
        ];
        args.extend_from_slice(extra);
        let out = lazymmu().args(&args).output().unwrap();
        let doc: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        doc["rows"][0]["cycles"].as_u64().unwrap()
    };
    assert!(cycles(&["--cost", "dsb=10000"]) > cycles(&[]));
}

#[test]
fn svg_chart_is_written() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("chart.svg");
    lazymmu()
        .args([
            "compare",
            "--backend",
            "s390",
            "--workload",
            "mprotect",
            "--pages",
            "512",
            "--svg",
        ])
        .arg(&path)
        .assert()
        .code(0);
    let svg = std::fs::read_to_string(&path).unwrap();
    assert!(svg.starts_with("<svg") && svg.contains("s390 mprotect"));
    lazymmu()
        .args([
            "compare",
            "--backend",
            "s390",
            "--workload",
            "fork",
            "--pages",
            "256",
            "--svg",
            "/nonexistent/dir/x.svg",
        ])
        .assert()
        .code(2);
}
