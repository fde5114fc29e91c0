//! Each backend's limits and hazards, at the simulator level: the library's
//! backends on the machine's primitives, counted by the machine.

use std::rc::Rc;

use lazymmu::addr::{PhysAddr, SpaceId, VirtAddr};
use lazymmu::backend::ppc_hash::PpcHash;
use lazymmu::backend::sparc64::Sparc64;
use lazymmu::backend::xen_pv::XenPv;
use lazymmu::backend::{EntryUpdate, PteAccess};
use lazymmu::cpu::CpuId;
use lazymmu::mode::counters::Counters;
use lazymmu::mode::{LazyMode, MisusePolicy};
use lazymmu_sim::cost::{Platform, Primitive};
use lazymmu_sim::invariant::Invariant;
use lazymmu_sim::machine::{HardwareModel, Machine, MachineConfig, SimCpu, SimEnv};
use lazymmu_sim::run::{hardware, run};
use lazymmu_sim::scenario::{BackendKind, ModeKind, RunConfig, WorkloadKind};

/// A machine with one task per space in `spaces`, each with one PTE table
/// frame (returned), on CPU 0 (the first one current).
fn machine(platform: Platform, hw: HardwareModel, spaces: &[u32]) -> (Rc<Machine>, Vec<PhysAddr>) {
    let mut cfg = MachineConfig::new(2, platform);
    cfg.hardware = hw;
    cfg.frames = 64;
    let m = Rc::new(Machine::new(cfg));
    let tables = spaces
        .iter()
        .map(|&s| {
            let t = m.memory().allocate_table(SpaceId(s), 0).unwrap();
            m.set_space_root(SpaceId(s), t);
            let task = m.add_task(&format!("t{s}"), SpaceId(s), CpuId(0), false);
            if m.current_task() == m.idle_task(CpuId(0)) {
                m.switch(CpuId(0), task);
            }
            t
        })
        .collect();
    (m, tables)
}

fn update(table: PhysAddr, space: u32, i: u64, value: u64) -> EntryUpdate {
    EntryUpdate {
        entry: table.add(8 * i),
        va: VirtAddr(0x40_0000 + i * 4096),
        space: SpaceId(space),
        level: 1,
        value,
        kernel: false,
        valid: value & 1 != 0,
        leaf: true,
    }
}

#[test]
fn xen_32nd_request_issues_the_buffer() {
    // `xen_extend_mmu_update` merges requests into one `mmu_update` entry
    // while the 512 bytes of MC_ARGS hold them (31); the 32nd flushes the
    // buffer, whose single entry goes as that hypercall alone.
    let (m, t) = machine(Platform::XenPv, hardware(BackendKind::XenPv), &[1]);
    let xen = XenPv::new(SimCpu::new(m.clone()));
    let mode = Counters::new(SimEnv::new(m.clone()), &xen, MisusePolicy::Count);
    let section = mode.section();
    for i in 0..31 {
        xen.write_entry(update(t[0], 1, i, (0x1000 * (i + 1)) | 1));
    }
    assert_eq!(
        m.counts().get(Primitive::Hypercall),
        0,
        "31 requests fit the buffer"
    );
    assert_eq!(
        m.memory().read(t[0]),
        0,
        "queued writes are not in memory yet"
    );
    xen.write_entry(update(t[0], 1, 31, 0x99_000 | 1));
    assert_eq!(
        m.counts().get(Primitive::Hypercall),
        1,
        "the 32nd flushes the full buffer"
    );
    assert_eq!(m.counts().get(Primitive::MulticallEntry), 0);
    assert_eq!(m.counts().get(Primitive::MmuUpdate), 31);
    assert_eq!(m.memory().read(t[0]), 0x1000 | 1);
    assert_eq!(
        m.memory().read(t[0].add(8 * 31)),
        0,
        "the 32nd waits in the next batch"
    );
    drop(section);
    assert_eq!(
        m.counts().get(Primitive::Hypercall),
        2,
        "leave issues the rest"
    );
    assert_eq!(m.memory().read(t[0].add(8 * 31)), 0x99_000 | 1);
    assert_eq!(m.violation_count(), 0);
}

