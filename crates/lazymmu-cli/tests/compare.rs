//! `lazymmu compare` from the outside: the headline matrix, the detail,
//! JSON, exit statuses, bad options, and commands that reproduce a
//! violation.

use assert_cmd::Command;
use predicates::prelude::*;

fn lazymmu() -> Command {
    let mut command = Command::cargo_bin("lazymmu").expect("the lazymmu binary is built");
    command.env_remove("COLUMNS");
    command
}

fn stdout_of(args: &[&str]) -> String {
    let out = lazymmu().args(args).output().unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

const BACKENDS: [&str; 8] = [
    "x86",
    "xen-pv",
    "arm64",
    "ppc-hash",
    "sparc64",
    "s390",
    "x86-pks",
    "arm64-poe",
];
const WORKLOADS: [&str; 8] = [
    "fork",
    "munmap",
    "exit",
    "mprotect",
    "mremap",
    "vmalloc",
    "kasan",
    "debug-pagealloc",
];

#[test]
fn the_screen_leads_with_the_matrix_and_fits_100_columns() {
    let out = lazymmu()
        .args(["compare", "--pages", "256"])
        .env("COLUMNS", "100")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0));
    assert!(
        out.stderr.is_empty(),
        "no progress bar when stderr is not a terminal"
    );
    let text = String::from_utf8(out.stdout).unwrap();
    for line in text.lines() {
        assert!(line.chars().count() <= 100, "wider than 100: {line}");
    }
    let lines: Vec<&str> = text.lines().collect();
    assert!(lines[0].starts_with("lazy/eager modelled cycles, design counters"));
    // The header names every workload, then a row per backend with a
    // ratio per workload.
    let header: Vec<&str> = lines[1].split_whitespace().collect();
    assert_eq!(header[0], "backend");
    assert_eq!(&header[1..], WORKLOADS);
    for (row, backend) in lines[2..10].iter().zip(BACKENDS) {
        let cells: Vec<&str> = row.split_whitespace().collect();
        assert_eq!(cells[0], backend);
        assert_eq!(cells.len(), 1 + WORKLOADS.len(), "{row}");
        for cell in &cells[1..] {
            let ratio: f64 = cell.parse().unwrap_or_else(|_| panic!("{row}"));
            assert!(ratio > 0.0 && ratio < 10.0, "{row}");
        }
    }
    assert!(lines[10].starts_with("below 1.000 lazy sections save"));
    assert!(text.contains("MM neighbours"));
    assert!(text.contains("lazy-mode designs"));
    // Counts only with --detail.
    assert!(!text.contains("pte_write="));
}

#[test]
fn a_narrow_terminal_gets_the_matrix_in_blocks() {
    let out = lazymmu()
        .args([
            "compare",
            "--pages",
            "64",
            "--workload",
            "fork,munmap,exit,mprotect,mremap,vmalloc,kasan,debug-pagealloc",
        ])
        .env("COLUMNS", "60")
        .output()
        .unwrap();
    let text = String::from_utf8(out.stdout).unwrap();
    let matrix: Vec<&str> = text
        .lines()
        .take_while(|l| !l.starts_with("below"))
        .collect();
    assert!(
        matrix[1..].iter().all(|l| l.chars().count() <= 60),
        "{text}"
    );
    for workload in WORKLOADS {
        assert!(matrix.iter().any(|l| l.contains(workload)), "{workload}");
    }
}

#[test]
fn detail_prints_every_run_with_counts_and_thousands_separators() {
    let text = stdout_of(&[
        "compare",
        "--detail",
        "--backend",
        "xen-pv",
        "--workload",
        "fork",
        "--pages",
        "2048",
    ]);
    let eager = text
        .lines()
        .position(|l| l.starts_with("xen-pv") && l.contains(" eager "))
        .expect("the eager run's row");
    let lines: Vec<&str> = text.lines().collect();
    assert!(
        lines[eager + 1].trim_start().starts_with("hypercall="),
        "{text}"
    );
    let counts = format!("{} {}", lines[eager + 1], lines[eager + 2]);
    assert!(counts.contains("pte_write=16,"), "{text}");
    let lazy = lines[eager + 1..]
        .iter()
        .find(|l| l.starts_with("xen-pv") && l.contains(" lazy "))
        .expect("the lazy run's row");
    let ratio: f64 = lazy.split_whitespace().nth(5).unwrap().parse().unwrap();
    assert!(ratio > 0.0 && ratio < 1.0, "{lazy}");
    assert!(text.contains("multicall_entry="));
}

