//! GDT, TSS, IDT, interrupt entry, the page-fault probe and the PIT timer.
//!
//! Every one of the 256 vectors runs on an IST stack (Intel SDM Vol. 3A
//! §7.14.5, "Interrupt Stack Table"): exceptions on one, device interrupts
//! on another, NMI/#DF/#MC on a third, so a fault taken inside the timer
//! handler does not overwrite the timer's frame. The entry stub saves every
//! general-purpose register and the SSE state (FXSAVE), and the dispatcher
//! loads the default IA32_PKRS on entry and restores the interrupted value
//! on return (the library's `Protected::exception_enter`/`exception_exit`,
//! through [`crate::paging::exception_enter`]).
//!
//! Each IST stack is reused by every interrupt of its class, so a page fault
//! inside the page-fault handler would overwrite the first one's frame; the
//! handler itself never faults, and the timer (IST 2) may take expected page
//! faults (IST 1).

use core::arch::{asm, global_asm};
use core::ptr::addr_of;

use crate::cpu::{self, outb};
use crate::local::Local;
use crate::{paging, println};

/// Registers saved by the entry stub, lowest address first.
#[repr(C)]
#[derive(Debug)]
pub struct InterruptFrame {
    /// General-purpose registers, in the order the stub pushed them.
    pub r15: u64,
    /// R14.
    pub r14: u64,
    /// R13.
    pub r13: u64,
    /// R12.
    pub r12: u64,
    /// R11.
    pub r11: u64,
    /// R10.
    pub r10: u64,
    /// R9.
    pub r9: u64,
    /// R8.
    pub r8: u64,
    /// RBP.
    pub rbp: u64,
    /// RDI.
    pub rdi: u64,
    /// RSI.
    pub rsi: u64,
    /// RDX.
    pub rdx: u64,
    /// RCX.
    pub rcx: u64,
    /// RBX.
    pub rbx: u64,
    /// RAX.
    pub rax: u64,
    /// Vector number pushed by the stub.
    pub vector: u64,
    /// Error code (pushed by the CPU, or 0 by the stub).
    pub error_code: u64,
    /// Interrupted RIP.
    pub rip: u64,
    /// Interrupted CS.
    pub cs: u64,
    /// Interrupted RFLAGS.
    pub rflags: u64,
    /// Interrupted RSP.
    pub rsp: u64,
    /// Interrupted SS.
    pub ss: u64,
}

/// Vector of the page fault.
pub const PAGE_FAULT: u64 = 14;
/// Vector the PIT (IRQ 0) is remapped to.
pub const TIMER_VECTOR: u64 = 32;
const PIC_BASE: u8 = 32;

// Page-fault error code bits (SDM Vol. 3A §5.7, "Page-Fault Exceptions").
/// The fault was a protection violation on a present page.
pub const PF_PRESENT: u64 = 1 << 0;
/// The access was a write.
pub const PF_WRITE: u64 = 1 << 1;
/// The fault was a protection-key violation.
pub const PF_PROTECTION_KEY: u64 = 1 << 5;

global_asm!(
    r#"
    .section .text
    .p2align 4
    .global interrupt_stubs
interrupt_stubs:
    .set vector, 0
    .rept 256
    .p2align 4
    .if (vector == 8) || (vector >= 10 && vector <= 14) || (vector == 17) || (vector == 21) || (vector == 29) || (vector == 30)
    .else
    pushq $0
    .endif
    pushq $vector
    jmp interrupt_common
    .set vector, vector + 1
    .endr

interrupt_common:
    push %rax
    push %rbx
    push %rcx
    push %rdx
    push %rsi
    push %rdi
    push %rbp
    push %r8
    push %r9
    push %r10
    push %r11
    push %r12
    push %r13
    push %r14
    push %r15
    mov %rsp, %rdi
    mov %rsp, %rbx
    and $-16, %rsp
    sub $512, %rsp
    fxsave64 (%rsp)
    call interrupt_dispatch
    fxrstor64 (%rsp)
    mov %rbx, %rsp
    pop %r15
    pop %r14
    pop %r13
    pop %r12
    pop %r11
    pop %r10
    pop %r9
    pop %r8
    pop %rbp
    pop %rdi
    pop %rsi
    pop %rdx
    pop %rcx
    pop %rbx
    pop %rax
    add $16, %rsp
    iretq

    /* Probes: one access the page-fault handler may resume after. */
    .global probe_read
probe_read:
    xor %edx, %edx
    .global probe_read_access
probe_read_access:
    mov (%rdi), %rax
    .global probe_read_resume
probe_read_resume:
    ret

    .global probe_write
probe_write:
    xor %edx, %edx
    .global probe_write_access
probe_write_access:
    mov %rsi, (%rdi)
    .global probe_write_resume
probe_write_resume:
    xor %eax, %eax
    ret
"#,
    options(att_syntax)
);

