//! A bare-metal x86-64 kernel that runs the lazymmu library on QEMU's
//! paging hardware, with its page tables protected by PKS, and reports the
//! results of its tests and measurements on COM1.
//!
//! Boot: PVH entry ([`boot`]) → long mode on identity tables → IDT, PKS,
//! frame pools → the library builds the kernel's real tables (image, direct
//! map) → timer → tests ([`tests`]) → measurements ([`bench`]) →
//! `N passed, N failed` → `isa-debug-exit`.
#![no_std]
#![no_main]
#![deny(unsafe_op_in_unsafe_fn)]
#![deny(clippy::undocumented_unsafe_blocks)]
#![warn(missing_docs)]
// Checks fail with a formatted message in a fixed stack buffer (there is no
// allocator); the size of that `Err` is irrelevant off the hot paths.
#![allow(clippy::result_large_err)]

mod bench;
mod boot;
mod check;
mod cpu;
mod env;
mod exit;
mod interrupts;
mod local;
mod memory;
mod paging;
mod pks;
mod serial;
mod tests;

use core::panic::PanicInfo;

/// Timer frequency: frequent enough that interrupts land inside sections.
const TIMER_HZ: u32 = 1000;

extern "C" {
    static __kernel_end: u8;
}

/// Entered from the PVH boot code in long mode, on the boot stack, with the
/// physical address of `hvm_start_info`.
#[no_mangle]
extern "C" fn kernel_main(start_info: u64) -> ! {
    serial::init();
    println!("lazymmu kernel: booted (PVH start_info at {start_info:#x})");
    interrupts::init();
    if let Err(error) = setup(start_info) {
        println!("FATAL: {error}");
        println!("0 passed, 1 failed");
        exit::exit(exit::FAILURE);
    }
    let mut report = tests::run_all();
    bench::run(&mut report);
    println!("{} passed, {} failed", report.passed, report.failed);
    exit::exit(if report.failed == 0 {
        exit::SUCCESS
    } else {
        exit::FAILURE
    })
}

fn setup(start_info: u64) -> Result<(), &'static str> {
    pks::enable()?;
    println!(
        "PKS: on (CR4.PKS), page tables carry key {}, IA32_PKRS default {:#x}",
        pks::PAGE_TABLE_KEY,
        pks::DEFAULT_PKRS
    );
    paging::init_backend();
    let kernel_end = &raw const __kernel_end as u64;
    let map = memory::MemoryMap::from_start_info(start_info, kernel_end)?;
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
    interrupts::start_timer(TIMER_HZ);
    cpu::enable_interrupts();
    let start = interrupts::ticks();
    while interrupts::ticks() < start + 2 {
        cpu::halt();
    }
    println!("timer: PIT at {TIMER_HZ} Hz, interrupts on IST stacks");
    Ok(())
}

#[panic_handler]
fn panic(info: &PanicInfo<'_>) -> ! {
    cpu::disable_interrupts();
    println!("PANIC: {info}");
    println!("0 passed, 1 failed");
    exit::exit(exit::FAILURE)
}