#[test]
fn json_has_a_row_per_run_with_lazy_eager_and_no_separators() {
    let out = lazymmu()
        .args([
            "compare",
            "--json",
            "--backend",
            "xen-pv,arm64",
            "--workload",
            "fork,vmalloc",
            "--pages",
            "2048",
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
        assert!(row["counts"]["pte_write"].as_u64().unwrap() > 1000);
        assert!(row["cycles"].as_u64().unwrap() > 0);
        assert_eq!(row["violations"].as_u64(), Some(0));
        match row["mode"].as_str().unwrap() {
            "eager" => assert!(row.get("lazy_eager").is_none(), "{row}"),
            "lazy" => {
                let eager = rows
                    .iter()
                    .find(|e| {
                        e["mode"] == "eager"
                            && e["backend"] == row["backend"]
                            && e["workload"] == row["workload"]
                    })
                    .unwrap();
                let expected = row["cycles"].as_f64().unwrap() / eager["cycles"].as_f64().unwrap();
                assert_eq!(row["lazy_eager"].as_f64(), Some(expected), "{row}");
            }
            mode => panic!("mode {mode}"),
        }
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
fn a_violation_exits_1_with_a_command_that_reproduces_it() {
    let out = lazymmu()
        .args([
            "compare",
            "--backend",
            "xen-pv",
            "--workload",
            "kasan",
            "--pages",
            "512",
            "--seed",
            "7",
            "--cost",
            "hypercall=900",
            "--kasan-read-back",
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(text.contains("stale-read-back"));
    let lines: Vec<&str> = text.lines().collect();
    let at = lines
        .iter()
        .position(|l| l.starts_with("xen-pv kasan lazy (counters):"))
        .expect("the violation's heading");
    assert!(lines[at].ends_with("reproduce with:"));
    let command = lines[at + 1].trim();
    for option in [
        "--backend xen-pv",
        "--workload kasan",
        "--pages 512",
        "--seed 7",
        "--cost hypercall=900",
        "--kasan-read-back",
    ] {
        assert!(command.contains(option), "{option} in {command}");
    }
    // Run as printed, it finds the same violations.
    let words: Vec<&str> = command.split_whitespace().collect();
    assert_eq!(words[0], "lazymmu");
    let again = lazymmu().args(&words[1..]).output().unwrap();
    assert_eq!(again.status.code(), Some(1));
    let again = String::from_utf8(again.stdout).unwrap();
    assert!(again.contains(lines[at]), "{again}");
}

#[test]
fn bad_usage_exits_2_naming_the_accepted_values() {
    lazymmu()
        .args(["compare", "--no-such-option"])
        .assert()
        .code(2);
    lazymmu()
        .args(["compare", "--backend", "vax"])
        .assert()
        .code(2)
        .stderr(predicate::str::contains(
            "invalid value 'vax' for '--backend",
        ))
        .stderr(predicate::str::contains("arm64-poe"));
    // Every workload is listed, the neighbours' too.
    let listed = lazymmu()
        .args(["compare", "--workload", "nope"])
        .assert()
        .code(2)
        .get_output()
        .stderr
        .clone();
    let listed = String::from_utf8(listed).unwrap();
    for workload in
        WORKLOADS
            .iter()
            .chain(&["ctxswitch", "ctxswitch-bench", "vmalloc-grow", "pgmap"])
    {
        assert!(listed.contains(workload), "{workload} in {listed}");
    }
    assert!(!listed.contains("workloadkind"));
    lazymmu()
        .args(["compare", "--design", "global"])
        .assert()
        .code(2)
        .stderr(predicate::str::contains(
            "invalid value 'global' for '--design",
        ));
    lazymmu()
        .args(["compare", "--cost", "warp=3"])
        .assert()
        .code(2)
        .stderr(predicate::str::contains("unknown"))
        .stderr(predicate::str::contains("`warp`"));
    lazymmu()
        .args(["compare", "--cost", "dsb=lots"])
        .assert()
        .code(2);
    lazymmu().args(["compare", "--pages", "0"]).assert().code(2);
    lazymmu().args(["compare", "--cpus", "65"]).assert().code(2);
    lazymmu()
        .args(["compare", "--workload", "fork", "--policy", "refcount"])
        .assert()
        .code(2)
        .stderr(predicate::str::contains(
            "policy `refcount` applies to none of the selected workloads",
        ));
}

#[test]
fn a_cost_that_would_overflow_the_totals_is_refused() {
    lazymmu()
        .args(["compare", "--cost", "hypercall=18446744073709551615"])
        .assert()
        .code(2)
        .stdout("")
        .stderr(predicate::str::contains("1,000,000,000"));
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
    // The largest cost leaves the totals in range.
    assert!(cycles(&["--cost", "dsb=1000000000"]) < u64::MAX);
}

#[test]
fn a_run_over_the_memory_limit_is_refused_before_it_starts() {
    lazymmu()
        .args(["compare", "--pages", "1048576", "--max-memory", "100M"])
        .assert()
        .code(2)
        .stdout("")
        .stderr(predicate::str::contains(
            "over the limit of 100 MB (set by --max-memory)",
        ))
        .stderr(predicate::str::contains(
            "raise the limit with --max-memory",
        ));
}

#[test]
fn help_explains_the_names_and_exit_statuses() {
    let help = stdout_of(&["compare", "--help"]);
    for name in ["ipte", "dsb", "tlbi", "multicall_entry", "hash_invalidate"] {
        assert!(
            help.lines().any(|l| l.trim_start().starts_with(name)),
            "{name} in the glossary"
        );
    }
    assert!(help.contains("Exit status: 0"));
    assert!(help.contains("percpu-preemptible"));
}

#[test]
fn published_prints_each_figure_with_its_source_and_the_model_next_to_it() {
    let text = stdout_of(&[
        "compare",
        "--published",
        "--backend",
        "x86",
        "--workload",
        "fork",
    ]);
    // Only a source's address, which cannot be broken, may be wider.
    for line in text
        .lines()
        .filter(|l| !l.trim_start().starts_with("https://"))
    {
        assert!(line.chars().count() <= 100, "wider than 100: {line}");
    }
    for source in [
        "arm64/mm: Batch barriers when updating kernel mappings",
        "pkeys-based page table hardening",
        "s390/mm: Batch PTE updates in lazy MMU mode",
        "powerpc/64s: enable MMU_LAZY_TLB_SHOOTDOWN",
    ] {
        assert!(text.contains(source), "{source} missing:\n{text}");
    }
    assert!(text.contains("https://lore.kernel.org/"));
    // A figure the model runs has its figure and a factor; one it does not
    // says why.
    let mprotect = text
        .lines()
        .find(|l| l.contains("mprotect(), large range"))
        .expect("the s390 mprotect row");
    assert!(mprotect.contains("~15x"), "{mprotect}");
    let factor: f64 = mprotect.split_whitespace().last().unwrap().parse().unwrap();
    assert!(factor > 0.0, "{mprotect}");
    assert!(text.contains("not modelled: a kernel build is not a modelled workload"));
    // Without --published there is no such table.
    let plain = stdout_of(&["compare", "--backend", "x86", "--workload", "fork"]);
    assert!(!plain.contains("Published figures"));
}

#[test]
fn a_bad_calibration_file_is_refused_naming_it() {
    let dir = std::env::temp_dir().join(format!("lazymmu-calibration-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let bad = dir.join("bad.json");
    std::fs::write(&bad, "{\"format\": 1, \"nonsense\": true}\n").unwrap();
    let out = lazymmu()
        .args(["compare", "--workload", "fork", "--calibration"])
        .arg(&bad)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("bad.json"), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
    let missing = dir.join("missing.json");
    let out = lazymmu()
        .args(["compare", "--workload", "fork", "--calibration"])
        .arg(&missing)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("missing.json"));
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn the_shipped_calibration_given_as_a_file_changes_nothing() {
    let file = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../calibration/x86_64-amd-epyc-kvm-linux-6.18.json"
    );
    let args = [
        "compare",
        "--backend",
        "arm64",
        "--workload",
        "munmap",
        "--json",
    ];
    let builtin = stdout_of(&args);
    let mut with_file: Vec<&str> = args.to_vec();
    with_file.extend(["--calibration", file]);
    let given = stdout_of(&with_file);
    let rows =
        |text: &str| serde_json::from_str::<serde_json::Value>(text).unwrap()["rows"].clone();
    assert_eq!(rows(&builtin), rows(&given));
}

#[test]
fn calls_sets_the_system_calls_of_each_task() {
    let json = |calls: &str| {
        let text = stdout_of(&[
            "compare",
            "--backend",
            "x86",
            "--workload",
            "munmap",
            "--calls",
            calls,
            "--json",
        ]);
        let doc: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(doc["calls"].as_u64(), calls.parse().ok());
        doc["rows"][0]["cycles"].as_u64().unwrap()
    };
    assert!(json("4") > json("1"));
}
