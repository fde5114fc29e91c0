//! The program-trace format `lazymmu record` writes: any bytes read and
//! replayed into the address-space model end in a summary or an error
//! naming a line, never a panic.
#![no_main]

use lazymmu_sim::program_trace::summarize;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Err(error) = summarize(data, "fuzz.trace") {
        assert_eq!(error.file, "fuzz.trace", "errors name the file");
    }
});
