//! `lazymmu boot`: builds a bare-metal kernel in `kernel/` (x86-64, arm64 or
//! both), boots it under QEMU (TCG), streams its serial console, and passes
//! only when the guest reported success both through its exit status
//! (`isa-debug-exit` on x86-64, semihosting `SYS_EXIT` on arm64) and with a
//! `N passed, 0 failed` line.

use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitCode, Stdio};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

/// The value the x86-64 kernel writes to `isa-debug-exit` when every test
/// passed (`kernel/src/x86_64/exit.rs`); QEMU exits with `(value << 1) | 1`
/// (QEMU `hw/misc/debugexit.c`).
const GUEST_SUCCESS: u32 = 0x10;

/// QEMU's exit status when the guest reported success: the x86-64 kernel's
/// through `isa-debug-exit`, and the status the arm64 kernel passes to
/// semihosting `SYS_EXIT` (`kernel/src/aarch64/exit.rs`), which QEMU
/// returns as is.
pub const SUCCESS_STATUS: i32 = ((GUEST_SUCCESS << 1) | 1) as i32;

/// Which kernel to boot.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Arch {
    /// The x86-64 kernel on QEMU's `pc` machine, on `--cpus` CPUs.
    #[value(name = "x86_64")]
    X86_64,
    /// The arm64 kernel on QEMU's `virt` machine, on one CPU.
    #[value(name = "aarch64")]
    Aarch64,
    /// Both, one after the other.
    #[value(name = "all")]
    All,
}

impl Arch {
    /// The Rust target the kernel builds for.
    pub fn target(self) -> &'static str {
        match self {
            Arch::Aarch64 => "aarch64-unknown-none",
            _ => "x86_64-unknown-none",
        }
    }

    /// The QEMU binary, and the Debian package that has it.
    fn qemu(self) -> (&'static str, &'static str) {
        match self {
            Arch::Aarch64 => ("qemu-system-aarch64", "qemu-system-arm"),
            _ => ("qemu-system-x86_64", "qemu-system-x86"),
        }
    }

    fn name(self) -> &'static str {
        match self {
            Arch::X86_64 => "x86_64",
            Arch::Aarch64 => "aarch64",
            Arch::All => "all",
        }
    }
}

/// The marker the kernel prints first; everything before it is firmware.
const BOOT_MARKER: &str = "lazymmu kernel:";

/// Options of `lazymmu boot`.
#[derive(Debug, clap::Args)]
#[command(after_help = crate::exit::STATUSES)]
pub struct Args {
    /// Seconds to let the guest run before QEMU is killed and the boot fails.
    #[arg(long, default_value_t = 60, value_parser = clap::value_parser!(u64).range(1..=3600))]
    pub timeout: u64,
    /// Which kernel: `x86_64`, `aarch64` or `all` (both in turn).
    #[arg(long, value_enum, default_value_t = Arch::X86_64)]
    pub arch: Arch,
    /// The QEMU binary [default: qemu-system-x86_64 or qemu-system-aarch64,
    /// after --arch].
    #[arg(long)]
    pub qemu: Option<PathBuf>,
    /// Boot this kernel image instead of building `kernel/`.
    #[arg(long)]
    pub kernel: Option<PathBuf>,
    /// The kernel's source directory (its Cargo package) [default:
    /// `kernel/` of the current directory, else of the lazymmu sources
    /// this binary was built from].
    #[arg(long, value_name = "DIR")]
    pub kernel_dir: Option<PathBuf>,
    /// Print the firmware's output and every guest line, not only the
    /// kernel's.
    #[arg(long)]
    pub verbose: bool,
    /// CPUs the x86-64 guest gets (QEMU `-smp`); the kernel starts all of
    /// them [default: 4; the arm64 kernel runs on one].
    #[arg(long, value_parser = clap::value_parser!(u8).range(1..=8))]
    pub cpus: Option<u8>,
}

/// CPUs the x86-64 kernel gets unless `--cpus` says otherwise.
const DEFAULT_CPUS: u8 = 4;

/// The package name in the kernel's `Cargo.toml`.
const KERNEL_PACKAGE: &str = "name = \"lazymmu-kernel\"";

/// Whether `dir` holds the kernel's sources.
fn is_kernel_dir(dir: &Path) -> bool {
    std::fs::read_to_string(dir.join("Cargo.toml")).is_ok_and(|m| m.contains(KERNEL_PACKAGE))
}

