//! `lazymmu calibrate`: times the real system calls whose kernel work the
//! simulator charges — mmap and first touch, fork, exit, munmap, mprotect,
//! mremap, and a vmalloc reached through `bpf(BPF_MAP_CREATE)` — on the
//! Linux kernel this runs on, at several sizes, and fits each call's
//! per-call and per-page cost (see `lazymmu_sim::calibration`).
//!
//! How the samples are taken, so the figures can be trusted on a shared,
//! noisy machine:
//! - the process is pinned to one CPU (`sched_setaffinity`), and so are
//!   the children it forks, so a fork, its child and the child's exit run
//!   where they are timed, and the TLB flushes are those of a
//!   single-threaded program that stays on one CPU;
//! - transparent huge pages are off for the process (`PR_SET_THP_DISABLE`)
//!   and for every mapping (`MADV_NOHUGEPAGE`): each page is one PTE;
//! - every round runs every size once, in a fresh random order, so a burst
//!   of load from other work, and what one size leaves behind for the next
//!   (cold caches, deferred frees), land on all sizes alike; the first
//!   rounds are untimed warm-up;
//! - each interval is read from the TSC between `lfence`s; the TSC
//!   frequency is measured against `CLOCK_MONOTONIC_RAW` before and after,
//!   and the difference is recorded;
//! - per size the median is kept with its quartiles and extremes, and the
//!   line is fitted through the medians with relative weights, never below
//!   zero (a clamped coefficient is flagged in the file and the table).
//!
//! Each round, for N pages: `mmap` N pages (timed), touch each (timed as
//! one interval: N faults), `mprotect` read-only then read-write (one
//! sample: the mean of the two), `mremap` to another address and back (one
//! sample: the mean; each move also replaces an empty placeholder at its
//! destination), `fork` (the parent's return, the child's first
//! instruction, then the child's `_exit` until `waitpid` returns), and
//! `munmap` (the pages are the parent's alone again). Then, in rounds of their own because a closed map is freed
//! later by a workqueue that would land in the other intervals,
//! `bpf(BPF_MAP_CREATE)` of an N-page array (sizes of 8 pages and up, where
//! it takes the vmalloc path), closed untimed.

use std::fs;
use std::io::{self, Write};
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::Args;
use lazymmu_sim::calibration::{Calibration, Call, CallCost, Coefficient, Fit, SizeSamples};

/// Options of `lazymmu calibrate`.
#[derive(Args, Debug, Clone)]
#[command(after_help = crate::exit::STATUSES)]
pub struct CalibrateArgs {
    /// Pages per call (comma-separated, at least two distinct sizes).
    #[arg(long, value_delimiter = ',', default_value = "1,16,64,512,4096,16384",
          value_parser = clap::value_parser!(u64).range(1..=262_144))]
    pub sizes: Vec<u64>,
    /// Timed rounds over every size.
    #[arg(long, default_value_t = 51, value_parser = clap::value_parser!(u32).range(1..=10_000))]
    pub repetitions: u32,
    /// Untimed rounds before them.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u32).range(0..=1_000))]
    pub warmup: u32,
    /// CPU to pin to (default: the one this starts on).
    #[arg(long, conflicts_with = "no_pin")]
    pub cpu: Option<u32>,
    /// Do not pin: let the scheduler place the process and its children.
    #[arg(long)]
    pub no_pin: bool,
    /// Write the calibration file (JSON) here.
    #[arg(long, value_name = "FILE")]
    pub output: Option<PathBuf>,
}

/// Runs `lazymmu calibrate`.
///
/// # Errors
/// Bad sizes, a system call that fails where it must not, a machine that
/// is not Linux on x86-64, or an output file that cannot be written.
pub fn run(args: &CalibrateArgs) -> Result<ExitCode> {
    let mut sizes = args.sizes.clone();
    sizes.sort_unstable();
    sizes.dedup();
    if sizes.len() < 2 {
        return Err(crate::exit::usage(
            "--sizes needs at least two distinct sizes to fit a per-call and a per-page cost",
        ));
    }
    // Refuse an output that cannot be written before measuring, not after;
    // opening for append leaves an existing file as it is until the end.
    let created = match &args.output {
        Some(path) => {
            let existed = path.exists();
            fs::OpenOptions::new()
                .append(true)
                .create(true)
                .open(path)
                .with_context(|| format!("cannot write {}", path.display()))?;
            !existed
        }
        None => false,
    };
    let calibration = match measure::calibrate(args, &sizes) {
        Ok(calibration) => calibration,
        Err(error) => {
            if let (true, Some(path)) = (created, &args.output) {
                let _ = fs::remove_file(path);
            }
            return Err(error);
        }
    };
    print_report(&calibration, &mut io::stdout().lock())?;
    if let Some(path) = &args.output {
        fs::write(path, calibration.to_json())
            .with_context(|| format!("cannot write {}", path.display()))?;
        writeln!(io::stdout(), "wrote {}", path.display())?;
    }
    Ok(ExitCode::SUCCESS)
}

