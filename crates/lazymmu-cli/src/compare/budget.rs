//! How much memory a comparison needs, estimated before it starts, and the
//! limit it must fit in (`--max-memory`, by default half the memory
//! available when it starts).
//!
//! The runs are made one after the other and each keeps only its counts
//! once done, so a comparison needs about as much as its largest run,
//! plus what the allocator keeps of the runs before it. A run's peak
//! resident memory grows with the pages its tasks touch (the simulated page
//! tables, the TLBs' and the checker's shadow state, the schedule's trace)
//! and, for `vmalloc-grow`, with the processes. The constants come from the
//! peak resident set (`/usr/bin/time -f %M`) of the release build, on the
//! machine of the README's benchmarks:
//!
//! | command | peak |
//! |---|---|
//! | `lazymmu compare` (defaults) | 30 MB |
//! | `lazymmu compare --workload <the 8 PTE workloads>` | 11 MB |
//! | same, `--pages 65536` (with the neighbours) | 66 MB |
//! | same, `--pages 262144` | 191 MB |
//! | `lazymmu compare --pages 1048576` | 559 MB |
//! | `lazymmu compare --backend arm64-poe --workload kasan --pages 1048576` | 532 MB |
//! | `lazymmu compare --workload vmalloc-grow --policy push --processes 100000` | 204 MB |
//!
//! `tests/compare_memory.rs` checks that the estimate stays above what a
//! run really takes, and not far above.

use anyhow::Result;

use lazymmu_sim::neighbours::NeighbourWorkload;
use lazymmu_sim::scenario::RunConfig;

use super::neighbours;
use super::CompareArgs;
use crate::exit::usage;

/// The resident memory of the command with its smallest runs: the binary,
/// its libraries, the allocator's first arenas, the designs' comparison.
/// Measured: 11 MB for every PTE workload at 4,096 pages.
const BASE: u64 = 10 << 20;
/// Peak bytes per page of one task's workload. Measured: 690 bytes a page
/// over the whole matrix at 262,144 pages, 540 at 1,048,576; 850 for
/// 65,536 pages with the neighbours' runs before them. The largest since
/// the workloads became system calls (two calls a task) and the checks
/// keep each task's changed pages until it finishes: `arm64-poe` `kasan`,
/// whose peak grows by 1,180 bytes a page from 4,096 to 16,384 pages,
/// 1,580 from 32,768 to 65,536 and 1,070 from 65,536 to 131,072. With a
/// margin.
const PER_PAGE: u64 = 1_800;
/// Peak bytes per process of `vmalloc-grow`. Measured: 204 MB at 100,000
/// processes (`push`, the policy that copies entries into every
/// process's table); with a margin.
const PER_PROCESS: u64 = 2_400;

/// The estimated peak resident memory of a comparison.
pub fn estimate(
    configs: &[RunConfig],
    selection: &neighbours::Selection,
    processes: &[usize],
) -> u64 {
    let pages = configs.iter().map(|c| c.pages).max().unwrap_or(0);
    let processes = if selection
        .workloads
        .contains(&NeighbourWorkload::VmallocGrow)
    {
        processes.iter().copied().max().unwrap_or(0) as u64
    } else {
        0
    };
    BASE + pages * PER_PAGE + processes * PER_PROCESS
}

/// Parses a size: bytes, or a number with `K`, `M` or `G` (powers of
/// 1,024), as `--max-memory` takes it.
///
/// # Errors
/// A message saying what a size looks like.
pub fn parse_size(text: &str) -> Result<u64, String> {
    let text = text.trim();
    let (number, unit) = match text.char_indices().find(|(_, c)| c.is_ascii_alphabetic()) {
        Some((i, _)) => text.split_at(i),
        None => (text, ""),
    };
    let shift = match unit.to_ascii_uppercase().trim_end_matches(['B', 'I']) {
        "" => 0,
        "K" => 10,
        "M" => 20,
        "G" => 30,
        "T" => 40,
        _ => {
            return Err(format!(
                "`{text}`: expected bytes or a number with K, M or G"
            ))
        }
    };
    let number: u64 = number
        .trim()
        .parse()
        .map_err(|_| format!("`{text}`: expected bytes or a number with K, M or G"))?;
    number
        .checked_mul(1 << shift)
        .ok_or_else(|| format!("`{text}` is too large"))
}

/// `bytes` for people: `1.5 GB`, `60 MB`.
pub fn format_size(bytes: u64) -> String {
    const UNITS: [(&str, u32); 3] = [("GB", 30), ("MB", 20), ("KB", 10)];
    for (name, shift) in UNITS {
        let unit = 1u64 << shift;
        if bytes >= unit {
            let value = bytes as f64 / unit as f64;
            return if value < 10.0 {
                format!("{value:.1} {name}")
            } else {
                format!("{value:.0} {name}")
            };
        }
    }
    format!("{bytes} bytes")
}

/// `MemAvailable` of `/proc/meminfo`, when there is one.
fn available_memory() -> Option<u64> {
    let info = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = info.lines().find(|l| l.starts_with("MemAvailable:"))?;
    let kib: u64 = line
        .trim_start_matches("MemAvailable:")
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()?;
    Some(kib * 1024)
}

/// Without `--max-memory` and without `/proc/meminfo`: 2 GiB.
const FALLBACK_LIMIT: u64 = 2 << 30;

/// Refuses a comparison whose estimate is over the limit.
///
/// # Errors
/// A usage error naming the estimate, the limit, where the limit came from
/// and how to raise it.
pub fn check(
    configs: &[RunConfig],
    selection: &neighbours::Selection,
    args: &CompareArgs,
) -> Result<()> {
    let need = estimate(configs, selection, &args.processes);
    let (limit, origin) = match args.max_memory {
        Some(limit) => (limit, "set by --max-memory".to_owned()),
        None => match available_memory() {
            Some(available) => (
                available / 2,
                format!("half the {} available now", format_size(available)),
            ),
            None => (FALLBACK_LIMIT, "the default".to_owned()),
        },
    };
    if need > limit {
        return Err(usage(format!(
            "this comparison needs about {} of memory, over the limit of {} ({origin}); \
             use fewer --pages or --processes, or raise the limit with --max-memory {}",
            format_size(need),
            format_size(limit),
            suggest(need)
        )));
    }
    Ok(())
}

/// A `--max-memory` value a little over `need`, in whole units.
fn suggest(need: u64) -> String {
    let mib = need.div_ceil(1 << 20);
    if mib >= 1024 {
        format!("{}G", mib.div_ceil(1024))
    } else {
        format!("{mib}M")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_parse_with_units() {
        assert_eq!(parse_size("4096"), Ok(4096));
        assert_eq!(parse_size("512K"), Ok(512 << 10));
        assert_eq!(parse_size("100M"), Ok(100 << 20));
        assert_eq!(parse_size("2g"), Ok(2 << 30));
        assert_eq!(parse_size("3GiB"), Ok(3 << 30));
        assert!(parse_size("lots").is_err());
        assert!(parse_size("5X").is_err());
        assert!(parse_size("99999999999G").is_err());
    }

    #[test]
    fn sizes_print_for_people() {
        assert_eq!(format_size(60 << 20), "60 MB");
        assert_eq!(format_size(1536 << 20), "1.5 GB");
        assert_eq!(format_size(100), "100 bytes");
        assert_eq!(suggest(900 << 20), "900M");
        assert_eq!(suggest((3 << 30) + 1), "4G");
    }
}
