//! GDT, TSS, IDT, interrupt entry, the page-fault probe and the timers.
//!
//! Interrupts and exceptions run on the stack of whatever they interrupt,
//! so that the timer can switch tasks from inside its handler (the frame
//! stays on the preempted task's stack until it runs again); only NMI,
//! #DF and #MC get an IST stack of their own (Intel SDM Vol. 3A §7.14.5,
//! "Interrupt Stack Table"), one per CPU. The entry stub saves every
//! general-purpose register and the SSE state (FXSAVE), and the dispatcher
//! loads the default IA32_PKRS on entry and restores the interrupted value
//! on return (the library's `Protected::exception_enter`/`exception_exit`,
//! through [`crate::paging::exception_enter`]). Every CPU has its own GDT
//! and TSS; the IDT is shared.
//!
//! The 8259s are remapped and masked; every CPU runs its own local APIC
//! timer.

use core::arch::{asm, global_asm};
use core::ptr::addr_of;

use core::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

use crate::cpu::{self, outb};
use crate::percpu::{self, MAX_CPUS};
use crate::{apic, paging, sched, xcall};

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
/// Where the 8259s' vectors are remapped (away from the exceptions).
const PIC_BASE: u8 = 32;
/// RFLAGS.IF.
const RFLAGS_IF: u64 = 1 << 9;

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

    /* Probes: one access the page-fault handler may resume after. The
       handler puts FAULTED | error code in %rdx and CR2 in %rcx; the
       resume code stores CR2 through the out pointer. */
    .global probe_read
probe_read:
    xor %edx, %edx
    .global probe_read_access
probe_read_access:
    mov (%rdi), %rax
    .global probe_read_resume
probe_read_resume:
    test %rdx, %rdx
    jz 1f
    mov %rcx, (%rsi)
1:  ret

    .global probe_write
probe_write:
    mov %rdx, %r8
    xor %edx, %edx
    .global probe_write_access
probe_write_access:
    mov %rsi, (%rdi)
    .global probe_write_resume
probe_write_resume:
    test %rdx, %rdx
    jz 1f
    mov %rcx, (%r8)
1:  xor %eax, %eax
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
    fn probe_read(address: u64, fault_address: *mut u64) -> ProbeResult;
    fn probe_write(address: u64, value: u64, fault_address: *mut u64) -> ProbeResult;
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

/// Reads the 8 bytes at `address`, returning the page fault instead of the
/// value if the access faults.
pub fn read(address: u64) -> Result<u64, PageFault> {
    let mut fault_address = 0;
    // SAFETY: the access is either allowed by the page tables (then it reads
    // 8 bytes the caller chose to inspect: the kernel never relies on them
    // not changing) or faults, and the fault handler resumes after it; the
    // out pointer is a live local.
    let result = unsafe { probe_read(address, &mut fault_address) };
    probe_result(result, fault_address)
}

/// Writes `value` to the 8 bytes at `address`, returning the page fault if
/// the access faults.
///
/// # Safety
/// If the write succeeds it changes memory: the caller must own it.
pub unsafe fn write(address: u64, value: u64) -> Result<(), PageFault> {
    let mut fault_address = 0;
    // SAFETY: the caller owns the memory; a fault is resumed by the handler;
    // the out pointer is a live local.
    let result = unsafe { probe_write(address, value, &mut fault_address) };
    probe_result(result, fault_address).map(|_| ())
}

