//! Allocation-failure injection at every allocation point of every range
//! operation: the operation must stop with `OutOfFrames { at }`, the tables
//! must hold exactly the state "done before `at`, untouched from `at` on",
//! every allocated frame must be reachable (none leaked, none linked
//! twice), and tearing down must return every frame.

mod pgtable_support;

use lazymmu::addr::{PageSize, PhysAddr, SpaceId, VirtAddr};
use lazymmu::backend::x86::{RecordingPrimitives, X86Backend};
use lazymmu::backend::FlushScope;
use lazymmu::mode::{counters::Counters, testing::TestEnv, LazyMode, LazyState, MisusePolicy};
use lazymmu::pgtable::allocator::HostFrameAllocator;
use lazymmu::pgtable::format::Protection;
use lazymmu::pgtable::format::{Aarch64, Attributes, Entry, Format, X86_64};
use lazymmu::pgtable::gather::Gather;
use lazymmu::pgtable::memory::HostMemory;
use lazymmu::pgtable::ops::{
    ApplyError, ApplyMode, CopyError, CopyKind, MapError, Mmu, MoveError, PageTables, ProtectError,
    VaRange, ZapError,
};
use pgtable_support::{assert_no_leak, clip_runs, normalize, runs_of, Host, Native, Run as Span};

type Pages = Vec<Span>;

/// Flushes go to the native backend's TLB side, whatever the format.
type Flusher<'a> = X86Backend<&'a HostMemory, RecordingPrimitives>;
type Lazy<'a, F> = Counters<TestEnv, &'a Native<'a, F>>;
type Tables<'a, F> = PageTables<'a, Native<'a, F>, Lazy<'a, F>, HostFrameAllocator>;
type Gatherer<'a> = Gather<'a, Flusher<'a>, HostFrameAllocator>;

const SPACE: SpaceId = SpaceId(1);
const CHILD: SpaceId = SpaceId(2);
const G: u64 = 1 << 30;
const M2: u64 = 1 << 21;
const K4: u64 = 1 << 12;
/// A base that makes operations cross a 512 GiB (top-level) boundary.
const B: u64 = 512 * G;

/// What an operation returns to the runner: `Err(at)` for `OutOfFrames`.
type Outcome = Result<(), u64>;

struct Scenario<F: Format> {
    name: &'static str,
    setup: for<'a> fn(&Tables<'a, F>),
    op: for<'a, 'g> fn(&Tables<'a, F>, &Tables<'a, F>, &mut Gatherer<'g>) -> Outcome,
    /// The expected parent and child pages given the state before, the
    /// state after a successful run, and where the failed run stopped.
    expect: fn(&Pages, &Pages, &Pages, u64) -> (Pages, Pages),
}

struct Run {
    at: Option<u64>,
    parent: Pages,
    child: Pages,
    allocations: u64,
}

fn attrs() -> Attributes {
    Attributes::user_data()
}

/// Frames of host memory a run takes: the trees of every scenario need
/// fewer than 32; under Miri, whose cost grows with the host memory, 64.
const FRAMES: usize = if cfg!(miri) { 64 } else { 512 };

fn run<F: Format>(scenario: &Scenario<F>, fail_at: Option<u64>, skip_op: bool) -> Run {
    let host = Host::new(FRAMES);
    let backend = host.backend(SPACE);
    let lazy = Counters::new(TestEnv::default(), &backend, MisusePolicy::Panic);
    // SAFETY: the host allocator hands out frames of the backend's host
    // memory, used by nothing else; `lazy` is over the backend.
    let mmu = unsafe { Mmu::new(&backend, &lazy, &host.frames, FlushScope::Local) };
    let tables: Tables<'_, F> = mmu
        .new_tables(SPACE, VaRange::for_format::<F>(false))
        .unwrap();
    let root = tables.root();
    (scenario.setup)(&tables);
    let child_tables: Tables<'_, F> = mmu
        .new_tables(CHILD, VaRange::for_format::<F>(false))
        .unwrap();
    let child = child_tables.root();
    let before = host.frames.allocations();
    let mut at = None;
    if !skip_op {
        if let Some(n) = fail_at {
            host.frames.fail_at(n);
        }
        let mut gather = Gather::new(&backend.inner, &host.frames, SPACE, FlushScope::Local);
        at = (scenario.op)(&tables, &child_tables, &mut gather).err();
        drop(gather);
        host.frames.fail_at(0);
    }
    let allocations = host.frames.allocations() - before;
    assert_eq!(
        lazy.state(),
        LazyState::IDLE,
        "{}: a section was left open",
        scenario.name
    );
    assert_no_leak::<F>(&host, &[root, child]);
    let parent_pages = runs_of::<F>(&host.memory, root, false);
    let child_pages = runs_of::<F>(&host.memory, child, false);
    // Tear both trees down: every frame must come back.
    let mut gather = Gather::new(&backend.inner, &host.frames, SPACE, FlushScope::Local);
    tables.destroy(&mut gather).unwrap();
    drop(gather);
    let mut gather = Gather::new(&backend.inner, &host.frames, CHILD, FlushScope::Local);
    child_tables.destroy(&mut gather).unwrap();
    drop(gather);
    assert_eq!(
        host.frames.outstanding(),
        0,
        "{}: frames leaked",
        scenario.name
    );
    Run {
        at,
        parent: parent_pages,
        child: child_pages,
        allocations,
    }
}

