//! The reference model of the range operations: a sequence of map, zap,
//! protect, mremap, apply and fork on one tree of format `F`, compared
//! after each step with a `BTreeMap` of 4 KiB pages read back with the
//! hardware walker, and torn down at the end with every frame back. The
//! property tests (`pgtable_model`) and the range-operation fuzz target
//! (`fuzz/fuzz_targets/range_ops.rs`) generate the operations; this runs
//! them.

use lazymmu::addr::{PageSize, PhysAddr, SpaceId, VirtAddr};
use lazymmu::backend::FlushScope;
use lazymmu::mode::{counters::Counters, testing::TestEnv, LazyMode, MisusePolicy};
use lazymmu::pgtable::format::{Attributes, Entry, Format, Protection};
use lazymmu::pgtable::gather::Gather;
use lazymmu::pgtable::ops::{ApplyError, ApplyMode, CopyKind, MapError, Mmu, MoveError, VaRange};
use lazymmu::pgtable::walk::translate;

use super::{assert_no_leak, pages_of, Host, Pages};

/// The window the operations act on: 2048 pages (8 MiB) straddling a
/// 1 GiB boundary, so that operations cross PMD and PUD tables.
pub const WINDOW_PAGES: u64 = 2048;
pub const WINDOW_OFFSET: u64 = (1 << 30) - (4 << 20);
pub const PHYS_BASE: u64 = 0x1_0000_0000;
pub const APPLY_PHYS: u64 = 0x8_0000_0000;
pub const PARENT: SpaceId = SpaceId(1);
pub const CHILD: SpaceId = SpaceId(2);

/// One range operation on the window, in pages from its start.
#[derive(Clone, Debug)]
pub enum Op {
    Map {
        page: u64,
        pages: u64,
        phys_page: u64,
        attrs: Attributes,
        huge: bool,
    },
    Zap {
        page: u64,
        pages: u64,
    },
    Protect {
        page: u64,
        pages: u64,
        attrs: Attributes,
    },
    Move {
        from: u64,
        to: u64,
        pages: u64,
    },
    Apply {
        page: u64,
        pages: u64,
        create: bool,
    },
    Fork {
        page: u64,
        pages: u64,
        private: bool,
    },
}

/// Clips `[page, page + pages)` to the window.
pub fn clip(page: u64, pages: u64) -> u64 {
    pages.min(WINDOW_PAGES - page)
}

pub fn window_base<F: Format>(high: bool) -> u64 {
    match (high, F::SHARED_ROOT) {
        (false, _) => WINDOW_OFFSET,
        (true, true) => !((1u64 << (F::VA_BITS - 1)) - 1) + WINDOW_OFFSET,
        (true, false) => !((1u64 << F::VA_BITS) - 1) + WINDOW_OFFSET,
    }
}

/// Frames of host memory a run has: ample for two trees over the window.
/// Under Miri, which tracks every byte of it, 512.
const FRAMES: usize = if cfg!(miri) { 512 } else { 4096 };

