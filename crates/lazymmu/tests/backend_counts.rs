//! Primitive counts of every backend for one PTE table rewritten eagerly
//! and inside one lazy section (512 entries replacing valid ones, as an
//! mprotect of 2 MiB does). Run with `--nocapture` to see the table.

use lazymmu::addr::{PhysAddr, SpaceId, VirtAddr};
use lazymmu::backend::arm64::Arm64;
use lazymmu::backend::machine::Primitive;
use lazymmu::backend::ppc_hash::PpcHash;
use lazymmu::backend::protected::{Arm64Poe, KeyFlavour, Pks, Poe, X86Pks};
use lazymmu::backend::recording::Recording;
use lazymmu::backend::s390::{IPTE_RANGE_MAX, S390};
use lazymmu::backend::sparc64::{Sparc64, TLB_BATCH_NR};
use lazymmu::backend::x86::X86Backend;
use lazymmu::backend::xen_pv::{XenPv, MMU_UPDATES_PER_ENTRY};
use lazymmu::backend::{Backend, EntryUpdate, PteAccess};
use lazymmu::mode::counters::Counters;
use lazymmu::mode::{LazyMode, MisusePolicy};
use lazymmu::pgtable::format::{Attributes, Format};

/// A whole table; under Miri, which runs this a thousand times slower, an
/// eighth of one (the counts scale with it).
const ENTRIES: u64 = if cfg!(miri) { 64 } else { 512 };
const TABLE: u64 = 0x60_0000;

/// Entry `index` of the table in `B`'s format: writable before, read-only
/// after the update.
fn leaf<B: Backend>(index: u64, kernel: bool, writable: bool) -> u64 {
    let attrs = if kernel {
        Attributes::kernel_data()
    } else {
        Attributes::user_data()
    };
    let attrs = Attributes { writable, ..attrs };
    B::Format::encode_leaf(
        PhysAddr(0x4000_0000 + (index << 12)),
        lazymmu::addr::PageSize::Size4K,
        attrs,
    )
}

fn update<B: Backend>(_backend: &B, index: u64, kernel: bool) -> EntryUpdate {
    EntryUpdate {
        entry: PhysAddr(TABLE + index * 8),
        va: VirtAddr(
            if kernel {
                0xffff_9000_0000_0000
            } else {
                0x7000_0000
            } + (index << 12),
        ),
        space: if kernel { SpaceId::KERNEL } else { SpaceId(1) },
        level: 1,
        value: leaf::<B>(index, kernel, false),
        kernel,
        valid: true,
        leaf: true,
    }
}

/// Fills the table with valid, writable entries in `B`'s format; on the
/// powerpc hash format each has a hash-table entry (`H_PAGE_HASHPTE`: the
/// pages were touched).
fn fill<B: Backend>(machine: &Recording, _backend: &B, kernel: bool) {
    let touched = if B::Format::NAME == lazymmu::pgtable::format::PpcHash4K::NAME {
        lazymmu::pgtable::format::ppc_hash::HASHPTE
    } else {
        0
    };
    for i in 0..ENTRIES {
        machine.set_memory(
            PhysAddr(TABLE + i * 8),
            leaf::<B>(i, kernel, true) | touched,
        );
    }
}

/// The key register's initial value and which values allow page-table
/// writes.
type Protection = Option<(u64, fn(u64) -> bool)>;

fn fresh(protect: Protection) -> Recording {
    let machine = Recording::new();
    if let Some((initial, allows)) = protect {
        machine.protect(initial, allows);
    }
    machine
}

/// Every primitive's count, then the number of primitive calls.
type Counts = [u64; Primitive::ALL.len() + 1];

fn counts(machine: &Recording) -> Counts {
    let mut counts = [0; Primitive::ALL.len() + 1];
    for p in Primitive::ALL {
        counts[p.index()] = machine.count(p);
    }
    counts[Primitive::ALL.len()] = machine.total_calls();
    counts
}

/// Rewrites the table on a fresh machine with the backend `$build` makes,
/// eagerly and then in one section; gives the name and both counts.
macro_rules! both {
    ($name:literal, $protect:expr, $kernel:expr, $build:expr) => {{
        // One frame per backend: the machines and backends are large and a
        // debug build would otherwise keep all of them on the stack at once.
        #[inline(never)]
        fn one_backend() -> (&'static str, Counts, Counts) {
            let mut result = (
                "",
                [0; Primitive::ALL.len() + 1],
                [0; Primitive::ALL.len() + 1],
            );
            for lazy in [false, true] {
                let machine = fresh($protect);
                let backend = $build(&machine);
                fill(&machine, &backend, $kernel);
                let mode = Counters::new(&machine, &backend, MisusePolicy::Panic);
                {
                    let _section = lazy.then(|| mode.section());
                    for i in 0..ENTRIES {
                        backend.write_entry(update(&backend, i, $kernel));
                    }
                }
                assert_eq!(machine.faults(), 0);
                result.0 = $name;
                if lazy {
                    result.2 = counts(&machine);
                } else {
                    result.1 = counts(&machine);
                }
            }
            result
        }
        one_backend()
    }};
}

