//! Starting the application processors: INIT-SIPI-SIPI through the local
//! APIC (Intel SDM Vol. 3A §9.4.4.1 "Typical BSP Initialization
//! Sequence"), broadcast to all CPUs but the boot CPU, with a trampoline at
//! physical 0x8000 (STARTUP vector 0x08).
//!
//! An application processor starts in real mode at 0x0800:0000. The
//! trampoline loads a GDT of its own, enters protected mode and jumps to
//! the boot code's `enter_long_mode` (crate::boot), which the boot CPU went
//! through too: PAE, CR3 with the boot identity tables (`boot_pml4`, below
//! 4 GiB as a 32-bit CR3 load requires), long mode, NX and paging, then
//! `ap_entry64` in 64-bit mode. There each processor takes an index with
//! one atomic add, switches to the stack of the idle task the boot CPU made
//! for that index, and calls [`ap_main`], which moves it onto the library's
//! page tables and brings it online.
//!
//! The processors all start at once; nothing in the trampoline touches
//! memory it writes, so they need no stack until they have an index.

use core::arch::global_asm;
use core::sync::atomic::{AtomicU32, AtomicU64, Ordering};

use lazymmu::addr::SpaceId;

use crate::percpu::{self, MAX_CPUS};
use crate::{acpi, apic, cpu, interrupts, mm, page_tables, pks, sched, TIMER_HZ};

/// Where the trampoline is copied (page 8: STARTUP vector 0x08).
pub const TRAMPOLINE: u64 = 0x8000;

/// The next index an application processor takes (the boot CPU is 0).
static AP_NEXT_INDEX: AtomicU32 = AtomicU32::new(1);
/// Per index: the stack top of its idle task (0: none, park).
static AP_STACK_TOPS: [AtomicU64; MAX_CPUS] = [const { AtomicU64::new(0) }; MAX_CPUS];

global_asm!(
    r#"
    .section .rodata.ap_trampoline, "a"
    .p2align 4
    .global ap_trampoline_start
ap_trampoline_start:
    .code16
    cli
    cld
    xor %ax, %ax
    mov %ax, %ds
    lgdtl ap_gdt_pointer_abs
    mov %cr0, %eax
    or $1, %eax                                   /* PE */
    mov %eax, %cr0
    ljmpl $0x08, $ap_protected_abs

    .code32
ap_protected:
    mov $0x10, %ax
    mov %ax, %ds
    mov %ax, %es
    mov %ax, %ss
    mov $ap_entry64, %esi
    mov $enter_long_mode, %eax
    jmp *%eax

    .p2align 3
ap_gdt:
    .quad 0
    .quad 0x00cf9a000000ffff                      /* 0x08: 32-bit code */
    .quad 0x00cf92000000ffff                      /* 0x10: data */
ap_gdt_end:
ap_gdt_pointer:
    .word ap_gdt_end - ap_gdt - 1
    .long ap_gdt_abs
    .global ap_trampoline_end
ap_trampoline_end:

    .set ap_gdt_pointer_abs, {base} + (ap_gdt_pointer - ap_trampoline_start)
    .set ap_protected_abs, {base} + (ap_protected - ap_trampoline_start)
    .set ap_gdt_abs, {base} + (ap_gdt - ap_trampoline_start)

    .section .text
    .code64
    .global ap_entry64
ap_entry64:
    mov $1, %eax
    lock xaddl %eax, {next}(%rip)
    cmp ${max}, %eax
    jae 2f
    lea {stacks}(%rip), %rdx
    mov (%rdx,%rax,8), %rsp
    test %rsp, %rsp
    jz 2f
    mov %eax, %edi
    call ap_main
2:  cli
    hlt
    jmp 2b
"#,
    base = const TRAMPOLINE,
    next = sym AP_NEXT_INDEX,
    max = const MAX_CPUS,
    stacks = sym AP_STACK_TOPS,
    options(att_syntax)
);

extern "C" {
    static ap_trampoline_start: u8;
    static ap_trampoline_end: u8;
}

/// Copies the trampoline to [`TRAMPOLINE`]. While the boot identity tables
/// are loaded (that page is not in the library's direct map), and after
/// the PVH structures in low memory have been read.
pub fn install_trampoline() {
    let start = &raw const ap_trampoline_start;
    let len = &raw const ap_trampoline_end as usize - start as usize;
    assert!(len <= 4096, "the trampoline exceeds its page");
    // SAFETY: physical 0x8000 is conventional memory below the kernel,
    // identity-mapped by the boot tables, used by nothing else once the
    // memory map and the start-info structure have been copied; the
    // source is the kernel's read-only trampoline image.
    unsafe { core::ptr::copy_nonoverlapping(start, TRAMPOLINE as *mut u8, len) };
}

/// Starts every CPU the MADT lists and waits for them to come online.
/// Returns the number of CPUs online.
///
/// # Errors
/// A message naming how many came up when some did not within 10 s.
pub fn start_application_processors(cpus: &acpi::Cpus) -> Result<usize, &'static str> {
    let expected = cpus.apic_ids().len();
    if expected == 1 {
        return Ok(1);
    }
    for (index, top) in AP_STACK_TOPS.iter().enumerate().take(expected).skip(1) {
        top.store(sched::create_idle(index), Ordering::Release);
    }
    apic::send_init_all_but_self();
    apic::delay_us(10_000);
    for _ in 0..2 {
        apic::send_startup_all_but_self((TRAMPOLINE >> 12) as u8);
        apic::delay_us(200);
    }
    let deadline = apic::deadline_ms(10_000);
    while percpu::online_count() < expected {
        if cpu::rdtsc() > deadline {
            return Err("not every CPU the MADT lists came online within 10 s");
        }
        cpu::halt();
    }
    Ok(expected)
}

/// An application processor, on its idle task's stack, still on the boot
/// identity tables.
#[no_mangle]
extern "C" fn ap_main(index: u32) -> ! {
    let index = index as usize;
    percpu::init(index);
    let root = page_tables::kernel_root();
    // SAFETY: the library's kernel tables map the kernel image (code, this
    // stack, data) at the same addresses as the boot tables do; global
    // pages are what the boot CPU runs with too.
    unsafe {
        cpu::write_cr3(root.0);
        cpu::write_cr4(cpu::read_cr4() | cpu::CR4_PGE);
    }
    percpu::record_cr3(root.0, SpaceId::KERNEL.0);
    pks::enable_this_cpu();
    interrupts::init_this_cpu(index);
    sched::init_this_cpu(index);
    if let Err(error) = apic::init_this_cpu() {
        panic!("CPU {index}: {error}");
    }
    mm::boot_cpu();
    apic::start_timer(TIMER_HZ);
    percpu::set_online();
    sched::idle_loop()
}
