//! Shared cache lines on the machine: a transfer costs what its distance in
//! the topology costs, CPUs that want one line at once take it one after
//! another, and powerpc's load-reserve / store-conditional retries when
//! another CPU stores first.

use std::rc::Rc;

use lazymmu::addr::SpaceId;
use lazymmu::cpu::CpuId;
use lazymmu::mm::{LineAccess, SharedLine};
use lazymmu_sim::cost::{Cost, Distance, Platform};
use lazymmu_sim::machine::{Machine, MachineConfig, Topology};

const LINE: SharedLine = SharedLine::SpaceCount(SpaceId(1));

fn machine(topology: Topology, platform: Platform) -> Rc<Machine> {
    Rc::new(Machine::new(MachineConfig::with_topology(
        topology, platform,
    )))
}

fn cost(m: &Machine, d: Distance) -> u64 {
    m.config().cost.cycles(Cost::Line(d))
}

/// `cpu` makes `access` to the line, outside a timed run.
fn touch(m: &Machine, cpu: usize, access: LineAccess) {
    m.set_cpu(CpuId::new(cpu));
    m.line_access(LINE, access);
}

#[test]
fn contenders_on_one_line_take_their_transfers_one_after_another() {
    // CPU 0 owns the line; CPUs 1..=16 all increment it at time 0 (x86: a
    // `lock`-prefixed increment holds the line for its transfer).
    let n = 16u64;
    let m = machine(Topology::flat(n as usize + 1), Platform::X86);
    touch(&m, 0, LineAccess::Atomic);
    m.clear_counts();
    let d = cost(&m, Distance::SameSocket);
    let cpus: Vec<CpuId> = (1..=n as usize).map(CpuId::new).collect();
    let driver = m.clone();
    m.run_timed(&cpus, move |_| driver.line_access(LINE, LineAccess::Atomic));
    let mut finished: Vec<u64> = cpus.iter().map(|&c| m.clock_of(c)).collect();
    finished.sort_unstable();
    // The k-th finishes after k transfers: each waited for those before.
    assert_eq!(finished, (1..=n).map(|k| k * d).collect::<Vec<_>>());
    assert_eq!(m.counts().get(Cost::Line(Distance::SameSocket)), n);
    assert_eq!(m.line_wait_cycles(), d * (0..n).sum::<u64>());
    assert_eq!(m.elapsed(), n * d);
    assert_eq!(m.hottest_line_transfers(), n);
}

#[test]
fn readers_of_a_line_do_not_queue_behind_one_another() {
    let n = 8u64;
    let m = machine(Topology::flat(n as usize + 1), Platform::X86);
    touch(&m, 0, LineAccess::Write);
    m.clear_counts();
    let cpus: Vec<CpuId> = (1..=n as usize).map(CpuId::new).collect();
    let driver = m.clone();
    m.run_timed(&cpus, move |_| driver.line_access(LINE, LineAccess::Read));
    let d = cost(&m, Distance::SameSocket);
    assert!(cpus.iter().all(|&c| m.clock_of(c) == d));
    assert_eq!(m.line_wait_cycles(), 0);
}