fn probe_result(result: ProbeResult, fault_address: u64) -> Result<u64, PageFault> {
    if result.fault & FAULTED != 0 {
        Err(PageFault {
            address: fault_address,
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
struct Stack([u8; 16 * 1024]);

/// One IST stack per CPU for NMI, #DF and #MC.
static mut CRITICAL_STACKS: [Stack; MAX_CPUS] = [const { Stack([0; 16 * 1024]) }; MAX_CPUS];

/// IST index (1-based, as the IDT encodes it).
const IST_CRITICAL: u8 = 1;

static mut TSS: [TaskStateSegment; MAX_CPUS] = [const {
    TaskStateSegment {
        reserved0: 0,
        privilege_stacks: [0; 3],
        reserved1: 0,
        interrupt_stacks: [0; 7],
        reserved2: 0,
        reserved3: 0,
        io_map_base: size_of::<TaskStateSegment>() as u16,
    }
}; MAX_CPUS];

static mut GDT: [[u64; 5]; MAX_CPUS] = [[
    0,
    0x00af_9a00_0000_ffff, // 0x08: 64-bit kernel code
    0x00cf_9200_0000_ffff, // 0x10: kernel data
    0,                     // 0x18: TSS (two slots)
    0,
]; MAX_CPUS];

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

/// Fills the shared IDT. Once, on the boot CPU, before [`init_this_cpu`].
pub fn init_idt() {
    // SAFETY: runs once on the boot CPU before any other CPU is started and
    // before interrupts are enabled, so nothing reads the IDT meanwhile.
    unsafe {
        let stubs = addr_of!(interrupt_stubs) as u64;
        let idt = &mut *core::ptr::addr_of_mut!(IDT);
        for (vector, entry) in idt.iter_mut().enumerate() {
            let handler = stubs + 16 * vector as u64;
            let ist = match vector {
                2 | 8 | 18 => IST_CRITICAL,
                _ => 0,
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
    }
}

/// Loads CPU `index`'s GDT (with its TSS and IST stack) and the IDT. Runs
/// once per CPU, on that CPU, before it enables interrupts.
pub fn init_this_cpu(index: usize) {
    // SAFETY: CPU `index`'s GDT, TSS and stack are touched only here, by
    // that CPU, once; the tables are statics and live forever, as the CPU
    // requires. The IDT was filled before any CPU loads it.
    unsafe {
        let tss = &mut (*core::ptr::addr_of_mut!(TSS))[index];
        tss.interrupt_stacks[usize::from(IST_CRITICAL - 1)] =
            stack_top(&(*core::ptr::addr_of!(CRITICAL_STACKS))[index]);

        let base = tss as *const TaskStateSegment as u64;
        let limit = (size_of::<TaskStateSegment>() - 1) as u64;
        let gdt = &mut (*core::ptr::addr_of_mut!(GDT))[index];
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
        let idt = &*core::ptr::addr_of!(IDT);
        let idt_pointer = DescriptorPointer {
            limit: (size_of::<[IdtEntry; 256]>() - 1) as u16,
            base: idt.as_ptr() as u64,
        };
        asm!("lidt [{}]", in(reg) &idt_pointer, options(readonly, nostack));
    }
}

fn stack_top(stack: *const Stack) -> u64 {
    stack as u64 + size_of::<Stack>() as u64
}

// ---- interrupt context and handlers ----

/// Timer ticks since boot: the boot CPU's (Linux's `jiffies`, advanced by
/// one CPU).
static TICKS: AtomicU64 = AtomicU64::new(0);
/// A function per CPU that its timer handler calls on every tick (0: none).
static TIMER_HOOKS: [AtomicUsize; MAX_CPUS] = [const { AtomicUsize::new(0) }; MAX_CPUS];

/// Whether the executing CPU is running an interrupt or exception handler.
pub fn in_interrupt() -> bool {
    percpu::irq_depth() > 0
}

/// Timer ticks since boot (the boot CPU's).
pub fn ticks() -> u64 {
    TICKS.load(Ordering::Acquire)
}

/// Installs (or with `None` removes) a function CPU `cpu`'s timer handler
/// calls on every tick, in interrupt context.
pub fn set_timer_hook_on(cpu: usize, hook: Option<fn()>) {
    TIMER_HOOKS[cpu].store(hook.map_or(0, |f| f as usize), Ordering::Release);
}

/// Installs (or removes) the timer hook of the executing CPU; the caller
/// stays on it (a pinned task).
pub fn set_timer_hook(hook: Option<fn()>) {
    set_timer_hook_on(percpu::cpu_index(), hook);
}

fn run_timer_hook() {
    let hook = TIMER_HOOKS[percpu::cpu_index()].load(Ordering::Acquire);
    if hook != 0 {
        // SAFETY: the slot only ever holds 0 or a `fn()` stored by
        // `set_timer_hook_on`.
        let hook: fn() = unsafe { core::mem::transmute::<usize, fn()>(hook) };
        hook();
    }
}

#[no_mangle]
extern "C" fn interrupt_dispatch(frame: &mut InterruptFrame) {
    // In interrupt context first, so the key-register writes of the entry
    // are counted as interrupt work.
    percpu::irq_enter();
    let key_frame = paging::exception_enter();
    let asynchronous = match frame.vector {
        PAGE_FAULT => {
            page_fault(frame);
            false
        }
        // Spurious IRQ 7 / 15 from the 8259: no EOI to the master.
        39 | 47 => false,
        v if v == u64::from(apic::TIMER_VECTOR) => {
            let cpu = percpu::this_cpu();
            cpu.ticks.fetch_add(1, Ordering::Relaxed);
            if cpu.index() == 0 {
                TICKS.fetch_add(1, Ordering::AcqRel);
            }
            run_timer_hook();
            sched::tick();
            apic::eoi();
            true
        }
        v if v == u64::from(apic::CALL_FUNCTION_VECTOR) => {
            xcall::handle_pending();
            apic::eoi();
            true
        }
        v if v == u64::from(apic::RESCHEDULE_VECTOR) => {
            percpu::this_cpu()
                .need_resched
                .store(true, Ordering::Release);
            apic::eoi();
            true
        }
        // The spurious vector needs no EOI (SDM Vol. 3A §11.9).
        v if v == u64::from(apic::SPURIOUS_VECTOR) => false,
        v if v == u64::from(apic::ERROR_VECTOR) => fatal(frame, "local APIC error (see its ESR)"),
        _ => fatal(frame, "unexpected exception"),
    };
    paging::exception_exit(key_frame);
    percpu::irq_exit();
    // Preempt on the way out of an interrupt that arrived in preemptible
    // task context (Linux's irqentry_exit_cond_resched): the EOI is sent,
    // the key register is the task's again, and this frame stays on the
    // task's stack until it runs next.
    if asynchronous
        && frame.rflags & RFLAGS_IF != 0
        && percpu::irq_depth() == 0
        && percpu::preempt_count() == 0
    {
        sched::preempt_from_interrupt();
    }
}

fn page_fault(frame: &mut InterruptFrame) {
    let address = cpu::read_cr2();
    let read_access = addr_of!(probe_read_access) as u64;
    let write_access = addr_of!(probe_write_access) as u64;
    if frame.rip == read_access || frame.rip == write_access {
        frame.rcx = address;
        frame.rdx = FAULTED | frame.error_code;
        frame.rax = 0;
        frame.rip = if frame.rip == read_access {
            addr_of!(probe_read_resume) as u64
        } else {
            addr_of!(probe_write_resume) as u64
        };
        return;
    }
    fatal(frame, "unexpected page fault");
}

fn fatal(frame: &InterruptFrame, what: &str) -> ! {
    crate::console::print_fmt_dying(format_args!(
        "FATAL: {what} on CPU {}: vector {} error {:#x} rip {:#x} rsp {:#x} cr2 {:#x}\n",
        percpu::cpu_index(),
        frame.vector,
        frame.error_code,
        frame.rip,
        frame.rsp,
        cpu::read_cr2()
    ));
    crate::exit::exit(crate::exit::FAILURE)
}

/// Remaps the 8259 PICs to vectors 32–47 and masks every line (ICW1–ICW4,
/// Intel 8259A datasheet): the local APICs take all interrupts, and a
/// stray 8259 interrupt cannot land on an exception vector.
pub fn mask_pic() {
    // SAFETY: the PICs are the kernel's; the sequence only remaps and masks.
    unsafe {
        outb(0x20, 0x11);
        outb(0xa0, 0x11);
        outb(0x21, PIC_BASE);
        outb(0xa1, PIC_BASE + 8);
        outb(0x21, 0x04);
        outb(0xa1, 0x02);
        outb(0x21, 0x01);
        outb(0xa1, 0x01);
        outb(0x21, 0xff);
        outb(0xa1, 0xff);
    }
}
