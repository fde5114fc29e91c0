//! How the machine's CPUs sit: SMT threads per core, cores per socket,
//! sockets; how far a cache line travels between two of them; and the
//! machines the published lazy-TLB figures come from.
//!
//! CPU ids count the threads of a core first, then the cores of a socket,
//! then the sockets: `cpu = (socket × cores + core) × threads + thread`,
//! the numbering powerpc Linux gives SMT siblings (`cpu_sibling_mask()`
//! holds consecutive ids; `cpu_first_thread_sibling()` rounds down to a
//! multiple of `threads_per_core`, arch/powerpc/include/asm/cputhreads.h).
//! x86 Linux numbers siblings apart (CPU 0 and 224 share a core on the
//! 448-thread Xeon below), which changes names, not distances.

use core::fmt;

use lazymmu::cpu::{CpuId, CpuMask, MAX_CPUS};

use crate::cost::Platform;

/// How far a cache line moves between two different CPUs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Distance {
    /// SMT siblings: the same core and its private caches.
    SmtSibling,
    /// Different cores of one socket (chip).
    SameSocket,
    /// Different sockets.
    OtherSocket,
}

impl Distance {
    /// Every distance, nearest first.
    pub const ALL: [Distance; 3] = [
        Distance::SmtSibling,
        Distance::SameSocket,
        Distance::OtherSocket,
    ];
}

/// The arrangement of a machine's CPUs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Topology {
    sockets: usize,
    cores_per_socket: usize,
    threads_per_core: usize,
}

impl Topology {
    /// `cpus` cores of one socket, one thread each: every CPU is every
    /// other's same-socket neighbour (what a small machine or a `--cpus N`
    /// run models).
    ///
    /// # Panics
    /// If `cpus` is not in `1..=MAX_CPUS`.
    pub fn flat(cpus: usize) -> Self {
        Self::new(1, cpus, 1).expect("a flat topology of 1..=MAX_CPUS CPUs")
    }

    /// `sockets` × `cores_per_socket` × `threads_per_core` CPUs.
    ///
    /// # Errors
    /// A message when a factor is zero or the product is beyond
    /// [`MAX_CPUS`].
    pub fn new(
        sockets: usize,
        cores_per_socket: usize,
        threads_per_core: usize,
    ) -> Result<Self, String> {
        if sockets == 0 || cores_per_socket == 0 || threads_per_core == 0 {
            return Err(format!(
                "topology {sockets}x{cores_per_socket}x{threads_per_core}: every factor must be at least 1"
            ));
        }
        let cpus = sockets
            .checked_mul(cores_per_socket)
            .and_then(|n| n.checked_mul(threads_per_core))
            .filter(|&n| n <= MAX_CPUS)
            .ok_or_else(|| {
                format!(
                    "topology {sockets}x{cores_per_socket}x{threads_per_core} has more than {MAX_CPUS} CPUs"
                )
            })?;
        debug_assert!(cpus >= 1);
        Ok(Self {
            sockets,
            cores_per_socket,
            threads_per_core,
        })
    }

    /// Parses `SOCKETSxCORESxTHREADS` (`16x12x8`).
    ///
    /// # Errors
    /// A message naming the expected form, or [`Topology::new`]'s.
    pub fn parse(text: &str) -> Result<Self, String> {
        let parts: Vec<&str> = text.trim().split(['x', 'X']).collect();
        let numbers: Option<Vec<usize>> = parts.iter().map(|p| p.trim().parse().ok()).collect();
        match numbers.as_deref() {
            Some(&[sockets, cores, threads]) => Self::new(sockets, cores, threads),
            _ => Err(format!(
                "`{text}`: expected SOCKETSxCORESxTHREADS, e.g. 16x12x8"
            )),
        }
    }

    /// Sockets.
    pub const fn sockets(&self) -> usize {
        self.sockets
    }

    /// Cores per socket.
    pub const fn cores_per_socket(&self) -> usize {
        self.cores_per_socket
    }