/// The reconstructed command line, recorded in the file.
fn command_line(args: &CalibrateArgs, sizes: &[u64]) -> String {
    let sizes: Vec<String> = sizes.iter().map(u64::to_string).collect();
    let mut command = format!(
        "lazymmu calibrate --sizes {} --repetitions {} --warmup {}",
        sizes.join(","),
        args.repetitions,
        args.warmup
    );
    if let Some(cpu) = args.cpu {
        command.push_str(&format!(" --cpu {cpu}"));
    }
    if args.no_pin {
        command.push_str(" --no-pin");
    }
    if let Some(path) = &args.output {
        command.push_str(&format!(" --output {}", path.display()));
    }
    command
}

fn print_report(calibration: &Calibration, out: &mut impl Write) -> io::Result<()> {
    let clock = &calibration.clock;
    let method = &calibration.method;
    writeln!(
        out,
        "{} ({} logical CPUs{}), {} {}, {}",
        calibration.machine.cpu_model,
        calibration.machine.logical_cpus,
        if calibration.machine.hypervisor {
            ", guest"
        } else {
            ""
        },
        calibration.kernel.sysname,
        calibration.kernel.release,
        calibration.date
    )?;
    writeln!(
        out,
        "TSC {:.3} MHz (drift {:.1e}), counter read {:.0} cycles; {} rounds + {} warm-up, {}",
        clock.tsc_hz / 1e6,
        clock.tsc_hz_drift,
        clock.read_overhead_cycles,
        method.repetitions,
        method.warmup,
        match method.pinned_cpu {
            Some(cpu) => format!("CPU {cpu}"),
            None => "not pinned".to_string(),
        }
    )?;
    writeln!(
        out,
        "cycles = per call + per page × pages, fitted through the medians"
    )?;
    writeln!(out)?;
    writeln!(
        out,
        "{:<18} {:>11} {:>9} {:>10} {:>8} {:>7} {:>7}  note",
        "call", "cycles/call", "cycles/pg", "ns/call", "ns/pg", "R²", "max res"
    )?;
    for cost in &calibration.calls {
        let fit = &cost.fit;
        let note = match fit.clamped {
            Some(coefficient) => format!("{} = 0", coefficient_name(coefficient)),
            None => String::new(),
        };
        writeln!(
            out,
            "{:<18} {:>11.0} {:>9.1} {:>10.1} {:>8.2} {:>7.4} {:>6.1}%  {}",
            cost.call.name(),
            fit.per_call_cycles,
            fit.per_page_cycles,
            clock.ns(fit.per_call_cycles),
            clock.ns(fit.per_page_cycles),
            fit.r_squared,
            fit.max_relative_residual * 100.0,
            note
        )?;
    }
    writeln!(out)?;
    writeln!(out, "median cycles and IQR/median, by pages per call:")?;
    write!(out, "{:<18}", "")?;
    for pages in &method.sizes {
        write!(out, " {pages:>12}")?;
    }
    writeln!(out)?;
    for cost in &calibration.calls {
        write!(out, "{:<18}", cost.call.name())?;
        for pages in &method.sizes {
            match cost.samples.iter().find(|s| s.pages == *pages) {
                Some(s) => write!(
                    out,
                    " {:>12}",
                    format!("{} {:.0}%", compact(s.median), s.relative_spread() * 100.0)
                )?,
                None => write!(out, " {:>12}", "-")?,
            }
        }
        writeln!(out)?;
    }
    for note in &calibration.notes {
        writeln!(out, "{}", wrap(&format!("note: {note}"), 100, "      "))?;
    }
    Ok(())
}

/// `text` broken at spaces into lines of at most `width` characters, the
/// lines after the first starting with `indent`.
fn wrap(text: &str, width: usize, indent: &str) -> String {
    let mut out = String::new();
    let mut line_length = 0;
    for word in text.split(' ') {
        let length = word.chars().count();
        if line_length > 0 && line_length + 1 + length > width {
            out.push('\n');
            out.push_str(indent);
            line_length = indent.chars().count();
        } else if line_length > 0 {
            out.push(' ');
            line_length += 1;
        }
        out.push_str(word);
        line_length += length;
    }
    out
}

fn coefficient_name(coefficient: Coefficient) -> &'static str {
    match coefficient {
        Coefficient::PerCall => "per call",
        Coefficient::PerPage => "per page",
    }
}

/// Cycles in at most five characters: 812, 45.3k, 12.1M.
fn compact(cycles: f64) -> String {
    if cycles >= 1e7 {
        format!("{:.1}M", cycles / 1e6)
    } else if cycles >= 1e4 {
        format!("{:.1}k", cycles / 1e3)
    } else {
        format!("{cycles:.0}")
    }
}