#[test]
fn a_transfer_costs_what_its_distance_costs() {
    // 2 sockets x 2 cores x 2 threads: core {0, 1}, socket {0..4}.
    let topology = Topology::new(2, 2, 2).unwrap();
    for platform in [Platform::X86, Platform::PpcHash] {
        let m = machine(topology, platform);
        let [smt, socket, remote] = Distance::ALL.map(|d| cost(&m, d));
        assert!(smt < socket && socket < remote, "{platform:?}");
        // Stores move the line 0 -> 1 -> 3 -> 4: an SMT sibling, another
        // core of the socket, another socket.
        touch(&m, 0, LineAccess::Write);
        assert_eq!(m.elapsed(), 0, "the first store finds no other copy");
        touch(&m, 1, LineAccess::Write);
        assert_eq!(m.clock_of(CpuId(1)), smt);
        touch(&m, 3, LineAccess::Write);
        assert_eq!(m.clock_of(CpuId(3)), smt + socket);
        touch(&m, 4, LineAccess::Write);
        assert_eq!(m.clock_of(CpuId(4)), smt + socket + remote);
        for d in Distance::ALL {
            assert_eq!(m.counts().get(Cost::Line(d)), 1, "{platform:?} {d:?}");
        }
        // A read gets the line from the nearest copy: CPU 5 from its
        // sibling 4, CPU 2 from the other socket (no copy is nearer), CPU
        // 0 from CPU 2 in its own socket.
        m.clear_counts();
        touch(&m, 5, LineAccess::Read);
        touch(&m, 2, LineAccess::Read);
        touch(&m, 0, LineAccess::Read);
        let got: Vec<u64> = Distance::ALL
            .iter()
            .map(|&d| m.counts().get(Cost::Line(d)))
            .collect();
        assert_eq!(got, [1, 1, 1], "{platform:?}");
        // A store invalidates every copy, costed by the farthest.
        m.clear_counts();
        touch(&m, 1, LineAccess::Write);
        assert_eq!(m.counts().get(Cost::Line(Distance::OtherSocket)), 1);
        assert_eq!(m.clock_of(CpuId(1)), remote);
    }
}

#[test]
fn store_conditionals_retry_when_another_cpu_stores_first() {
    // Three sockets of one CPU; CPU 2 modified the line, then CPUs 0 and 1
    // increment it at time 0.
    let topology = Topology::new(3, 1, 1).unwrap();
    let run = |platform| {
        let m = machine(topology, platform);
        touch(&m, 2, LineAccess::Write);
        m.clear_counts();
        let driver = m.clone();
        m.run_timed(&[CpuId(0), CpuId(1)], move |_| {
            driver.line_access(LINE, LineAccess::Atomic)
        });
        (
            m.elapsed(),
            m.stcx_failures(),
            cost(&m, Distance::OtherSocket),
        )
    };
    // x86: CPU 0 takes the line from CPU 2, CPU 1 from CPU 0 after it.
    let (elapsed, failures, remote) = run(Platform::X86);
    assert_eq!((elapsed, failures), (2 * remote, 0));
    // powerpc: both load the line at once (reads do not queue); CPU 0's
    // store-conditional invalidates CPU 1's copy, so CPU 1's fails, and it
    // loads the line again from CPU 0 and stores: four transfers in a row.
    let (elapsed, failures, remote) = run(Platform::PpcHash);
    assert_eq!((elapsed, failures), (4 * remote, 1));
    // Alone, the loop never retries.
    let m = machine(topology, Platform::PpcHash);
    touch(&m, 2, LineAccess::Write);
    touch(&m, 0, LineAccess::Atomic);
    touch(&m, 1, LineAccess::Atomic);
    assert_eq!(m.stcx_failures(), 0);
}

#[test]
fn a_wake_up_sent_before_the_wait_is_not_lost() {
    let m = machine(Topology::flat(2), Platform::X86);
    let driver = m.clone();
    m.run_timed(&[CpuId(0), CpuId(1)], move |cpu| {
        let other = CpuId::new(1 - cpu.index());
        if cpu == CpuId(0) {
            driver.wake(other, 500);
            driver.block();
        } else {
            driver.block();
            driver.wake(other, 700);
        }
    });
    assert_eq!(m.violation_count(), 0);
    assert_eq!((m.clock_of(CpuId(0)), m.clock_of(CpuId(1))), (700, 500));
}

#[test]
fn a_wait_nobody_ends_is_reported() {
    let m = machine(Topology::flat(2), Platform::X86);
    let driver = m.clone();
    m.run_timed(&[CpuId(0)], move |_| driver.block());
    assert_eq!(m.violation_count(), 1);
}

/// Cycles of `ns` nanoseconds at `mhz`, rounded: how the cost table turns
/// a published latency into its row.
fn cycles_of(ns: f64, mhz: f64) -> u64 {
    (ns * mhz / 1_000.0).round() as u64
}

