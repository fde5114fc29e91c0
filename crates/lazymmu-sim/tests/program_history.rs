//! The address-space history against Linux: cases derived by hand from
//! the kernel functions each path follows, and a property test against a
//! page-by-page reference model.

use std::collections::BTreeMap;
use std::ops::Range;

use lazymmu_sim::program_trace::address_space::{mergeable, AddressSpace, VmFlags};
use lazymmu_sim::program_trace::history::{History, StepKind, Summary};
use lazymmu_sim::program_trace::reader::Reader;
use lazymmu_sim::program_trace::record::{Call, Event, EventKind, Outcome, Record};
use lazymmu_sim::program_trace::{Operation, Step, PAGE_SIZE};
use proptest::prelude::*;

const P: u64 = PAGE_SIZE;

/// Replays trace text; returns every step, the summary, and the history
/// for inspection before the summary was taken.
fn replay(text: &str) -> (Vec<Step>, History) {
    let mut reader = Reader::new(text.as_bytes(), "t");
    let mut history = History::default();
    let mut steps = Vec::new();
    while let Some(record) = reader.next() {
        let record = record.unwrap_or_else(|e| panic!("{e}"));
        if let Some(step) = history
            .apply(&record, reader.lines_read())
            .expect("metadata")
        {
            steps.push(step);
        }
    }
    (steps, history)
}

fn summary(history: History) -> Summary {
    history.finish(&Default::default())
}

fn trace(lines: &[&str]) -> String {
    let mut text = String::from("lazymmu-trace 1\n");
    for (i, line) in lines.iter().enumerate() {
        if line.starts_with('@') || line.starts_with("file") {
            text.push_str(line);
        } else {
            text.push_str(&format!("{i} {line}"));
        }
        text.push('\n');
    }
    text
}

fn vmas(space: &AddressSpace) -> Vec<(u64, u64, u64)> {
    space
        .vmas()
        .map(|v| (v.start, v.end, v.flags.prot()))
        .collect()
}

fn pages(op: &Operation) -> u64 {
    op.pages()
}

const BASE: u64 = 0x7f00_0000_0000;

/// `vma_modify` (mm/vma.c): mprotect of the middle splits one VMA in
/// three; mprotect back merges the three (`vma_merge_existing_range`,
/// both sides).
#[test]
fn mprotect_splits_and_merges_back() {
    let (steps, history) = replay(&trace(&[
        "7 execve - = 0",
        "7 mmap 0 10000 3 22 - 0 = 7f0000000000",
        "7 fault 7f0000004000 2 w",
        "7 mprotect 7f0000004000 4000 1 = 0",
    ]));
    let space = history.address_space_of(7).expect("alive");
    assert_eq!(
        vmas(space),
        vec![
            (BASE, BASE + 4 * P, 3),
            (BASE + 4 * P, BASE + 8 * P, 1),
            (BASE + 8 * P, BASE + 16 * P, 3),
        ]
    );
    // change_protection rewrites exactly the two present entries.
    let protect = &steps[3].operations[0];
    assert!(matches!(protect, Operation::Protect { prot: 1, .. }));
    assert_eq!(pages(protect), 2);
    let (_, history) = replay(&trace(&[
        "7 execve - = 0",
        "7 mmap 0 10000 3 22 - 0 = 7f0000000000",
        "7 fault 7f0000004000 2 w",
        "7 mprotect 7f0000004000 4000 1 = 0",
        "7 mprotect 7f0000004000 4000 3 = 0",
    ]));
    assert_eq!(
        vmas(history.address_space_of(7).unwrap()),
        vec![(BASE, BASE + 16 * P, 3)]
    );
}

/// `do_mprotect_pkey`: a hole stops the walk with ENOMEM after the VMAs
/// before it were changed.
#[test]
fn mprotect_over_a_hole_changes_the_prefix_and_fails() {
    let (steps, history) = replay(&trace(&[
        "7 execve - = 0",
        "7 mmap 7f0000000000 4000 3 32 - 0 = 7f0000000000",
        "7 mmap 7f0000008000 4000 3 32 - 0 = 7f0000008000",
        "7 fault 7f0000000000 1 w",
        "7 mprotect 7f0000000000 c000 1 = -ENOMEM",
    ]));
    assert!(steps[4].failed);
    assert!(steps[4].disagreement.is_none());
    assert_eq!(pages(&steps[4].operations[0]), 1);
    assert_eq!(
        vmas(history.address_space_of(7).unwrap()),
        vec![(BASE, BASE + 4 * P, 1), (BASE + 8 * P, BASE + 12 * P, 3)]
    );
}

