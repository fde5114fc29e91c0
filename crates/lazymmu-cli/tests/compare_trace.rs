//! `lazymmu compare --trace` from the outside: the matrix of a shipped
//! trace, what was replayed and skipped, and bad traces refused with
//! their file, line and what was expected (exit 2), never a panic.

use std::path::PathBuf;

use assert_cmd::Command;
use predicates::prelude::*;

fn lazymmu() -> Command {
    let mut command = Command::cargo_bin("lazymmu").expect("the lazymmu binary is built");
    command.env_remove("COLUMNS");
    command
}

fn shipped(name: &str) -> String {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../traces")
        .join(name);
    path.to_str().unwrap().to_owned()
}

fn scratch(name: &str, text: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("lazymmu-compare-trace-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path
}

#[test]
fn a_shipped_trace_prints_the_matrix_by_kind_of_call_and_what_was_replayed() {
    let trace = shipped("python-import-json.trace");
    let out = lazymmu()
        .args(["compare", "--trace", &trace, "--backend", "xen-pv,ppc-hash"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0));
    let text = String::from_utf8(out.stdout).unwrap();
    let header = text.lines().nth(1).unwrap();
    let columns: Vec<&str> = header.split_whitespace().collect();
    assert_eq!(
        columns,
        ["backend", "mmap", "munmap", "mprotect", "brk", "exit", "total"]
    );
    assert!(
        text.lines().nth(2).unwrap().starts_with("xen-pv "),
        "{text}"
    );
    assert!(
        text.lines().nth(3).unwrap().starts_with("ppc-hash "),
        "{text}"
    );
    // The summary's counts: 29 calls with page-table work, the exit's
    // teardown among them; no event skipped.
    assert!(
        text.contains("replayed: 29 calls over 2,384 pages"),
        "{text}"
    );
    assert!(text.contains("exit 1 (2,358 pages)"), "{text}");
    assert!(text.contains("skipped: 0 events"), "{text}");
}

#[test]
fn a_truncated_line_is_refused_with_its_file_and_line() {
    let path = scratch(
        "truncated.trace",
        "lazymmu-trace 1\n0 7 execve - = 0\n1 7 mmap 0 4000\n",
    );
    let shown = path.display().to_string();
    lazymmu()
        .args(["compare", "--trace", &shown])
        .assert()
        .code(2)
        .stdout("")
        .stderr(predicate::str::contains(format!("{shown}:3: expected")))
        .stderr(predicate::str::contains("panicked").not());
}

#[test]
fn a_file_that_is_no_trace_is_refused_at_line_one() {
    let path = scratch("binary.trace", "\u{7f}ELF\u{2}\u{1}\u{1}\n");
    let shown = path.display().to_string();
    lazymmu()
        .args(["compare", "--trace", &shown])
        .assert()
        .code(2)
        .stderr(predicate::str::contains(format!("{shown}:1: expected")));
}

#[test]
fn nonsense_ranges_and_unknown_calls_are_reported_and_skipped() {
    let text = "lazymmu-trace 1\n\
                @touches faults\n\
                0 7 execve - = 0\n\
                1 7 munmap 7e0000000000 4000 = 0\n\
                2 7 mprotect fffffffffffff000 2000 1 = 0\n\
                3 7 frobnicate 1 2 = 0\n\
                4 7 mmap 0 4000 3 22 - 0 = 7f0000000000\n\
                5 7 fault 7f0000000000 4 w\n\
                6 7 munmap 7f0000000000 4000 = 0\n\
                7 7 exit 0\n";
    let path = scratch("nonsense.trace", text);
    let out = lazymmu()
        .args([
            "compare",
            "--trace",
            path.to_str().unwrap(),
            "--backend",
            "x86",
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0));
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(text.contains("skipped: 1 events; 1 "), "{text}");
    assert!(text.contains("1 unmaps of nothing mapped"), "{text}");
    assert!(
        text.contains("calls the replay does not know: frobnicate 1"),
        "{text}"
    );
    assert!(text.contains("munmap 1 (4 pages)"), "{text}");
}

#[test]
fn a_missing_trace_names_its_path_and_options_of_the_workloads_are_refused() {
    lazymmu()
        .args(["compare", "--trace", "/nonexistent/x.trace"])
        .assert()
        .code(1)
        .stderr(predicate::str::contains("cannot read /nonexistent/x.trace"));
    lazymmu()
        .args(["compare", "--trace", "x.trace", "--workload", "fork"])
        .assert()
        .code(2)
        .stderr(predicate::str::contains("cannot be used with"));
}