/// Fills the table with valid, touched entries so that rewriting them
/// needs an invalidation: bit 63 is `_PAGE_PRESENT` of the book3s64 hash
/// PTE and `_PAGE_VALID` of the sparc64 TTE; bit 60 is powerpc's
/// `H_PAGE_HASHPTE` (a hash entry exists).
fn prefill(m: &Machine, table: PhysAddr, n: u64) {
    for i in 0..n {
        m.memory()
            .write(table.add(8 * i), (0x1000 * (i + 1)) | 1 << 63 | 1 << 60);
    }
}

#[test]
fn ppc_193rd_entry_flushes_the_batch() {
    let (m, t) = machine(Platform::PpcHash, HardwareModel::PLAIN, &[1]);
    prefill(&m, t[0], 193);
    let ppc = PpcHash::new(SimCpu::new(m.clone()));
    let mode = Counters::new(SimEnv::new(m.clone()), &ppc, MisusePolicy::Count);
    let section = mode.section();
    for i in 0..192 {
        ppc.write_entry(update(t[0], 1, i, 0));
    }
    assert_eq!(
        m.counts().get(Primitive::HashInvalidate),
        0,
        "192 fit the batch"
    );
    ppc.write_entry(update(t[0], 1, 192, 0));
    assert_eq!(
        m.counts().get(Primitive::HashInvalidate),
        192,
        "the 193rd flushes the full batch"
    );
    drop(section);
    assert_eq!(m.counts().get(Primitive::HashInvalidate), 193);
    assert_eq!(m.violation_count(), 0);
}

#[test]
fn sparc_193rd_entry_flushes_the_batch() {
    let (m, t) = machine(Platform::Sparc64, HardwareModel::PLAIN, &[1]);
    prefill(&m, t[0], 193);
    let sparc = Sparc64::new(SimCpu::new(m.clone()));
    let mode = Counters::new(SimEnv::new(m.clone()), &sparc, MisusePolicy::Count);
    let section = mode.section();
    for i in 0..192 {
        sparc.write_entry(update(t[0], 1, i, 0));
    }
    assert_eq!(m.counts().get(Primitive::Tlbi), 0, "192 fit the batch");
    sparc.write_entry(update(t[0], 1, 192, 0));
    // One CPU uses the space: one demap per address.
    assert_eq!(
        m.counts().get(Primitive::Tlbi),
        192,
        "the 193rd flushes the full batch"
    );
    drop(section);
    assert_eq!(m.counts().get(Primitive::Tlbi), 193);
}

#[test]
fn a_change_of_address_space_flushes_the_batch() {
    for backend in [BackendKind::PpcHash, BackendKind::Sparc64] {
        let (m, t) = machine(backend.platform(), HardwareModel::PLAIN, &[1, 2]);
        prefill(&m, t[0], 4);
        prefill(&m, t[1], 4);
        let counted = |m: &Machine| {
            m.counts().get(Primitive::HashInvalidate) + m.counts().get(Primitive::Tlbi)
        };
        let check = |write: &dyn Fn(EntryUpdate), enter: &dyn Fn() -> Box<dyn FnOnce()>| {
            let close = enter();
            m.set_task_writes_to(m.current_task(), Some(SpaceId(2)));
            for i in 0..3 {
                write(update(t[0], 1, i, 0));
            }
            assert_eq!(counted(&m), 0, "{backend}: same space, still batched");
            write(update(t[1], 2, 0, 0));
            assert_eq!(
                counted(&m),
                3,
                "{backend}: the other space's entry flushed the batch"
            );
            close();
        };
        match backend {
            BackendKind::PpcHash => {
                let b = PpcHash::new(SimCpu::new(m.clone()));
                let mode = Counters::new(SimEnv::new(m.clone()), &b, MisusePolicy::Count);
                check(&|u| b.write_entry(u), &|| {
                    mode.enable().unwrap();
                    Box::new(|| {
                        mode.disable(()).unwrap();
                    })
                });
            }
            _ => {
                let b = Sparc64::new(SimCpu::new(m.clone()));
                let mode = Counters::new(SimEnv::new(m.clone()), &b, MisusePolicy::Count);
                check(&|u| b.write_entry(u), &|| {
                    mode.enable().unwrap();
                    Box::new(|| {
                        mode.disable(()).unwrap();
                    })
                });
            }
        }
        if backend == BackendKind::PpcHash {
            assert_eq!(counted(&m), 4, "leave issued the other space's entry");
        }
    }
}

