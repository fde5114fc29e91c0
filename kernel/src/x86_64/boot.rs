//! The PVH entry: QEMU's `-kernel` loader finds the entry point in an ELF
//! note, loads the segments at their physical addresses and jumps there in
//! 32-bit protected mode with paging off and `%ebx` pointing at the
//! `hvm_start_info` structure.
//!
//! The entry code builds throw-away identity page tables (4 GiB in 2 MiB
//! pages), enables PAE, long mode, NX, write protection and SSE, loads a
//! flat 64-bit GDT and calls [`crate::kernel_main`]. Everything after that
//! runs on page tables built by the library. The application processors
//! go through the same `enter_long_mode` from their trampoline
//! ([`crate::smp`]).
//!
//! Sources: Xen's `xen/include/public/elfnote.h` (`XEN_ELFNOTE_PHYS32_ENTRY`
//! = 18) and `arch-x86/hvm/start_info.h`; Intel SDM Vol. 3A §10.8.5
//! "Initializing IA-32e Mode".

use core::arch::global_asm;

/// Magic value of `hvm_start_info` (start_info.h: `XEN_HVM_START_MAGIC_VALUE`).
pub const START_INFO_MAGIC: u32 = 0x336e_c578;

/// The start of `struct hvm_start_info` (version 1).
#[repr(C)]
#[derive(Debug)]
pub struct StartInfo {
    /// [`START_INFO_MAGIC`].
    pub magic: u32,
    /// Version of the structure; the memory map needs 1 or more.
    pub version: u32,
    /// `SIF_*` flags.
    pub flags: u32,
    /// Number of modules.
    pub nr_modules: u32,
    /// Physical address of the module list.
    pub modlist_paddr: u64,
    /// Physical address of the command line.
    pub cmdline_paddr: u64,
    /// Physical address of the ACPI RSDP.
    pub rsdp_paddr: u64,
    /// Physical address of the memory map (version 1).
    pub memmap_paddr: u64,
    /// Number of memory map entries (version 1).
    pub memmap_entries: u32,
    /// Reserved.
    pub reserved: u32,
}

/// One entry of the PVH memory map (`struct hvm_memmap_table_entry`).
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct MemmapEntry {
    /// Physical start.
    pub addr: u64,
    /// Length in bytes.
    pub size: u64,
    /// E820 type: 1 is usable RAM.
    pub kind: u32,
    /// Reserved.
    pub reserved: u32,
}

/// E820 type of usable RAM.
pub const MEMMAP_RAM: u32 = 1;

global_asm!(
    r#"
    .section .note.Xen, "a"
    .p2align 2
    .long 4                 /* namesz */
    .long 8                 /* descsz */
    .long 18                /* XEN_ELFNOTE_PHYS32_ENTRY */
    .asciz "Xen"
    .p2align 2
    .quad pvh_start
    .p2align 2

    .section .text.boot, "ax"
    .code32
    .global pvh_start
pvh_start:
    cli
    cld
    mov %ebx, %edi                      /* hvm_start_info, first argument */
    mov $boot_stack_top, %esp

    /* boot_pml4[0] -> boot_pdpt; boot_pdpt[0..4] -> boot_pd[0..4] */
    mov $boot_pdpt, %eax
    or $3, %eax
    mov %eax, boot_pml4
    xor %ecx, %ecx
1:  mov %ecx, %eax
    shl $12, %eax
    add $boot_pd, %eax
    or $3, %eax
    mov %eax, boot_pdpt(,%ecx,8)
    inc %ecx
    cmp $4, %ecx
    jb 1b
    /* boot_pd[i] = i * 2 MiB | PS | RW | P, for 4 GiB */
    xor %ecx, %ecx
2:  mov %ecx, %eax
    shl $21, %eax
    or $0x83, %eax
    mov %eax, boot_pd(,%ecx,8)
    inc %ecx
    cmp $2048, %ecx
    jb 2b

    mov $long_mode_entry, %esi
    /* Falls through. */

    /* From 32-bit protected mode with flat segments and paging off (the
       boot CPU here, application processors from their trampoline):
       long mode on the boot identity tables, then a jump to %esi. */
    .global enter_long_mode
enter_long_mode:
    mov $boot_pml4, %eax
    mov %eax, %cr3
    mov %cr4, %eax
    or $((1 << 5) | (1 << 9) | (1 << 10)), %eax   /* PAE, OSFXSR, OSXMMEXCPT */
    mov %eax, %cr4
    mov $0xc0000080, %ecx                          /* IA32_EFER */
    rdmsr
    or $((1 << 8) | (1 << 11)), %eax               /* LME, NXE */
    wrmsr
    mov %cr0, %eax
    and $~(1 << 2), %eax                           /* EM off: SSE usable */
    or $((1 << 31) | (1 << 16) | (1 << 1)), %eax   /* PG, WP, MP */
    mov %eax, %cr0
    lgdt boot_gdt_pointer
    ljmp $0x08, $in_long_mode

    .code64
in_long_mode:
    mov $0x10, %ax
    mov %ax, %ds
    mov %ax, %es
    mov %ax, %ss
    xor %ax, %ax
    mov %ax, %fs
    mov %ax, %gs
    mov %esi, %esi                  /* upper halves are undefined after the switch */
    jmp *%rsi

long_mode_entry:
    mov $boot_stack_top, %rsp
    mov %edi, %edi
    call kernel_main
3:  hlt
    jmp 3b

    .section .rodata
    .p2align 3
boot_gdt:
    .quad 0
    .quad 0x00af9a000000ffff        /* 0x08: 64-bit code */
    .quad 0x00cf92000000ffff        /* 0x10: data */
boot_gdt_end:
boot_gdt_pointer:
    .word boot_gdt_end - boot_gdt - 1
    .long boot_gdt

    .section .bss
    .p2align 12
    /* Also what application processors enable paging with (smp.rs). */
    .global boot_pml4
boot_pml4:
    .skip 4096
boot_pdpt:
    .skip 4096
boot_pd:
    .skip 4096 * 4
    .p2align 4
boot_stack:
    .skip 65536
boot_stack_top:
    .previous
"#,
    options(att_syntax)
);
