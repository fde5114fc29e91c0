//! `lazymmu record` end to end: usage and missing-tool errors, real
//! recordings with and without perf, and the model's present pages against
//! the kernel's `/proc/PID/pagemap`.
//!
//! The recordings need root, strace and perf (`bash scripts/setup.sh`
//! installs them); where those are missing the tests that need them say
//! so and return.

use std::collections::BTreeSet;
use std::fs;
use std::io::BufReader;
use std::path::{Path, PathBuf};

use assert_cmd::Command;
use lazymmu_sim::program_trace::history::StepKind;
use lazymmu_sim::program_trace::{summarize, Replay};
use predicates::prelude::*;

fn lazymmu() -> Command {
    Command::cargo_bin("lazymmu").expect("the lazymmu binary is built")
}

fn on_path(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}

/// Why this machine cannot record with perf, if it cannot.
fn cannot_record() -> Option<&'static str> {
    let root = fs::read_to_string("/proc/self/status")
        .ok()?
        .lines()
        .find(|l| l.starts_with("Uid:"))
        .is_some_and(|l| l.split_whitespace().nth(1) == Some("0"));
    if !root {
        return Some("not root");
    }
    if on_path("strace").is_none() {
        return Some("no strace");
    }
    if on_path("perf").is_none() {
        return Some("no perf");
    }
    if !Path::new("/sys/kernel/tracing/events/raw_syscalls").exists() {
        return Some("no tracefs");
    }
    None
}

#[test]
fn a_command_is_required() {
    lazymmu()
        .args(["record", "-o", "x.trace"])
        .assert()
        .code(2)
        .stderr(predicate::str::contains("CMD"));
}

#[test]
fn missing_strace_names_the_package() {
    let empty = tempfile::tempdir().expect("temp dir");
    lazymmu()
        .env("PATH", empty.path())
        .args(["record", "--", "/bin/true"])
        .assert()
        .code(1)
        .stderr(predicate::str::contains(
            "strace is not installed: install the Debian package `strace`",
        ));
}

#[test]
fn missing_perf_names_the_package_and_the_way_around() {
    let Some(strace) = on_path("strace") else {
        eprintln!("skipped: no strace");
        return;
    };
    let dir = tempfile::tempdir().expect("temp dir");
    std::os::unix::fs::symlink(strace, dir.path().join("strace")).expect("symlink");
    lazymmu()
        .env("PATH", dir.path())
        .args(["record", "--", "/bin/true"])
        .assert()
        .code(1)
        .stderr(
            predicate::str::contains("install the Debian package `linux-perf`")
                .and(predicate::str::contains("--no-perf")),
        );
}

/// Records `/bin/true ARGS` with the given options; the trace's text, or
/// `None` (having said why) where this machine cannot record.
fn record_true(options: &[&str], args: &[&str]) -> Option<String> {
    if let Some(why) = cannot_record() {
        eprintln!("skipped: {why}");
        return None;
    }
    let dir = tempfile::tempdir().expect("temp dir");
    let trace = dir.path().join("true.trace");
    lazymmu()
        .arg("record")
        .args(options)
        .arg("-o")
        .arg(&trace)
        .args(["--", "/bin/true"])
        .args(args)
        .assert()
        .success()
        .stderr(predicate::str::contains("model disagreements: 0"));
    Some(fs::read_to_string(&trace).expect("trace written"))
}

#[test]
fn records_a_program_with_perf() {
    // An argument with a newline stays on the command's one line.
    let Some(text) = record_true(&[], &["two\nlines"]) else {
        return;
    };
    assert!(
        text.starts_with("lazymmu-trace 1\n@command /bin/true $'two\\nlines'\n"),
        "{text}"
    );
    assert!(text.contains("\n@touches faults\n"));
    let summary = summarize(text.as_bytes(), "true.trace").expect("parses");
    assert_eq!(summary.events(&[StepKind::Execve]), 1);
    assert_eq!(summary.events(&[StepKind::Exit]), 1);
    assert!(summary.events(&[StepKind::Fault]) > 10);
    assert!(
        summary.vmas_installed >= 8,
        "program, interpreter, stack, vdso: {summary}"
    );
    assert_eq!(summary.disagreement_count(), 0, "{summary}");
    assert_eq!(summary.live_at_end, 0);
}