fn get(counts: &Counts, p: Primitive) -> u64 {
    counts[p.index()]
}

#[test]
fn one_table_eager_versus_lazy() {
    let rows = [
        both!("x86", None, false, |m| X86Backend::new(m, m)),
        both!("xen-pv", None, false, XenPv::new),
        both!("arm64", None, true, Arm64::new),
        both!("ppc-hash", None, false, PpcHash::new),
        both!("sparc64", None, false, Sparc64::new),
        both!("s390", None, false, S390::new),
        both!(
            "x86-pks",
            Some((
                Pks::DEFAULT,
                Pks::allows_page_table_writes as fn(u64) -> bool
            )),
            true,
            |m| X86Pks::x86_pks(m, m, m)
        ),
        both!(
            "arm64-poe",
            Some((
                Poe::DEFAULT,
                Poe::allows_page_table_writes as fn(u64) -> bool
            )),
            true,
            |m| {
                Recording::key_write_needs_isb(m);
                Arm64Poe::arm64_poe(m)
            }
        ),
    ];

    println!("{ENTRIES} valid entries of one table rewritten (counts eager -> lazy)");
    for (name, eager, lazy) in &rows {
        let mut line = format!("{name:10}");
        for p in Primitive::ALL {
            let (e, l) = (get(eager, p), get(lazy, p));
            if e != 0 || l != 0 {
                line.push_str(&format!("  {p:?}: {e} -> {l}"));
            }
        }
        let calls = Primitive::ALL.len();
        line.push_str(&format!("  (calls: {} -> {})", eager[calls], lazy[calls]));
        println!("{line}");
    }

    let row = |name: &str| rows.iter().find(|r| r.0 == name).expect("backend row");
    let (_, e, l) = row("x86");
    assert_eq!(
        (get(e, Primitive::PteWrite), get(l, Primitive::PteWrite)),
        (ENTRIES, ENTRIES)
    );
    // Lazy: 31 requests merged per `mmu_update` (MC_ARGS), each buffer of
    // one entry issued as that call alone: 17 hypercalls for 512 entries.
    let (_, e, l) = row("xen-pv");
    assert_eq!(
        (get(e, Primitive::Hypercall), get(l, Primitive::Hypercall)),
        (ENTRIES, ENTRIES.div_ceil(MMU_UPDATES_PER_ENTRY as u64))
    );
    assert_eq!(get(l, Primitive::MmuUpdate), ENTRIES);
    assert_eq!(get(l, Primitive::MulticallEntry), 0);
    let (_, e, l) = row("arm64");
    assert_eq!(
        (get(e, Primitive::Dsb), get(l, Primitive::Dsb)),
        (ENTRIES, 1)
    );
    assert_eq!(
        (get(e, Primitive::Isb), get(l, Primitive::Isb)),
        (ENTRIES, 1)
    );
    let (_, e, l) = row("ppc-hash");
    assert_eq!(
        (
            get(e, Primitive::HashInvalidate),
            get(l, Primitive::HashInvalidate)
        ),
        (ENTRIES, ENTRIES)
    );
    // One cross-call round trip per flush: per page, or per batch of
    // TLB_BATCH_NR.
    let (_, e, l) = row("sparc64");
    assert_eq!(
        (get(e, Primitive::Ipi), get(l, Primitive::Ipi)),
        (ENTRIES, ENTRIES.div_ceil(TLB_BATCH_NR as u64))
    );
    // One ranged IPTE per run of at most 256 entries.
    let (_, e, l) = row("s390");
    assert_eq!(
        (get(e, Primitive::Ipte), get(l, Primitive::Ipte)),
        (ENTRIES, ENTRIES.div_ceil(IPTE_RANGE_MAX as u64))
    );
    let (_, e, l) = row("arm64-poe");
    // One isb per key write and one per barrier pair.
    assert_eq!(
        (get(e, Primitive::Isb), get(l, Primitive::Isb)),
        (2 * ENTRIES + ENTRIES, 2 + 1)
    );
    for name in ["x86-pks", "arm64-poe"] {
        let (_, e, l) = row(name);
        assert_eq!(
            (get(e, Primitive::KeyWrite), get(l, Primitive::KeyWrite)),
            (2 * ENTRIES, 2)
        );
    }
}
