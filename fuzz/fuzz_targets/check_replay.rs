//! `lazymmu check --replay`: any text as a trace `SCENARIO:C0.C1...`. A
//! trace that parses prints back as itself; one that names a scenario
//! replays under the variant the first byte picks, and replaying it again
//! gives the same outcome (a replay is deterministic).
#![no_main]

use lazymmu_sim::choice::Trace;
use lazymmu_sim::scenarios::{self, Variant};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&pick, text)) = data.split_first() else {
        return;
    };
    let Ok(text) = std::str::from_utf8(text) else {
        return;
    };
    let Ok(trace) = text.parse::<Trace>() else {
        return;
    };
    assert_eq!(
        trace.to_string().parse::<Trace>().as_ref(),
        Ok(&trace),
        "a trace prints back as itself"
    );
    let Some(scenario) = scenarios::find(&trace.scenario) else {
        return;
    };
    let variant = Variant::ALL[usize::from(pick) % Variant::ALL.len()];
    let Some(first) = scenarios::replay_trace(&scenario, variant, &trace.picks) else {
        return;
    };
    let again = scenarios::replay_trace(&scenario, variant, &trace.picks);
    assert_eq!(again.as_ref(), Some(&first), "replay is deterministic");
});
