//! Our x86-64 encodings checked against the `x86_64` crate: tables built by
//! our range operations in host memory are translated by its
//! `OffsetPageTable` (`Translate`) at more than 10,000 addresses, huge
//! pages included, and the physical address and every flag must agree with
//! ours and with what was asked for.

mod pgtable_support;

use std::collections::HashSet;

use lazymmu::addr::{PageSize, PhysAddr, SpaceId, VirtAddr};
use lazymmu::backend::FlushScope;
use lazymmu::mode::{counters::Counters, testing::TestEnv, MisusePolicy};
use lazymmu::pgtable::format::x86::ADDRESS_4K;
use lazymmu::pgtable::format::{Attributes, MemoryType, Protection, X86_64};
use lazymmu::pgtable::gather::Gather;
use lazymmu::pgtable::ops::{Mmu, VaRange};
use lazymmu::pgtable::walk::{translate, TranslateError};
use pgtable_support::Host;
use x86_64::structures::paging::mapper::{MappedFrame, TranslateResult};
use x86_64::structures::paging::{OffsetPageTable, PageTable, PageTableFlags, Translate};

/// xorshift64*: deterministic, no dependency.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
    fn bool(&mut self) -> bool {
        self.next() & 1 == 1
    }
}

#[derive(Clone, Copy, Debug)]
struct Mapping {
    va: u64,
    phys: u64,
    len: u64,
    attrs: Attributes,
    size: PageSize,
    /// Where a protection change cut the mapping: the block holding it was
    /// split, down to the largest page that does not straddle it.
    cut: Option<u64>,
}

impl Mapping {
    fn size_at(&self, addr: u64) -> PageSize {
        let Some(cut) = self.cut else {
            return self.size;
        };
        [PageSize::Size1G, PageSize::Size2M, PageSize::Size4K]
            .into_iter()
            .filter(|s| s.bytes() <= self.size.bytes())
            .find(|s| {
                let page = addr & !(s.bytes() - 1);
                !(page < cut && cut < page + s.bytes())
            })
            .unwrap()
    }
}

fn random_attrs(rng: &mut Rng) -> Attributes {
    Attributes {
        writable: rng.bool(),
        user: rng.bool(),
        executable: rng.bool(),
        global: rng.bool(),
        dirty: rng.bool(),
        accessed: rng.bool(),
        key: rng.below(16) as u8,
        memory: [
            MemoryType::WriteBack,
            MemoryType::WriteThrough,
            MemoryType::Uncached,
            MemoryType::Device,
        ][rng.below(4) as usize],
    }
}

/// Canonical address of 1 GiB slot `slot` (0..=2*131072-1: lower half
/// first, then the upper half).
fn slot_base(slot: u64) -> u64 {
    let gib = 1u64 << 30;
    if slot < 131_072 {
        slot * gib
    } else {
        0xFFFF_8000_0000_0000 + (slot - 131_072) * gib
    }
}

fn random_mappings(rng: &mut Rng, count: usize) -> Vec<Mapping> {
    let mut used = HashSet::new();
    let mut out = Vec::new();
    while out.len() < count {
        // Keep slot 0 and the last slot free (the top page is refused).
        let slot = 1 + rng.below(2 * 131_072 - 2);
        if !used.insert(slot) {
            continue;
        }
        let base = slot_base(slot);
        let attrs = random_attrs(rng);
        let mapping = match rng.below(3) {
            0 => Mapping {
                va: base,
                phys: rng.below(1 << 12) << 30,
                len: 1 << 30,
                attrs,
                size: PageSize::Size1G,
                cut: None,
            },
            1 => {
                let first = rng.below(500);
                let count = 1 + rng.below(12);
                Mapping {
                    va: base + (first << 21),
                    phys: rng.below(1 << 21) << 21,
                    len: count << 21,
                    attrs,
                    size: PageSize::Size2M,
                    cut: None,
                }
            }
            _ => {
                let first = rng.below(200_000);
                let count = 1 + rng.below(600);
                Mapping {
                    va: base + (first << 12),
                    phys: rng.below(1 << 30) << 12,
                    len: count << 12,
                    attrs,
                    size: PageSize::Size4K,
                    cut: None,
                }
            }
        };
        out.push(mapping);
    }
    out
}

