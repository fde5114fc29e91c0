//! A bare-metal x86-64 kernel that runs the lazymmu library on QEMU's
//! paging hardware, with its page tables protected by PKS, and reports the
//! results of its tests and measurements on COM1.
#![no_std]
#![no_main]
#![deny(unsafe_op_in_unsafe_fn)]
#![deny(clippy::undocumented_unsafe_blocks)]
#![warn(missing_docs)]

mod boot;
mod cpu;
mod env;
mod exit;
mod interrupts;
mod local;
mod memory;
mod pks;
mod pks_tables;
mod serial;

use core::panic::PanicInfo;

/// Timer frequency: frequent enough that interrupts land inside sections.
const TIMER_HZ: u32 = 1000;

/// Entered from the PVH boot code in long mode, on the boot stack, with the
/// physical address of `hvm_start_info`.
#[no_mangle]
extern "C" fn kernel_main(start_info: u64) -> ! {
    serial::init();
    println!("lazymmu kernel: booted (PVH start_info at {start_info:#x})");
    interrupts::init();
    interrupts::start_timer(TIMER_HZ);
    cpu::enable_interrupts();
    let start = interrupts::ticks();
    while interrupts::ticks() < start + 3 {
        cpu::halt();
    }
    println!("timer: {} ticks", interrupts::ticks());
    println!("0 passed, 0 failed");
    exit::exit(exit::SUCCESS)
}

#[panic_handler]
fn panic(info: &PanicInfo<'_>) -> ! {
    cpu::disable_interrupts();
    println!("PANIC: {info}");
    exit::exit(exit::FAILURE)
}
