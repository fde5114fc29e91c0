//! The arm64 kernel: the lazymmu library's AArch64 format and arm64 backend
//! on QEMU's virt machine (`-cpu max`, one CPU), reporting on the PL011.
//!
//! Boot: EL1 entry with the MMU off ([`boot`]) → first tables by hand, MMU
//! on, jump to the linked addresses → device tree ([`fdt`]): RAM and GIC →
//! frame pools ([`memory`]) → the library builds the kernel's tables
//! (TTBR1: image, direct map, devices) and loads them ([`paging`]) → GIC
//! and virtual timer ([`irq`]) → the tests ([`tests`]) and measurements
//! ([`bench`]) → `N passed, N failed` → semihosting exit ([`exit`]).
//!
//! The crate root re-exports these modules, so that they name each other
//! `crate::paging` and so on.

pub(crate) mod bbm;
pub(crate) mod bench;
pub(crate) mod boot;
pub(crate) mod cpu;
pub(crate) mod env;
pub(crate) mod exceptions;
pub(crate) mod exit;
pub(crate) mod fdt;
pub(crate) mod irq;
pub(crate) mod memory;
pub(crate) mod paging;
pub(crate) mod serial;
pub(crate) mod tests;

use core::panic::PanicInfo;
use core::sync::atomic::{AtomicBool, Ordering};

use crate::{console, println};

extern "C" {
    static __kernel_end: u8;
}

/// Timer interrupts per second: frequent enough that they land inside
/// sections.
pub const TIMER_HZ: u64 = 1000;

/// Entered from [`boot`] at the linked address, on the boot stack, with the
/// physical address of the device tree.
#[no_mangle]
extern "C" fn kernel_main(dtb: u64) -> ! {
    println!("lazymmu kernel: booted at EL1 (device tree at {dtb:#x})");
    if let Err(error) = setup(dtb) {
        println!("FATAL: {error}");
        println!("0 passed, 1 failed");
        exit::exit(exit::FAILURE);
    }
    let mut report = tests::run_all();
    bench::run(&mut report);
    report.run(
        "no misuse, no break-before-make violation, after the measurements",
        tests::accounting_test,
    );
    report.conclude()
}

fn setup(dtb: u64) -> Result<(), &'static str> {
    // SAFETY: the boot tables map the first gigabyte of RAM, where QEMU put
    // the device tree, at KERNEL_BASE + physical.
    let machine = unsafe { fdt::read(memory::KERNEL_BASE + dtb)? };
    println!(
        "device tree: {} bytes; RAM {:#x}..{:#x}, GIC{} at {:#x}/{:#x}",
        machine.total_size,
        machine.memory.base,
        machine.memory.base + machine.memory.size,
        if machine.gic_v3 { "v3" } else { "v2" },
        machine.gic[0].base,
        machine.gic[1].base
    );
    // The boot code set MAIR_EL1 by hand: it must be what the format's
    // attribute indices assume.
    let mair = cpu::read_sysreg!("mair_el1");
    if mair != lazymmu::pgtable::format::AARCH64_MAIR {
        return Err("MAIR_EL1 differs from the AArch64 format's attribute indices");
    }
    if machine.gic_v3 {
        return Err("the kernel drives a GICv2; start QEMU without gic-version=3");
    }
    let ram = memory::Region {
        start: machine.memory.base,
        end: machine.memory.base + machine.memory.size,
    };
    let kernel_end = memory::image_phys(&raw const __kernel_end as u64);
    let pools = memory::init_pools(ram, kernel_end)?;
    paging::init_backend();
    paging::init(ram, machine.gic)?;
    let tables = memory::PAGE_TABLE_FRAMES.region();
    let data = memory::DATA_FRAMES.region();
    println!(
        "memory: frames {:#x}..{:#x}: page-table pool {:#x}..{:#x} ({} frames, {} used by the kernel's tables), data {:#x}..{:#x}",
        pools.start,
        pools.end,
        tables.start,
        tables.end,
        tables.frames(),
        memory::PAGE_TABLE_FRAMES.used(),
        data.start,
        data.end
    );
    println!(
        "paging: the library's tables are loaded (TTBR1 {:#x}: image, direct map, devices; TTBR0 empty); range TLBI {}",
        cpu::read_ttbr1(),
        if paging::tlb_range() { "yes (FEAT_TLBIRANGE)" } else { "no" }
    );
    // ID_AA64MMFR3_EL1 (S3_0_C0_C7_3), S1POE in bits 19:16: FEAT_S1POE,
    // the permission overlays that protect page tables with POE.
    let s1poe = (cpu::read_sysreg!("s3_0_c0_c7_3") >> 16) & 0xf;
    println!(
        "cpu: ID_AA64MMFR3_EL1.S1POE = {s1poe} ({})",
        if s1poe == 0 {
            "no FEAT_S1POE: POE-protected page tables run in the simulator only"
        } else {
            "FEAT_S1POE present"
        }
    );
    irq::init_gic(machine.gic);
    irq::start_timer(TIMER_HZ);
    cpu::enable_interrupts();
    irq::wait_ticks(3);
    println!(
        "timer: EL1 virtual timer at {TIMER_HZ} Hz through the GICv2 (counter {} Hz)",
        cpu::counter_frequency()
    );
    Ok(())
}

static PANICKING: AtomicBool = AtomicBool::new(false);

#[panic_handler]
fn panic(info: &PanicInfo<'_>) -> ! {
    cpu::disable_interrupts();
    if PANICKING.swap(true, Ordering::Relaxed) {
        // A panic while ending the run: stop here.
        loop {
            cpu::wait_for_interrupt();
        }
    }
    console::print_fmt_dying(format_args!("PANIC: {info}\n0 passed, 1 failed\n"));
    exit::exit(exit::FAILURE)
}
