//! Reference-model property tests: random sequences of every range
//! operation on x86-64 (4- and 5-level) and AArch64 tables, compared after
//! each step with a `BTreeMap` of 4 KiB pages, read back with the hardware
//! walker. Every run ends by tearing the tree down and checking that no
//! frame leaked.

mod pgtable_support;

use lazymmu::pgtable::format::{Aarch64, Attributes, MemoryType, X86_64_5Level, X86_64};
use pgtable_support::model::{run, Op, WINDOW_PAGES};
use proptest::prelude::*;

fn page() -> impl Strategy<Value = u64> {
    prop_oneof![
        0..WINDOW_PAGES,
        (0..WINDOW_PAGES / 512).prop_map(|x| x * 512)
    ]
}

fn pages() -> impl Strategy<Value = u64> {
    prop_oneof![1u64..64, 400u64..1100]
}

fn attrs() -> impl Strategy<Value = Attributes> {
    (
        any::<[bool; 6]>(),
        0u8..8,
        prop_oneof![
            Just(MemoryType::WriteBack),
            Just(MemoryType::WriteThrough),
            Just(MemoryType::Uncached),
            Just(MemoryType::Device)
        ],
    )
        .prop_map(|(b, key, memory)| Attributes {
            writable: b[0],
            user: b[1],
            executable: b[2],
            global: b[3],
            dirty: b[4],
            accessed: b[5],
            key,
            memory,
        })
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        3 => (page(), pages(), prop_oneof![0u64..(1 << 20), (0u64..2048).prop_map(|x| x * 512)], attrs(), any::<bool>())
            .prop_map(|(page, pages, phys_page, attrs, huge)| Op::Map { page, pages, phys_page, attrs, huge }),
        2 => (page(), pages()).prop_map(|(page, pages)| Op::Zap { page, pages }),
        2 => (page(), pages(), attrs()).prop_map(|(page, pages, attrs)| Op::Protect { page, pages, attrs }),
        2 => (page(), page(), pages()).prop_map(|(from, to, pages)| Op::Move { from, to, pages }),
        1 => (page(), pages(), any::<bool>()).prop_map(|(page, pages, create)| Op::Apply { page, pages, create }),
        1 => (page(), pages(), any::<bool>()).prop_map(|(page, pages, private)| Op::Fork { page, pages, private }),
    ]
}

/// Operations in a sequence: fewer than this. Under Miri, one sequence of
/// up to 3 a format: every operation walks and checks the whole tree, and
/// 2 sequences of up to 23 ran past 25 minutes, 2 of up to 5 past 15.
const OPS: usize = if cfg!(miri) { 4 } else { 24 };

proptest! {
    #![proptest_config(ProptestConfig::with_cases(if cfg!(miri) { 1 } else { 96 }))]

    #[test]
    fn x86_64_4_level_matches_model(ops in proptest::collection::vec(op(), 1..OPS), high in any::<bool>()) {
        run::<X86_64>(&ops, high);
    }

    #[test]
    fn x86_64_5_level_matches_model(ops in proptest::collection::vec(op(), 1..OPS), high in any::<bool>()) {
        run::<X86_64_5Level>(&ops, high);
    }

    #[test]
    fn aarch64_matches_model(ops in proptest::collection::vec(op(), 1..OPS), high in any::<bool>()) {
        run::<Aarch64>(&ops, high);
    }
}
