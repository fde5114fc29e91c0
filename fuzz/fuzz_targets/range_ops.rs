//! Random sequences of the range operations (map, zap, protect, mremap,
//! apply, fork) on x86-64 4- and 5-level and AArch64 tables, against the
//! reference model the property tests use
//! (`crates/lazymmu/tests/pgtable_support/model.rs`): after every step the
//! tree must read back as the model, and at the end every frame must come
//! back. Frames arrive poisoned, as in the tests.
#![no_main]

#[path = "../../crates/lazymmu/tests/pgtable_support/mod.rs"]
mod pgtable_support;

use lazymmu::pgtable::format::{Aarch64, X86_64_5Level, X86_64};
use lazymmu_fuzz::attributes;
use libfuzzer_sys::arbitrary::{Result, Unstructured};
use libfuzzer_sys::fuzz_target;
use pgtable_support::model::{run, Op, WINDOW_PAGES};

/// At most this many operations a run: a model run costs about a
/// millisecond an operation.
const MAX_OPS: usize = 32;

/// A first page: anywhere, or on a 2 MiB boundary.
fn page(u: &mut Unstructured) -> Result<u64> {
    Ok(if u.arbitrary()? {
        u.int_in_range(0..=WINDOW_PAGES - 1)?
    } else {
        u.int_in_range(0..=WINDOW_PAGES / 512 - 1)? * 512
    })
}

/// A length: a few pages, or about two PTE tables' worth.
fn pages(u: &mut Unstructured) -> Result<u64> {
    if u.arbitrary()? {
        u.int_in_range(1..=63)
    } else {
        u.int_in_range(400..=1099)
    }
}

fn op(u: &mut Unstructured) -> Result<Op> {
    Ok(match u.int_in_range(0..=5u8)? {
        0 => Op::Map {
            page: page(u)?,
            pages: pages(u)?,
            phys_page: if u.arbitrary()? {
                u.int_in_range(0..=(1 << 20) - 1)?
            } else {
                u.int_in_range(0..=2047u64)? * 512
            },
            attrs: attributes(u, 7)?,
            huge: u.arbitrary()?,
        },
        1 => Op::Zap {
            page: page(u)?,
            pages: pages(u)?,
        },
        2 => Op::Protect {
            page: page(u)?,
            pages: pages(u)?,
            attrs: attributes(u, 7)?,
        },
        3 => Op::Move {
            from: page(u)?,
            to: page(u)?,
            pages: pages(u)?,
        },
        4 => Op::Apply {
            page: page(u)?,
            pages: pages(u)?,
            create: u.arbitrary()?,
        },
        _ => Op::Fork {
            page: page(u)?,
            pages: pages(u)?,
            private: u.arbitrary()?,
        },
    })
}

fuzz_target!(|data: &[u8]| {
    let mut u = Unstructured::new(data);
    let Ok(format) = u.int_in_range(0..=2u8) else {
        return;
    };
    let Ok(high) = u.arbitrary::<bool>() else {
        return;
    };
    let mut ops = Vec::new();
    while ops.len() < MAX_OPS {
        match op(&mut u) {
            Ok(op) => ops.push(op),
            Err(_) => break,
        }
    }
    if ops.is_empty() {
        return;
    }
    match format {
        0 => run::<X86_64>(&ops, high),
        1 => run::<X86_64_5Level>(&ops, high),
        _ => run::<Aarch64>(&ops, high),
    }
});
