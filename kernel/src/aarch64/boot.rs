//! The entry: QEMU's virt machine starts the CPU at EL1 with the MMU off at
//! the ELF's physical entry point, `x0` zero and the device tree at the
//! start of RAM (QEMU `hw/arm/boot.c`, `arm_setup_direct_kernel_boot`: an
//! ELF image is not a Linux image, so the DTB goes to `loader_start` when
//! the image leaves room there, and nothing points a register at it).
//!
//! The entry code runs at physical addresses, so it uses only PC-relative
//! addressing. It zeroes `.bss`, builds the first tables by hand — an
//! identity map of the gigabyte holding the image (TTBR0, only for the
//! instructions that turn the MMU on), the same gigabyte at
//! [`KERNEL_BASE`](super::memory::KERNEL_BASE) where the image is linked,
//! and the first gigabyte of physical space (the GIC and the PL011) as
//! device memory at [`IO_BASE`](super::memory::IO_BASE) — sets MAIR_EL1 to
//! the attribute indices of the library's AArch64 format, TCR_EL1 for two
//! 48-bit halves with 4 KiB granules, enables FP/SIMD and the MMU, jumps to
//! its linked address, installs the exception vectors and calls
//! [`super::kernel_main`] with the physical address of the device tree.
//! Everything after that runs on tables the library builds
//! ([`super::paging::init`]).
//!
//! Sources: Arm ARM (DDI 0487), the translation table descriptor formats
//! and the register descriptions of MAIR_EL1, TCR_EL1, SCTLR_EL1 and
//! CPACR_EL1; Linux's
//! `Documentation/arch/arm64/booting.rst` for what the entry state is.

use core::arch::global_asm;

/// Bytes of the boot stack, which every exception uses too.
pub const STACK_BYTES: usize = 128 * 1024;

global_asm!(
    r#"
    .section .text.boot, "ax"
    .global _start
_start:
    mov     x19, x0                 // a Linux-style loader passes the DTB here
    mrs     x0, CurrentEL
    lsr     x0, x0, #2
    cmp     x0, #1
    b.ne    wrong_exception_level

    // Zero .bss (the boot tables and the stack live there).
    adrp    x0, __bss_start
    add     x0, x0, :lo12:__bss_start
    adrp    x1, __bss_end
    add     x1, x1, :lo12:__bss_end
1:  cmp     x0, x1
    b.hs    2f
    stp     xzr, xzr, [x0], #16
    b       1b
2:
    // The first tables: x0 TTBR0 level 0, x1 its level 1 (identity),
    // x2 TTBR1 level 0, x3 level 1 of the image slot, x4 level 1 of the
    // I/O slot.
    adrp    x0, boot_tables
    add     x1, x0, #0x1000
    add     x2, x0, #0x2000
    add     x3, x0, #0x3000
    add     x4, x0, #0x4000
    orr     x5, x1, #3              // table descriptor
    str     x5, [x0]                // TTBR0 slot 0: VA 0..512 GiB
    orr     x5, x3, #3
    str     x5, [x2, #(256 * 8)]    // TTBR1 slot 256: KERNEL_BASE
    orr     x5, x4, #3
    str     x5, [x2, #(252 * 8)]    // TTBR1 slot 252: IO_BASE
    // 1 GiB block of normal write-back memory at 0x4000_0000: valid,
    // AttrIndx 0, inner shareable, AF.
    movz    x5, #0x0701
    movk    x5, #0x4000, lsl #16
    str     x5, [x1, #8]            // identity
    str     x5, [x3, #8]            // KERNEL_BASE + 0x4000_0000
    // 1 GiB block of device memory at 0: AttrIndx 3, AF, PXN, UXN.
    movz    x5, #0x040d
    movk    x5, #0x0060, lsl #48
    str     x5, [x4]

    // MAIR_EL1: lazymmu::pgtable::format::AARCH64_MAIR.
    movz    x5, #0xbbff
    movk    x5, #0x0044, lsl #16
    msr     mair_el1, x5
    // TCR_EL1: T0SZ = T1SZ = 16 (48 bits each), 4 KiB granules (TG0 0,
    // TG1 2), walks inner/outer write-back cacheable and inner shareable,
    // 8-bit ASIDs taken from TTBR0, no hardware access-flag or dirty
    // updates (HA = HD = 0), IPS from ID_AA64MMFR0_EL1.PARange (at most 48
    // bits).
    movz    x5, #0x3510
    movk    x5, #0xb510, lsl #16
    mrs     x6, id_aa64mmfr0_el1
    and     x6, x6, #0xf
    cmp     x6, #5
    mov     x7, #5
    csel    x6, x6, x7, ls
    bfi     x5, x6, #32, #3
    msr     tcr_el1, x5
    msr     ttbr0_el1, x0
    msr     ttbr1_el1, x2
    // CPACR_EL1.FPEN = 0b11: FP/SIMD at EL1 and EL0 without traps (the
    // compiler uses the vector registers).
    mov     x5, #(3 << 20)
    msr     cpacr_el1, x5
    isb
    tlbi    vmalle1
    dsb     nsh
    isb
    // SCTLR_EL1: M, C, SA, I and the bits that are RES1 in Armv8.0 (EOS,
    // TSCXT, EIS, SPAN, nTLSMD, LSMAOE).
    movz    x5, #0x180d
    movk    x5, #0x30d0, lsl #16
    msr     sctlr_el1, x5
    isb
    ldr     x5, =boot_high
    br      x5

boot_high:
    ldr     x5, =boot_stack_top
    mov     sp, x5
    ldr     x5, =exception_vectors
    msr     vbar_el1, x5
    isb
    // The device tree: where a Linux-style loader said, else the start of
    // RAM (QEMU's placement for an ELF image).
    mov     x0, x19
    cbnz    x0, 3f
    movz    x0, #0x4000, lsl #16
3:  bl      kernel_main
4:  wfe
    b       4b

wrong_exception_level:
    // Not at EL1: end the run through semihosting SYS_EXIT with status 3
    // (the parameter block is read at its physical address, MMU off).
    adr     x1, wrong_exception_level_exit
    mov     w0, #0x18
    hlt     #0xf000
5:  wfe
    b       5b

    .p2align 3
wrong_exception_level_exit:
    .quad   0x20026                 // ADP_Stopped_ApplicationExit
    .quad   3
    .ltorg

    .section .bss.boot, "aw", @nobits
    .p2align 12
boot_tables:
    .space  5 * 4096
    .p2align 4
boot_stack:
    .space  {stack}
boot_stack_top:
    "#,
    stack = const STACK_BYTES,
);