    /// SMT threads per core.
    pub const fn threads_per_core(&self) -> usize {
        self.threads_per_core
    }

    /// Number of CPUs (hardware threads).
    pub const fn cpus(&self) -> usize {
        self.sockets * self.cores_per_socket * self.threads_per_core
    }

    /// The core `cpu` belongs to, counted over the whole machine.
    pub const fn core_of(&self, cpu: CpuId) -> usize {
        cpu.index() / self.threads_per_core
    }

    /// The socket `cpu` belongs to.
    pub const fn socket_of(&self, cpu: CpuId) -> usize {
        cpu.index() / (self.threads_per_core * self.cores_per_socket)
    }

    /// How far a line moves from `from` to `to`; `None` for the same CPU.
    pub const fn distance(&self, from: CpuId, to: CpuId) -> Option<Distance> {
        if from.index() == to.index() {
            None
        } else if self.core_of(from) == self.core_of(to) {
            Some(Distance::SmtSibling)
        } else if self.socket_of(from) == self.socket_of(to) {
            Some(Distance::SameSocket)
        } else {
            Some(Distance::OtherSocket)
        }
    }

    /// The nearest of `holders` (other than `cpu`) to `cpu`: where a read
    /// of a line they share gets its data. `None` if no other CPU holds it.
    pub fn nearest(&self, holders: &CpuMask, cpu: CpuId) -> Option<Distance> {
        let [core, socket, all] = self.holders_around(holders, cpu);
        if core > 0 {
            Some(Distance::SmtSibling)
        } else if socket > 0 {
            Some(Distance::SameSocket)
        } else if all > 0 {
            Some(Distance::OtherSocket)
        } else {
            None
        }
    }

    /// The farthest of `holders` (other than `cpu`) from `cpu`: what a
    /// write that must invalidate every copy waits for. `None` if no other
    /// CPU holds it.
    pub fn farthest(&self, holders: &CpuMask, cpu: CpuId) -> Option<Distance> {
        let [core, socket, all] = self.holders_around(holders, cpu);
        if all > socket {
            Some(Distance::OtherSocket)
        } else if socket > core {
            Some(Distance::SameSocket)
        } else if core > 0 {
            Some(Distance::SmtSibling)
        } else {
            None
        }
    }

    /// How many of `holders`, `cpu` left out, share its core, its socket,
    /// and the machine (each set contains the one before). Counts whole
    /// words, so a 1,536-CPU mask costs a few dozen instructions.
    fn holders_around(&self, holders: &CpuMask, cpu: CpuId) -> [u32; 3] {
        let me = u32::from(holders.contains(cpu));
        let threads = self.threads_per_core;
        let per_socket = threads * self.cores_per_socket;
        let core_start = cpu.index() / threads * threads;
        let socket_start = cpu.index() / per_socket * per_socket;
        [
            count_between(holders, core_start, core_start + threads) - me,
            count_between(holders, socket_start, socket_start + per_socket) - me,
            holders.count() - me,
        ]
    }

    /// The SMT sibling a will-it-scale pair shares its core with: the
    /// neighbouring thread id (`cpu ^ 1`) when the core has two or more
    /// threads, else the neighbouring core.
    pub const fn partner(&self, cpu: CpuId) -> Option<CpuId> {
        let other = cpu.index() ^ 1;
        if other < self.cpus() {
            Some(CpuId::new(other))
        } else {
            None
        }
    }
}

/// CPUs of `mask` with ids in `[start, end)`.
fn count_between(mask: &CpuMask, start: usize, end: usize) -> u32 {
    let words = mask.words();
    let mut n = 0;
    let mut at = start;
    while at < end {
        let word = at / 64;
        let low = at % 64;
        let high = (end - word * 64).min(64);
        let span = if high - low == 64 {
            u64::MAX
        } else {
            ((1u64 << (high - low)) - 1) << low
        };
        n += (words[word] & span).count_ones();
        at = word * 64 + high;
    }
    n
}

