//! The API as a program written from the public docs finds it: each test
//! is one way the library could be misused quietly, and checks that it
//! now refuses or does what the docs say.

use lazymmu::backend::arm64::Arm64;
use lazymmu::backend::recording::Recording;
use lazymmu::mode::eager::Eager;
use lazymmu::pgtable::allocator::HostFrameAllocator;
use lazymmu::pgtable::format::aarch64::ACCESS_FLAG;
use lazymmu::pgtable::format::Entry;
use lazymmu::prelude::*;

const BASE: PhysAddr = PhysAddr(0x10_0000);
const K4: u64 = 0x1000;
const M2: u64 = 0x20_0000;

/// Finding 1: an AArch64 tree knows which half its root serves, and an
/// address of the other half is a range error, not an entry written where
/// the other half's address would go.
#[test]
fn an_aarch64_tree_refuses_the_other_halfs_addresses() {
    let host = Host::<Aarch64>::new(BASE, 16);
    let user = host.new_tables(SpaceId(1), VaRange::Lower).unwrap();
    let kernel_va = VirtAddr(0xffff_0000_4000_0000);
    let result = user.map(
        kernel_va,
        PhysAddr(0x8000_0000),
        K4,
        Attributes::default(),
        PageSize::Size4K,
    );
    assert_eq!(
        result,
        Err(MapError::Range(RangeError::WrongHalf {
            va: kernel_va,
            range: VaRange::Lower
        }))
    );
    // Nothing was written: the lower half's address is still free.
    user.map(
        VirtAddr(0x4000_0000),
        PhysAddr(0x8000_0000),
        K4,
        Attributes::user_data(),
        PageSize::Size4K,
    )
    .unwrap();
    assert!(matches!(
        user.translate(kernel_va),
        Err(TranslateError::WrongHalf { .. })
    ));
    let mut gather = user.gather();
    assert!(matches!(
        user.zap(kernel_va, K4, &mut gather),
        Err(ZapError::Range(RangeError::WrongHalf { .. }))
    ));
    drop(gather);

    // The kernel's tree (TTBR1) refuses user addresses the same way, and
    // the format cannot have a tree of both halves.
    let kernel = host.new_tables(SpaceId::KERNEL, VaRange::Upper).unwrap();
    kernel
        .map(
            kernel_va,
            PhysAddr(0x8000_0000),
            K4,
            Attributes::default(),
            PageSize::Size4K,
        )
        .unwrap();
    assert!(matches!(
        kernel.map(
            VirtAddr(0x4000_0000),
            PhysAddr(0x8000_0000),
            K4,
            Attributes::default(),
            PageSize::Size4K
        ),
        Err(MapError::Range(RangeError::WrongHalf { .. }))
    ));
    let both = std::panic::catch_unwind(|| {
        let host = Host::<Aarch64>::new(BASE, 4);
        let _ = host.new_tables(SpaceId(2), VaRange::Both);
    });
    assert!(both.is_err(), "an AArch64 tree of both halves was made");
}

/// Finding 2: the backend's memory is the tables' memory by construction.
/// The `Arm64` doc example's pairing (recording primitives) used to write
/// entries into the recorder while the tables were zeroed and walked in
/// another memory: `map` succeeded and the walker saw nothing.
#[test]
fn the_backend_and_the_tables_share_one_memory() {
    let machine = Recording::new();
    let arm = Arm64::new(&machine);
    let frames = HostFrameAllocator::new(BASE, 16);
    // SAFETY: the recorder's store is the backend's memory; every frame of
    // the allocator is a page-table frame of it that nothing else uses.
    let mmu = unsafe { Mmu::new(&arm, &Eager, &frames, FlushScope::Local) };
    let tables = mmu.new_tables(SpaceId(1), VaRange::Lower).unwrap();
    tables
        .map(
            VirtAddr(0x4000_0000),
            PhysAddr(0x8000_0000),
            8 * K4,
            Attributes::user_data(),
            PageSize::Size4K,
        )
        .unwrap();
    let t = tables.translate(VirtAddr(0x4000_5008)).unwrap();
    assert_eq!(t.phys, PhysAddr(0x8000_5008));
    assert_eq!(tables.verify().unwrap().leaves, [8, 0, 0]);

    // 64 MiB of 4 KiB pages in host memory: what used to fill the
    // recorder's store.
    let host = Host::<Aarch64>::new(BASE, 64);
    let tables = host.new_tables(SpaceId(1), VaRange::Lower).unwrap();
    tables
        .map(
            VirtAddr(0x4000_0000),
            PhysAddr(0x8000_0000),
            64 << 20,
            Attributes::user_data(),
            PageSize::Size4K,
        )
        .unwrap();
    let last = VirtAddr(0x4000_0000 + (64 << 20) - K4);
    assert_eq!(
        tables.translate(last).unwrap().phys,
        PhysAddr(0x8000_0000 + (64 << 20) - K4)
    );
    assert_eq!(tables.verify().unwrap().leaves, [16384, 0, 0]);
}

