//! `lazymmu boot`: the bare-metal kernels under QEMU, and how the command
//! judges a guest's report.
//!
//! The first two tests boot the real kernels, one at a time; they need
//! `qemu-system-x86_64` and `qemu-system-aarch64` (`apt-get install -y
//! qemu-system-x86 qemu-system-arm`; scripts/test.sh installs them) and the
//! `x86_64-unknown-none` and `aarch64-unknown-none` targets (`rustup target
//! add ...`). The others stand a shell script in for QEMU.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::Mutex;

/// Held while a real kernel boots: two guests at once on a small machine
/// would slow each other towards the timeout.
static REAL_BOOT: Mutex<()> = Mutex::new(());

fn lazymmu() -> Command {
    Command::new(env!("CARGO_BIN_EXE_lazymmu"))
}

fn qemu_available(qemu: &str) -> bool {
    Command::new(qemu)
        .arg("--version")
        .output()
        .map(|output| output.status.success())
        .unwrap_or(false)
}

fn text(output: &Output) -> (String, String) {
    (
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

fn summary(stdout: &str) -> Option<(u32, u32)> {
    stdout.lines().find_map(|line| {
        let (passed, failed) = line.trim().split_once(" passed, ")?;
        Some((
            passed.parse().ok()?,
            failed.strip_suffix(" failed")?.parse().ok()?,
        ))
    })
}

#[test]
fn the_kernel_boots_and_every_guest_test_passes() {
    assert!(
        qemu_available("qemu-system-x86_64"),
        "qemu-system-x86_64 is not installed: `apt-get install -y qemu-system-x86` \
         (scripts/test.sh installs it when missing)"
    );
    let _one_at_a_time = REAL_BOOT.lock().unwrap_or_else(|e| e.into_inner());
    // The command kills QEMU after 60 s and then fails.
    let output = lazymmu()
        .args(["boot", "--timeout", "60"])
        .output()
        .expect("lazymmu boot runs");
    let (stdout, stderr) = text(&output);
    assert!(
        output.status.success(),
        "lazymmu boot failed ({}):\n{stdout}\n{stderr}",
        output.status
    );
    let (passed, failed) = summary(&stdout).expect("an `N passed, N failed` line");
    assert_eq!(failed, 0, "guest failures:\n{stdout}");
    assert!(passed >= 10, "only {passed} guest tests ran:\n{stdout}");
    assert!(!stdout.contains("\nFAIL"), "{stdout}");
    assert!(
        stdout.contains("x86_64 guest passed (QEMU exit status 33)"),
        "{stdout}"
    );
    assert!(stdout.contains("In-guest measurements"), "{stdout}");
    for space in ["kernel", "user"] {
        for operation in ["map", "protect", "zap"] {
            assert!(
                stdout.lines().any(|l| {
                    let mut words = l.split_whitespace();
                    words.next() == Some(space)
                        && words.next() == Some(operation)
                        && l.contains("no lazy mode")
                }),
                "no {space} {operation} row:\n{stdout}"
            );
        }
    }
    // Four CPUs by default, and the SMP tables.
    assert!(stdout.contains("smp: 4 CPUs online"), "{stdout}");
    assert!(stdout.contains("In-guest SMP measurements"), "{stdout}");
    for cpus in ["1", "2", "4"] {
        for operation in ["map", "protect", "zap"] {
            assert!(
                stdout.lines().any(|l| {
                    let mut words = l.split_whitespace();
                    words.next() == Some(cpus)
                        && words.next() == Some(operation)
                        && l.contains("no lazy mode")
                }),
                "no SMP {operation} row at {cpus} CPUs:\n{stdout}"
            );
        }
    }
    assert!(stdout.contains("In-guest context switches"), "{stdout}");
    for policy in ["x86", "refcount", "shootdown"] {
        assert!(
            stdout
                .lines()
                .any(|l| l.split_whitespace().next() == Some(policy)),
            "no context-switch row for {policy}:\n{stdout}"
        );
    }
}

#[test]
fn the_arm64_kernel_boots_and_every_guest_test_passes() {
    assert!(
        qemu_available("qemu-system-aarch64"),
        "qemu-system-aarch64 is not installed: `apt-get install -y qemu-system-arm` \
         (scripts/test.sh installs it when missing)"
    );
    let _one_at_a_time = REAL_BOOT.lock().unwrap_or_else(|e| e.into_inner());
    let output = lazymmu()
        .args(["boot", "--arch", "aarch64", "--timeout", "60"])
        .output()
        .expect("lazymmu boot runs");
    let (stdout, stderr) = text(&output);
    assert!(
        output.status.success(),
        "lazymmu boot --arch aarch64 failed ({}):\n{stdout}\n{stderr}",
        output.status
    );
    let (passed, failed) = summary(&stdout).expect("an `N passed, N failed` line");
    assert_eq!(failed, 0, "guest failures:\n{stdout}");
    assert!(passed >= 15, "only {passed} guest tests ran:\n{stdout}");
    assert!(
        stdout.contains("aarch64 guest passed (QEMU exit status 33)"),
        "{stdout}"
    );
    assert!(stdout.contains("booted at EL1"), "{stdout}");
    assert!(stdout.contains("In-guest measurements (arm64)"), "{stdout}");
    for pages in ["1", "16", "64", "512", "4096"] {
        for operation in ["map", "unmap"] {
            for mode in ["eager", "lazy"] {
                assert!(
                    stdout.lines().any(|l| {
                        let words: Vec<&str> = l.split_whitespace().collect();
                        words.len() == 9 && words[..3] == [pages, operation, mode]
                    }),
                    "no {pages} {operation} {mode} row:\n{stdout}"
                );
            }
        }
    }
}

/// A stand-in for QEMU: prints `lines` and exits with `status`, after
/// sleeping `sleep` seconds.
fn fake_qemu(dir: &Path, lines: &[&str], status: i32, sleep: u32) -> PathBuf {
    let path = dir.join("fake-qemu");
    let mut script = String::from("#!/bin/sh\n");
    for line in lines {
        script += &format!("echo '{line}'\n");
    }
    if sleep > 0 {
        script += &format!("sleep {sleep}\n");
    }
    script += &format!("exit {status}\n");
    std::fs::write(&path, script).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    path
}

fn boot_with(qemu: &Path, timeout: &str) -> Output {
    lazymmu()
        .args([
            "boot",
            "--kernel",
            "/dev/null",
            "--timeout",
            timeout,
            "--qemu",
        ])
        .arg(qemu)
        .output()
        .expect("lazymmu boot runs")
}

const MARKER: &str = "lazymmu kernel: booted";

#[test]
fn success_needs_the_debug_exit_status_and_no_failure() {
    let dir = tempfile::tempdir().unwrap();
    let good = fake_qemu(
        dir.path(),
        &[MARKER, "test a ... ok", "2 passed, 0 failed"],
        33,
        0,
    );
    let output = boot_with(&good, "10");
    assert!(output.status.success(), "{:?}", text(&output));
    assert!(text(&output).0.contains("2 passed, 0 failed"));
}

#[test]
fn a_triple_fault_is_never_success() {
    let dir = tempfile::tempdir().unwrap();
    // QEMU exits with 0 after a triple fault under -no-reboot.
    let qemu = fake_qemu(dir.path(), &[MARKER, "2 passed, 0 failed"], 0, 0);
    let output = boot_with(&qemu, "10");
    assert_eq!(output.status.code(), Some(1));
    assert!(
        text(&output).1.contains("triple-faulted"),
        "{:?}",
        text(&output)
    );
}

#[test]
fn a_failed_guest_test_fails_the_boot() {
    let dir = tempfile::tempdir().unwrap();
    let qemu = fake_qemu(
        dir.path(),
        &[MARKER, "FAIL map: page 3", "1 passed, 1 failed"],
        33,
        0,
    );
    let output = boot_with(&qemu, "10");
    assert_eq!(output.status.code(), Some(1));
    assert!(
        text(&output).1.contains("1 guest tests failed"),
        "{:?}",
        text(&output)
    );
}

#[test]
fn a_guest_without_a_summary_fails() {
    let dir = tempfile::tempdir().unwrap();
    let qemu = fake_qemu(dir.path(), &[MARKER], 33, 0);
    let output = boot_with(&qemu, "10");
    assert_eq!(output.status.code(), Some(1));
    assert!(text(&output).1.contains("no `N passed, N failed` line"));
}

#[test]
fn a_guest_running_past_the_timeout_is_killed() {
    let dir = tempfile::tempdir().unwrap();
    let qemu = fake_qemu(dir.path(), &[MARKER], 33, 30);
    let output = boot_with(&qemu, "1");
    assert_eq!(output.status.code(), Some(1));
    assert!(
        text(&output).1.contains("ran past 1 s"),
        "{:?}",
        text(&output)
    );
}

#[test]
fn a_missing_qemu_is_reported() {
    let output = boot_with(Path::new("/nonexistent/qemu-system-x86_64"), "10");
    assert_eq!(output.status.code(), Some(1));
    assert!(text(&output)
        .1
        .contains("apt-get install -y qemu-system-x86"));
    let output = lazymmu()
        .args(["boot", "--arch", "aarch64", "--kernel", "/dev/null"])
        .args(["--qemu", "/nonexistent/qemu-system-aarch64"])
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(1));
    assert!(text(&output)
        .1
        .contains("apt-get install -y qemu-system-arm"));
}

#[test]
fn the_arm64_guest_passes_through_semihosting_and_never_with_0() {
    let dir = tempfile::tempdir().unwrap();
    let arm = |status| {
        let qemu = fake_qemu(dir.path(), &[MARKER, "2 passed, 0 failed"], status, 0);
        lazymmu()
            .args(["boot", "--arch", "aarch64", "--kernel", "/dev/null"])
            .arg("--qemu")
            .arg(qemu)
            .output()
            .unwrap()
    };
    let good = arm(33);
    assert!(good.status.success(), "{:?}", text(&good));
    assert!(text(&good).0.contains("aarch64 guest passed"));
    // PSCI SYSTEM_OFF, or any stop without semihosting, ends QEMU with 0.
    let off = arm(0);
    assert_eq!(off.status.code(), Some(1));
    assert!(text(&off).1.contains("exited with 0"), "{:?}", text(&off));
}

#[test]
fn bad_options_exit_with_2() {
    for args in [
        &["boot", "--timeout", "0"][..],
        &["boot", "--timeout", "soon"],
        &["boot", "--no-such-option"],
        &["boot", "--cpus", "0"],
        &["boot", "--cpus", "9"],
        &["boot", "--cpus", "four"],
        &["boot", "--arch", "mips"],
        &["boot", "--arch", "aarch64", "--cpus", "4"],
        &["boot", "--arch", "all", "--kernel", "/dev/null"],
        &["boot", "--arch", "all", "--qemu", "/bin/true"],
    ] {
        let output = lazymmu().args(args).output().unwrap();
        assert_eq!(output.status.code(), Some(2), "{args:?}");
    }
}

#[test]
fn a_directory_without_the_kernel_is_refused_before_building() {
    let output = lazymmu()
        .args(["boot", "--kernel-dir", "/tmp"])
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(2));
    let (_, stderr) = text(&output);
    assert!(stderr.contains("/tmp holds no kernel sources"), "{stderr}");
    assert!(!stderr.contains("rustup target add"), "{stderr}");
}

#[test]
fn help_shows_no_path_of_the_build_machine() {
    let output = lazymmu().args(["boot", "--help"]).output().unwrap();
    let (stdout, _) = text(&output);
    assert!(stdout.contains("--kernel-dir"));
    assert!(
        !stdout.contains(env!("CARGO_MANIFEST_DIR")),
        "the default is described, not spelled out: {stdout}"
    );
}