/// `mmap_region` with `MAP_FIXED`: the old mapping's present pages are
/// zapped (`vms_clear_ptes`) before the new VMA goes in.
#[test]
fn map_fixed_zaps_what_it_replaces() {
    let (steps, _) = replay(&trace(&[
        "7 execve - = 0",
        "7 mmap 0 8000 3 22 - 0 = 7f0000000000",
        "7 fault 7f0000000000 3 w",
        "7 mmap 7f0000001000 2000 1 32 - 0 = 7f0000001000",
    ]));
    let ops = &steps[3].operations;
    assert!(matches!(ops[0], Operation::Unmap { .. }));
    assert_eq!(pages(&ops[0]), 2);
    assert!(matches!(ops[1], Operation::Map { .. }));
}

/// `vma_needs_copy` (mm/memory.c): fork copies the page tables of VMAs
/// with an `anon_vma` only. A file read in, and anonymous memory only read
/// (the zero page), are left to fault in the child.
#[test]
fn fork_copies_only_vmas_with_an_anon_vma() {
    let (steps, _) = replay(&trace(&[
        "file 1 65536 /lib/libx.so",
        "7 execve - = 0",
        "7 mmap 0 10000 1 2 1 0 = 7f0000100000",
        "7 fault 7f0000100000 1 r",
        "7 mmap 0 4000 3 22 - 0 = 7f0000000000",
        "7 fault 7f0000000000 1 r",
        "7 mmap 0 4000 3 22 - 0 = 7f0000200000",
        "7 fault 7f0000200000 2 w",
        "7 clone 11 = 8",
        "8 exit 0",
    ]));
    let fork = steps
        .iter()
        .find(|s| s.kind == StepKind::Fork)
        .expect("fork");
    let Operation::Copy { spans, .. } = &fork.operations[0] else {
        panic!("not a copy: {:?}", fork.operations);
    };
    assert_eq!(spans.len(), 1);
    assert_eq!(spans[0].range, BASE + 0x20_0000..BASE + 0x20_4000);
    assert_eq!(spans[0].present_pages(), 2);
    assert!(spans[0].cow);
    // The child's exit tears down exactly what was copied.
    let exit = steps.last().unwrap();
    assert_eq!(pages(&exit.operations[0]), 2);
}

/// `do_fault_around`: a read fault in a file mapping maps the aligned
/// 16-page window, clamped to the VMA, the PTE table and (in
/// `filemap_map_pages`) the end of the file; a write fault to a private
/// file mapping (`do_cow_fault`) maps one page.
#[test]
fn file_faults_map_around() {
    let (steps, _) = replay(&trace(&[
        "file 1 40960 /lib/liby.so",
        "7 execve - = 0",
        // 64 pages from 2 pages past a 64 KiB boundary; the file has 10.
        "7 mmap 0 40000 1 2 1 0 = 7f0000002000",
        "7 fault 7f0000005000 1 r",
    ]));
    let Operation::Populate { runs, .. } = &steps[2].operations[0] else {
        panic!("{:?}", steps[2]);
    };
    // From the VMA start (the window starts before it) to the end of the
    // file: 10 pages.
    assert_eq!(runs.len(), 1);
    assert_eq!(runs[0], BASE + 2 * P..BASE + 12 * P);
    let (steps, _) = replay(&trace(&[
        "file 1 1048576 /lib/liby.so",
        "7 execve - = 0",
        "7 mmap 0 40000 3 2 1 0 = 7f0000000000",
        "7 fault 7f0000013000 1 r",
        "7 fault 7f0000030000 1 w",
    ]));
    assert_eq!(pages(&steps[2].operations[0]), 16);
    assert_eq!(pages(&steps[3].operations[0]), 1);
}