/// Finding 3: `protect` changes permissions only, and a protection that
/// changes nothing touches nothing: no split, so no frame and no error.
#[test]
fn protect_changes_permissions_only_and_a_no_op_splits_nothing() {
    let host = Host::<X86_64>::new(BASE, 16);
    let tables = host.new_tables(SpaceId::KERNEL, VaRange::Both).unwrap();
    let va = VirtAddr(0xffff_8000_0000_0000);
    tables
        .map(
            va,
            PhysAddr(0x8000_0000),
            M2,
            Attributes::kernel_data(),
            PageSize::Size2M,
        )
        .unwrap();
    let mut gather = tables.gather();
    // Read-only, cutting the block: the kernel page stays a kernel page.
    tables
        .protect(va, K4, Protection::read_only(), &mut gather)
        .unwrap();
    drop(gather);
    let t = tables.translate(va).unwrap();
    assert_eq!(t.attrs, Attributes::kernel_data().read_only());
    assert!(!t.attrs.user && t.attrs.global);

    // A no-op on a block the range cuts: nothing changes, nothing splits,
    // even with no frame to split with.
    let block = VirtAddr(0xffff_8000_0020_0000);
    tables
        .map(
            block,
            PhysAddr(0x8020_0000),
            M2,
            Attributes::kernel_data(),
            PageSize::Size2M,
        )
        .unwrap();
    host.frames().fail_at(1);
    let flushes = host.flushes();
    let mut gather = tables.gather();
    let summary = tables
        .protect(
            block.add(K4),
            K4,
            Protection::writable().execute(false),
            &mut gather,
        )
        .unwrap();
    drop(gather);
    host.frames().fail_at(0);
    assert_eq!((summary.changed, summary.splits), ([0; 3], 0));
    assert_eq!(host.flushes(), flushes, "the no-op flushed nothing");
    assert_eq!(tables.translate(block).unwrap().size, PageSize::Size2M);
}

/// Finding 4: a tree owns its root. Dropping it frees every frame (after
/// the flush); `destroy` consumes it; a second owner of the same root
/// needs `unsafe` ([`Mmu::adopt`]), and a borrowed tree frees nothing.
#[test]
fn a_tree_owns_its_root_and_frees_it_once() {
    let host = Host::<X86_64_5Level>::new(BASE, 32);
    let tables = host.new_tables(SpaceId(1), VaRange::Both).unwrap();
    tables
        .map(
            VirtAddr(0x40_0000),
            PhysAddr(0x8000_0000),
            4 * K4,
            Attributes::user_data(),
            PageSize::Size4K,
        )
        .unwrap();
    assert_eq!(host.frames().outstanding(), 5);
    drop(tables);
    assert_eq!(host.frames().outstanding(), 0, "drop freed every table");
    assert!(host.flushes() > 0, "after flushing the leaves it unmapped");

    let tables = host.new_tables(SpaceId(1), VaRange::Both).unwrap();
    let root = tables.root();
    {
        // SAFETY: `tables` owns the root and outlives this borrow.
        let borrowed = unsafe { host.mmu().tables_at(root, SpaceId(1), VaRange::Both) };
        assert!(!borrowed.owns_root());
    }
    assert!(host.frames().is_allocated(root), "a borrow freed nothing");
    let root = tables.into_root();
    assert!(host.frames().is_allocated(root), "into_root freed nothing");
    // SAFETY: `into_root` gave up the only owner.
    let tables = unsafe { host.mmu().adopt(root, SpaceId(1), VaRange::Both) };
    let mut gather = tables.gather();
    tables.destroy(&mut gather).unwrap();
    drop(gather);
    assert_eq!(host.frames().outstanding(), 0);
}

/// Finding 5: allocator and memory come from one description of the
/// region, so running out of frames is an error, never a panic on a frame
/// the memory does not have.
#[test]
fn allocator_and_memory_are_one_region() {
    let host = Host::<X86_64>::new(BASE, 3);
    assert_eq!(host.memory().frames(), 3);
    let tables = host.new_tables(SpaceId(1), VaRange::Both).unwrap();
    let result = tables.map(
        VirtAddr(0x40_0000),
        PhysAddr(0x8000_0000),
        K4,
        Attributes::user_data(),
        PageSize::Size4K,
    );
    assert_eq!(
        result,
        Err(MapError::OutOfFrames {
            at: VirtAddr(0x40_0000),
            level: 1
        })
    );
    assert_eq!(host.frames().outstanding(), 3);
    tables.verify().unwrap();
}