fn expected_flags(attrs: Attributes, size: PageSize) -> PageTableFlags {
    let mut flags = PageTableFlags::PRESENT;
    flags.set(PageTableFlags::WRITABLE, attrs.writable);
    flags.set(PageTableFlags::USER_ACCESSIBLE, attrs.user);
    flags.set(PageTableFlags::NO_EXECUTE, !attrs.executable);
    flags.set(PageTableFlags::GLOBAL, attrs.global);
    flags.set(PageTableFlags::DIRTY, attrs.dirty);
    flags.set(PageTableFlags::ACCESSED, attrs.accessed);
    flags.set(PageTableFlags::HUGE_PAGE, size != PageSize::Size4K);
    let (pcd, pwt) = match attrs.memory {
        MemoryType::WriteBack => (false, false),
        MemoryType::WriteThrough => (false, true),
        MemoryType::Uncached => (true, false),
        MemoryType::Device => (true, true),
    };
    flags.set(PageTableFlags::NO_CACHE, pcd);
    flags.set(PageTableFlags::WRITE_THROUGH, pwt);
    for (bit, flag) in [
        PageTableFlags::BIT_59,
        PageTableFlags::BIT_60,
        PageTableFlags::BIT_61,
        PageTableFlags::BIT_62,
    ]
    .into_iter()
    .enumerate()
    {
        flags.set(flag, attrs.key & (1 << bit) != 0);
    }
    flags
}

/// Compares the two walkers at `addr`, and both with `expected`. Returns
/// whether the address was mapped.
fn compare(
    host: &Host,
    theirs: &OffsetPageTable<'_>,
    root: PhysAddr,
    addr: u64,
    expected: Option<&Mapping>,
) {
    let ours = translate::<X86_64, _>(&host.memory, root, VirtAddr(addr));
    let their = theirs.translate(x86_64::VirtAddr::new(addr));
    match (expected, ours, their) {
        (
            Some(m),
            Ok(t),
            TranslateResult::Mapped {
                frame,
                offset,
                flags,
            },
        ) => {
            let want = m.phys + (addr - m.va);
            assert_eq!(t.phys.0, want, "our walker at {addr:#x}");
            assert_eq!(
                frame.start_address().as_u64() + offset,
                want,
                "x86_64 at {addr:#x}"
            );
            let their_size = match frame {
                MappedFrame::Size4KiB(_) => PageSize::Size4K,
                MappedFrame::Size2MiB(_) => PageSize::Size2M,
                MappedFrame::Size1GiB(_) => PageSize::Size1G,
            };
            let size = m.size_at(addr);
            assert_eq!((t.size, their_size), (size, size), "page size at {addr:#x}");
            assert_eq!(flags, expected_flags(m.attrs, size), "flags at {addr:#x}");
            assert_eq!(flags.bits(), t.raw & !ADDRESS_4K, "raw bits at {addr:#x}");
            assert_eq!(t.attrs, m.attrs, "decoded attributes at {addr:#x}");
        }
        (None, Err(TranslateError::NotMapped { .. }), TranslateResult::NotMapped) => {}
        (expected, ours, their) => {
            panic!("{addr:#x}: expected {expected:?}, ours {ours:?}, x86_64 {their:?}")
        }
    }
}

