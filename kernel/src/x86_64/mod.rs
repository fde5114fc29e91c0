//! The x86-64 kernel: the lazymmu library on QEMU's paging hardware, with
//! its page tables protected by PKS, on several CPUs, reporting on COM1.
//!
//! Boot: PVH entry ([`boot`]) → long mode on identity tables → per-CPU
//! data, IDT, PKS, frame pools → the library builds the kernel's real
//! tables (image, direct map) → local APIC, its timer calibrated against
//! PIT channel 2 → the other CPUs through INIT-SIPI-SIPI ([`smp`]) → the
//! one-CPU tests ([`tests`]) and measurements ([`bench`]) → the tests on
//! every CPU ([`smp_tests`]) and their measurements ([`smp_bench`]), the
//! `active_mm` ones once per lazy-TLB policy → `N passed, N failed` →
//! `isa-debug-exit`.
//!
//! The crate root re-exports these modules, so that they name each other
//! `crate::paging`, `crate::percpu` and so on.

pub(crate) mod acpi;
pub(crate) mod apic;
pub(crate) mod bench;
pub(crate) mod boot;
pub(crate) mod cpu;
pub(crate) mod env;
pub(crate) mod exit;
pub(crate) mod interrupts;
pub(crate) mod linux70;
pub(crate) mod memory;
pub(crate) mod mm;
pub(crate) mod paging;
pub(crate) mod percpu;
pub(crate) mod pks;
pub(crate) mod sched;
pub(crate) mod serial;
pub(crate) mod smp;
pub(crate) mod smp_backend;
pub(crate) mod smp_bench;
pub(crate) mod smp_tests;
pub(crate) mod tests;
pub(crate) mod xcall;

use core::panic::PanicInfo;

use crate::{console, print, println};

/// Timer frequency on every CPU: frequent enough that interrupts land
/// inside sections.
pub const TIMER_HZ: u32 = 1000;

extern "C" {
    static __kernel_end: u8;
}

/// Entered from the PVH boot code in long mode, on the boot stack, with the
/// physical address of `hvm_start_info`.
#[no_mangle]
extern "C" fn kernel_main(start_info: u64) -> ! {
    percpu::init(0);
    sched::init_boot();
    serial::init();
    println!("lazymmu kernel: booted (PVH start_info at {start_info:#x})");
    interrupts::init_idt();
    interrupts::init_this_cpu(0);
    if let Err(error) = setup(start_info) {
        println!("FATAL: {error}");
        println!("0 passed, 1 failed");
        exit::exit(exit::FAILURE);
    }
    let mut report = tests::run_all();
    bench::run(&mut report);
    smp_tests::run_all(&mut report);
    smp_bench::run_range_operations(&mut report);
    for world in 0..mm::WORLDS {
        if world > 0 {
            mm::activate_next_world();
        }
        smp_tests::run_active_mm(&mut report);
        smp_bench::run_context_switches(&mut report, world);
    }
    smp_bench::print_context_switches();
    smp_tests::run_accounting(&mut report);
    report.conclude()
}

fn setup(start_info: u64) -> Result<(), &'static str> {
    let kernel_end = &raw const __kernel_end as u64;
    let map = memory::MemoryMap::from_start_info(start_info, kernel_end)?;
    let cpus = acpi::cpus(acpi::rsdp_from_start_info(start_info))?;
    // Low memory is free once the PVH structures have been read.
    smp::install_trampoline();
    pks::enable()?;
    println!(
        "PKS: on (CR4.PKS), page tables carry key {}, IA32_PKRS default {:#x}",
        pks::PAGE_TABLE_KEY,
        pks::DEFAULT_PKRS
    );
    paging::init_backend();
    memory::init_pools(&map)?;
    paging::init(&map)?;
    let tables = memory::PAGE_TABLE_FRAMES.region();
    let data = paging::data_region();
    println!(
        "memory: page-table pool {:#x}..{:#x} ({} frames, {} used by the kernel's tables), data {:#x}..{:#x}",
        tables.start,
        tables.end,
        tables.frames(),
        memory::PAGE_TABLE_FRAMES.used(),
        data.start,
        data.end
    );
    println!(
        "paging: the library's tables are loaded (CR3 {:#x})",
        cpu::read_cr3()
    );
    apic::map()?;
    let boot_apic = apic::init_this_cpu()?;
    mm::init()?;
    mm::boot_cpu();
    sched::create_idle(0);
    interrupts::mask_pic();
    apic::calibrate(20);
    apic::start_timer(TIMER_HZ);
    cpu::enable_interrupts();
    percpu::set_online();
    let start = interrupts::ticks();
    while interrupts::ticks() < start + 2 {
        cpu::halt();
    }
    println!(
        "timer: local APIC at {TIMER_HZ} Hz on every CPU ({} counts/ms, TSC {} kHz, against PIT channel 2)",
        apic::timer_counts_per_ms(),
        apic::tsc_per_ms()
    );
    let online = smp::start_application_processors(&cpus)?;
    print!("smp: {online} CPUs online (xAPIC ids");
    for cpu in 0..online {
        print!(
            " {}",
            percpu::cpu(cpu)
                .apic_id
                .load(core::sync::atomic::Ordering::Acquire)
        );
    }
    println!(
        "; boot CPU {boot_apic}), INIT-SIPI-SIPI with the trampoline at {:#x}{}",
        smp::TRAMPOLINE,
        if cpus.ignored > 0 {
            ", more CPUs than the kernel supports left parked"
        } else {
            ""
        }
    );
    Ok(())
}

#[panic_handler]
fn panic(info: &PanicInfo<'_>) -> ! {
    cpu::disable_interrupts();
    console::print_fmt_dying(format_args!(
        "PANIC on CPU {}: {info}\n0 passed, 1 failed\n",
        percpu::cpu_index()
    ));
    exit::exit(exit::FAILURE)
}
