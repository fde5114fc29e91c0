//! The three designs against small reference models: random operation
//! sequences (proptest) and every sequence of the six trace operations up to
//! length 8.

mod mode_common;

use lazymmu::cpu::Cpu;
use lazymmu::mode::testing::TestArch;
use lazymmu::mode::{LazyState, MisusePolicy};
use mode_common::{AnyCaller, Design, Model, Six, ALL_DESIGNS, ALL_SIX};
use proptest::prelude::*;

/// Applies `ops` to a fresh caller of `design` and to its model, checking
/// after every operation that
/// - the hook called, the misuse reported, the state and `is_active()` are
///   the model's;
/// - `LazyState::is_active` (the task-level query) ignores interrupt
///   context;
/// - a misused operation changed nothing;
/// - the arch saw enter and leave alternate, with flushes only inside;
/// - preemption is back where it was (or held, for a per-CPU section);
/// - the misuse count is the number of misuses seen.
fn check(design: Design, ops: &[Six]) -> Result<(), String> {
    let mut caller = AnyCaller::<TestArch>::new(design, MisusePolicy::Count);
    let mut model = Model::for_design(design);
    let mut before = LazyState::IDLE;
    let mut misuses = 0;
    for (i, &op) in ops.iter().enumerate() {
        let out = caller.apply(op);
        let (hook, misuse) = model.apply(op);
        let at = || format!("{design:?} step {i} ({op:?}) of {ops:?}");
        if out.hook != hook {
            return Err(format!("{}: hook {:?}, model {:?}", at(), out.hook, hook));
        }
        if out.misuse != misuse {
            return Err(format!(
                "{}: misuse {:?}, model {:?}",
                at(),
                out.misuse,
                misuse
            ));
        }
        if out.state != model.state() {
            return Err(format!(
                "{}: state {:?}, model {:?}",
                at(),
                out.state,
                model.state()
            ));
        }
        if out.active != model.active() {
            return Err(format!(
                "{}: active {}, model {}",
                at(),
                out.active,
                model.active()
            ));
        }
        if caller.env().in_interrupt() && out.active {
            return Err(format!("{}: active in interrupt context", at()));
        }
        if misuse.is_some() && out.state != before {
            return Err(format!(
                "{}: misuse changed {:?} to {:?}",
                at(),
                before,
                out.state
            ));
        }
        if caller.arch().broken() != 0 {
            return Err(format!("{}: hooks did not alternate", at()));
        }
        if caller.arch().entered() != out.state.is_active() {
            return Err(format!(
                "{}: arch entered={} but state {:?}",
                at(),
                caller.arch().entered(),
                out.state
            ));
        }
        let held = caller.held_preemption(out.state);
        if caller.env().preempt_count() != held {
            return Err(format!(
                "{}: preempt count {}, expected {}",
                at(),
                caller.env().preempt_count(),
                held
            ));
        }
        if out.by_design {
            misuses += 1;
        }
        // The policy counted exactly what the design reported; the caller's
        // own underflows never reach it.
        if caller.misuse_count() != misuses {
            return Err(format!(
                "{}: policy counted {}, design reported {}",
                at(),
                caller.misuse_count(),
                misuses
            ));
        }
        before = out.state;
    }
    Ok(())
}

#[test]
fn every_sequence_up_to_length_8_matches_the_model() {
    // Under Miri, every sequence up to length 4 (1,296 a design), not the
    // 1.7 million of length 8.
    const LEN: usize = if cfg!(miri) { 4 } else { 8 };
    for design in ALL_DESIGNS {
        let mut ops = [Six::Enable; LEN];
        let total = ALL_SIX.len().pow(LEN as u32);
        // Each length-8 sequence checks all of its prefixes on the way, so
        // this covers every sequence of length 0..=8.
        for n in 0..total {
            let mut k = n;
            for slot in ops.iter_mut() {
                *slot = ALL_SIX[k % ALL_SIX.len()];
                k /= ALL_SIX.len();
            }
            if let Err(e) = check(design, &ops) {
                panic!("{e}");
            }
        }
    }
}

fn six() -> impl Strategy<Value = Six> {
    prop_oneof![
        4 => Just(Six::Enable),
        4 => Just(Six::Disable),
        2 => Just(Six::Pause),
        2 => Just(Six::Resume),
        1 => Just(Six::IrqEnter),
        1 => Just(Six::IrqExit),
    ]
}

/// A run of enables or pauses (to reach the 255 limits) followed by random
/// operations.
fn sequence() -> impl Strategy<Value = Vec<Six>> {
    (
        0usize..=260,
        prop::bool::ANY,
        prop::collection::vec(six(), 0..200),
    )
        .prop_map(|(run, pauses, rest)| {
            let first = if pauses { Six::Pause } else { Six::Enable };
            let mut ops = vec![first; run];
            ops.extend(rest);
            ops
        })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(if cfg!(miri) { 8 } else { 256 }))]

    #[test]
    fn counters_match_the_model(ops in sequence()) {
        prop_assert_eq!(check(Design::Counters, &ops), Ok(()));
    }

    #[test]
    fn stateful_matches_the_model(ops in sequence()) {
        prop_assert_eq!(check(Design::Stateful, &ops), Ok(()));
    }

    #[test]
    fn percpu_matches_the_model(ops in sequence()) {
        prop_assert_eq!(check(Design::PerCpu, &ops), Ok(()));
    }
}