#[test]
fn kasan_read_back_hazard_is_reported_without_pause_and_not_with() {
    let mut cfg = RunConfig::new(BackendKind::XenPv, WorkloadKind::Kasan, ModeKind::Lazy);
    cfg.pages = 512;
    cfg.rates = None;
    let paused = run(&cfg);
    assert_eq!(
        paused.violation_count,
        0,
        "{:?}",
        paused.violations.first().map(|v| v.to_string())
    );
    cfg.read_back_without_pause = true;
    let hazard = run(&cfg);
    assert!(hazard.violation_count > 0);
    assert_eq!(
        hazard.violations[0].invariant,
        Invariant::StaleReadBack,
        "{}",
        hazard.violations[0]
    );
}

#[test]
fn protected_page_tables_fault_on_an_eager_path_that_forgot_to_open_the_register() {
    for backend in [BackendKind::X86Pks, BackendKind::Arm64Poe] {
        let mut cfg = RunConfig::new(backend, WorkloadKind::Munmap, ModeKind::Eager);
        cfg.pages = 512;
        cfg.rates = None;
        let good = run(&cfg);
        assert_eq!(
            good.violation_count,
            0,
            "{backend}: {:?}",
            good.violations.first().map(|v| v.to_string())
        );
        assert!(
            good.count(Primitive::KeyWrite) > 0,
            "{backend}: the eager path opens and closes the register"
        );
        cfg.forget_key_open = true;
        let bad = run(&cfg);
        assert!(bad.violation_count > 0, "{backend}");
        assert_eq!(
            bad.violations[0].invariant,
            Invariant::KeyFault,
            "{backend}: {}",
            bad.violations[0]
        );
    }
}

#[test]
fn lazy_sections_batch_where_the_backend_batches() {
    // The direction of docs/design.md §7: batching removes most hypercalls,
    // barriers, IPTEs and key writes. (sparc64 is not among them: a
    // single-threaded process's flushes cross-call nobody, batched or not,
    // `smp_flush_tlb_pending` cutting `mm_cpumask` to this CPU.)
    let cases = [
        (BackendKind::XenPv, WorkloadKind::Fork, Primitive::Hypercall),
        (BackendKind::Arm64, WorkloadKind::Vmalloc, Primitive::Dsb),
        (BackendKind::PpcHash, WorkloadKind::Munmap, Primitive::Dsb),
        (BackendKind::S390, WorkloadKind::Mprotect, Primitive::Ipte),
        (BackendKind::X86Pks, WorkloadKind::Fork, Primitive::KeyWrite),
        (
            BackendKind::Arm64Poe,
            WorkloadKind::Fork,
            Primitive::KeyWrite,
        ),
    ];
    for (backend, workload, primitive) in cases {
        let mut cfg = RunConfig::new(backend, workload, ModeKind::Eager);
        cfg.pages = 1024;
        let eager = run(&cfg);
        cfg.mode = ModeKind::Lazy;
        let lazy = run(&cfg);
        assert_eq!(
            eager.violation_count + lazy.violation_count,
            0,
            "{backend} {workload}"
        );
        assert!(
            lazy.count(primitive) * 2 < eager.count(primitive),
            "{backend} {workload}: {primitive:?} lazy {} eager {}",
            lazy.count(primitive),
            eager.count(primitive)
        );
        assert!(lazy.cycles < eager.cycles, "{backend} {workload}");
    }
}