/// `do_huge_pmd_anonymous_page` with THP in madvise mode: after
/// MADV_HUGEPAGE a fault in an aligned 2 MiB block inside the VMA maps
/// all 512 pages; without the advice, one page.
#[test]
fn huge_pages_need_the_advice_in_madvise_mode() {
    let (steps, _) = replay(&trace(&[
        "@thp madvise",
        "7 execve - = 0",
        "7 mmap 0 600000 3 22 - 0 = 7f0000000000",
        "7 fault 7f0000001000 1 w",
        "7 madvise 7f0000000000 600000 e = 0",
        "7 fault 7f0000200000 1 w",
    ]));
    assert_eq!(pages(&steps[2].operations[0]), 1);
    assert_eq!(pages(&steps[4].operations[0]), 512);
}

/// `expand_downwards`: a fault below the stack grows it; the kernel's
/// report of the grown stack then agrees with the model.
#[test]
fn the_stack_grows_on_a_fault_below_it() {
    let (steps, history) = replay(&trace(&[
        "7 execve - = 0",
        "7 vma 7ffffffde000 21000 3 p [stack] 7ffffffde000",
        "7 brk 0 = 555555559000",
        "7 fault 7ffffffdc000 1 w",
        "7 vma 7ffffffdc000 23000 3 p [stack] 7ffffffdc000",
    ]));
    // execve's argument page is present from the start.
    assert_eq!(pages(&steps[1].operations[1]), 1);
    assert_eq!(pages(&steps[3].operations[0]), 1);
    assert!(
        steps[4].disagreement.is_none(),
        "{:?}",
        steps[4].disagreement
    );
    let s = summary(history);
    assert_eq!(s.vmas_checked, 1);
    assert_eq!(s.disagreement_count(), 0);
}

/// brk (mm/mmap.c): growth makes one heap VMA that later growth extends
/// (`do_brk_flags` merging with the brk VMA); shrinking unmaps the top
/// with the present pages there; a refused brk returns the old break.
#[test]
fn brk_grows_one_heap_and_shrinks_it() {
    let (steps, history) = replay(&trace(&[
        "7 execve - = 0",
        "7 brk 0 = 555555559000",
        "7 brk 55555557a000 = 55555557a000",
        "7 fault 555555579000 1 w",
        "7 brk 55555559b000 = 55555559b000",
        "7 brk 555555570000 = 555555570000",
        "7 brk 7fffffff0000 = 555555570000",
    ]));
    let heap: Vec<_> = vmas(history.address_space_of(7).unwrap());
    assert_eq!(heap, vec![(0x5555_5555_9000, 0x5555_5557_0000, 3)]);
    let shrink = &steps[5].operations[0];
    assert!(matches!(shrink, Operation::Unmap { .. }));
    assert_eq!(pages(shrink), 1);
    assert!(steps[6].failed);
    assert!(steps[6].disagreement.is_none());
}

/// mremap (mm/mremap.c): growing in place keeps the pages; a move carries
/// exactly the present pages to the new place (`move_page_tables`) and
/// unmaps the source.
#[test]
fn mremap_moves_exactly_the_present_pages() {
    let (steps, history) = replay(&trace(&[
        "7 execve - = 0",
        "7 mmap 0 4000 3 22 - 0 = 7f0000000000",
        "7 fault 7f0000000000 1 w",
        "7 fault 7f0000002000 1 w",
        "7 mremap 7f0000000000 4000 8000 1 0 = 7f0000000000",
        "7 mmap 7f0000008000 1000 3 32 - 0 = 7f0000008000",
        "7 mremap 7f0000000000 8000 10000 1 0 = 7f0000100000",
    ]));
    assert!(steps[4].operations.iter().all(|op| pages(op) == 0));
    let moved = &steps[6].operations[0];
    let Operation::Move {
        from, to, present, ..
    } = moved
    else {
        panic!("{moved:?}");
    };
    assert_eq!(*from, BASE..BASE + 8 * P);
    assert_eq!(*to, BASE + 0x10_0000);
    assert_eq!(present, &vec![BASE..BASE + P, BASE + 2 * P..BASE + 3 * P]);
    let space = history.address_space_of(7).unwrap();
    assert_eq!(space.present().pages(), 2);
    assert!(space.present().contains(BASE + 0x10_2000));
    assert_eq!(
        vmas(space),
        vec![
            (BASE + 8 * P, BASE + 9 * P, 3),
            (BASE + 0x10_0000, BASE + 0x11_0000, 3)
        ]
    );
}

