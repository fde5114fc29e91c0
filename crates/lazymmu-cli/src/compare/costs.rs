//! `--cost NAME=CYCLES`: clap's value parser for the option. The text is
//! parsed by the simulator's one cost table
//! ([`lazymmu_sim::cost::parse_override`]); this adds the range a cost
//! may take, so that no total can leave the 64-bit range.

use lazymmu_sim::cost::{parse_override, Cost};

use crate::text::thousands;

/// The largest cost `--cost` accepts: a primitive that took a second at
/// 1 GHz. Above it, totals could leave the 64-bit range on the largest
/// runs (`--pages 1048576`: about 10^7 primitives of one kind).
pub const MAX_CYCLES: u64 = 1_000_000_000;

/// One `--cost` override: a row of the cost table and its cycles.
pub type Override = (Cost, u64);

/// Parses `NAME=CYCLES`.
///
/// # Errors
/// The cost table's message for a malformed override or an unknown name
/// (listing the known ones); a count above [`MAX_CYCLES`].
pub fn parse(text: &str) -> Result<Override, String> {
    let (cost, cycles) = parse_override(text)?;
    if cycles > MAX_CYCLES {
        return Err(format!(
            "`{text}`: cycles must be at most {}",
            thousands(MAX_CYCLES)
        ));
    }
    Ok((cost, cycles))
}

/// The text `--cost` took for `cost`.
pub fn argument(&(cost, cycles): &Override) -> String {
    format!("{}={cycles}", cost.name())
}

#[cfg(test)]
mod tests {
    use super::*;
    use lazymmu_sim::cost::{Primitive, Software};

    #[test]
    fn primitives_and_software_costs() {
        assert_eq!(parse("dsb=7"), Ok((Cost::Primitive(Primitive::Dsb), 7)));
        assert_eq!(
            parse(" switch = 10 "),
            Ok((Cost::Software(Software::ContextSwitch), 10))
        );
        assert_eq!(argument(&parse("ipi=5").unwrap()), "ipi=5");
    }

    #[test]
    fn bad_overrides_say_why() {
        assert!(parse("dsb").unwrap_err().contains("expected NAME=CYCLES"));
        assert!(parse("warp=3").unwrap_err().contains("`warp`"));
        assert!(parse("dsb=lots").unwrap_err().contains("bad cycle count"));
        assert!(parse("hypercall=18446744073709551615")
            .unwrap_err()
            .contains("at most 1,000,000,000"));
        assert_eq!(parse("dsb=1000000000").unwrap().1, MAX_CYCLES);
    }
}
