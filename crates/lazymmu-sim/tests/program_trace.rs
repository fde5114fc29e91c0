//! Program traces: the shipped traces parse and build their address-space
//! history with zero errors and zero disagreements; malformed input stops
//! with the file, line and what was expected; a million events parse in
//! bounded memory; the history agrees with a page-by-page reference model.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::io::{BufReader, Read};
use std::path::PathBuf;

use lazymmu_sim::program_trace::history::StepKind;
use lazymmu_sim::program_trace::summarize;

/// Counts, per thread, the bytes allocated now and at most, so a test can
/// bound the memory a parse needs whatever the other tests do meanwhile.
struct Counting;

thread_local! {
    static NOW: Cell<isize> = const { Cell::new(0) };
    static PEAK: Cell<isize> = const { Cell::new(0) };
}

// SAFETY: every call forwards to the system allocator with the same
// arguments; the counters are only statistics and allocate nothing.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let size = isize::try_from(layout.size()).unwrap_or(isize::MAX);
        NOW.with(|now| {
            now.set(now.get() + size);
            PEAK.with(|peak| peak.set(peak.get().max(now.get())));
        });
        // SAFETY: the caller's layout contract is passed on unchanged.
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        let size = isize::try_from(layout.size()).unwrap_or(isize::MAX);
        NOW.with(|now| now.set(now.get() - size));
        // SAFETY: `ptr` came from `alloc` above with this layout.
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

fn traces_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../traces")
}