impl fmt::Display for Topology {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}x{}x{}",
            self.sockets, self.cores_per_socket, self.threads_per_core
        )
    }
}

/// A machine a published figure came from: its shape, the cost table whose
/// line-transfer rows were measured on that family, and its clock (for
/// turning modelled cycles into rates per second).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NamedMachine {
    /// The name on the command line.
    pub name: &'static str,
    /// What it is.
    pub about: &'static str,
    /// Its shape.
    pub topology: Topology,
    /// Its cost table.
    pub platform: Platform,
    /// The machine as the published figures name it
    /// ([`PublishedFigure::machine`](crate::published::PublishedFigure::machine)),
    /// when figures were published for it.
    pub published_as: Option<&'static str>,
}

/// The machine of Linux 6.4's lazy-TLB shootdown figures: "a 16-socket
/// 192-core POWER8 system" (Nicholas Piggin, "powerpc/64s: enable
/// MMU_LAZY_TLB_SHOOTDOWN", commit 77f68ebeee20), with SMT8 enabled: 1,536
/// CPUs, each running one of "as many software threads as CPUs". 16
/// sockets of 12 cores is the IBM Power E880's largest configuration
/// (four nodes of four 12-core single-chip modules; IBM Redpaper
/// REDP-5137, "IBM Power Systems E870 and E880 Technical Overview").
pub const POWER8_E880: NamedMachine = NamedMachine {
    name: "power8-e880",
    about: "16 sockets x 12 cores x SMT8, the POWER8 of the lazy-TLB shootdown figures",
    topology: Topology {
        sockets: 16,
        cores_per_socket: 12,
        threads_per_core: 8,
    },
    platform: Platform::PpcHash,
    published_as: Some("16-socket 192-core POWER8"),
};

/// The 8-socket, 448-thread Intel Xeon Platinum 8176 (Skylake-SP, 28 cores
/// and 2 threads per socket) whose line transfers the x86 cost table uses
/// (Paul E. McKenney, "Is Parallel Programming Hard, And, If So, What Can
/// You Do About It?", table "CPU 0 View of Synchronization Mechanisms on
/// 8-Socket System With Intel Xeon Platinum 8176 CPUs @ 2.10GHz").
pub const XEON_8176: NamedMachine = NamedMachine {
    name: "xeon-8176",
    about: "8 sockets x 28 cores x 2 threads, the x86 of the line-transfer costs",
    topology: Topology {
        sockets: 8,
        cores_per_socket: 28,
        threads_per_core: 2,
    },
    platform: Platform::X86,
    published_as: None,
};

/// Every named machine.
pub const NAMED_MACHINES: [NamedMachine; 2] = [POWER8_E880, XEON_8176];

/// The named machine called `name`.
pub fn named_machine(name: &str) -> Option<&'static NamedMachine> {
    NAMED_MACHINES.iter().find(|m| m.name == name.trim())
}