#[repr(C)]
struct ProbeResult {
    value: u64,
    /// `FAULTED | error code`, or 0.
    fault: u64,
}

const FAULTED: u64 = 1 << 63;

extern "C" {
    static interrupt_stubs: u8;
    fn probe_read(address: u64) -> ProbeResult;
    fn probe_write(address: u64, value: u64) -> ProbeResult;
    static probe_read_access: u8;
    static probe_read_resume: u8;
    static probe_write_access: u8;
    static probe_write_resume: u8;
}

/// A page fault caught by a probe.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PageFault {
    /// The faulting address (CR2).
    pub address: u64,
    /// The error code.
    pub error_code: u64,
}

static LAST_FAULT_ADDRESS: Local<u64> = Local::new(0);

/// Reads the 8 bytes at `address`, returning the page fault instead of the
/// value if the access faults.
pub fn read(address: u64) -> Result<u64, PageFault> {
    // SAFETY: the access is either allowed by the page tables (then it reads
    // 8 bytes the caller chose to inspect: the kernel never relies on them
    // not changing) or faults, and the fault handler resumes after it.
    let result = unsafe { probe_read(address) };
    probe_result(result)
}

/// Writes `value` to the 8 bytes at `address`, returning the page fault if
/// the access faults.
///
/// # Safety
/// If the write succeeds it changes memory: the caller must own it.
pub unsafe fn write(address: u64, value: u64) -> Result<(), PageFault> {
    // SAFETY: the caller owns the memory; a fault is resumed by the handler.
    let result = unsafe { probe_write(address, value) };
    probe_result(result).map(|_| ())
}

fn probe_result(result: ProbeResult) -> Result<u64, PageFault> {
    if result.fault & FAULTED != 0 {
        Err(PageFault {
            address: LAST_FAULT_ADDRESS.get(),
            error_code: result.fault & !FAULTED,
        })
    } else {
        Ok(result.value)
    }
}

// ---- descriptor tables ----

#[repr(C, packed(4))]
struct TaskStateSegment {
    reserved0: u32,
    privilege_stacks: [u64; 3],
    reserved1: u64,
    interrupt_stacks: [u64; 7],
    reserved2: u64,
    reserved3: u16,
    io_map_base: u16,
}

#[repr(C, align(16))]
struct Stack([u8; 32 * 1024]);

static mut EXCEPTION_STACK: Stack = Stack([0; 32 * 1024]);
static mut IRQ_STACK: Stack = Stack([0; 32 * 1024]);
static mut CRITICAL_STACK: Stack = Stack([0; 32 * 1024]);

/// IST indices (1-based, as the IDT encodes them).
const IST_EXCEPTION: u8 = 1;
const IST_IRQ: u8 = 2;
const IST_CRITICAL: u8 = 3;

static mut TSS: TaskStateSegment = TaskStateSegment {
    reserved0: 0,
    privilege_stacks: [0; 3],
    reserved1: 0,
    interrupt_stacks: [0; 7],
    reserved2: 0,
    reserved3: 0,
    io_map_base: size_of::<TaskStateSegment>() as u16,
};