#[test]
fn shipped_traces_replay_without_errors() {
    let mut found = 0;
    let mut entries: Vec<_> = std::fs::read_dir(traces_dir())
        .expect("the traces directory exists")
        .map(|e| e.expect("readable entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "trace"))
        .collect();
    entries.sort();
    for path in entries {
        found += 1;
        let size = std::fs::metadata(&path).expect("stat").len();
        assert!(
            size < 1 << 20,
            "{} is {size} bytes, over 1 MB",
            path.display()
        );
        let file = std::fs::File::open(&path).expect("open");
        let name = path.display().to_string();
        let summary = summarize(BufReader::new(file), &name).unwrap_or_else(|e| panic!("{e}"));
        println!(
            "== {}\n{summary}",
            path.file_name().unwrap().to_string_lossy()
        );
        assert_eq!(summary.disagreement_count(), 0, "{name}: {summary}");
        assert_eq!(summary.skipped_count(), 0, "{name}: {summary}");
        assert_eq!(summary.inferred_vmas, 0, "{name}");
        assert_eq!(summary.threads_without_origin, 0, "{name}");
        assert_eq!(
            summary.live_at_end, 0,
            "{name}: every address space is torn down"
        );
        assert!(summary.events(&[StepKind::Mmap]) > 0, "{name}");
        assert!(summary.events(&[StepKind::Fault]) > 0, "{name}");
        assert!(
            summary.vmas_checked > 0,
            "{name}: the kernel's reports were checked"
        );
        let teardown = summary.operations.get("teardown").expect("exits tear down");
        assert!(teardown.pages > 0, "{name}");
    }
    assert!(found >= 6, "expected the shipped traces, found {found}");
}

fn error_of(text: &[u8]) -> String {
    match summarize(text, "t.trace") {
        Ok(summary) => panic!("expected an error, got {summary}"),
        Err(e) => e.to_string(),
    }
}

#[test]
fn malformed_input_names_file_line_and_expectation() {
    assert_eq!(
        error_of(b""),
        "t.trace:1: expected the header `lazymmu-trace 1`, found end of file"
    );
    assert_eq!(
        error_of(b"lazymmu-trace 2\n"),
        "t.trace:1: expected format version 1 (this reader knows no other), found `lazymmu-trace 2`"
    );
    assert_eq!(
        error_of(b"lazymmu-trace 1\n0 7 mmap 0 zz 3 22 - 0 = 1000\n"),
        "t.trace:2: expected the length in hexadecimal, found `zz`"
    );
    assert_eq!(
        error_of(b"lazymmu-trace 1\n# a comment\n\n0 7 mmap 0 2000\n"),
        "t.trace:4: expected protection bits in hexadecimal, found end of line"
    );
    assert_eq!(
        error_of(b"lazymmu-trace 1\n5 7 brk 0 = 1000\n4 7 brk 0 = 1000\n"),
        "t.trace:3: expected a time of at least 5 (events are in time order), found `4`"
    );
    assert_eq!(
        error_of(b"lazymmu-trace 1\n0 7 mmap 0 1000 1 2 3 0 = 1000\n"),
        "t.trace:2: expected file 3 to be declared by a `file` line before, found `3`"
    );
    assert_eq!(
        error_of(b"lazymmu-trace 1\n0 7 munmap 1000 1000 = 0 extra\n"),
        "t.trace:2: expected the end of the line, found `extra`"
    );
    assert_eq!(
        error_of(b"lazymmu-trace 1\n0 7 fault 1234 1 w\n"),
        "t.trace:2: expected a page-aligned address, found `1234`"
    );
    assert_eq!(
        error_of(b"lazymmu-trace 1\n0 0 brk 0 = 1000\n"),
        "t.trace:2: expected a thread id from 1 to 4294967295, found `0`"
    );
    assert_eq!(
        error_of(b"lazymmu-trace 1\n0 7 exit 0\n@touches faults\n"),
        "t.trace:3: expected an event (`@` lines come before the first event), found `@touches faults`"
    );
    assert_eq!(
        error_of(b"lazymmu-trace 1\n@fault-around 3\n"),
        "t.trace:2: expected a power of two from 1 to 512 pages after @fault-around, found `3`"
    );
    assert_eq!(
        error_of(b"lazymmu-trace 1\n0 7 brk 0 = \xff\xfe\n"),
        "t.trace:2: expected UTF-8 text, found `0 7 brk 0 = \u{fffd}\u{fffd}`"
    );
    // A bad line is quoted up to 80 characters.
    let long_word = "x".repeat(200);
    let error = error_of(format!("lazymmu-trace 1\n0 7 munmap {long_word} 1000 = 0\n").as_bytes());
    assert_eq!(
        error,
        format!(
            "t.trace:2: expected the address in hexadecimal, found `{}…`",
            "x".repeat(80)
        )
    );
    // A line over the limit is refused before it is held whole.
    let huge = format!(
        "lazymmu-trace 1\n0 7 munmap 1000 1000 = 0 {}\n",
        "y".repeat(10_000)
    );
    let error = error_of(huge.as_bytes());
    assert!(
        error.starts_with(
            "t.trace:2: expected a line of at most 4096 bytes, found `0 7 munmap 1000 1000 = 0 yyy"
        ),
        "{error}"
    );
}

#[test]
fn unknown_calls_are_skipped_and_counted() {
    let text = b"lazymmu-trace 1\n\
        0 7 execve - = 0\n\
        1 7 msync 7f0000000000 1000 4 = 0\n\
        2 7 mincore = 0\n\
        3 7 msync = -EINVAL\n\
        4 7 exit 0\n";
    let summary = summarize(&text[..], "t").expect("parses");
    assert_eq!(summary.unknown_calls.get("msync"), Some(&2));
    assert_eq!(summary.unknown_calls.get("mincore"), Some(&1));
    assert_eq!(summary.events(&[StepKind::Execve, StepKind::Exit]), 2);
}

/// Produces a trace of `events` events on the fly: one thread mapping,
/// touching and unmapping a region over and over, so the address space
/// stays small whatever the length.
struct Generated {
    events: u64,
    next: u64,
    pending: Vec<u8>,
    at: usize,
}

impl Generated {
    fn new(events: u64) -> Generated {
        Generated {
            events,
            next: 0,
            pending: b"lazymmu-trace 1\n@touches faults\n0 100 execve - = 0\n".to_vec(),
            at: 0,
        }
    }
}

impl Read for Generated {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        while self.at == self.pending.len() {
            if self.next == self.events {
                return Ok(0);
            }
            self.pending.clear();
            self.at = 0;
            let i = self.next;
            let base = 0x7f00_0000_0000u64 + (i / 3 % 64) * 0x10_0000;
            let line = match i % 3 {
                0 => format!("{i} 100 mmap 0 40000 3 22 - 0 = {base:x}\n"),
                1 => format!("{i} 100 fault {:x} 8 w\n", base + 0x1000),
                _ => format!("{i} 100 munmap {base:x} 40000 = 0\n"),
            };
            self.pending.extend_from_slice(line.as_bytes());
            self.next += 1;
        }
        let n = buf.len().min(self.pending.len() - self.at);
        buf[..n].copy_from_slice(&self.pending[self.at..self.at + n]);
        self.at += n;
        Ok(n)
    }
}

#[test]
fn a_million_events_parse_in_bounded_memory() {
    let before = NOW.with(Cell::get);
    PEAK.with(|peak| peak.set(before));
    let summary =
        summarize(BufReader::new(Generated::new(1_000_000)), "generated").expect("parses");
    let peak = PEAK.with(Cell::get) - before;
    assert_eq!(
        summary.events(&[StepKind::Mmap, StepKind::Fault, StepKind::Munmap]),
        1_000_000
    );
    assert_eq!(summary.operations["unmap"].pages, 333_333 * 8);
    assert_eq!(summary.disagreement_count(), 0);
    // A parse that grew with the input would need tens of megabytes here.
    assert!(peak < 1 << 20, "peak {peak} bytes");
    println!("peak allocation for 1,000,000 events: {peak} bytes");
}

mod never_panics {
    use lazymmu_sim::program_trace::summarize;
    use proptest::prelude::*;

    /// Words that make up trace lines, so random lines are often almost
    /// valid and reach deep into the history.
    const WORDS: &[&str] = &[
        "0",
        "1",
        "7",
        "8",
        "=",
        "-",
        "?",
        "-ENOMEM",
        "mmap",
        "munmap",
        "mprotect",
        "mremap",
        "brk",
        "madvise",
        "clone",
        "execve",
        "exit",
        "fault",
        "vma",
        "file",
        "w",
        "r",
        "x",
        "p",
        "s",
        "[stack]",
        "[vdso]",
        "3",
        "22",
        "32",
        "11",
        "4111",
        "3d0f00",
        "1000",
        "4000",
        "ffffffffffffffff",
        "7f0000000000",
        "7f0000001000",
        "7ffffffff000",
        "fffffffffffff000",
    ];

    fn line() -> impl Strategy<Value = String> {
        prop_oneof![
            proptest::collection::vec(proptest::sample::select(WORDS), 0..10)
                .prop_map(|w| w.join(" ")),
            "[ -~]{0,40}",
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]

        /// Any input gives a summary or an error, never a panic.
        #[test]
        fn any_input_gives_a_result(lines in proptest::collection::vec(line(), 0..40), raw in proptest::collection::vec(any::<u8>(), 0..64)) {
            let mut text = String::from("lazymmu-trace 1\n");
            let mut time = 0;
            for (i, line) in lines.iter().enumerate() {
                // Keep times in order half of the time, so events apply.
                if i % 2 == 0 {
                    time += 1;
                    text.push_str(&format!("{time} 7 "));
                }
                text.push_str(line);
                text.push('\n');
            }
            let _ = summarize(text.as_bytes(), "fuzz");
            let _ = summarize(&raw[..], "fuzz");
        }
    }
}
