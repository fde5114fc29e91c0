//! Entry encode/decode round trips in every format, at every level: a
//! leaf encoded from any address and attributes decodes to that address
//! and size, and any 64-bit value decodes to an entry that encodes back
//! to a value decoding the same (decoding keeps nothing encoding loses).
#![no_main]

use lazymmu::addr::PhysAddr;
use lazymmu::pgtable::format::{
    Aarch64, Attributes, Entry, Format, PpcHash4K, Sparc64Sun4v, X86_64_5Level, S390, X86_64,
};
use lazymmu_fuzz::attributes;
use libfuzzer_sys::arbitrary::{Arbitrary, Result, Unstructured};
use libfuzzer_sys::fuzz_target;

#[derive(Debug)]
struct Input {
    raw: u64,
    phys: u64,
    table: u64,
    attrs: Attributes,
}

impl<'a> Arbitrary<'a> for Input {
    fn arbitrary(u: &mut Unstructured<'a>) -> Result<Self> {
        Ok(Input {
            raw: u.arbitrary()?,
            phys: u.arbitrary()?,
            table: u.arbitrary()?,
            attrs: attributes(u, u8::MAX)?,
        })
    }
}

fn check<F: Format>(input: &Input) {
    let name = F::NAME;
    for level in 1..=F::LEVELS {
        // Any value: what it decodes to encodes back to the same entry.
        match F::decode(input.raw, level) {
            Entry::Absent => {}
            Entry::Table(table) => {
                let again = F::decode(F::encode_table(table, level), level);
                assert_eq!(
                    again,
                    Entry::Table(table),
                    "{name} level {level}: table {:#x}",
                    input.raw
                );
            }
            leaf @ Entry::Leaf { phys, size, attrs } => {
                assert_eq!(
                    F::leaf_size(level),
                    Some(size),
                    "{name} level {level}: leaf size"
                );
                let raw = F::encode_leaf(phys, size, attrs);
                assert_eq!(
                    F::decode(raw, level),
                    leaf,
                    "{name} level {level}: leaf {:#x}",
                    input.raw
                );
            }
        }
        // A leaf from any address and attributes keeps the address (as
        // far as the size aligns it) and the size.
        if let Some(size) = F::leaf_size(level) {
            let phys = PhysAddr(input.phys & F::leaf_address_mask(size));
            let raw = F::encode_leaf(phys, size, input.attrs);
            assert!(F::is_valid(raw), "{name} level {level}: a leaf is valid");
            match F::decode(raw, level) {
                Entry::Leaf {
                    phys: p,
                    size: s,
                    attrs,
                } => {
                    assert_eq!(
                        (p, s),
                        (phys, size),
                        "{name} level {level}: {:?}",
                        input.attrs
                    );
                    // What was kept is kept again.
                    assert_eq!(
                        F::decode(F::encode_leaf(p, s, attrs), level),
                        Entry::Leaf {
                            phys: p,
                            size: s,
                            attrs
                        },
                        "{name} level {level}: stored attributes"
                    );
                }
                other => panic!("{name} level {level}: a leaf decodes as {other:?}"),
            }
        }
        // A table pointer keeps its address.
        if level > 1 {
            let table = PhysAddr(input.table & F::TABLE_ADDRESS_MASK);
            let raw = F::encode_table(table, level);
            assert!(F::is_valid(raw), "{name} level {level}: a table is valid");
            assert_eq!(
                F::decode(raw, level),
                Entry::Table(table),
                "{name} level {level}"
            );
        }
    }
}

fuzz_target!(|input: Input| {
    check::<X86_64>(&input);
    check::<X86_64_5Level>(&input);
    check::<Aarch64>(&input);
    check::<PpcHash4K>(&input);
    check::<S390>(&input);
    check::<Sparc64Sun4v>(&input);
});