static mut GDT: [u64; 5] = [
    0,
    0x00af_9a00_0000_ffff, // 0x08: 64-bit kernel code
    0x00cf_9200_0000_ffff, // 0x10: kernel data
    0,                     // 0x18: TSS (two slots)
    0,
];

#[repr(C)]
#[derive(Clone, Copy)]
struct IdtEntry {
    offset_low: u16,
    selector: u16,
    ist: u8,
    attributes: u8,
    offset_mid: u16,
    offset_high: u32,
    reserved: u32,
}

static mut IDT: [IdtEntry; 256] = [IdtEntry {
    offset_low: 0,
    selector: 0,
    ist: 0,
    attributes: 0,
    offset_mid: 0,
    offset_high: 0,
    reserved: 0,
}; 256];

#[repr(C, packed)]
struct DescriptorPointer {
    limit: u16,
    base: u64,
}

fn stack_top(stack: *const Stack) -> u64 {
    stack as u64 + size_of::<Stack>() as u64
}

/// Loads the GDT with a TSS carrying the IST stacks, and the IDT. Must run
/// once, before interrupts are enabled.
pub fn init() {
    // SAFETY: runs once on the boot CPU before any interrupt can arrive, so
    // nothing else accesses the tables while they are built; the tables are
    // statics and live forever, as the CPU requires.
    unsafe {
        let tss = &mut *core::ptr::addr_of_mut!(TSS);
        tss.interrupt_stacks[usize::from(IST_EXCEPTION - 1)] =
            stack_top(core::ptr::addr_of!(EXCEPTION_STACK));
        tss.interrupt_stacks[usize::from(IST_IRQ - 1)] = stack_top(core::ptr::addr_of!(IRQ_STACK));
        tss.interrupt_stacks[usize::from(IST_CRITICAL - 1)] =
            stack_top(core::ptr::addr_of!(CRITICAL_STACK));

        let base = core::ptr::addr_of!(TSS) as u64;
        let limit = (size_of::<TaskStateSegment>() - 1) as u64;
        let gdt = &mut *core::ptr::addr_of_mut!(GDT);
        // Available 64-bit TSS, present (SDM Vol. 3A §8.2.3, Figure 8-4).
        gdt[3] = (limit & 0xffff)
            | ((base & 0xff_ffff) << 16)
            | (0x89 << 40)
            | (((limit >> 16) & 0xf) << 48)
            | (((base >> 24) & 0xff) << 56);
        gdt[4] = base >> 32;
        let gdt_pointer = DescriptorPointer {
            limit: (size_of::<[u64; 5]>() - 1) as u16,
            base: gdt.as_ptr() as u64,
        };
        asm!(
            "lgdt [{pointer}]",
            "push 0x08",
            "lea {tmp}, [rip + 2f]",
            "push {tmp}",
            "retfq",
            "2:",
            "mov {tmp:e}, 0x10",
            "mov ds, {tmp:e}",
            "mov es, {tmp:e}",
            "mov ss, {tmp:e}",
            "mov {tmp:e}, 0x18",
            "ltr {tmp:x}",
            pointer = in(reg) &gdt_pointer,
            tmp = out(reg) _,
        );

        let stubs = addr_of!(interrupt_stubs) as u64;
        let idt = &mut *core::ptr::addr_of_mut!(IDT);
        for (vector, entry) in idt.iter_mut().enumerate() {
            let handler = stubs + 16 * vector as u64;
            let ist = match vector {
                2 | 8 | 18 => IST_CRITICAL,
                0..=31 => IST_EXCEPTION,
                _ => IST_IRQ,
            };
            *entry = IdtEntry {
                offset_low: handler as u16,
                selector: 0x08,
                ist,
                attributes: 0x8e, // present, DPL 0, 64-bit interrupt gate
                offset_mid: (handler >> 16) as u16,
                offset_high: (handler >> 32) as u32,
                reserved: 0,
            };
        }
        let idt_pointer = DescriptorPointer {
            limit: (size_of::<[IdtEntry; 256]>() - 1) as u16,
            base: idt.as_ptr() as u64,
        };
        asm!("lidt [{}]", in(reg) &idt_pointer, options(readonly, nostack));
    }
}