/// Threads share an address space; only the last exit tears it down
/// (`mmput` → `exit_mmap`). A vfork child's execve leaves the parent's
/// address space alone; the parent's execve drops it.
#[test]
fn teardown_happens_when_the_last_user_leaves() {
    let (steps, history) = replay(&trace(&[
        "7 execve - = 0",
        "7 mmap 0 4000 3 22 - 0 = 7f0000000000",
        "7 fault 7f0000000000 4 w",
        "7 clone 3d0f00 = 9",
        "9 exit 0",
        "7 clone 4111 = 10",
        "10 execve - = 0",
        "10 exit 0",
        "7 execve - = 0",
        "7 exit 0",
    ]));
    let teardown_pages: Vec<u64> = steps
        .iter()
        .map(|s| {
            s.operations
                .iter()
                .filter(|o| matches!(o, Operation::Teardown { .. }))
                .map(pages)
                .sum()
        })
        .collect();
    assert_eq!(teardown_pages, vec![0, 0, 0, 0, 0, 0, 0, 0, 4, 0]);
    assert_eq!(steps[3].kind, StepKind::Thread);
    assert_eq!(steps[5].kind, StepKind::Vfork);
    let s = summary(history);
    assert_eq!(s.live_at_end, 0);
    assert_eq!(s.address_spaces, 3);
}

/// Nonsense is reported and skipped: munmap of nothing is a legal no-op;
/// a successful munmap with an overflowing length and an mmap past the
/// user half cannot have happened.
#[test]
fn nonsense_is_reported_never_applied() {
    let (steps, history) = replay(&trace(&[
        "7 execve - = 0",
        "7 munmap 7f0000000000 1000 = 0",
        "7 munmap 7f0000000000 ffffffffffffff00 = 0",
        "7 mmap 0 2000 3 22 - 0 = 7ffffffff000",
        "7 munmap 1001 1000 = -EINVAL",
        "8 fault ffffffffff000 1 w",
    ]));
    assert!(steps[1].skipped.is_none());
    assert!(steps[2].skipped.is_some());
    assert!(steps[3].skipped.is_some());
    assert!(steps[4].skipped.is_none() && steps[4].failed);
    assert!(steps[5].skipped.is_some());
    let s = summary(history);
    assert_eq!(s.unmaps_of_nothing, 1);
    assert_eq!(s.skipped_count(), 3);
    assert_eq!(s.threads_without_origin, 1);
}

/// A kernel report that differs from the model is a disagreement, and the
/// model takes the kernel's word.
#[test]
fn a_differing_vma_report_is_a_disagreement() {
    let (steps, history) = replay(&trace(&[
        "7 execve - = 0",
        "7 vma 7ffffffde000 21000 3 p [stack] 7ffffffde000",
        "7 mmap 0 4000 3 22 - 0 = 7f0000000000",
        "7 vma 7f0000000000 8000 3 p - 7f0000000",
    ]));
    assert!(steps[3].disagreement.is_some());
    let space = history.address_space_of(7).unwrap();
    assert!(vmas(space).contains(&(BASE, BASE + 8 * P, 3)));
    assert_eq!(summary(history).disagreement_count(), 1);
}

// ---------------------------------------------------------------------
// Property test against a page-by-page reference.

/// What the reference knows of one page: its protection and whether it is
/// present.
type RefPages = BTreeMap<u64, (u64, bool)>;

#[derive(Clone, Debug)]
enum Op {
    Mmap { at: u64, len: u64, prot: u64 },
    Munmap { at: u64, len: u64 },
    Mprotect { at: u64, len: u64, prot: u64 },
    Write { at: u64 },
    DontNeed { at: u64, len: u64 },
    Move { from: u64, len: u64, to: u64 },
    Fork,
}

/// A 96-page window of the address space, in pages.
const WINDOW: u64 = 96;

fn addr(page: u64) -> u64 {
    BASE + page * P
}

