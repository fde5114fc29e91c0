//! Exception vectors and the frame they save: every exception taken to EL1
//! saves the general registers, ELR, SPSR and the FP/SIMD state on the
//! stack and calls [`exception_entry`] with the frame, which dispatches
//! synchronous exceptions (the fault probes' data aborts, anything else is
//! fatal) and IRQs (the GIC, [`super::irq`]).
//!
//! The fault probes are single loads and stores with a known address:
//! when one of them aborts, the handler returns to the probe's caller with
//! the fault's address and syndrome instead of the value, so tests can
//! expect exact faults (translation, permission, access flag) and carry on.
//!
//! Sources: Arm ARM (DDI 0487), the exception vector table (offsets:
//! 0x200 current EL with SP_ELx, 0x400 lower EL using AArch64; sync at +0,
//! IRQ at +0x80), the ESR_EL1 description (EC 0x24/0x25 data abort from a
//! lower/the current EL, 0x20/0x21 instruction abort; DFSC/IFSC in bits
//! 5:0, WnR in bit 6).

use core::arch::global_asm;

use super::{cpu, irq};

/// Bytes of a saved frame: x0–x30, ELR, SPSR (and a pad), q0–q31, FPSR,
/// FPCR.
const FRAME_BYTES: usize = 800;

/// The registers an exception saved, as the vector code lays them out.
#[repr(C)]
#[derive(Debug)]
pub struct Frame {
    /// x0–x30.
    pub x: [u64; 31],
    /// Where the exception returns to.
    pub elr: u64,
    /// The interrupted PSTATE.
    pub spsr: u64,
    pad: u64,
    fp: [u128; 32],
    fpsr: u64,
    fpcr: u64,
}

const _: () = assert!(core::mem::size_of::<Frame>() == FRAME_BYTES);

/// Which vector was taken.
const SYNC_CURRENT: u64 = 0;
const IRQ_CURRENT: u64 = 1;
const SYNC_LOWER: u64 = 2;
const IRQ_LOWER: u64 = 3;
const UNEXPECTED: u64 = 4;