pub fn run<F: Format>(ops: &[Op], high: bool) {
    let host = Host::new(FRAMES);
    let backend = host.backend::<F>(PARENT);
    let lazy = Counters::new(TestEnv::default(), &backend, MisusePolicy::Panic);
    // SAFETY: the host allocator hands out frames of the backend's host
    // memory, used by nothing else; `lazy` is over the backend.
    let mmu = unsafe { Mmu::new(&backend, &lazy, &host.frames, FlushScope::Local) };
    let tables = mmu
        .new_tables(PARENT, VaRange::for_format::<F>(high))
        .unwrap();
    let root = tables.root();
    let base = window_base::<F>(high);
    let at = |page: u64| base + page * 4096;
    let mut model = Pages::new();

    for op in ops {
        let mut gather = Gather::new(&backend, &host.frames, PARENT, FlushScope::Local);
        match *op {
            Op::Map {
                page,
                pages,
                phys_page,
                attrs,
                huge,
            } => {
                let pages = clip(page, pages);
                let start = at(page);
                let phys = PHYS_BASE + phys_page * 4096;
                let largest = if huge {
                    PageSize::Size2M
                } else {
                    PageSize::Size4K
                };
                let result = tables.map(
                    VirtAddr(start),
                    PhysAddr(phys),
                    pages * 4096,
                    attrs,
                    largest,
                );
                let occupied = (0..pages)
                    .map(|i| start + i * 4096)
                    .find(|va| model.contains_key(va));
                let end = occupied.unwrap_or(start + pages * 4096);
                for va in (start..end).step_by(4096) {
                    model.insert(va, (phys + (va - start), attrs));
                }
                match occupied {
                    Some(va) => {
                        assert!(
                            matches!(result, Err(MapError::AlreadyMapped { at, .. }) if at == VirtAddr(va)),
                            "{result:?}"
                        )
                    }
                    None => {
                        let summary = result.unwrap();
                        assert_eq!(
                            summary.leaves[0] + 512 * summary.leaves[1],
                            pages,
                            "every page mapped once"
                        );
                    }
                }
            }
            Op::Zap { page, pages } => {
                let pages = clip(page, pages);
                let start = at(page);
                tables
                    .zap(VirtAddr(start), pages * 4096, &mut gather)
                    .unwrap();
                for i in 0..pages {
                    model.remove(&(start + i * 4096));
                }
            }
            Op::Protect { page, pages, attrs } => {
                let pages = clip(page, pages);
                let start = at(page);
                // Which permissions change comes from the generated
                // attributes' own bits: dirty and accessed pick whether
                // user access and the key are set or kept.
                let protection = Protection {
                    writable: Some(attrs.writable),
                    executable: Some(attrs.executable),
                    user: attrs.dirty.then_some(attrs.user),
                    key: attrs.accessed.then_some(attrs.key),
                };
                tables
                    .protect(VirtAddr(start), pages * 4096, protection, &mut gather)
                    .unwrap();
                for i in 0..pages {
                    if let Some((_, a)) = model.get_mut(&(start + i * 4096)) {
                        *a = protection.apply(*a);
                    }
                }
            }
            Op::Move { from, to, pages } => {
                let pages = clip(from, pages).min(WINDOW_PAGES - to);
                let (src, dst) = (at(from), at(to));
                let result =
                    tables.move_range(VirtAddr(src), VirtAddr(dst), pages * 4096, &mut gather);
                if from < to + pages && to < from + pages {
                    assert_eq!(result, Err(MoveError::Overlap));
                    continue;
                }
                let mut expected = Ok(());
                for i in 0..pages {
                    let s = src + i * 4096;
                    let Some(&entry) = model.get(&s) else {
                        continue;
                    };
                    let d = dst + i * 4096;
                    if model.contains_key(&d) {
                        expected = Err(VirtAddr(s));
                        break;
                    }
                    model.remove(&s);
                    model.insert(d, entry);
                }
                let result = result.map(|_| ()).map_err(|error| match error {
                    MoveError::DestinationOccupied { at, .. } => at,
                    other => panic!("{other:?}"),
                });
                assert_eq!(result, expected);
            }
            Op::Apply {
                page,
                pages,
                create,
            } => {
                let pages = clip(page, pages);
                let start = at(page);
                // Where a huge leaf covers a page of the range, apply stops.
                let huge = (0..pages).map(|i| start + i * 4096).find(|&va| {
                    matches!(translate::<F, _>(&host.memory, root, VirtAddr(va)), Ok(t) if t.size != PageSize::Size4K)
                });
                let apply_attrs = Attributes::kernel_data();
                let mode = if create {
                    ApplyMode::Create
                } else {
                    ApplyMode::Existing
                };
                let result =
                    tables.apply(VirtAddr(start), pages * 4096, mode, &mut gather, |slot| {
                        match slot.get() {
                            Entry::Absent if create => {
                                let phys = APPLY_PHYS + (slot.va().0 & 0xFFFF_FFFF);
                                slot.set(PhysAddr(phys), apply_attrs);
                            }
                            Entry::Absent => {}
                            _ => {
                                slot.clear();
                            }
                        }
                        Ok::<(), ()>(())
                    });
                let end = huge.unwrap_or(start + pages * 4096);
                for va in (start..end).step_by(4096) {
                    if model.remove(&va).is_none() && create {
                        model.insert(va, (APPLY_PHYS + (va & 0xFFFF_FFFF), apply_attrs));
                    }
                }
                match huge {
                    Some(va) => {
                        assert!(
                            matches!(result, Err(ApplyError::HugeMapping { at, .. }) if at == VirtAddr(va)),
                            "{result:?}"
                        )
                    }
                    None => assert!(result.is_ok(), "{result:?}"),
                }
            }
            Op::Fork {
                page,
                pages,
                private,
            } => {
                let pages = clip(page, pages);
                let start = at(page);
                let child_tables = mmu
                    .new_tables(CHILD, VaRange::for_format::<F>(high))
                    .unwrap();
                let child = child_tables.root();
                let kind = if private {
                    CopyKind::Private
                } else {
                    CopyKind::Shared
                };
                tables
                    .copy_to(
                        &child_tables,
                        VirtAddr(start),
                        pages * 4096,
                        kind,
                        &mut gather,
                    )
                    .unwrap();
                let mut child_model = Pages::new();
                for i in 0..pages {
                    let va = start + i * 4096;
                    if let Some((phys, attrs)) = model.get_mut(&va) {
                        if private {
                            attrs.writable = false;
                        }
                        let mut child_attrs = *attrs;
                        child_attrs.accessed = false;
                        if !private {
                            child_attrs.dirty = false;
                        }
                        child_model.insert(va, (*phys, child_attrs));
                    }
                }
                assert_eq!(
                    pages_of::<F>(&host.memory, child, high),
                    child_model,
                    "child after {op:?}"
                );
                drop(gather);
                let mut child_gather =
                    Gather::new(&backend, &host.frames, CHILD, FlushScope::Local);
                child_tables.destroy(&mut child_gather).unwrap();
                drop(child_gather);
                assert_eq!(
                    pages_of::<F>(&host.memory, root, high),
                    model,
                    "parent after {op:?}"
                );
                continue;
            }
        }
        drop(gather);
        assert_eq!(
            pages_of::<F>(&host.memory, root, high),
            model,
            "after {op:?}"
        );
        assert_no_leak::<F>(&host, &[root]);
        let checked = tables.verify().unwrap();
        assert_eq!(
            checked.table_count() as usize,
            host.frames.outstanding(),
            "verify reaches every table"
        );
    }

    let mut gather = Gather::new(&backend, &host.frames, PARENT, FlushScope::Local);
    tables.destroy(&mut gather).unwrap();
    drop(gather);
    assert_eq!(host.frames.outstanding(), 0, "frames leaked after teardown");
    assert_eq!(lazy.state(), lazymmu::mode::LazyState::IDLE);
}