/// Turns the samples of each call into its summary and fit.
fn summarise(
    call: Call,
    interval: &str,
    sizes: &[u64],
    samples: &[Vec<u64>],
    notes: &mut Vec<String>,
) -> Option<CallCost> {
    let summaries: Vec<SizeSamples> = sizes
        .iter()
        .zip(samples)
        .filter_map(|(&pages, taken)| SizeSamples::from_samples(pages, taken))
        .collect();
    match Fit::from_medians(&summaries) {
        Ok(fit) => {
            if let Some(coefficient) = fit.clamped {
                notes.push(format!(
                    "{call}: the free fit made the {} cost negative; it is held at zero (the \
                     cost is below what noise lets these sizes resolve)",
                    coefficient_name(coefficient)
                ));
            }
            Some(CallCost {
                call,
                interval: interval.to_string(),
                samples: summaries,
                fit,
            })
        }
        Err(error) => {
            notes.push(format!("{call} not fitted: {error}"));
            None
        }
    }
}

#[cfg(not(all(target_os = "linux", target_arch = "x86_64")))]
mod measure {
    use super::CalibrateArgs;
    use anyhow::{bail, Result};
    use lazymmu_sim::calibration::Calibration;

    pub(super) fn calibrate(_args: &CalibrateArgs, _sizes: &[u64]) -> Result<Calibration> {
        bail!("calibrate times Linux system calls with the x86-64 TSC: it needs Linux on x86-64")
    }
}

#[cfg(all(target_os = "linux", target_arch = "x86_64"))]
mod measure {
    //! The measurement itself: raw system calls through `libc`, timed with
    //! the TSC.

    use std::ffi::CStr;
    use std::fs;
    use std::io;
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::time::Duration;

    use anyhow::{bail, Context, Result};
    use lazymmu_sim::calibration::{Calibration, Call, Clock, Host, Kernel, Method, FORMAT};
    use lazymmu_sim::rng::SplitMix64;

    use super::{command_line, summarise, CalibrateArgs};

    const TWO_MIB: usize = 2 << 20;

    /// The TSC, read between `lfence`s so that the read neither moves
    /// before earlier instructions complete nor lets later ones start
    /// first (Intel SDM Vol. 2B, RDTSC; AMD APM Vol. 3, RDTSC).
    #[inline(always)]
    fn now() -> u64 {
        use core::arch::x86_64::{_mm_lfence, _rdtsc};
        // SAFETY: LFENCE is SSE2, part of every x86-64 CPU; RDTSC reads a
        // counter and has no preconditions (the cpuinfo `tsc` flag is
        // checked before any measurement).
        unsafe {
            _mm_lfence();
            let t = _rdtsc();
            _mm_lfence();
            t
        }
    }

    /// Cycles taken by `f`.
    #[inline(always)]
    fn timed<T>(f: impl FnOnce() -> T) -> (T, u64) {
        let start = now();
        let result = f();
        let end = now();
        (result, end.wrapping_sub(start))
    }

    fn check(ret: libc::c_int, what: &str) -> Result<()> {
        if ret < 0 {
            Err(io::Error::last_os_error()).with_context(|| what.to_string())
        } else {
            Ok(())
        }
    }

    /// An anonymous mapping this process owns; unmapped on drop.
    struct Mapping {
        addr: usize,
        len: usize,
    }

    impl Mapping {
        /// `mmap(addr, len, prot, flags)`, returning the mapping and the
        /// cycles the call took.
        fn map(addr: usize, len: usize, prot: i32, flags: i32) -> Result<(Mapping, u64)> {
            // SAFETY: an anonymous mapping with no fixed address, or
            // (MAP_FIXED) over a range this process reserved itself and
            // holds no references into, or (MAP_FIXED_NOREPLACE) where the
            // kernel refuses to replace anything: no existing Rust object
            // is affected.
            let (ret, cycles) = timed(|| unsafe {
                libc::mmap(
                    addr as *mut libc::c_void,
                    len,
                    prot,
                    flags | libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                    -1,
                    0,
                )
            });
            if ret == libc::MAP_FAILED {
                return Err(io::Error::last_os_error()).context("mmap");
            }
            let fixed = libc::MAP_FIXED | libc::MAP_FIXED_NOREPLACE;
            if flags & fixed != 0 && ret as usize != addr {
                // Kernels before 4.17 take MAP_FIXED_NOREPLACE as a hint.
                // SAFETY: the mapping the call just made elsewhere.
                unsafe { libc::munmap(ret, len) };
                bail!("mmap: the kernel did not place the mapping at {addr:#x}");
            }
            Ok((
                Mapping {
                    addr: ret as usize,
                    len,
                },
                cycles,
            ))
        }

        /// Address space only: no access, no commit charge.
        fn reserve(len: usize) -> Result<Mapping> {
            Ok(Mapping::map(0, len, libc::PROT_NONE, libc::MAP_NORESERVE)?.0)
        }

        fn no_huge_pages(&self) -> Result<()> {
            // SAFETY: changes the THP policy of this process's own range.
            let ret = unsafe {
                libc::madvise(
                    self.addr as *mut libc::c_void,
                    self.len,
                    libc::MADV_NOHUGEPAGE,
                )
            };
            check(ret, "madvise(MADV_NOHUGEPAGE)")
        }