/// Random mappings, addresses compared in each, and addresses compared
/// anywhere; under Miri, which runs this a thousand times slower, fewer.
const MAPPINGS: usize = if cfg!(miri) { 24 } else { 400 };
const PER_MAPPING: usize = if cfg!(miri) { 4 } else { 24 };
const ANYWHERE: usize = if cfg!(miri) { 200 } else { 4000 };
/// Frames of host memory: the tables of 400 mappings take about 2,000, of
/// 24 about 100; under Miri the size of host memory is what costs.
const FRAMES: usize = if cfg!(miri) { 512 } else { 8192 };

#[test]
fn encodings_match_the_x86_64_crate() {
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
    let host = Host::new(FRAMES);
    let backend = host.backend::<X86_64>(SpaceId(1));
    let lazy = Counters::new(TestEnv::default(), &backend, MisusePolicy::Panic);
    // SAFETY: the host allocator hands out frames of the backend's host
    // memory, used by nothing else; `lazy` is over the backend.
    let mmu = unsafe { Mmu::new(&backend, &lazy, &host.frames, FlushScope::Local) };
    let tables = mmu.new_tables(SpaceId(1), VaRange::Both).unwrap();
    let root = tables.root();

    let mut mappings = random_mappings(&mut rng, MAPPINGS);
    for m in &mappings {
        tables
            .map(VirtAddr(m.va), PhysAddr(m.phys), m.len, m.attrs, m.size)
            .unwrap();
    }

    // Change the protection of part of some mappings (splitting blocks) so
    // that rewritten and split entries are cross-checked too.
    let mut extra = Vec::new();
    {
        let mut gather = Gather::new(&backend, &host.frames, SpaceId(1), FlushScope::Local);
        for m in mappings.iter_mut().step_by(7) {
            let half = (m.len / 2) & !0xFFF;
            if half == 0 {
                continue;
            }
            let attrs = random_attrs(&mut rng);
            let protection = Protection {
                writable: Some(attrs.writable),
                executable: Some(attrs.executable),
                user: Some(attrs.user),
                key: Some(attrs.key),
            };
            tables
                .protect(VirtAddr(m.va + half), m.len - half, protection, &mut gather)
                .unwrap();
            let new_attrs = protection.apply(m.attrs);
            // A protection that changes nothing splits nothing.
            let cut = (new_attrs != m.attrs).then_some(m.va + half);
            extra.push(Mapping {
                va: m.va + half,
                phys: m.phys + half,
                len: m.len - half,
                attrs: new_attrs,
                size: m.size,
                cut,
            });
            m.len = half;
            m.cut = cut;
        }
    }
    mappings.extend(extra);

    // SAFETY: the tables live in `host.memory`, whose frame at physical
    // address p is at host address p + physical_offset(); nothing else
    // touches that memory while `theirs` is alive, and it only reads.
    let theirs = unsafe {
        let level_4 =
            &mut *((root.0.wrapping_add(host.memory.physical_offset())) as *mut PageTable);
        OffsetPageTable::new(
            level_4,
            x86_64::VirtAddr::new(host.memory.physical_offset()),
        )
    };

    let mut compared = 0;
    for m in &mappings {
        for _ in 0..PER_MAPPING {
            let addr = m.va + rng.below(m.len);
            compare(&host, &theirs, root, addr, Some(m));
            compared += 1;
        }
        // Both ends.
        compare(&host, &theirs, root, m.va, Some(m));
        compare(&host, &theirs, root, m.va + m.len - 1, Some(m));
        compared += 2;
    }
    // Random addresses anywhere: mapped or not, both must agree.
    let find = |addr: u64| {
        mappings
            .iter()
            .find(|m| addr >= m.va && addr < m.va + m.len)
    };
    for _ in 0..ANYWHERE {
        let slot = 1 + rng.below(2 * 131_072 - 2);
        let addr = slot_base(slot) + rng.below(1 << 30);
        compare(&host, &theirs, root, addr, find(addr));
        compared += 1;
    }
    assert!(
        compared >= MAPPINGS * (PER_MAPPING + 2) + ANYWHERE,
        "only {compared} addresses compared"
    );
}