/// The kernel's sources: `--kernel-dir`, else `kernel/` of the current
/// directory, else of the source tree this binary was built from.
///
/// # Errors
/// A usage error when the directory given, or every default, holds no
/// kernel sources.
fn kernel_dir(args: &Args) -> Result<PathBuf> {
    if let Some(dir) = &args.kernel_dir {
        return if is_kernel_dir(dir) {
            Ok(dir.clone())
        } else {
            Err(crate::exit::usage(format!(
                "{} holds no kernel sources (no Cargo.toml of the lazymmu-kernel package): \
                 pass the kernel/ directory of the lazymmu repository",
                dir.display()
            )))
        };
    }
    let built_from = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../kernel");
    [PathBuf::from("kernel"), built_from]
        .into_iter()
        .find(|dir| is_kernel_dir(dir))
        .ok_or_else(|| {
            crate::exit::usage(
                "no kernel sources found: run lazymmu boot from the lazymmu repository, or \
                 pass --kernel-dir DIR (its kernel/ directory), or --kernel IMAGE",
            )
        })
}

/// What the guest reported.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct GuestReport {
    /// Tests passed and failed, from the `N passed, N failed` line.
    pub summary: Option<(u32, u32)>,
    /// Lines starting with `FAIL`, `FATAL` or `PANIC`.
    pub failures: Vec<String>,
    /// QEMU's exit status; `None` when it was killed.
    pub status: Option<i32>,
    /// Whether the timeout killed QEMU.
    pub timed_out: bool,
}

impl GuestReport {
    /// Success: the debug-exit success status, a summary with at least one
    /// pass and no failure, and no failure line.
    pub fn success(&self) -> bool {
        self.status == Some(SUCCESS_STATUS)
            && matches!(self.summary, Some((passed, 0)) if passed > 0)
            && self.failures.is_empty()
            && !self.timed_out
    }

    fn observe(&mut self, line: &str) {
        if let Some(summary) = parse_summary(line) {
            self.summary = Some(summary);
        }
        let trimmed = line.trim_start();
        if trimmed.starts_with("FAIL")
            || trimmed.starts_with("FATAL")
            || trimmed.starts_with("PANIC")
        {
            self.failures.push(line.to_string());
        }
    }
}

/// Parses a `N passed, M failed` line.
pub fn parse_summary(line: &str) -> Option<(u32, u32)> {
    let (passed, failed) = line.trim().split_once(" passed, ")?;
    let failed = failed.strip_suffix(" failed")?;
    Some((passed.trim().parse().ok()?, failed.trim().parse().ok()?))
}