        /// Writes one byte to every page: a demand-zero fault each.
        fn touch(&self, page: usize) -> u64 {
            timed(|| {
                for offset in (0..self.len).step_by(page) {
                    // SAFETY: inside this read-write mapping, which no Rust
                    // reference covers.
                    unsafe { core::ptr::write_volatile((self.addr + offset) as *mut u8, 1) };
                }
            })
            .1
        }

        fn protect(&self, prot: i32) -> Result<u64> {
            // SAFETY: changes the protection of this process's own range,
            // which no Rust reference covers.
            let (ret, cycles) =
                timed(|| unsafe { libc::mprotect(self.addr as *mut libc::c_void, self.len, prot) });
            check(ret, "mprotect")?;
            Ok(cycles)
        }

        /// Moves the mapping to `to`, which the caller owns (its
        /// placeholder is replaced).
        fn move_to(&mut self, to: usize) -> Result<u64> {
            // SAFETY: moves this process's own range onto a range it owns;
            // no Rust reference covers either.
            let (ret, cycles) = timed(|| unsafe {
                libc::mremap(
                    self.addr as *mut libc::c_void,
                    self.len,
                    self.len,
                    libc::MREMAP_MAYMOVE | libc::MREMAP_FIXED,
                    to as *mut libc::c_void,
                )
            });
            if ret == libc::MAP_FAILED {
                return Err(io::Error::last_os_error()).context("mremap");
            }
            self.addr = ret as usize;
            Ok(cycles)
        }

        fn unmap(self) -> Result<u64> {
            let (addr, len) = (self.addr, self.len);
            core::mem::forget(self);
            // SAFETY: this process's own range, which no Rust reference
            // covers; `self` is forgotten so it is not unmapped twice.
            let (ret, cycles) = timed(|| unsafe { libc::munmap(addr as *mut libc::c_void, len) });
            check(ret, "munmap")?;
            Ok(cycles)
        }
    }

    impl Drop for Mapping {
        fn drop(&mut self) {
            // SAFETY: this process's own range, which no Rust reference
            // covers; dropped once.
            unsafe { libc::munmap(self.addr as *mut libc::c_void, self.len) };
        }
    }

    /// A pipe whose ends close on drop.
    struct Pipe {
        read: libc::c_int,
        write: libc::c_int,
    }