/// Finding 6: every error type is a `core::error::Error` whose message
/// says which address and which level.
#[test]
fn every_error_says_what_address_and_level() {
    fn message(error: &dyn std::error::Error) -> String {
        error.to_string()
    }
    let va = VirtAddr(0x40_0000);
    let cases: Vec<(String, &[&str])> = vec![
        (
            message(&MapError::AlreadyMapped { at: va, level: 2 }),
            &["0x400000", "level-2"],
        ),
        (
            message(&MapError::OutOfFrames { at: va, level: 1 }),
            &["0x400000", "level-1"],
        ),
        (
            message(&ZapError::OutOfFrames { at: va, level: 1 }),
            &["0x400000", "level-1"],
        ),
        (
            message(&ProtectError::OutOfFrames { at: va, level: 2 }),
            &["0x400000", "level-2"],
        ),
        (
            message(&CopyError::ChildOccupied { at: va, level: 3 }),
            &["0x400000", "level-3"],
        ),
        (
            message(&MoveError::DestinationOccupied { at: va, level: 1 }),
            &["0x400000", "level-1"],
        ),
        (
            message(&ApplyError::<std::fmt::Error>::HugeMapping { at: va, level: 2 }),
            &["0x400000", "level-2"],
        ),
        (
            message(&TranslateError::NotMapped { va, level: 4 }),
            &["0x400000", "level-4"],
        ),
        (
            message(&RangeError::Misaligned { va, len: 0x10 }),
            &["0x400000", "0x10"],
        ),
        (
            message(&RangeError::WrongHalf {
                va,
                range: VaRange::Upper,
            }),
            &["0x400000", "upper half"],
        ),
        (
            message(&VerifyError::SharedTable {
                table: PhysAddr(0x10_3000),
                level: 2,
                va,
            }),
            &["0x103000", "level-2", "0x400000"],
        ),
        (message(&OutOfFrames), &["frame"]),
        (
            message(&lazymmu::mm::kernel_sync::SyncError::NotKernel(va)),
            &["0x400000"],
        ),
        (
            message(&lazymmu::mm::active_mm::MmError::SpaceFreed(SpaceId(3))),
            &["address space 3"],
        ),
        (
            message(&lazymmu::mm::pkey_window::WindowError::Underflow),
            &["without an open"],
        ),
    ];
    for (text, needles) in cases {
        for needle in needles {
            assert!(text.contains(needle), "{text:?} lacks {needle:?}");
        }
    }
    // The range error is the source of an operation's.
    let error = MapError::Range(RangeError::Misaligned { va, len: 1 });
    let source = std::error::Error::source(&error).unwrap();
    assert!(source.to_string().contains("not 4 KiB aligned"));
}

/// Finding 7: the default attributes are what a kernel maps most, with
/// the access flag set: an AArch64 leaf of them does not fault on its
/// first access.
#[test]
fn default_attributes_are_kernel_data_with_the_access_flag() {
    let attrs = Attributes::default();
    assert_eq!(attrs, Attributes::kernel_data());
    assert!(attrs.accessed && attrs.writable && !attrs.user && !attrs.executable);
    let raw = Aarch64::encode_leaf(PhysAddr(0x4000_0000), PageSize::Size4K, attrs);
    assert_ne!(raw & ACCESS_FLAG, 0);
    assert!(matches!(
        Aarch64::decode(raw, 1),
        Entry::Leaf { attrs: decoded, .. } if decoded.accessed
    ));
}

/// Finding 8: a first program needs one `use` and no test double, and
/// the consistency checker finds a table linked twice.
#[test]
fn a_first_program_needs_the_prelude_only() {
    let host = Host::<X86_64>::new(PhysAddr(0x10_0000), 64);
    let parent = host.new_tables(SpaceId(1), VaRange::Lower).unwrap();
    parent
        .map(
            VirtAddr(0x40_0000),
            PhysAddr(0x8000_0000),
            2 * M2,
            Attributes::user_data(),
            PageSize::Size2M,
        )
        .unwrap();
    let child = host.new_tables(SpaceId(2), VaRange::Lower).unwrap();
    let mut gather = parent.gather();
    parent
        .copy_to(
            &child,
            VirtAddr(0x40_0000),
            2 * M2,
            CopyKind::Private,
            &mut gather,
        )
        .unwrap();
    drop(gather);
    assert!(!child.translate(VirtAddr(0x40_0000)).unwrap().attrs.writable);
    assert_eq!(child.verify().unwrap().leaves, [0, 2, 0]);

    // Link the child's PMD table a second time: the checker sees it.
    let pml4 = child.root();
    let Entry::Table(pdpt) = X86_64::decode(host.memory().read(pml4), 4) else {
        panic!("no PDPT");
    };
    let raw = host.memory().read(pdpt);
    host.memory().write(pdpt.add(8), raw);
    assert!(matches!(
        child.verify(),
        Err(VerifyError::SharedTable { level: 3, .. })
    ));
    host.memory().write(pdpt.add(8), 0);
    child.verify().unwrap();
}
