//! `lazymmu replay`: any bytes as a trace of lazy-mode operations, through
//! every design. A bad line must end the replay with an error, never a
//! panic, and a good trace prints exactly one line per operation.
#![no_main]

use lazymmu_cli::replay::{replay_input, Design};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    for design in [Design::Counters, Design::Stateful, Design::Percpu] {
        let mut out = Vec::new();
        let result = replay_input(design, Box::new(data), "fuzz".to_owned(), &mut out);
        if result.is_ok() {
            let operations = data
                .split(|&b| b == b'\n')
                .map(|line| {
                    let line = String::from_utf8_lossy(line);
                    let code = line.split('#').next().unwrap_or("").trim().to_owned();
                    code
                })
                .filter(|code| !code.is_empty())
                .count();
            let printed = out.iter().filter(|&&b| b == b'\n').count();
            assert_eq!(printed, operations, "{design:?}: one line per operation");
        }
    }
});