global_asm!(
    r#"
    .macro VECTOR kind
    .p2align 7
    sub     sp, sp, #{frame}
    stp     x0, x1, [sp, #0]
    mov     x1, #\kind
    b       exception_common
    .endm

    .section .text.vectors, "ax"
    .p2align 11
    .global exception_vectors
exception_vectors:
    VECTOR {unexpected}     // current EL, SP_EL0: sync
    VECTOR {unexpected}     //   IRQ
    VECTOR {unexpected}     //   FIQ
    VECTOR {unexpected}     //   SError
    VECTOR {sync_current}   // current EL, SP_ELx: sync
    VECTOR {irq_current}    //   IRQ
    VECTOR {unexpected}     //   FIQ
    VECTOR {unexpected}     //   SError
    VECTOR {sync_lower}     // lower EL, AArch64: sync
    VECTOR {irq_lower}      //   IRQ
    VECTOR {unexpected}     //   FIQ
    VECTOR {unexpected}     //   SError
    VECTOR {unexpected}     // lower EL, AArch32
    VECTOR {unexpected}
    VECTOR {unexpected}
    VECTOR {unexpected}

exception_common:
    stp     x2, x3, [sp, #16]
    stp     x4, x5, [sp, #32]
    stp     x6, x7, [sp, #48]
    stp     x8, x9, [sp, #64]
    stp     x10, x11, [sp, #80]
    stp     x12, x13, [sp, #96]
    stp     x14, x15, [sp, #112]
    stp     x16, x17, [sp, #128]
    stp     x18, x19, [sp, #144]
    stp     x20, x21, [sp, #160]
    stp     x22, x23, [sp, #176]
    stp     x24, x25, [sp, #192]
    stp     x26, x27, [sp, #208]
    stp     x28, x29, [sp, #224]
    mrs     x2, elr_el1
    stp     x30, x2, [sp, #240]
    mrs     x2, spsr_el1
    str     x2, [sp, #256]
    add     x2, sp, #272
    stp     q0, q1, [x2, #0]
    stp     q2, q3, [x2, #32]
    stp     q4, q5, [x2, #64]
    stp     q6, q7, [x2, #96]
    stp     q8, q9, [x2, #128]
    stp     q10, q11, [x2, #160]
    stp     q12, q13, [x2, #192]
    stp     q14, q15, [x2, #224]
    stp     q16, q17, [x2, #256]
    stp     q18, q19, [x2, #288]
    stp     q20, q21, [x2, #320]
    stp     q22, q23, [x2, #352]
    stp     q24, q25, [x2, #384]
    stp     q26, q27, [x2, #416]
    stp     q28, q29, [x2, #448]
    stp     q30, q31, [x2, #480]
    mrs     x3, fpsr
    mrs     x4, fpcr
    add     x2, sp, #784
    stp     x3, x4, [x2]

    mov     x0, sp
    bl      exception_entry

    add     x2, sp, #784
    ldp     x3, x4, [x2]
    msr     fpsr, x3
    msr     fpcr, x4
    add     x2, sp, #272
    ldp     q0, q1, [x2, #0]
    ldp     q2, q3, [x2, #32]
    ldp     q4, q5, [x2, #64]
    ldp     q6, q7, [x2, #96]
    ldp     q8, q9, [x2, #128]
    ldp     q10, q11, [x2, #160]
    ldp     q12, q13, [x2, #192]
    ldp     q14, q15, [x2, #224]
    ldp     q16, q17, [x2, #256]
    ldp     q18, q19, [x2, #288]
    ldp     q20, q21, [x2, #320]
    ldp     q22, q23, [x2, #352]
    ldp     q24, q25, [x2, #384]
    ldp     q26, q27, [x2, #416]
    ldp     q28, q29, [x2, #448]
    ldp     q30, q31, [x2, #480]
    ldr     x2, [sp, #256]
    msr     spsr_el1, x2
    ldp     x30, x2, [sp, #240]
    msr     elr_el1, x2
    ldp     x28, x29, [sp, #224]
    ldp     x26, x27, [sp, #208]
    ldp     x24, x25, [sp, #192]
    ldp     x22, x23, [sp, #176]
    ldp     x20, x21, [sp, #160]
    ldp     x18, x19, [sp, #144]
    ldp     x16, x17, [sp, #128]
    ldp     x14, x15, [sp, #112]
    ldp     x12, x13, [sp, #96]
    ldp     x10, x11, [sp, #80]
    ldp     x8, x9, [sp, #64]
    ldp     x6, x7, [sp, #48]
    ldp     x4, x5, [sp, #32]
    ldp     x2, x3, [sp, #16]
    ldp     x0, x1, [sp, #0]
    add     sp, sp, #{frame}
    eret

    // The fault probes: one access each, at a `*_access` label; a fault
    // there resumes at the `*_resume` label with x0 = FAR and x1 = ESR.
    .section .text.probes, "ax"
    .global probe_load, probe_load_access, probe_load_resume
probe_load:
probe_load_access:
    ldr     x0, [x0]
    mov     x1, xzr
probe_load_resume:
    ret

    .global probe_store, probe_store_access, probe_store_resume
probe_store:
probe_store_access:
    str     x1, [x0]
    mov     x0, xzr
    mov     x1, xzr
probe_store_resume:
    ret

    .global probe_load_user, probe_load_user_access, probe_load_user_resume
probe_load_user:
probe_load_user_access:
    ldtr    x0, [x0]
    mov     x1, xzr
probe_load_user_resume:
    ret

    .global probe_store_user, probe_store_user_access, probe_store_user_resume
probe_store_user:
probe_store_user_access:
    sttr    x1, [x0]
    mov     x0, xzr
    mov     x1, xzr
probe_store_user_resume:
    ret
    "#,
    frame = const FRAME_BYTES,
    unexpected = const UNEXPECTED,
    sync_current = const SYNC_CURRENT,
    irq_current = const IRQ_CURRENT,
    sync_lower = const SYNC_LOWER,
    irq_lower = const IRQ_LOWER,
);

/// What a probe returns: the value loaded (0 for a store) and 0, or the
/// fault's address and syndrome.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
struct ProbeResult {
    value: u64,
    esr: u64,
}

extern "C" {
    fn probe_load(address: u64) -> ProbeResult;
    fn probe_store(address: u64, value: u64) -> ProbeResult;
    fn probe_load_user(address: u64) -> ProbeResult;
    fn probe_store_user(address: u64, value: u64) -> ProbeResult;
    static probe_load_access: u8;
    static probe_load_resume: u8;
    static probe_store_access: u8;
    static probe_store_resume: u8;
    static probe_load_user_access: u8;
    static probe_load_user_resume: u8;
    static probe_store_user_access: u8;
    static probe_store_user_resume: u8;
}

/// Where a probe's access resumes when it faults.
fn probe_resume(elr: u64) -> Option<u64> {
    let probes = [
        (&raw const probe_load_access, &raw const probe_load_resume),
        (&raw const probe_store_access, &raw const probe_store_resume),
        (
            &raw const probe_load_user_access,
            &raw const probe_load_user_resume,
        ),
        (
            &raw const probe_store_user_access,
            &raw const probe_store_user_resume,
        ),
    ];
    probes
        .iter()
        .find(|(access, _)| *access as u64 == elr)
        .map(|(_, resume)| *resume as u64)
}

/// The kind of a data abort, from the fault status code (ESR_EL1.DFSC,
/// Arm ARM "ISS encoding for an exception from a Data Abort").
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FaultKind {
    /// Translation fault at the given lookup level (0–3): no valid entry.
    Translation(u8),
    /// Access flag fault at the given level: a valid leaf with AF clear.
    AccessFlag(u8),
    /// Permission fault at the given level.
    Permission(u8),
    /// Any other status code.
    Other(u8),
}

impl FaultKind {
    fn from_status(status: u8) -> Self {
        let level = status & 0b11;
        match status & !0b11 {
            0b00_0100 => FaultKind::Translation(level),
            0b00_1000 => FaultKind::AccessFlag(level),
            0b00_1100 => FaultKind::Permission(level),
            _ => FaultKind::Other(status),
        }
    }
}

/// A data abort a probe took.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Fault {
    /// The faulting address (FAR_EL1).
    pub address: u64,
    /// What kind of fault.
    pub kind: FaultKind,
    /// Whether the access was a write (ESR_EL1.WnR).
    pub write: bool,
    /// The whole syndrome.
    pub esr: u64,
}

impl Fault {
    fn from_probe(result: ProbeResult) -> Result<u64, Fault> {
        if result.esr == 0 {
            return Ok(result.value);
        }
        Err(Fault {
            address: result.value,
            kind: FaultKind::from_status((result.esr & 0x3f) as u8),
            write: result.esr & (1 << 6) != 0,
            esr: result.esr,
        })
    }
}

/// Loads the 8 bytes at `va` as the kernel, or reports the abort.
pub fn read(va: u64) -> Result<u64, Fault> {
    // SAFETY: the probe is a single load whose abort the handler turns
    // into a return; loading from any address is then harmless.
    Fault::from_probe(unsafe { probe_load(va) })
}

/// Stores `value` at `va` as the kernel, or reports the abort.
///
/// # Safety
/// If the store succeeds it changes memory: `va` must be a location the
/// caller may write.
pub unsafe fn write(va: u64, value: u64) -> Result<(), Fault> {
    // SAFETY: the caller may write `va`; a fault returns instead.
    Fault::from_probe(unsafe { probe_store(va, value) }).map(|_| ())
}

/// Loads the 8 bytes at `va` with EL0's permissions (`ldtr`).
pub fn read_as_user(va: u64) -> Result<u64, Fault> {
    // SAFETY: as `read`.
    Fault::from_probe(unsafe { probe_load_user(va) })
}

/// Stores `value` at `va` with EL0's permissions (`sttr`).
///
/// # Safety
/// As [`write`].
pub unsafe fn write_as_user(va: u64, value: u64) -> Result<(), Fault> {
    // SAFETY: as `write`.
    Fault::from_probe(unsafe { probe_store_user(va, value) }).map(|_| ())
}

/// ESR_EL1.EC values this handler knows.
const EC_DATA_ABORT_LOWER: u64 = 0x24;
const EC_DATA_ABORT_CURRENT: u64 = 0x25;

/// Called by the vector code with the saved frame and which vector ran.
#[no_mangle]
extern "C" fn exception_entry(frame: &mut Frame, kind: u64) {
    match kind {
        IRQ_CURRENT | IRQ_LOWER => irq::handle(),
        SYNC_CURRENT | SYNC_LOWER => {
            let esr = cpu::esr();
            let class = esr >> 26;
            if matches!(class, EC_DATA_ABORT_CURRENT | EC_DATA_ABORT_LOWER) {
                if let Some(resume) = probe_resume(frame.elr) {
                    frame.x[0] = cpu::far();
                    frame.x[1] = esr;
                    frame.elr = resume;
                    return;
                }
            }
            panic!(
                "synchronous exception: ESR {esr:#x} (class {class:#x}), FAR {:#x}, ELR {:#x}",
                cpu::far(),
                frame.elr
            );
        }
        _ => panic!(
            "unexpected exception (vector {kind}): ESR {:#x}, ELR {:#x}",
            cpu::esr(),
            frame.elr
        ),
    }
}