/// Before `at` as after a successful run, from `at` on as before.
fn prefix(pre: &Pages, post: &Pages, at: u64) -> Pages {
    let mut out = clip_runs(post, 0, at);
    out.extend(clip_runs(pre, at, u64::MAX));
    normalize(out)
}

fn expect_prefix(pre: &Pages, post: &Pages, post_child: &Pages, at: u64) -> (Pages, Pages) {
    (
        prefix(pre, post, at),
        normalize(clip_runs(post_child, 0, at)),
    )
}

fn check<F: Format>(scenario: Scenario<F>) {
    let pre = run(&scenario, None, true);
    let post = run(&scenario, None, false);
    assert_eq!(post.at, None, "{}: fails without injection", scenario.name);
    assert!(
        post.allocations > 0,
        "{}: the operation allocates nothing, nothing to inject",
        scenario.name
    );
    for n in injection_points(post.allocations) {
        let failed = run(&scenario, Some(n), false);
        let at = failed
            .at
            .unwrap_or_else(|| panic!("{}: allocation {n} failed silently", scenario.name));
        let (parent, child) = (scenario.expect)(&pre.parent, &post.parent, &post.child, at);
        assert_eq!(
            failed.parent, parent,
            "{}: parent after failing allocation {n} (at {at:#x})",
            scenario.name
        );
        assert_eq!(
            failed.child, child,
            "{}: child after failing allocation {n} (at {at:#x})",
            scenario.name
        );
    }
}

/// The allocations to fail, of `total`: every one; under Miri, which
/// runs each a thousand times slower, the first, one in the middle and
/// the last (the first fails before anything is linked, the last after
/// everything else is).
fn injection_points(total: u64) -> Vec<u64> {
    if cfg!(miri) {
        let mut points = vec![1, total.div_ceil(2), total];
        points.dedup();
        points
    } else {
        (1..=total).collect()
    }
}

// ---- scenarios ----