/// A machine for `--topology`: a named one, or `SOCKETSxCORESxTHREADS` on
/// the x86 cost table.
///
/// # Errors
/// A message listing the forms accepted.
pub fn parse_machine(text: &str) -> Result<(Topology, Platform), String> {
    if let Some(m) = named_machine(text) {
        return Ok((m.topology, m.platform));
    }
    Topology::parse(text)
        .map(|t| (t, Platform::X86))
        .map_err(|e| {
            let names: Vec<&str> = NAMED_MACHINES.iter().map(|m| m.name).collect();
            format!("{e}, or one of {}", names.join(", "))
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn distances_follow_threads_cores_and_sockets() {
        let t = Topology::new(2, 3, 4).unwrap();
        assert_eq!(t.cpus(), 24);
        let cpu = CpuId::new;
        assert_eq!(t.distance(cpu(5), cpu(5)), None);
        assert_eq!(t.distance(cpu(4), cpu(7)), Some(Distance::SmtSibling));
        assert_eq!(t.distance(cpu(3), cpu(4)), Some(Distance::SameSocket));
        assert_eq!(t.distance(cpu(0), cpu(11)), Some(Distance::SameSocket));
        assert_eq!(t.distance(cpu(11), cpu(12)), Some(Distance::OtherSocket));
        assert_eq!(t.distance(cpu(23), cpu(0)), Some(Distance::OtherSocket));
        assert_eq!((t.core_of(cpu(23)), t.socket_of(cpu(23))), (5, 1));
        let flat = Topology::flat(4);
        assert_eq!(flat.distance(cpu(0), cpu(3)), Some(Distance::SameSocket));
        assert_eq!(flat.to_string(), "1x4x1");
    }

    #[test]
    fn the_nearest_and_farthest_holders_of_a_line() {
        let t = Topology::new(4, 6, 8).unwrap();
        let cpu = CpuId::new;
        let holders = CpuMask::single(cpu(100)).with(cpu(101)).with(cpu(97));
        // cpu 100 is core 12 (96..104) of socket 2 (96..144).
        assert_eq!(t.nearest(&holders, cpu(100)), Some(Distance::SmtSibling));
        assert_eq!(t.farthest(&holders, cpu(100)), Some(Distance::SmtSibling));
        let holders = holders.with(cpu(143));
        assert_eq!(t.farthest(&holders, cpu(100)), Some(Distance::SameSocket));
        let holders = holders.with(cpu(5));
        assert_eq!(t.farthest(&holders, cpu(100)), Some(Distance::OtherSocket));
        assert_eq!(t.nearest(&holders, cpu(100)), Some(Distance::SmtSibling));
        assert_eq!(t.nearest(&holders, cpu(6)), Some(Distance::SmtSibling));
        assert_eq!(t.nearest(&holders, cpu(8)), Some(Distance::SameSocket));
        assert_eq!(t.nearest(&holders, cpu(191)), Some(Distance::OtherSocket));
        assert_eq!(t.nearest(&CpuMask::single(cpu(7)), cpu(7)), None);
        assert_eq!(t.farthest(&CpuMask::EMPTY, cpu(7)), None);
        let every = CpuMask::first(t.cpus());
        assert_eq!(count_between(&every, 60, 190), 130);
        assert_eq!(count_between(&every, 60, 200), 132, "CPUs 60 to 191");
        assert_eq!(count_between(&every, 64, 128), 64);
        assert_eq!(count_between(&every, 3, 3), 0);
    }

    #[test]
    fn partners_are_neighbouring_threads() {
        let t = POWER8_E880.topology;
        assert_eq!(t.cpus(), 1536);
        assert_eq!(t.partner(CpuId(6)), Some(CpuId(7)));
        assert_eq!(t.partner(CpuId(7)), Some(CpuId(6)));
        assert_eq!(
            t.distance(CpuId(6), CpuId(7)),
            Some(Distance::SmtSibling),
            "a will-it-scale pair shares a core"
        );
        assert_eq!(Topology::flat(3).partner(CpuId(2)), None);
    }

    #[test]
    fn topologies_parse_and_refuse_bad_shapes() {
        assert_eq!(Topology::parse("16x12x8").unwrap(), POWER8_E880.topology);
        assert_eq!(Topology::parse(" 2X3x4 ").unwrap().cpus(), 24);
        assert!(Topology::parse("16x12").is_err());
        assert!(Topology::parse("16x0x8")
            .unwrap_err()
            .contains("at least 1"));
        assert!(Topology::parse("32x16x8").unwrap_err().contains("2048"));
        assert!(Topology::parse("axbxc").is_err());
        assert_eq!(
            parse_machine("power8-e880").unwrap(),
            (POWER8_E880.topology, Platform::PpcHash)
        );
        assert_eq!(parse_machine("16x16x8").unwrap().0.cpus(), MAX_CPUS);
        assert!(parse_machine("power9").unwrap_err().contains("xeon-8176"));
    }
}
