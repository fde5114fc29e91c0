//! `lazymmu compare`'s memory estimate against what a run really takes:
//! the peak resident set of the child process, from `getrusage`. This file
//! holds one test, so that its process waits for no other child.

use std::process::Command;

/// The estimate, read from the refusal of a run with a one-byte limit.
fn estimate(args: &[&str]) -> u64 {
    let out = Command::new(env!("CARGO_BIN_EXE_lazymmu"))
        .args(args)
        .args(["--max-memory", "1"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let message = String::from_utf8(out.stderr).unwrap();
    let after = message
        .split("needs about ")
        .nth(1)
        .unwrap_or_else(|| panic!("{message}"));
    let mut words = after.split_whitespace();
    let value: f64 = words.next().unwrap().parse().unwrap();
    let unit = match words.next().unwrap() {
        "KB" => 1u64 << 10,
        "MB" => 1 << 20,
        "GB" => 1 << 30,
        unit => panic!("unit {unit}"),
    };
    (value * unit as f64) as u64
}

/// The peak resident set of the largest child waited for so far.
fn children_peak() -> u64 {
    // SAFETY: `usage` is a plain C struct that getrusage fills; zeroed is a
    // valid value of it.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: RUSAGE_CHILDREN with a valid pointer to a rusage.
    let status = unsafe { libc::getrusage(libc::RUSAGE_CHILDREN, &mut usage) };
    assert_eq!(status, 0);
    // Linux reports ru_maxrss in kilobytes.
    usage.ru_maxrss as u64 * 1024
}

/// Runs `lazymmu` with `args` to completion, output discarded.
fn run(args: &[&str]) {
    let status = Command::new(env!("CARGO_BIN_EXE_lazymmu"))
        .args(args)
        .stdout(std::process::Stdio::null())
        .status()
        .unwrap();
    assert!(status.success());
}

/// The arguments of the run that takes the most memory per page (the
/// backend and workload), at `pages` pages.
fn largest(pages: &str) -> [&str; 7] {
    [
        "compare",
        "--backend",
        "arm64-poe",
        "--workload",
        "kasan",
        "--pages",
        pages,
    ]
}

/// The estimate's growth with the pages covers the run's, and is not far
/// above it. Growth, not the whole peak, because the estimate's base is
/// the optimised binary's and the tests run the unoptimised one (a larger
/// binary with larger stacks); what a page costs is the same in both.
#[test]
fn the_estimate_covers_the_largest_run_and_is_not_far_above_it() {
    // Children are waited for in order, so the largest peak so far is
    // the small run's after it and the large run's after that.
    let small = largest("4096");
    run(&small);
    let small_peak = children_peak();
    let large = largest("65536");
    run(&large);
    let peak = children_peak();
    let growth = peak.saturating_sub(small_peak);
    let estimated = estimate(&large) - estimate(&small);
    assert!(
        growth <= estimated,
        "the run grew by {growth} bytes from 4,096 to 65,536 pages, the estimate by {estimated}"
    );
    assert!(
        estimated <= 3 * growth,
        "the estimate grew by {estimated}, far over the run's {growth}"
    );
}