// ---- interrupt context and handlers ----

static IRQ_DEPTH: Local<u32> = Local::new(0);
static TICKS: Local<u64> = Local::new(0);
static TIMER_HOOK: Local<Option<fn()>> = Local::new(None);

/// Whether the CPU is running an interrupt or exception handler.
pub fn in_interrupt() -> bool {
    IRQ_DEPTH.get() > 0
}

/// Timer interrupts taken since boot.
pub fn ticks() -> u64 {
    TICKS.get()
}

/// Installs (or with `None` removes) a function the timer handler calls on
/// every tick, in interrupt context.
pub fn set_timer_hook(hook: Option<fn()>) {
    TIMER_HOOK.set(hook);
}

#[no_mangle]
extern "C" fn interrupt_dispatch(frame: &mut InterruptFrame) {
    // In interrupt context first, so the key-register writes of the entry
    // are counted as interrupt work.
    IRQ_DEPTH.set(IRQ_DEPTH.get() + 1);
    let key_frame = paging::exception_enter();
    match frame.vector {
        PAGE_FAULT => page_fault(frame),
        TIMER_VECTOR => {
            TICKS.increment();
            if let Some(hook) = TIMER_HOOK.get() {
                hook();
            }
            // SAFETY: end of interrupt to the master PIC, which we drive.
            unsafe { outb(0x20, 0x20) };
        }
        // Spurious IRQ 7 / 15 from the 8259: no EOI to the master.
        39 | 47 => {}
        _ => fatal(frame, "unexpected exception"),
    }
    paging::exception_exit(key_frame);
    IRQ_DEPTH.set(IRQ_DEPTH.get() - 1);
}

fn page_fault(frame: &mut InterruptFrame) {
    let address = cpu::read_cr2();
    let read_access = addr_of!(probe_read_access) as u64;
    let write_access = addr_of!(probe_write_access) as u64;
    if frame.rip == read_access || frame.rip == write_access {
        LAST_FAULT_ADDRESS.set(address);
        frame.rdx = FAULTED | frame.error_code;
        frame.rax = 0;
        frame.rip = if frame.rip == read_access {
            addr_of!(probe_read_resume) as u64
        } else {
            addr_of!(probe_write_resume) as u64
        };
        return;
    }
    println!("page fault at {address:#x}");
    fatal(frame, "unexpected page fault");
}

fn fatal(frame: &InterruptFrame, what: &str) -> ! {
    println!(
        "FATAL: {what}: vector {} error {:#x} rip {:#x} rsp {:#x} cr2 {:#x}",
        frame.vector,
        frame.error_code,
        frame.rip,
        frame.rsp,
        cpu::read_cr2()
    );
    crate::exit::exit(crate::exit::FAILURE)
}

/// Remaps the 8259 PICs to vectors 32–47, unmasks only IRQ 0 and programs
/// PIT channel 0 as a rate generator at `hz` (Intel 8254 datasheet; the
/// PIT input clock is 1.193182 MHz).
pub fn start_timer(hz: u32) {
    let divisor = (1_193_182 / hz).clamp(1, 0xffff) as u16;
    // SAFETY: the PICs and the PIT are the kernel's; the IDT has entries for
    // vectors 32–47 before this is called.
    unsafe {
        // ICW1..ICW4 for both PICs.
        outb(0x20, 0x11);
        outb(0xa0, 0x11);
        outb(0x21, PIC_BASE);
        outb(0xa1, PIC_BASE + 8);
        outb(0x21, 0x04);
        outb(0xa1, 0x02);
        outb(0x21, 0x01);
        outb(0xa1, 0x01);
        outb(0x21, 0xfe); // only IRQ 0
        outb(0xa1, 0xff);
        // Channel 0, lobyte/hibyte, mode 2.
        outb(0x43, 0x34);
        outb(0x40, divisor as u8);
        outb(0x40, (divisor >> 8) as u8);
    }
}
