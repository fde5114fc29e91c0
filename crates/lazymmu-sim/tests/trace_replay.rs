//! Replays of recorded programs: every shipped trace on every backend,
//! eager and lazy, with zero violations and every call touching exactly
//! the pages the history says are present; bad input reported with its
//! line, never a panic.
//!
//! `make-j2` (49,600 pages populated, 19 address spaces) takes minutes
//! without optimisation: it is ignored here and run in release by
//! `scripts/test.sh`.

use std::fs::File;
use std::io::BufReader;
use std::path::PathBuf;

use lazymmu_sim::program_trace::history::StepKind;
use lazymmu_sim::scenario::{BackendKind, ModeKind};
use lazymmu_sim::trace_replay::{plan, replay, trace_config, Plan, TraceRun};

fn path(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../traces")
        .join(format!("{name}.trace"))
}

/// Replays `name` on every backend in both modes; checks each run.
fn every_backend(name: &str) {
    let path = path(name);
    let open = || File::open(&path).map(BufReader::new);
    let plan = plan(open().unwrap(), name).unwrap();
    assert_eq!(plan.summary.skipped_count(), 0, "{name}: {}", plan.summary);
    for &backend in BackendKind::ALL {
        let runs: Vec<TraceRun> = ModeKind::ALL
            .iter()
            .map(|&mode| replay(&open, name, &plan, &trace_config(backend, mode)).unwrap())
            .collect();
        for run in &runs {
            let what = format!("{name} on {backend} {}", run.mode);
            assert_eq!(run.violation_count, 0, "{what}: {:?}", run.violations);
            assert_eq!(run.mismatches, 0, "{what}: {:?}", run.first_mismatch);
            assert!(run.calls > 0 && run.cycles > 0, "{what}: nothing replayed");
            // Every address space is torn down at the end: exit is a call.
            assert!(run.kinds[&StepKind::Exit].pages > 0, "{what}");
        }
        // Both modes replay the same calls over the same pages.
        assert_eq!(runs[0].calls, runs[1].calls, "{name} on {backend}");
        assert_eq!(runs[0].pages, runs[1].pages, "{name} on {backend}");
    }
}

macro_rules! shipped {
    ($($(#[$attr:meta])* $test:ident => $name:literal,)*) => {
        $(
            #[test]
            $(#[$attr])*
            fn $test() {
                every_backend($name);
            }
        )*
    };
}

shipped! {
    python_import_json => "python-import-json",
    python_import_modules => "python-import-modules",
    python_bytearray_grow => "python-bytearray-grow",
    gcc_compile => "gcc-compile",
    git_log => "git-log",
    sort_numbers => "sort-numbers",
    xz_threads => "xz-threads",
    bash_forks => "bash-forks",
    #[ignore = "minutes unoptimised: scripts/test.sh runs it in release"]
    make_j2 => "make-j2",
}

/// A fork copies exactly the pages present, write-protecting them: the
/// child's teardown then unmaps those pages, and the parent's its own.
#[test]
fn fork_copies_the_present_pages_and_each_exit_unmaps_its_own() {
    let text = "lazymmu-trace 1\n\
                @touches faults\n\
                0 7 execve - = 0\n\
                1 7 mmap 0 4000 3 22 - 0 = 7f0000000000\n\
                2 7 fault 7f0000000000 3 w\n\
                3 7 clone 11 = 8\n\
                4 8 exit 0\n\
                5 7 exit 0\n";
    let plan = plan(text.as_bytes(), "fork.trace").unwrap();
    assert_eq!(plan.spaces, 2);
    for &backend in BackendKind::ALL {
        let cfg = trace_config(backend, ModeKind::Lazy);
        let run = replay(&|| Ok(text.as_bytes()), "fork.trace", &plan, &cfg).unwrap();
        assert_eq!(run.violation_count, 0, "{backend}: {:?}", run.violations);
        assert_eq!(run.kinds[&StepKind::Fork].pages, 3, "{backend}");
        assert_eq!(run.kinds[&StepKind::Exit].calls, 2, "{backend}");
        assert_eq!(run.kinds[&StepKind::Exit].pages, 6, "{backend}");
        assert_eq!(run.mismatches, 0);
    }
}

fn planned(text: &str) -> Result<Plan, String> {
    plan(text.as_bytes(), "bad.trace").map_err(|e| e.to_string())
}

#[test]
fn a_malformed_line_names_the_file_the_line_and_what_was_expected() {
    let truncated = "lazymmu-trace 1\n0 7 execve - = 0\n1 7 mmap 0 4000 3\n";
    let error = planned(truncated).unwrap_err();
    assert!(error.starts_with("bad.trace:3: "), "{error}");
    assert!(error.contains("expected"), "{error}");
    let not_a_trace = "hello\n";
    let error = planned(not_a_trace).unwrap_err();
    assert!(error.starts_with("bad.trace:1: "), "{error}");
}

#[test]
fn nonsense_ranges_are_skipped_and_counted_and_the_rest_replays() {
    // Unmapping what was never mapped, a length that overflows, an
    // unknown call: each is counted, the mapping's own calls replay.
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
    let plan = planned(text).unwrap();
    let summary = &plan.summary;
    assert_eq!(summary.unmaps_of_nothing, 1, "{summary}");
    assert_eq!(summary.skipped_count(), 1, "{summary}");
    assert_eq!(
        summary.unknown_calls.get("frobnicate"),
        Some(&1),
        "{summary}"
    );
    let cfg = trace_config(BackendKind::X86, ModeKind::Eager);
    let run = replay(&|| Ok(text.as_bytes()), "bad.trace", &plan, &cfg).unwrap();
    assert_eq!(run.violation_count, 0);
    assert_eq!(run.kinds[&StepKind::Munmap].pages, 4);
}