fn op() -> impl Strategy<Value = Op> {
    let prot = prop_oneof![Just(0u64), Just(1), Just(3)];
    prop_oneof![
        3 => (0..WINDOW - 8, 1u64..8, prot.clone()).prop_map(|(at, len, prot)| Op::Mmap { at, len, prot }),
        1 => (0..WINDOW - 8, 1u64..8).prop_map(|(at, len)| Op::Munmap { at, len }),
        2 => (0..WINDOW - 8, 1u64..8, prot).prop_map(|(at, len, prot)| Op::Mprotect { at, len, prot }),
        4 => (0..WINDOW).prop_map(|at| Op::Write { at }),
        1 => (0..WINDOW - 8, 1u64..8).prop_map(|(at, len)| Op::DontNeed { at, len }),
        1 => (0..WINDOW / 2 - 8, 1u64..8, 0..WINDOW / 2 - 8)
            .prop_map(|(from, len, to)| Op::Move { from, len, to: to + WINDOW / 2 }),
        1 => Just(Op::Fork),
    ]
}

fn present_in(reference: &RefPages, range: Range<u64>) -> u64 {
    range
        .filter(|p| reference.get(p).is_some_and(|&(_, present)| present))
        .count() as u64
}

/// Applies `op` to the reference as Linux would and returns the trace
/// event it corresponds to, with Linux's result.
fn reference_step(reference: &mut RefPages, op: &Op) -> Vec<EventKind> {
    let call = |call: Call, result: Outcome| EventKind::Call { call, result };
    match *op {
        Op::Mmap { at, len, prot } => {
            for p in at..at + len {
                reference.insert(p, (prot, false));
            }
            vec![call(
                Call::Mmap {
                    addr: addr(at),
                    len: len * P,
                    prot,
                    flags: 0x32,
                    file: None,
                    offset: 0,
                },
                Outcome::Returned(addr(at)),
            )]
        }
        Op::Munmap { at, len } => {
            for p in at..at + len {
                reference.remove(&p);
            }
            vec![call(
                Call::Munmap {
                    addr: addr(at),
                    len: len * P,
                },
                Outcome::Returned(0),
            )]
        }
        Op::Mprotect { at, len, prot } => {
            let mut result = Outcome::Returned(0);
            for p in at..at + len {
                match reference.get_mut(&p) {
                    Some(page) => page.0 = prot,
                    None => {
                        result = Outcome::Failed("ENOMEM".into());
                        break;
                    }
                }
            }
            vec![call(
                Call::Mprotect {
                    addr: addr(at),
                    len: len * P,
                    prot,
                },
                result,
            )]
        }
        Op::Write { at } => {
            if let Some(page) = reference.get_mut(&at) {
                if page.0 & 2 != 0 {
                    page.1 = true;
                }
            }
            vec![EventKind::Fault {
                addr: addr(at),
                pages: 1,
                access: lazymmu_sim::program_trace::record::Access::Write,
            }]
        }
        Op::DontNeed { at, len } => {
            let mut result = Outcome::Returned(0);
            for p in at..at + len {
                match reference.get_mut(&p) {
                    Some(page) => page.1 = false,
                    None => result = Outcome::Failed("ENOMEM".into()),
                }
            }
            vec![call(
                Call::Madvise {
                    addr: addr(at),
                    len: len * P,
                    advice: 4,
                },
                result,
            )]
        }
        Op::Move { from, len, to } => {
            let mremap = Call::Mremap {
                old_addr: addr(from),
                old_len: len * P,
                new_len: len * P,
                flags: 3,
                new_addr: addr(to),
            };
            if !reference.contains_key(&from) {
                return vec![call(mremap, Outcome::Failed("EFAULT".into()))];
            }
            for p in to..to + len {
                reference.remove(&p);
            }
            for p in from..from + len {
                if let Some(page) = reference.remove(&p) {
                    reference.insert(p - from + to, page);
                }
            }
            vec![call(mremap, Outcome::Returned(addr(to)))]
        }
        Op::Fork => vec![
            call(Call::Clone { flags: 0x11 }, Outcome::Returned(8)),
            EventKind::Exit(lazymmu_sim::program_trace::record::ExitStatus::Code(0)),
        ],
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(128))]

    /// After any sequence of calls and write faults, the history's
    /// address space holds exactly the reference's mapped pages with their
    /// protection and exactly its present pages; adjacent VMAs that could
    /// merge have merged; and each operation touches exactly the present
    /// pages Linux's path would.
    #[test]
    fn history_agrees_with_a_page_reference(ops in proptest::collection::vec(op(), 1..48)) {
        let mut history = History::default();
        let mut reference = RefPages::new();
        let mut time = 0;
        let mut line = 0;
        let mut apply = |history: &mut History, tid: u32, kind: EventKind| {
            time += 1;
            line += 1;
            history
                .apply(&Record::Event(Event { time_us: time, tid, kind }), line)
                .expect("no metadata")
                .expect("an event gives a step")
        };
        apply(&mut history, 7, EventKind::Call { call: Call::Execve { file: None }, result: Outcome::Returned(0) });
        for op in &ops {
            let before = reference.clone();
            let events = reference_step(&mut reference, op);
            let mut steps = Vec::new();
            for (i, event) in events.into_iter().enumerate() {
                let tid = if matches!(op, Op::Fork) && i == 1 { 8 } else { 7 };
                steps.push(apply(&mut history, tid, event));
            }
            for step in &steps {
                prop_assert!(step.disagreement.is_none(), "{:?}: {:?}", op, step.disagreement);
                prop_assert!(step.skipped.is_none(), "{:?}: {:?}", op, step.skipped);
            }
            let touched: u64 = steps[0].operations.iter().map(Operation::pages).sum();
            match *op {
                Op::Munmap { at, len } | Op::DontNeed { at, len } => {
                    prop_assert_eq!(touched, present_in(&before, at..at + len));
                }
                Op::Move { from, len, to } if before.contains_key(&from) => {
                    prop_assert_eq!(touched, present_in(&before, from..from + len) + present_in(&before, to..to + len));
                }
                Op::Fork => {
                    let all = present_in(&before, 0..WINDOW);
                    prop_assert_eq!(touched, all, "fork copies every written page");
                    let teardown: u64 = steps[1].operations.iter().map(Operation::pages).sum();
                    prop_assert_eq!(teardown, all, "the child's exit zaps what it got");
                }
                _ => {}
            }
            let space = history.address_space_of(7).expect("the process lives");
            let mut mapped = RefPages::new();
            for vma in space.vmas() {
                for p in (vma.start - BASE) / P..(vma.end - BASE) / P {
                    mapped.insert(p, (vma.flags.prot(), space.present().contains(addr(p))));
                }
            }
            prop_assert_eq!(&mapped, &reference, "after {:?}", op);
            prop_assert_eq!(space.present().pages(), present_in(&reference, 0..WINDOW));
            let list: Vec<_> = space.vmas().collect();
            for pair in list.windows(2) {
                prop_assert!(!mergeable(pair[0], pair[1]), "unmerged neighbours after {:?}: {:?}", op, pair);
                prop_assert!(pair[0].flags.has(VmFlags::MAYREAD));
            }
        }
    }
}

/// `MREMAP_DONTUNMAP` (`dontunmap_complete`): the pages move, the source
/// VMA stays mapped and empty.
#[test]
fn mremap_dontunmap_keeps_the_source_empty() {
    let (steps, history) = replay(&trace(&[
        "7 execve - = 0",
        "7 mmap 0 4000 3 22 - 0 = 7f0000000000",
        "7 fault 7f0000000000 4 w",
        "7 mremap 7f0000000000 4000 4000 5 0 = 7f0000100000",
    ]));
    assert_eq!(steps[3].operations.len(), 1, "{:?}", steps[3].operations);
    assert_eq!(pages(&steps[3].operations[0]), 4);
    let space = history.address_space_of(7).unwrap();
    assert_eq!(
        vmas(space),
        vec![
            (BASE, BASE + 4 * P, 3),
            (BASE + 0x10_0000, BASE + 0x10_4000, 3)
        ]
    );
    assert_eq!(space.present().pages_in(BASE..BASE + 4 * P), 0);
    assert_eq!(space.present().pages(), 4);
}
