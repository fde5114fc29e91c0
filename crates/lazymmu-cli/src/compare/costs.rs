//! `--cost NAME=CYCLES`: the one place it is parsed. A name is a primitive
//! of the cost model (`dsb`, `ipte`, ...) or a cost of the MM-neighbour
//! models (`switch`, `line_transfer`, ...); a name both know (`ipi`,
//! `full_flush`, `invlpg`, `key_write`) sets both.

use lazymmu_sim::cost::Primitive;
use lazymmu_sim::neighbours::cost::NeighbourCosts;

use crate::text::thousands;

/// The largest cost `--cost` accepts: a primitive that took a second at
/// 1 GHz. Above it, totals could leave the 64-bit range on the largest
/// runs (`--pages 1048576`: about 10^7 primitives of one kind).
pub const MAX_CYCLES: u64 = 1_000_000_000;

/// One `--cost` override.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Cost {
    /// The name as given.
    pub name: &'static str,
    /// Cycles.
    pub cycles: u64,
}

impl Cost {
    /// The primitive it sets, if it names one.
    pub fn primitive(&self) -> Option<Primitive> {
        Primitive::from_name(self.name)
    }

    /// Whether it sets a cost of the neighbour models.
    pub fn is_neighbour(&self) -> bool {
        NeighbourCosts::NAMES.contains(&self.name)
    }

    /// The text `--cost` took.
    pub fn argument(&self) -> String {
        format!("{}={}", self.name, self.cycles)
    }
}

/// Every name `--cost` accepts: primitives, then the neighbour costs that
/// are not also primitives.
pub fn names() -> Vec<&'static str> {
    let mut names: Vec<&'static str> = Primitive::ALL.iter().map(|p| p.name()).collect();
    for name in NeighbourCosts::NAMES {
        if !names.contains(&name) {
            names.push(name);
        }
    }
    names
}

/// Parses `NAME=CYCLES` (clap's value parser for `--cost`).
///
/// # Errors
/// A message naming what is wrong: no `=`, an unknown name (listing the
/// known ones), or a count that is not a number from 0 to [`MAX_CYCLES`].
pub fn parse(text: &str) -> Result<Cost, String> {
    let (name, cycles) = text
        .split_once('=')
        .ok_or_else(|| "expected NAME=CYCLES".to_owned())?;
    let name = name.trim();
    let known = names();
    let Some(&name) = known.iter().find(|&&n| n == name) else {
        return Err(format!(
            "unknown cost `{name}` (expected one of {})",
            known.join(", ")
        ));
    };
    let cycles = cycles
        .trim()
        .parse::<u64>()
        .ok()
        .filter(|&c| c <= MAX_CYCLES)
        .ok_or_else(|| {
            format!(
                "cycles must be a whole number from 0 to {}",
                thousands(MAX_CYCLES)
            )
        })?;
    Ok(Cost { name, cycles })
}

/// The overrides of primitives, for a simulator run.
pub fn primitives(costs: &[Cost]) -> Vec<(Primitive, u64)> {
    costs
        .iter()
        .filter_map(|c| Some((c.primitive()?, c.cycles)))
        .collect()
}

/// The neighbour models' costs with the overrides applied.
pub fn neighbour_costs(costs: &[Cost]) -> NeighbourCosts {
    let mut table = NeighbourCosts::default();
    for cost in costs.iter().filter(|c| c.is_neighbour()) {
        // `parse` admitted only known names.
        let _ = table.set(cost.name, cost.cycles);
    }
    table
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_primitive_a_neighbour_cost_and_a_shared_name() {
        let dsb = parse("dsb=7").unwrap();
        assert_eq!(
            (dsb.primitive(), dsb.is_neighbour()),
            (Some(Primitive::Dsb), false)
        );
        let switch = parse(" switch = 10 ").unwrap();
        assert_eq!((switch.primitive(), switch.is_neighbour()), (None, true));
        let ipi = parse("ipi=5").unwrap();
        assert_eq!(
            (ipi.primitive(), ipi.is_neighbour()),
            (Some(Primitive::Ipi), true)
        );
        let all = [dsb, switch, ipi];
        assert_eq!(primitives(&all), [(Primitive::Dsb, 7), (Primitive::Ipi, 5)]);
        let table = neighbour_costs(&all);
        assert_eq!((table.switch, table.ipi), (10, 5));
    }

    #[test]
    fn bad_overrides_say_why() {
        assert_eq!(parse("dsb").unwrap_err(), "expected NAME=CYCLES");
        assert!(parse("warp=3")
            .unwrap_err()
            .starts_with("unknown cost `warp`"));
        assert!(parse("dsb=lots").unwrap_err().starts_with("cycles must be"));
        assert!(parse("hypercall=18446744073709551615")
            .unwrap_err()
            .contains("1,000,000,000"));
        assert_eq!(parse("dsb=1000000000").unwrap().cycles, MAX_CYCLES);
    }
}