    impl Pipe {
        fn new() -> Result<Pipe> {
            let mut fds = [0; 2];
            // SAFETY: `fds` has room for the two descriptors.
            let ret = unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) };
            check(ret, "pipe2")?;
            Ok(Pipe {
                read: fds[0],
                write: fds[1],
            })
        }
    }

    impl Drop for Pipe {
        fn drop(&mut self) {
            // SAFETY: descriptors this pipe owns, closed once.
            unsafe {
                libc::close(self.read);
                libc::close(self.write);
            }
        }
    }

    fn send_byte(fd: libc::c_int) -> bool {
        let byte = 1u8;
        // SAFETY: writes one byte from a live local.
        unsafe { libc::write(fd, (&byte as *const u8).cast(), 1) == 1 }
    }

    fn receive_byte(fd: libc::c_int) -> bool {
        let mut byte = 0u8;
        // SAFETY: reads one byte into a live local.
        unsafe { libc::read(fd, (&mut byte as *mut u8).cast(), 1) == 1 }
    }

    /// Where a forked child leaves its two timestamps: a shared page.
    struct ChildStamps {
        page: Mapping,
    }

    impl ChildStamps {
        fn new(page: usize) -> Result<ChildStamps> {
            // MAP_SHARED: the child's writes reach the parent. A shared
            // mapping's PTEs are not copied at fork (`vma_needs_copy`), so
            // it adds nothing per page to the fork being timed.
            // SAFETY: a fresh anonymous shared mapping.
            let ret = unsafe {
                libc::mmap(
                    core::ptr::null_mut(),
                    page,
                    libc::PROT_READ | libc::PROT_WRITE,
                    libc::MAP_SHARED | libc::MAP_ANONYMOUS,
                    -1,
                    0,
                )
            };
            if ret == libc::MAP_FAILED {
                return Err(io::Error::last_os_error()).context("mmap (shared page)");
            }
            Ok(ChildStamps {
                page: Mapping {
                    addr: ret as usize,
                    len: page,
                },
            })
        }

        fn slot(&self, index: usize) -> &AtomicU64 {
            // SAFETY: the page is mapped read-write for the life of `self`,
            // page-aligned (so 8-byte aligned), zero-filled (a valid
            // AtomicU64), and only ever accessed through atomics, by this
            // process and its forked children.
            unsafe { &*((self.page.addr + index * 8) as *const AtomicU64) }
        }

        fn ready(&self) -> &AtomicU64 {
            self.slot(0)
        }

        fn exiting(&self) -> &AtomicU64 {
            self.slot(1)
        }
    }

    /// What one fork measures.
    struct ForkTimes {
        parent: u64,
        child_ready: u64,
        exit: u64,
    }

    /// Forks; the child stamps its first instruction, says it is ready,
    /// waits for the word, stamps and exits; the parent reaps it.
    fn fork_and_exit(stamps: &ChildStamps, ready: &Pipe, go: &Pipe) -> Result<ForkTimes> {
        let start = now();
        // SAFETY: the child runs only async-signal-safe code (TSC reads,
        // atomic stores to a shared page, read/write/_exit) and never
        // returns into Rust code that could touch state copied from the
        // parent; this process runs no other threads.
        let pid = unsafe { libc::fork() };
        if pid == 0 {
            stamps.ready().store(now(), Ordering::Release);
            let ok = send_byte(ready.write) && receive_byte(go.read);
            stamps.exiting().store(now(), Ordering::Release);
            // SAFETY: ends the child without running the parent's atexit
            // handlers or destructors.
            unsafe { libc::_exit(if ok { 0 } else { 1 }) };
        }
        let parent = now().wrapping_sub(start);
        if pid < 0 {
            return Err(io::Error::last_os_error()).context("fork");
        }
        let handshake = receive_byte(ready.read) && send_byte(go.write);
        let mut status = 0;
        // SAFETY: waits for this process's own child; `status` is a live
        // local.
        let waited = unsafe { libc::waitpid(pid, &mut status, 0) };
        let reaped = now();
        if waited != pid {
            return Err(io::Error::last_os_error()).context("waitpid");
        }
        if !handshake || !libc::WIFEXITED(status) || libc::WEXITSTATUS(status) != 0 {
            bail!("the forked child did not complete its handshake (status {status:#x})");
        }
        Ok(ForkTimes {
            parent,
            child_ready: stamps.ready().load(Ordering::Acquire).wrapping_sub(start),
            exit: reaped.wrapping_sub(stamps.exiting().load(Ordering::Acquire)),
        })
    }

    /// `bpf(BPF_MAP_CREATE)` of an array of `pages` 4 KiB values: its data
    /// (pages × 4 KiB plus the map header) comes from `bpf_map_area_alloc`,
    /// which uses vmalloc above 32 KiB. Returns the cycles, or the error
    /// when the call is refused.
    fn vmalloc_bpf_array(pages: u64) -> io::Result<u64> {
        // The first fields of `union bpf_attr` for BPF_MAP_CREATE
        // (include/uapi/linux/bpf.h); the rest must be zero.
        #[repr(C)]
        struct MapCreate {
            map_type: u32,
            key_size: u32,
            value_size: u32,
            max_entries: u32,
            zero: [u32; 28],
        }
        const BPF_MAP_CREATE: libc::c_long = 0;
        const BPF_MAP_TYPE_ARRAY: u32 = 2;
        let attr = MapCreate {
            map_type: BPF_MAP_TYPE_ARRAY,
            key_size: 4,
            value_size: 4096,
            max_entries: u32::try_from(pages).unwrap_or(u32::MAX),
            zero: [0; 28],
        };
        // SAFETY: `attr` is a live, fully initialised buffer of the size
        // passed; the kernel only reads it.
        let (fd, cycles) = timed(|| unsafe {
            libc::syscall(
                libc::SYS_bpf,
                BPF_MAP_CREATE,
                &attr as *const MapCreate,
                core::mem::size_of::<MapCreate>(),
            )
        });
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: closes the descriptor the call just returned. The map's
        // memory is freed later by a workqueue (`bpf_map_free_deferred`).
        unsafe { libc::close(fd as libc::c_int) };
        Ok(cycles)
    }

    /// The smallest array the vmalloc path serves: its data exceeds
    /// `PAGE_SIZE << PAGE_ALLOC_COSTLY_ORDER` (32 KiB).
    const VMALLOC_MIN_PAGES: u64 = 8;

    /// Samples of every call at every size: `samples[call][size]`.
    struct Samples {
        by_call: Vec<Vec<Vec<u64>>>,
    }

    impl Samples {
        fn new(sizes: usize, capacity: usize) -> Samples {
            Samples {
                by_call: Call::ALL
                    .iter()
                    .map(|_| (0..sizes).map(|_| Vec::with_capacity(capacity)).collect())
                    .collect(),
            }
        }

        fn add(&mut self, call: Call, size: usize, cycles: u64) {
            let index = Call::ALL.iter().position(|c| *c == call).unwrap_or(0);
            self.by_call[index][size].push(cycles);
        }

        fn of(&self, call: Call) -> &[Vec<u64>] {
            let index = Call::ALL.iter().position(|c| *c == call).unwrap_or(0);
            &self.by_call[index]
        }
    }

    /// Everything one round does at one size; samples are kept when
    /// `samples` is given (timed rounds) and dropped in warm-up.
    struct Round<'a> {
        page: usize,
        stamps: &'a ChildStamps,
        ready: &'a Pipe,
        go: &'a Pipe,
    }

    impl Round<'_> {
        fn run(
            &mut self,
            pages: u64,
            size: usize,
            mut samples: Option<&mut Samples>,
        ) -> Result<()> {
            let mut record = |call, cycles| {
                if let Some(samples) = samples.as_deref_mut() {
                    samples.add(call, size, cycles);
                }
            };
            let len = pages as usize * self.page;
            let (mut data, cycles) = Mapping::map(0, len, libc::PROT_READ | libc::PROT_WRITE, 0)?;
            record(Call::Mmap, cycles);
            data.no_huge_pages()?;
            record(Call::Touch, data.touch(self.page));

            // One sample per pair of calls, one each way: the two directions
            // cost differently, and a mixture of two costs has no stable
            // median.
            let to_read_only = data.protect(libc::PROT_READ)?;
            let to_read_write = data.protect(libc::PROT_READ | libc::PROT_WRITE)?;
            record(Call::Mprotect, (to_read_only + to_read_write) / 2);

            // The destination sits at another offset in a 2 MiB block, so
            // no PMD can move whole; each move replaces a read-only
            // placeholder of exactly its size.
            let reservation = Mapping::reserve(len + 2 * TWO_MIB)?;
            let home = data.addr;
            let away =
                reservation.addr.next_multiple_of(TWO_MIB) + (home % TWO_MIB + self.page) % TWO_MIB;
            let placeholder = libc::PROT_READ;
            core::mem::forget(Mapping::map(away, len, placeholder, libc::MAP_FIXED)?.0);
            let there = data.move_to(away)?;
            core::mem::forget(Mapping::map(home, len, placeholder, libc::MAP_FIXED_NOREPLACE)?.0);
            let back = data.move_to(home)?;
            record(Call::Mremap, (there + back) / 2);
            drop(reservation);

            let fork = fork_and_exit(self.stamps, self.ready, self.go)?;
            record(Call::Fork, fork.parent);
            record(Call::ForkChild, fork.child_ready);
            record(Call::Exit, fork.exit);
            record(Call::Munmap, data.unmap()?);
            Ok(())
        }
    }

    /// Runs `measure(pages, size, samples)` for every size in each of
    /// `warmup + repetitions` rounds, keeping samples from the timed ones.
    /// Each round takes the sizes in a fresh random order (fixed seed), so
    /// that what one size leaves behind — cold caches, deferred frees, RCU
    /// callbacks — falls on every size alike rather than always on the
    /// next one. (Pausing between sizes instead made the spread worse: an
    /// idle guest CPU halts, and comes back with cold caches.)
    fn rounds(
        sizes: &[u64],
        args: &CalibrateArgs,
        samples: &mut Samples,
        mut measure: impl FnMut(u64, usize, Option<&mut Samples>) -> Result<()>,
    ) -> Result<()> {
        let mut random = SplitMix64::new(0x006c_617a_796d_6d75);
        let mut order: Vec<usize> = (0..sizes.len()).collect();
        for index in 0..args.warmup + args.repetitions {
            for i in (1..order.len()).rev() {
                order.swap(i, random.below(i as u64 + 1) as usize);
            }
            for &size in &order {
                let kept = (index >= args.warmup).then_some(&mut *samples);
                let pages = sizes[size];
                measure(pages, size, kept)
                    .with_context(|| format!("round {index}, {pages} pages"))?;
            }
        }
        Ok(())
    }

    /// TSC ticks per second against CLOCK_MONOTONIC_RAW (not slewed by
    /// NTP): the median of five 50 ms windows, each bracketed by clock
    /// reads on both sides of the TSC read.
    fn tsc_hz() -> f64 {
        fn clock_ns() -> f64 {
            let mut ts = libc::timespec {
                tv_sec: 0,
                tv_nsec: 0,
            };
            // SAFETY: `ts` is a live local the call fills in.
            unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC_RAW, &mut ts) };
            ts.tv_sec as f64 * 1e9 + ts.tv_nsec as f64
        }
        let stamp = || {
            let before = clock_ns();
            let tsc = now();
            let after = clock_ns();
            (tsc, (before + after) / 2.0)
        };
        let mut rates: Vec<f64> = (0..5)
            .map(|_| {
                let (tsc0, ns0) = stamp();
                std::thread::sleep(Duration::from_millis(50));
                let (tsc1, ns1) = stamp();
                (tsc1 - tsc0) as f64 * 1e9 / (ns1 - ns0)
            })
            .collect();
        rates.sort_by(f64::total_cmp);
        rates[2]
    }

    /// Median cycles between two back-to-back counter reads.
    fn read_overhead() -> f64 {
        let mut samples: Vec<u64> = (0..1001).map(|_| timed(|| ()).1).collect();
        samples.sort_unstable();
        samples[500] as f64
    }

    fn cpuinfo() -> Result<String> {
        fs::read_to_string("/proc/cpuinfo").context("cannot read /proc/cpuinfo")
    }

    fn machine(cpuinfo: &str) -> Host {
        let field = |name: &str| {
            cpuinfo.lines().find_map(|line| {
                let (key, value) = line.split_once(':')?;
                (key.trim() == name).then(|| value.trim().to_string())
            })
        };
        let flags = field("flags").unwrap_or_default();
        Host {
            cpu_model: field("model name").unwrap_or_else(|| "unknown".to_string()),
            logical_cpus: cpuinfo
                .lines()
                .filter(|line| line.split(':').next().map(str::trim) == Some("processor"))
                .count() as u32,
            hypervisor: flags.split_whitespace().any(|f| f == "hypervisor"),
        }
    }

    fn has_flags(cpuinfo: &str, wanted: &[&str]) -> bool {
        cpuinfo
            .lines()
            .find(|line| line.starts_with("flags"))
            .is_some_and(|line| {
                wanted
                    .iter()
                    .all(|w| line.split_whitespace().any(|f| f == *w))
            })
    }

    fn kernel() -> Result<Kernel> {
        // SAFETY: `utsname` is plain bytes; all zero is a valid value.
        let mut uts: libc::utsname = unsafe { core::mem::zeroed() };
        // SAFETY: `uts` is a live local the call fills in.
        check(unsafe { libc::uname(&mut uts) }, "uname")?;
        let text = |field: &[libc::c_char]| {
            // SAFETY: uname NUL-terminates every field within its array.
            unsafe { CStr::from_ptr(field.as_ptr()) }
                .to_string_lossy()
                .into_owned()
        };
        Ok(Kernel {
            sysname: text(&uts.sysname),
            release: text(&uts.release),
            version: text(&uts.version),
            machine: text(&uts.machine),
        })
    }

    fn page_size() -> Result<usize> {
        // SAFETY: sysconf reads a system constant.
        let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
        if page <= 0 {
            bail!("cannot read the page size");
        }
        Ok(page as usize)
    }

    fn pin(args: &CalibrateArgs) -> Result<Option<u32>> {
        if args.no_pin {
            return Ok(None);
        }
        let cpu = match args.cpu {
            Some(cpu) => cpu,
            None => {
                // SAFETY: sched_getcpu has no arguments.
                let current = unsafe { libc::sched_getcpu() };
                check(current, "sched_getcpu")?;
                current as u32
            }
        };
        if cpu as usize >= libc::CPU_SETSIZE as usize {
            return Err(crate::exit::usage(format!(
                "--cpu {cpu}: beyond the CPUs this system can address"
            )));
        }
        // SAFETY: `cpu_set_t` is a plain bit set; all zero is empty.
        let mut set: libc::cpu_set_t = unsafe { core::mem::zeroed() };
        // SAFETY: `cpu` is below CPU_SETSIZE, checked above.
        unsafe { libc::CPU_SET(cpu as usize, &mut set) };
        // SAFETY: `set` is a live, initialised cpu_set_t of the size
        // passed; pid 0 is this thread.
        let ret =
            unsafe { libc::sched_setaffinity(0, core::mem::size_of::<libc::cpu_set_t>(), &set) };
        // The kernel refuses a CPU that is not there: a bad --cpu.
        check(ret, &format!("cannot pin to CPU {cpu}"))
            .map_err(|e| crate::exit::usage(format!("{e:#}")))?;
        Ok(Some(cpu))
    }

    fn utc_now() -> String {
        let seconds = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let (days, rest) = (seconds / 86_400, seconds % 86_400);
        // Days since 1970-01-01 to a civil date (proleptic Gregorian), after
        // H. Hinnant, "chrono-Compatible Low-Level Date Algorithms".
        let z = days as i64 + 719_468;
        let era = z.div_euclid(146_097);
        let day_of_era = z.rem_euclid(146_097);
        let year_of_era =
            (day_of_era - day_of_era / 1460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
        let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
        let month_index = (5 * day_of_year + 2) / 153;
        let day = day_of_year - (153 * month_index + 2) / 5 + 1;
        let month = if month_index < 10 {
            month_index + 3
        } else {
            month_index - 9
        };
        let year = year_of_era + era * 400 + i64::from(month <= 2);
        format!(
            "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
            rest / 3600,
            rest / 60 % 60,
            rest % 60
        )
    }

    pub(super) fn calibrate(args: &CalibrateArgs, sizes: &[u64]) -> Result<Calibration> {
        let cpuinfo = cpuinfo()?;
        if !has_flags(&cpuinfo, &["tsc"]) {
            bail!("this CPU has no time-stamp counter");
        }
        let page = page_size()?;
        let pinned_cpu = pin(args)?;
        // SAFETY: prctl with integer arguments; affects this process only.
        let ret = unsafe { libc::prctl(libc::PR_SET_THP_DISABLE, 1, 0, 0, 0) };
        check(ret, "prctl(PR_SET_THP_DISABLE)")?;
        let transparent_hugepage =
            fs::read_to_string("/sys/kernel/mm/transparent_hugepage/enabled")
                .map_or_else(|_| "unknown".to_string(), |s| s.trim().to_string());

        let hz_before = tsc_hz();
        let read_overhead_cycles = read_overhead();

        let stamps = ChildStamps::new(page)?;
        let (ready, go) = (Pipe::new()?, Pipe::new()?);
        let mut samples = Samples::new(sizes.len(), args.repetitions as usize);
        let mut round = Round {
            page,
            stamps: &stamps,
            ready: &ready,
            go: &go,
        };
        rounds(sizes, args, &mut samples, |pages, size, kept| {
            round.run(pages, size, kept)
        })?;
        // The vmalloc phase runs apart: its maps are freed by a workqueue
        // after they are closed, which would land in the other calls'
        // intervals.
        let vmalloc_sizes: Vec<u64> = sizes
            .iter()
            .map(|&pages| if pages >= VMALLOC_MIN_PAGES { pages } else { 0 })
            .collect();
        let mut bpf_refused = None;
        rounds(sizes, args, &mut samples, |_, size, kept| {
            let pages = vmalloc_sizes[size];
            if pages == 0 || bpf_refused.is_some() {
                return Ok(());
            }
            match vmalloc_bpf_array(pages) {
                Ok(cycles) => {
                    if let Some(samples) = kept {
                        samples.add(Call::VmallocBpfArray, size, cycles);
                    }
                }
                Err(error) => bpf_refused = Some(error),
            }
            Ok(())
        })?;
        let hz_after = tsc_hz();
        let tsc_hz = (hz_before + hz_after) / 2.0;

        let mut notes = Vec::new();
        let intervals = [
            (Call::Mmap, "mmap of N pages, anonymous, private, read-write; not touched"),
            (Call::Touch, "one byte written to each of the N fresh pages (N demand-zero faults)"),
            (Call::Fork, "fork() in the parent, N pages touched, until it returns in the parent"),
            (Call::ForkChild, "from before fork() to the child's first instruction (same CPU)"),
            (Call::Exit, "the child's _exit() until the parent's waitpid() returns; N pages shared copy-on-write"),
            (Call::Munmap, "munmap of the N pages after the child exited (pages no longer shared)"),
            (Call::Mprotect, "mprotect of the N pages; each sample is the mean of one call to read-only and one back to read-write"),
            (Call::Mremap, "mremap of the N pages to a fixed address at another 2 MiB offset; each sample is the mean of the move there and the move back, each replacing an empty placeholder"),
            (Call::VmallocBpfArray, "bpf(BPF_MAP_CREATE) of an array of N 4 KiB values: vmalloc of N pages and the map header, zeroed and memcg-charged; the map's setup is in the per-call cost"),
        ];
        let mut calls = Vec::new();
        for (call, interval) in intervals {
            let taken = samples.of(call);
            if taken.iter().all(Vec::is_empty) {
                continue;
            }
            if let Some(cost) = summarise(call, interval, sizes, taken, &mut notes) {
                calls.push(cost);
            }
        }
        if let Some(error) = bpf_refused {
            notes.push(format!(
                "vmalloc-bpf-array not measured: bpf(BPF_MAP_CREATE) failed ({error}); it needs \
                 CAP_BPF or CAP_SYS_ADMIN"
            ));
        } else if sizes.iter().filter(|&&p| p >= VMALLOC_MIN_PAGES).count() < 2 {
            notes.push(format!(
                "vmalloc-bpf-array needs two sizes of {VMALLOC_MIN_PAGES} pages or more (the \
                 vmalloc path of bpf_map_area_alloc)"
            ));
        }
        notes.push(
            "vfree is not measured: closing a BPF map frees its memory later, from a workqueue \
             (bpf_map_free_deferred), and vfree itself defers the TLB flush to a lazy purge"
                .to_string(),
        );
        let invariant_tsc = has_flags(&cpuinfo, &["constant_tsc", "nonstop_tsc"]);
        if !invariant_tsc {
            notes.push(
                "the CPU does not report an invariant TSC (constant_tsc, nonstop_tsc): cycles \
                 may not be comparable across frequency changes"
                    .to_string(),
            );
        }

        let calibration = Calibration {
            format: FORMAT,
            machine: machine(&cpuinfo),
            kernel: kernel()?,
            date: utc_now(),
            clock: Clock {
                tsc_hz,
                tsc_hz_source: "measured against CLOCK_MONOTONIC_RAW (median of five 50 ms \
                                windows, before and after the samples, averaged)"
                    .to_string(),
                tsc_hz_drift: (hz_after - hz_before).abs() / tsc_hz,
                invariant_tsc,
                read_overhead_cycles,
            },
            method: Method {
                command: command_line(args, sizes),
                sizes: sizes.to_vec(),
                repetitions: args.repetitions,
                warmup: args.warmup,
                pinned_cpu,
                page_size: page as u64,
                transparent_hugepage: format!(
                    "{transparent_hugepage} (disabled for the measured process: \
                     PR_SET_THP_DISABLE, MADV_NOHUGEPAGE)"
                ),
                fit: "least squares through the per-size medians, weights 1/median², \
                      coefficients held at or above zero"
                    .to_string(),
            },
            calls,
            notes,
        };
        calibration
            .validate()
            .context("the measured calibration does not validate")?;
        Ok(calibration)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn notes_wrap_at_the_width() {
        let wrapped = wrap("note: one two three four", 14, "  ");
        assert_eq!(wrapped, "note: one two\n  three four");
        assert!(wrapped.lines().all(|line| line.chars().count() <= 14));
    }

    #[test]
    fn compact_cycles_fit_their_column() {
        assert_eq!(compact(812.4), "812");
        assert_eq!(compact(45_321.0), "45.3k");
        assert_eq!(compact(12_100_000.0), "12.1M");
    }
}
