//! `lazymmu calibrate` end to end on this machine's kernel, at tiny sizes:
//! the file it writes loads and has the structure the simulator relies on
//! (timings are not checked), and bad options are refused.
#![cfg(all(target_os = "linux", target_arch = "x86_64"))]

use assert_cmd::Command;
use lazymmu_sim::calibration::{Calibration, Call, FORMAT};
use predicates::prelude::*;

fn lazymmu() -> Command {
    Command::cargo_bin("lazymmu").expect("the lazymmu binary is built")
}

#[test]
fn a_quick_run_writes_a_calibration_the_loader_accepts() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("calibration.json");
    lazymmu()
        .args(["calibrate", "--sizes", "16,1,8,2", "--repetitions", "3"])
        .args(["--warmup", "1", "--output"])
        .arg(&path)
        .assert()
        .success()
        .stdout(predicate::str::contains("cycles/call"))
        .stdout(predicate::str::contains(format!(
            "wrote {}",
            path.display()
        )));

    let calibration = Calibration::load(&path).expect("the written file loads");
    assert_eq!(calibration.format, FORMAT);
    assert_eq!(calibration.kernel.sysname, "Linux");
    assert!(calibration.machine.logical_cpus >= 1);
    assert!(calibration.clock.tsc_hz > 0.0);
    assert_eq!(calibration.method.sizes, [1, 2, 8, 16]);
    assert_eq!(
        (calibration.method.repetitions, calibration.method.warmup),
        (3, 1)
    );
    assert!(calibration.method.pinned_cpu.is_some());
    assert!(calibration.method.command.contains("--sizes 1,2,8,16"));

    for call in Call::ALL.iter().filter(|c| c.required()) {
        let cost = calibration.call(*call).expect("every required call");
        let pages: Vec<u64> = cost.samples.iter().map(|s| s.pages).collect();
        assert_eq!(pages, [1, 2, 8, 16], "{call}");
        assert!(cost.samples.iter().all(|s| s.count == 3), "{call}");
        assert!(cost.fit.per_call_cycles >= 0.0 && cost.fit.per_page_cycles >= 0.0);
    }
    // vmalloc through BPF: only the sizes on its vmalloc path, or a note
    // saying why it is missing.
    match calibration.call(Call::VmallocBpfArray) {
        Some(cost) => {
            let pages: Vec<u64> = cost.samples.iter().map(|s| s.pages).collect();
            assert_eq!(pages, [8, 16]);
        }
        None => assert!(calibration
            .notes
            .iter()
            .any(|n| n.starts_with("vmalloc-bpf-array not measured"))),
    }
}

#[test]
fn one_size_is_refused() {
    lazymmu()
        .args(["calibrate", "--sizes", "4,4"])
        .assert()
        .code(2)
        .stderr(predicate::str::contains("at least two distinct sizes"));
}

#[test]
fn bad_options_are_usage_errors() {
    lazymmu()
        .args(["calibrate", "--sizes", "0,4"])
        .assert()
        .code(2)
        .stderr(predicate::str::contains("--sizes"));
    lazymmu()
        .args(["calibrate", "--cpu", "0", "--no-pin"])
        .assert()
        .code(2)
        .stderr(predicate::str::contains("cannot be used with"));
    lazymmu()
        .args(["calibrate", "--colour"])
        .assert()
        .code(2)
        .stderr(predicate::str::contains("unexpected argument"));
}

#[test]
fn a_cpu_that_is_not_there_is_an_error() {
    // Inside the kernel's CPU set but not on this machine; beyond the set.
    for (cpu, message) in [
        ("1000", "cannot pin to CPU 1000"),
        ("4095", "--cpu 4095: beyond"),
    ] {
        lazymmu()
            .args(["calibrate", "--sizes", "1,2", "--repetitions", "1"])
            .args(["--cpu", cpu])
            .assert()
            .code(2)
            .stderr(predicate::str::contains(message));
    }
}

#[test]
fn an_output_that_cannot_be_written_is_refused_before_measuring() {
    lazymmu()
        .args(["calibrate", "--output", "/nonexistent/calibration.json"])
        .timeout(std::time::Duration::from_secs(10))
        .assert()
        .code(1)
        .stdout("")
        .stderr(predicate::str::contains(
            "cannot write /nonexistent/calibration.json",
        ));
}

#[test]
fn a_failed_run_leaves_no_file_behind() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("calibration.json");
    lazymmu()
        .args(["calibrate", "--sizes", "1,2", "--cpu", "1000", "--output"])
        .arg(&path)
        .assert()
        .code(2);
    assert!(!path.exists());
}