fn nothing<F: Format>(_: &Tables<'_, F>) {}

/// A 1 GiB block, 2 MiB blocks and 4 KiB runs around the 512 GiB boundary.
fn mixed<F: Format>(t: &Tables<'_, F>) {
    let huge = PageSize::Size1G;
    t.map(VirtAddr(B - G), PhysAddr(4 * G), G, attrs(), huge)
        .unwrap();
    t.map(VirtAddr(B), PhysAddr(8 * G), 4 * M2, attrs(), huge)
        .unwrap();
    t.map(
        VirtAddr(B + 4 * M2 + 3 * K4),
        PhysAddr(9 * G),
        700 * K4,
        attrs(),
        huge,
    )
    .unwrap();
}

fn map_op<F: Format>(t: &Tables<'_, F>, _: &Tables<'_, F>, _: &mut Gatherer<'_>) -> Outcome {
    let start = B - G - 2 * M2 - 3 * K4;
    let len = 2 * G + 4 * M2 + 9 * K4;
    match t.map(
        VirtAddr(start),
        PhysAddr(16 * G - 2 * M2 - 3 * K4),
        len,
        attrs(),
        PageSize::Size1G,
    ) {
        Ok(_) => Ok(()),
        Err(MapError::OutOfFrames { at, .. }) => Err(at.0),
        Err(e) => panic!("{e:?}"),
    }
}

/// Cuts the 1 GiB block (two splits) and a 2 MiB block.
fn zap_op<F: Format>(t: &Tables<'_, F>, _: &Tables<'_, F>, g: &mut Gatherer<'_>) -> Outcome {
    match t.zap(
        VirtAddr(B - G + 3 * M2 + 5 * K4),
        G - 3 * M2 + M2 + 7 * K4,
        g,
    ) {
        Ok(_) => Ok(()),
        Err(ZapError::OutOfFrames { at, .. }) => Err(at.0),
        Err(e) => panic!("{e:?}"),
    }
}

fn protect_op<F: Format>(t: &Tables<'_, F>, _: &Tables<'_, F>, g: &mut Gatherer<'_>) -> Outcome {
    match t.protect(
        VirtAddr(B - G + 3 * M2 + 5 * K4),
        G - 3 * M2 + M2 + 7 * K4,
        Protection::read_only(),
        g,
    ) {
        Ok(_) => Ok(()),
        Err(ProtectError::OutOfFrames { at, .. }) => Err(at.0),
        Err(e) => panic!("{e:?}"),
    }
}

/// Fork of a range that cuts the 1 GiB block and ends inside a 4K run.
fn copy_op<F: Format>(t: &Tables<'_, F>, child: &Tables<'_, F>, g: &mut Gatherer<'_>) -> Outcome {
    let start = B - G + 5 * M2 + 3 * K4;
    let end = B + 4 * M2 + 300 * K4;
    match t.copy_to(child, VirtAddr(start), end - start, CopyKind::Private, g) {
        Ok(_) => Ok(()),
        Err(CopyError::OutOfFrames { at, .. }) => Err(at.0),
        Err(e) => panic!("{e:?}"),
    }
}

/// The region after the block, to a destination 4 KiB off the 2 MiB grid
/// in another 512 GiB region (new tables at every level; blocks split).
const MOVE_FROM: u64 = B;
const MOVE_LEN: u64 = 4 * M2 + 800 * K4;
const MOVE_TO: u64 = 3 * B + 5 * K4;

fn move_op<F: Format>(t: &Tables<'_, F>, _: &Tables<'_, F>, g: &mut Gatherer<'_>) -> Outcome {
    match t.move_range(VirtAddr(MOVE_FROM), VirtAddr(MOVE_TO), MOVE_LEN, g) {
        Ok(_) => Ok(()),
        Err(MoveError::OutOfFrames { at, .. }) => Err(at.0),
        Err(e) => panic!("{e:?}"),
    }
}

fn expect_move(pre: &Pages, _: &Pages, _: &Pages, at: u64) -> (Pages, Pages) {
    let mut out = clip_runs(pre, 0, MOVE_FROM);
    out.extend(clip_runs(pre, at, u64::MAX));
    out.extend(
        clip_runs(pre, MOVE_FROM, at)
            .into_iter()
            .map(|(va, len, phys, attrs)| (va - MOVE_FROM + MOVE_TO, len, phys, attrs)),
    );
    (normalize(out), Pages::new())
}

fn apply_op<F: Format>(t: &Tables<'_, F>, _: &Tables<'_, F>, g: &mut Gatherer<'_>) -> Outcome {
    let start = 2 * B - 3 * M2 - 5 * K4;
    let result = t.apply(VirtAddr(start), 6 * M2, ApplyMode::Create, g, |slot| {
        if slot.get() == Entry::Absent {
            slot.set(PhysAddr(slot.va().0), Attributes::kernel_data());
        }
        Ok::<(), ()>(())
    });
    match result {
        Ok(_) => Ok(()),
        Err(ApplyError::OutOfFrames { at, .. }) => Err(at.0),
        Err(e) => panic!("{e:?}"),
    }
}

fn every_operation<F: Format>() {
    check::<F>(Scenario {
        name: "map",
        setup: nothing::<F>,
        op: map_op::<F>,
        expect: expect_prefix,
    });
    check::<F>(Scenario {
        name: "map over existing tables",
        setup: mixed::<F>,
        op: apply_then_map::<F>,
        expect: expect_prefix,
    });
    check::<F>(Scenario {
        name: "zap",
        setup: mixed::<F>,
        op: zap_op::<F>,
        expect: expect_prefix,
    });
    check::<F>(Scenario {
        name: "protect",
        setup: mixed::<F>,
        op: protect_op::<F>,
        expect: expect_prefix,
    });
    check::<F>(Scenario {
        name: "copy",
        setup: mixed::<F>,
        op: copy_op::<F>,
        expect: expect_prefix,
    });
    check::<F>(Scenario {
        name: "move",
        setup: mixed::<F>,
        op: move_op::<F>,
        expect: expect_move,
    });
    check::<F>(Scenario {
        name: "apply",
        setup: mixed::<F>,
        op: apply_op::<F>,
        expect: expect_prefix,
    });
}

/// Maps into a region where some tables exist and some do not.
fn apply_then_map<F: Format>(
    t: &Tables<'_, F>,
    _: &Tables<'_, F>,
    _: &mut Gatherer<'_>,
) -> Outcome {
    let start = B + 4 * M2 + 703 * K4;
    match t.map(
        VirtAddr(start),
        PhysAddr(32 * G + start % G),
        G + 3 * M2,
        attrs(),
        PageSize::Size2M,
    ) {
        Ok(_) => Ok(()),
        Err(MapError::OutOfFrames { at, .. }) => Err(at.0),
        Err(e) => panic!("{e:?}"),
    }
}

#[test]
fn x86_64_every_allocation_point_of_every_operation() {
    every_operation::<X86_64>();
}

#[test]
fn aarch64_every_allocation_point_of_every_operation() {
    every_operation::<Aarch64>();
}