#[test]
fn records_without_perf_and_says_pages_are_estimated() {
    let Some(text) = record_true(&["--no-perf"], &[]) else {
        return;
    };
    assert!(text.contains("\n@touches whole-ranges\n"));
    assert!(text.contains("# touched pages are estimated"));
    assert!(!text
        .lines()
        .any(|l| l.split_whitespace().nth(2) == Some("fault")));
    let summary = summarize(text.as_bytes(), "true.trace").expect("parses");
    assert!(summary.events(&[StepKind::Mmap]) > 0);
    // Every mapped page counts as present, so the exit tears some down.
    assert!(summary.operations["teardown"].pages > 0);
}

/// The model's present pages for a real program against the kernel's
/// pagemap at the same moment (the preloaded dumper's marker): every page
/// the kernel has present is present in the model, and the model has at
/// most 1% more (page-cache folios marked for readahead, which
/// fault-around skips, and `[vvar]`, which pagemap cannot see).
#[test]
fn present_pages_match_the_kernels_pagemap() {
    if let Some(why) = cannot_record() {
        eprintln!("skipped: {why}");
        return;
    }
    let Some(cc) = on_path("cc") else {
        eprintln!("skipped: no C compiler");
        return;
    };
    let dir = tempfile::tempdir().expect("temp dir");
    let library = dir.path().join("libdump_present.so");
    let source = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/support/dump_present.c");
    let built = std::process::Command::new(cc)
        .args(["-O2", "-shared", "-fPIC", "-o"])
        .arg(&library)
        .arg(&source)
        .status()
        .expect("cc runs");
    assert!(built.success());
    let dump = dir.path().join("present.txt");
    let trace = dir.path().join("python.trace");
    let mut preload = std::ffi::OsString::from("LD_PRELOAD=");
    preload.push(&library);
    let mut dump_to = std::ffi::OsString::from("DUMP_TO=");
    dump_to.push(&dump);
    lazymmu()
        .args(["record", "-o"])
        .arg(&trace)
        .args(["--", "env"])
        .arg(dump_to)
        .arg(preload)
        .args(["/usr/bin/python3", "-c", "import json"])
        .assert()
        .success();
    let kernel: BTreeSet<u64> = fs::read_to_string(&dump)
        .expect("the dumper wrote")
        .lines()
        .map(|l| u64::from_str_radix(l, 16).expect("hex"))
        .collect();
    let text = fs::read_to_string(&trace).expect("trace");
    let marker = text
        .lines()
        .position(|l| l.ends_with(" munmap 20000 1000 = 0"))
        .expect("the dumper's marker") as u64
        + 1;
    let mut replay = Replay::new(BufReader::new(text.as_bytes()), "python.trace");
    let mut model = None;
    while let Some(step) = replay.next() {
        let step = step.expect("parses");
        if step.line == marker {
            let space = replay.history().address_space_of(step.tid).expect("alive");
            let pages: BTreeSet<u64> = space
                .present()
                .runs()
                .flat_map(|r| (r.start..r.end).step_by(4096))
                .collect();
            model = Some(pages);
        }
    }
    let model = model.expect("the marker was replayed");
    let missing = kernel.difference(&model).count();
    let extra = model.difference(&kernel).count();
    println!(
        "kernel {} pages present, model {}: {} the model lacks, {} it adds",
        kernel.len(),
        model.len(),
        missing,
        extra
    );
    assert!(kernel.len() > 1000);
    assert_eq!(
        missing, 0,
        "pages present in the kernel but not in the model"
    );
    assert!(extra * 100 <= kernel.len(), "{extra} extra pages");
}