/// Runs `lazymmu boot`: exit status 0 when the guest (or, with `--arch
/// all`, every guest) passed, 1 when one failed, timed out or crashed.
///
/// # Errors
/// When the options do not fit the architecture or there are no kernel
/// sources (usage errors), a kernel cannot be built or QEMU cannot be
/// started.
pub fn run(args: &Args) -> Result<ExitCode> {
    let arches: &[Arch] = match args.arch {
        Arch::All => {
            if args.qemu.is_some() || args.kernel.is_some() {
                return Err(crate::exit::usage(
                    "--qemu and --kernel name one kernel's files; give --arch x86_64 or aarch64",
                ));
            }
            &[Arch::X86_64, Arch::Aarch64]
        }
        Arch::X86_64 => &[Arch::X86_64],
        Arch::Aarch64 => &[Arch::Aarch64],
    };
    if arches.contains(&Arch::Aarch64) && args.cpus.is_some_and(|cpus| cpus != 1) {
        return Err(crate::exit::usage(
            "the arm64 kernel runs on one CPU; --cpus applies to --arch x86_64",
        ));
    }
    let mut passed = true;
    for &arch in arches {
        let report = boot_guest(args, arch)?;
        if report.success() {
            writeln!(
                std::io::stdout(),
                "boot: {} guest passed (QEMU exit status {SUCCESS_STATUS})",
                arch.name()
            )?;
        } else {
            eprintln!(
                "boot: {} FAILED: {}",
                arch.name(),
                explain(&report, args.timeout)
            );
            passed = false;
        }
    }
    Ok(if passed {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

fn explain(report: &GuestReport, timeout: u64) -> String {
    let mut reasons = Vec::new();
    if report.timed_out {
        reasons.push(format!("the guest ran past {timeout} s and was killed"));
    }
    match report.status {
        Some(SUCCESS_STATUS) => {}
        Some(0) => reasons.push(
            "QEMU exited with 0: the guest triple-faulted (x86-64) or powered off without \
             reporting (arm64)"
                .into(),
        ),
        Some(status) => reasons.push(format!("QEMU exit status {status}, not {SUCCESS_STATUS}")),
        None if !report.timed_out => reasons.push("QEMU was killed by a signal".into()),
        None => {}
    }
    match report.summary {
        None => reasons.push("no `N passed, N failed` line".into()),
        Some((_, failed)) if failed > 0 => reasons.push(format!("{failed} guest tests failed")),
        Some((0, _)) => reasons.push("the guest ran no tests".into()),
        Some(_) => {}
    }
    for failure in &report.failures {
        reasons.push(format!("guest: {failure}"));
    }
    reasons.join("; ")
}

/// Builds (unless given an image), boots and watches the guest of `arch`
/// (`X86_64` or `Aarch64`).
///
/// # Errors
/// When the kernel cannot be built or QEMU cannot be started.
pub fn boot_guest(args: &Args, arch: Arch) -> Result<GuestReport> {
    let kernel = match &args.kernel {
        Some(kernel) => kernel.clone(),
        None => build_kernel(&kernel_dir(args)?, arch.target())?,
    };
    let (default_qemu, package) = arch.qemu();
    let qemu = args
        .qemu
        .clone()
        .unwrap_or_else(|| PathBuf::from(default_qemu));
    let cpus = args.cpus.unwrap_or(DEFAULT_CPUS);
    let mut child = Command::new(&qemu)
        .args(qemu_args(arch, &kernel, cpus))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| {
            format!(
                "cannot start {} (install QEMU: apt-get install -y {package})",
                qemu.display()
            )
        })?;
    watch(&mut child, Duration::from_secs(args.timeout), args.verbose)
}

/// The QEMU command line for `kernel` of `arch`: the x86-64 kernel on
/// `cpus` CPUs with `isa-debug-exit`, the arm64 kernel on the `virt`
/// machine's one CPU with semihosting.
pub fn qemu_args(arch: Arch, kernel: &Path, cpus: u8) -> Vec<std::ffi::OsString> {
    let machine: &[&str] = match arch {
        Arch::Aarch64 => &["-machine", "virt", "-cpu", "max", "-semihosting"],
        _ => &[
            "-machine",
            "pc",
            "-cpu",
            "max",
            "-device",
            "isa-debug-exit,iobase=0xf4,iosize=0x04",
        ],
    };
    let mut args: Vec<std::ffi::OsString> = machine
        .iter()
        .chain(&[
            "-accel",
            "tcg",
            "-m",
            "256M",
            "-nographic",
            "-monitor",
            "none",
            "-no-reboot",
            "-serial",
            "stdio",
            "-kernel",
        ])
        .map(Into::into)
        .collect();
    args.push(kernel.as_os_str().to_owned());
    args.push("-smp".into());
    let cpus = if arch == Arch::Aarch64 { 1 } else { cpus };
    args.push(cpus.to_string().into());
    args
}

/// Builds the kernel for `target` with cargo and returns the image's path.
fn build_kernel(dir: &Path, target: &str) -> Result<PathBuf> {
    let dir = dir
        .canonicalize()
        .with_context(|| format!("kernel sources not found at {}", dir.display()))?;
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let target_dir = dir.join("target");
    eprintln!(
        "boot: building the kernel in {} for {target}",
        dir.display()
    );
    // Run from the kernel's directory so its .cargo/config.toml (target,
    // relocation model) applies; flags meant for the host must not leak in.
    let build = Command::new(cargo)
        .current_dir(&dir)
        .args([
            "build",
            "--quiet",
            "--release",
            "--target",
            target,
            "--target-dir",
        ])
        .arg(&target_dir)
        .env_remove("RUSTFLAGS")
        .env_remove("CARGO_ENCODED_RUSTFLAGS")
        .env_remove("CARGO_BUILD_TARGET")
        .env_remove("CARGO_TARGET_DIR")
        .stdin(Stdio::null())
        .stderr(Stdio::piped())
        .output()
        .context("cannot run cargo to build the kernel")?;
    let messages = String::from_utf8_lossy(&build.stderr);
    eprint!("{messages}");
    if !build.status.success() {
        // rustc says so when the target's `core` is missing.
        if messages.contains("target may not be installed") {
            bail!(
                "building the kernel failed ({}): the target is missing: rustup target add \
                 {target}",
                build.status
            );
        }
        bail!(
            "building the kernel in {} failed ({}); cargo's messages are above",
            dir.display(),
            build.status
        );
    }
    Ok(target_dir.join(target).join("release/lazymmu-kernel"))
}

/// Streams QEMU's output, kills it at the deadline (or when standard
/// output is closed) and collects the report.
fn watch(child: &mut Child, timeout: Duration, verbose: bool) -> Result<GuestReport> {
    let stdout = child.stdout.take().context("QEMU stdout")?;
    let mut stderr = child.stderr.take().context("QEMU stderr")?;
    let (lines_tx, lines) = mpsc::channel();
    let reader = thread::spawn(move || {
        for line in BufReader::new(stdout).split(b'\n') {
            let Ok(line) = line else { break };
            if lines_tx.send(clean_line(&line)).is_err() {
                break;
            }
        }
    });
    let errors = thread::spawn(move || {
        let mut text = String::new();
        let _ = stderr.read_to_string(&mut text);
        text
    });

    let deadline = Instant::now() + timeout;
    let mut report = GuestReport::default();
    let mut in_kernel = verbose;
    loop {
        let now = Instant::now();
        if now >= deadline {
            report.timed_out = true;
            break;
        }
        match lines.recv_timeout(deadline - now) {
            Ok(mut line) => {
                if let Some(start) = line.find(BOOT_MARKER) {
                    in_kernel = true;
                    // The firmware does not end its last line.
                    if !verbose {
                        line.drain(..start);
                    }
                }
                if in_kernel {
                    if let Err(error) = writeln!(std::io::stdout(), "{line}") {
                        let _ = child.kill();
                        let _ = child.wait();
                        return Err(error.into());
                    }
                    report.observe(&line);
                }
            }
            Err(mpsc::RecvTimeoutError::Timeout) => {
                report.timed_out = true;
                break;
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => break,
        }
    }
    if report.timed_out {
        let _ = child.kill();
    }
    let status = child.wait().context("waiting for QEMU")?;
    // After a kill, a process QEMU left behind may still hold the pipes:
    // leave the readers detached rather than wait for it.
    let qemu_errors = if report.timed_out {
        String::new()
    } else {
        let _ = reader.join();
        errors.join().unwrap_or_default()
    };
    if !qemu_errors.trim().is_empty() && (verbose || !status.success()) {
        for line in qemu_errors
            .lines()
            .filter(|l| !l.contains("terminating on signal"))
        {
            eprintln!("qemu: {line}");
        }
    }
    report.status = if report.timed_out {
        None
    } else {
        status.code()
    };
    Ok(report)
}

/// A serial line without carriage returns and terminal escape sequences.
fn clean_line(raw: &[u8]) -> String {
    let text = String::from_utf8_lossy(raw);
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\r' => {}
            '\u{1b}' => {
                // CSI: ESC [ parameters final-byte.
                if chars.peek() == Some(&'[') {
                    chars.next();
                    for c in chars.by_ref() {
                        if ('@'..='~').contains(&c) {
                            break;
                        }
                    }
                }
            }
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_summary_line() {
        assert_eq!(parse_summary("41 passed, 0 failed"), Some((41, 0)));
        assert_eq!(parse_summary("  3 passed, 2 failed  "), Some((3, 2)));
        assert_eq!(parse_summary("passed, 0 failed"), None);
        assert_eq!(parse_summary("3 passed, x failed"), None);
    }

    #[test]
    fn success_needs_status_summary_and_no_failure() {
        let good = GuestReport {
            summary: Some((5, 0)),
            failures: vec![],
            status: Some(SUCCESS_STATUS),
            timed_out: false,
        };
        assert!(good.success());
        let triple_fault = GuestReport {
            status: Some(0),
            ..GuestReport {
                summary: Some((5, 0)),
                ..GuestReport::default()
            }
        };
        assert!(!triple_fault.success());
        let failed = GuestReport {
            summary: Some((4, 1)),
            status: Some(SUCCESS_STATUS),
            ..GuestReport::default()
        };
        assert!(!failed.success());
        let no_summary = GuestReport {
            status: Some(SUCCESS_STATUS),
            ..GuestReport::default()
        };
        assert!(!no_summary.success());
        let mut failure_line = good;
        failure_line.observe("FAIL map: page 3 reads 0");
        assert!(!failure_line.success());
    }

    #[test]
    fn cleans_escapes_and_carriage_returns() {
        assert_eq!(clean_line(b"\x1b[2J\x1b[0mSeaBIOS\r"), "SeaBIOS");
    }
}
