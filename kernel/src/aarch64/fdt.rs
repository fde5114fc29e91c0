//! The flattened device tree QEMU builds for its virt machine: just enough
//! of a reader to find the RAM (`/memory@…`, property `reg`) and the GIC's
//! kind and registers (`/intc@…`, `compatible` and `reg`).
//!
//! Format: Devicetree Specification v0.4, chapter 5 (header, structure
//! block tokens `FDT_BEGIN_NODE` 1, `FDT_END_NODE` 2, `FDT_PROP` 3,
//! `FDT_NOP` 4, `FDT_END` 9; big-endian cells). The root's
//! `#address-cells` and `#size-cells` are 2 on QEMU's virt machine
//! (`hw/arm/virt.c`, `create_fdt`), which is all this reader handles.

/// The header's magic number.
const MAGIC: u32 = 0xd00d_feed;

const BEGIN_NODE: u32 = 1;
const END_NODE: u32 = 2;
const PROP: u32 = 3;
const NOP: u32 = 4;
const END: u32 = 9;

/// A physical range from a `reg` property.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Range {
    /// First byte.
    pub base: u64,
    /// Bytes.
    pub size: u64,
}

/// What the kernel reads from the device tree.
#[derive(Clone, Copy, Debug)]
pub struct Machine {
    /// The RAM (the first range of the first memory node).
    pub memory: Range,
    /// The GIC's first two register ranges (distributor, then the CPU
    /// interface on a GICv2 or the redistributors on a GICv3).
    pub gic: [Range; 2],
    /// Whether the GIC is a GICv3 (`arm,gic-v3`) rather than a GICv2
    /// (`arm,cortex-a15-gic`).
    pub gic_v3: bool,
    /// Bytes the device tree occupies.
    pub total_size: u32,
}

/// A big-endian view of the blob.
struct Blob {
    base: *const u8,
    size: usize,
}

impl Blob {
    fn u32_at(&self, offset: usize) -> Result<u32, &'static str> {
        if offset + 4 > self.size {
            return Err("device tree: read past its end");
        }
        // SAFETY: inside the blob, which the caller vouched for; reads of
        // bytes need no alignment.
        let bytes = unsafe { core::ptr::read_unaligned(self.base.add(offset) as *const [u8; 4]) };
        Ok(u32::from_be_bytes(bytes))
    }

    fn u64_at(&self, offset: usize) -> Result<u64, &'static str> {
        Ok((u64::from(self.u32_at(offset)?) << 32) | u64::from(self.u32_at(offset + 4)?))
    }

    /// The NUL-terminated string at `offset`.
    fn str_at(&self, offset: usize) -> Result<&[u8], &'static str> {
        let mut end = offset;
        loop {
            if end >= self.size {
                return Err("device tree: unterminated string");
            }
            // SAFETY: `end` is inside the blob.
            if unsafe { *self.base.add(end) } == 0 {
                break;
            }
            end += 1;
        }
        // SAFETY: `offset..end` is inside the blob.
        Ok(unsafe { core::slice::from_raw_parts(self.base.add(offset), end - offset) })
    }

    fn bytes_at(&self, offset: usize, len: usize) -> Result<&[u8], &'static str> {
        if offset + len > self.size {
            return Err("device tree: property past its end");
        }
        // SAFETY: inside the blob.
        Ok(unsafe { core::slice::from_raw_parts(self.base.add(offset), len) })
    }
}

fn reg_ranges(blob: &Blob, offset: usize, len: usize) -> Result<[Range; 2], &'static str> {
    let mut ranges = [Range { base: 0, size: 0 }; 2];
    for (i, range) in ranges.iter_mut().enumerate().take(len / 16) {
        *range = Range {
            base: blob.u64_at(offset + 16 * i)?,
            size: blob.u64_at(offset + 16 * i + 8)?,
        };
    }
    Ok(ranges)
}

/// Reads the device tree at `address`.
///
/// # Safety
/// `address` must be readable for the blob's whole size (a header is
/// checked first, then no more than the size it states is read).
///
/// # Errors
/// A message when there is no device tree there or it lacks the RAM or
/// the GIC.
pub unsafe fn read(address: u64) -> Result<Machine, &'static str> {
    let header = Blob {
        base: address as *const u8,
        size: 40,
    };
    if header.u32_at(0)? != MAGIC {
        return Err("no device tree (bad magic)");
    }
    let total_size = header.u32_at(4)?;
    let structure = header.u32_at(8)? as usize;
    let strings = header.u32_at(12)? as usize;
    let blob = Blob {
        base: address as *const u8,
        size: total_size as usize,
    };
    let mut memory = None;
    let mut gic = None;
    let mut gic_v3 = false;
    let mut depth = 0usize;
    // What the node at depth 1 being read is.
    let mut in_memory = false;
    let mut in_gic = false;
    let mut offset = structure;
    loop {
        let token = blob.u32_at(offset)?;
        offset += 4;
        match token {
            BEGIN_NODE => {
                let name = blob.str_at(offset)?;
                offset = (offset + name.len() + 1).next_multiple_of(4);
                depth += 1;
                if depth == 2 {
                    in_memory = name.starts_with(b"memory");
                    in_gic = name.starts_with(b"intc");
                }
            }
            END_NODE => {
                depth = depth
                    .checked_sub(1)
                    .ok_or("device tree: unbalanced nodes")?;
                if depth < 2 {
                    in_memory = false;
                    in_gic = false;
                }
            }
            PROP => {
                let len = blob.u32_at(offset)? as usize;
                let name = blob.str_at(strings + blob.u32_at(offset + 4)? as usize)?;
                let value = offset + 8;
                if depth == 2 && name == b"reg" {
                    if in_memory && memory.is_none() {
                        memory = Some(reg_ranges(&blob, value, len)?[0]);
                    } else if in_gic && gic.is_none() {
                        gic = Some(reg_ranges(&blob, value, len)?);
                    }
                }
                if depth == 2 && in_gic && name == b"compatible" {
                    let compatible = blob.bytes_at(value, len)?;
                    gic_v3 = compatible.windows(10).any(|w| w == b"arm,gic-v3");
                }
                offset = (value + len).next_multiple_of(4);
            }
            NOP => {}
            END => break,
            _ => return Err("device tree: unknown token"),
        }
    }
    Ok(Machine {
        memory: memory.ok_or("device tree: no memory node")?,
        gic: gic.ok_or("device tree: no interrupt controller")?,
        gic_v3,
        total_size,
    })
}
