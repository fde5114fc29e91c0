//! Counting the CPUs: the ACPI MADT lists one Processor Local APIC
//! structure per CPU. QEMU's PVH option ROM finds the RSDP that SeaBIOS
//! built and passes its address in `hvm_start_info.rsdp_paddr`
//! (pc-bios/optionrom/pvh_main.c).
//!
//! Layouts: ACPI 6.5 §5.2.5.3 (RSDP), §5.2.6 (system description table
//! header), §5.2.7–8 (RSDT, XSDT), §5.2.12 (MADT) and Table 5.45 (Processor
//! Local APIC structure: type 0, length 8, flags bit 0 "Enabled").

use crate::percpu::MAX_CPUS;

/// The local APIC ids of the usable CPUs, in MADT order.
#[derive(Clone, Copy, Debug)]
pub struct Cpus {
    ids: [u32; MAX_CPUS],
    count: usize,
    /// Usable CPUs beyond [`MAX_CPUS`], which the kernel leaves parked.
    pub ignored: usize,
}

impl Cpus {
    /// The APIC ids.
    pub fn apic_ids(&self) -> &[u32] {
        &self.ids[..self.count]
    }
}

/// Reads `N` bytes at physical `address` (identity-mapped while the boot
/// tables are loaded).
fn bytes<const N: usize>(address: u64) -> [u8; N] {
    // SAFETY: only called on the firmware's tables below 4 GiB, which the
    // boot tables identity-map; reading them has no side effect.
    unsafe { (address as *const [u8; N]).read_unaligned() }
}

fn u32_at(address: u64) -> u32 {
    u32::from_le_bytes(bytes(address))
}

fn checksum_ok(address: u64, len: u64) -> bool {
    let mut sum = 0u8;
    for i in 0..len {
        sum = sum.wrapping_add(bytes::<1>(address + i)[0]);
    }
    sum == 0
}

const HEADER_LEN: u64 = 36;

/// Finds the system description table with `signature` under the RSDP at
/// `rsdp`.
fn find_table(rsdp: u64, signature: &[u8; 4]) -> Result<u64, &'static str> {
    if &bytes::<8>(rsdp) != b"RSD PTR " || !checksum_ok(rsdp, 20) {
        return Err("ACPI: no valid RSDP at the address PVH gave");
    }
    let revision = bytes::<1>(rsdp + 15)[0];
    let (root, entry_len) = if revision >= 2 {
        (u64::from_le_bytes(bytes(rsdp + 24)), 8)
    } else {
        (u64::from(u32_at(rsdp + 16)), 4)
    };
    let root_len = u64::from(u32_at(root + 4));
    if !checksum_ok(root, root_len) {
        return Err("ACPI: bad RSDT/XSDT checksum");
    }
    let mut entry = root + HEADER_LEN;
    while entry + entry_len <= root + root_len {
        let table = if entry_len == 8 {
            u64::from_le_bytes(bytes(entry))
        } else {
            u64::from(u32_at(entry))
        };
        if &bytes::<4>(table) == signature {
            let len = u64::from(u32_at(table + 4));
            if !checksum_ok(table, len) {
                return Err("ACPI: bad MADT checksum");
            }
            return Ok(table);
        }
        entry += entry_len;
    }
    Err("ACPI: no MADT")
}

/// The usable CPUs the MADT lists.
///
/// # Errors
/// A message when the RSDP is missing or a table is malformed.
pub fn cpus(rsdp: u64) -> Result<Cpus, &'static str> {
    if rsdp == 0 {
        return Err("ACPI: PVH passed no RSDP");
    }
    let madt = find_table(rsdp, b"APIC")?;
    let len = u64::from(u32_at(madt + 4));
    let mut cpus = Cpus {
        ids: [0; MAX_CPUS],
        count: 0,
        ignored: 0,
    };
    // Entries follow the header, the local APIC address and the flags.
    let mut entry = madt + HEADER_LEN + 8;
    while entry + 2 <= madt + len {
        let [kind, entry_len] = bytes::<2>(entry);
        if entry_len < 2 {
            return Err("ACPI: MADT entry of length < 2");
        }
        if kind == 0 && entry_len >= 8 {
            let apic_id = bytes::<1>(entry + 3)[0];
            let flags = u32_at(entry + 4);
            // Enabled now; online-capable ones would need hot-plug.
            if flags & 1 != 0 {
                if cpus.count < MAX_CPUS {
                    cpus.ids[cpus.count] = u32::from(apic_id);
                    cpus.count += 1;
                } else {
                    cpus.ignored += 1;
                }
            }
        }
        entry += u64::from(entry_len);
    }
    if cpus.count == 0 {
        return Err("ACPI: the MADT lists no usable CPU");
    }
    Ok(cpus)
}

/// The RSDP address in `hvm_start_info` at `start_info` (0 when absent).
pub fn rsdp_from_start_info(start_info: u64) -> u64 {
    // SAFETY: as `memory::MemoryMap::from_start_info`, which has already
    // checked the magic: the loader's structure, identity-mapped, read
    // only.
    let info = unsafe { &*(start_info as *const crate::boot::StartInfo) };
    if info.magic != crate::boot::START_INFO_MAGIC {
        return 0;
    }
    info.rsdp_paddr
}