#[test]
fn the_rows_are_the_cited_latencies_at_the_cited_clocks() {
    // x86: perfbook, table "CPU 0 View of Synchronization Mechanisms on
    // 8-Socket System With Intel Xeon Platinum 8176 CPUs @ 2.10GHz", blind
    // CAS: 7.2 ns (hyperthreads), 47.5 ns (cores of a socket), 148.8 ns
    // (sockets). powerpc: core-to-core-latency on two POWER7 sockets, 70,
    // 173 and 443 ns, at the POWER8 E880's 4.02 GHz (IBM REDP-5137).
    for (platform, mhz, ns) in [
        (Platform::X86, 2_100.0, [7.2, 47.5, 148.8]),
        (Platform::PpcHash, 4_020.0, [70.0, 173.0, 443.0]),
    ] {
        let m = machine(Topology::flat(2), platform);
        assert_eq!(m.config().cost.clock_mhz(), Some(mhz as u64));
        for (d, ns) in Distance::ALL.into_iter().zip(ns) {
            assert_eq!(cost(&m, d), cycles_of(ns, mhz), "{platform:?} {d:?}");
        }
    }
}

#[test]
fn a_line_bouncing_between_sockets_costs_the_cross_socket_figure_per_transfer() {
    // Two sockets of one CPU each; the CPUs store to the line in turn, 10
    // stores each. The first store finds no copy; each of the other 19
    // takes the line from the other socket, after the transfer before it:
    // 19 x 148.8 ns = 19 x 312 cycles at 2.1 GHz on x86, 19 x 443 ns =
    // 19 x 1,781 cycles at 4.02 GHz on powerpc.
    for (platform, per_transfer) in [
        (Platform::X86, cycles_of(148.8, 2_100.0)),
        (Platform::PpcHash, cycles_of(443.0, 4_020.0)),
    ] {
        let m = machine(Topology::new(2, 1, 1).unwrap(), platform);
        for store in 0..20 {
            touch(&m, store % 2, LineAccess::Write);
        }
        assert_eq!(m.counts().get(Cost::Line(Distance::OtherSocket)), 19);
        assert_eq!(m.elapsed(), 19 * per_transfer, "{platform:?}");
        assert_eq!(m.hottest_line_transfers(), 19);
        // Two SMT siblings bouncing the same line pay the sibling figure.
        let m = machine(Topology::new(1, 1, 2).unwrap(), platform);
        for store in 0..20 {
            touch(&m, store % 2, LineAccess::Write);
        }
        assert_eq!(m.elapsed(), 19 * cost(&m, Distance::SmtSibling));
    }
}

#[test]
fn store_conditional_failures_grow_with_the_contenders() {
    // n CPUs of one socket increment a line another CPU modified, all at
    // time 0. Each round every contender left loads the line (reads share
    // it, so they load together), the first store-conditional wins and
    // invalidates the others' reservations: n - 1 fail, then n - 2, ...,
    // n(n - 1)/2 failures in all; every load and every winning store
    // moves the line (a store invalidates the copies the loads made):
    // n + n(n - 1)/2 loads and n stores. On x86 a `lock`-prefixed
    // increment holds the line through its transfer: no retries, n
    // transfers.
    for n in [1u64, 2, 4, 8, 16] {
        let cpus: Vec<CpuId> = (1..=n as usize).map(CpuId::new).collect();
        let (mut failures, mut transfers) = (Vec::new(), Vec::new());
        for platform in [Platform::X86, Platform::PpcHash] {
            let m = machine(Topology::flat(n as usize + 1), platform);
            touch(&m, 0, LineAccess::Write);
            m.clear_counts();
            let driver = m.clone();
            m.run_timed(&cpus, move |_| driver.line_access(LINE, LineAccess::Atomic));
            assert_eq!(m.violation_count(), 0);
            failures.push(m.stcx_failures());
            transfers.push(m.hottest_line_transfers());
        }
        let retries = n * (n - 1) / 2;
        assert_eq!(failures, [0, retries], "{n} contenders");
        assert_eq!(transfers, [n, n + retries + n], "{n} contenders");
    }
}
