//! `lazymmu boot`: builds the bare-metal kernel in `kernel/`, boots it under
//! QEMU (TCG), streams its serial console, and passes only when the guest
//! reported success both through `isa-debug-exit` and with a
//! `N passed, 0 failed` line.

use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitCode, Stdio};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

/// The value the kernel writes to `isa-debug-exit` when every test passed
/// (`kernel/src/exit.rs`); QEMU exits with `(value << 1) | 1`
/// (QEMU `hw/misc/debugexit.c`).
const GUEST_SUCCESS: u32 = 0x10;

/// QEMU's exit status when the guest reported success.
pub const SUCCESS_STATUS: i32 = ((GUEST_SUCCESS << 1) | 1) as i32;

/// The marker the kernel prints first; everything before it is firmware.
const BOOT_MARKER: &str = "lazymmu kernel:";

/// Options of `lazymmu boot`.
#[derive(Debug, clap::Args)]
#[command(after_help = crate::exit::STATUSES)]
pub struct Args {
    /// Seconds to let the guest run before QEMU is killed and the boot fails.
    #[arg(long, default_value_t = 60, value_parser = clap::value_parser!(u64).range(1..=3600))]
    pub timeout: u64,
    /// The QEMU binary.
    #[arg(long, default_value = "qemu-system-x86_64")]
    pub qemu: PathBuf,
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
    /// CPUs the guest gets (QEMU `-smp`); the kernel starts all of them.
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u8).range(1..=8))]
    pub cpus: u8,
}

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

/// Runs `lazymmu boot`: exit status 0 when the guest passed, 1 when it
/// failed, timed out or crashed.
///
/// # Errors
/// When there are no kernel sources (a usage error), the kernel cannot be
/// built or QEMU cannot be started.
pub fn run(args: &Args) -> Result<ExitCode> {
    let report = boot_guest(args)?;
    if report.success() {
        writeln!(
            std::io::stdout(),
            "boot: guest passed (QEMU exit status {SUCCESS_STATUS})"
        )?;
        Ok(ExitCode::SUCCESS)
    } else {
        eprintln!("boot: FAILED: {}", explain(&report, args.timeout));
        Ok(ExitCode::FAILURE)
    }
}

fn explain(report: &GuestReport, timeout: u64) -> String {
    let mut reasons = Vec::new();
    if report.timed_out {
        reasons.push(format!("the guest ran past {timeout} s and was killed"));
    }
    match report.status {
        Some(SUCCESS_STATUS) => {}
        Some(0) => reasons.push("QEMU exited with 0: the guest triple-faulted".into()),
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

/// Builds (unless given an image), boots and watches the guest.
///
/// # Errors
/// When the kernel cannot be built or QEMU cannot be started.
pub fn boot_guest(args: &Args) -> Result<GuestReport> {
    let kernel = match &args.kernel {
        Some(kernel) => kernel.clone(),
        None => build_kernel(&kernel_dir(args)?)?,
    };
    let mut child = Command::new(&args.qemu)
        .args(qemu_args(&kernel, args.cpus))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| {
            format!(
                "cannot start {} (install QEMU: apt-get install -y qemu-system-x86)",
                args.qemu.display()
            )
        })?;
    watch(&mut child, Duration::from_secs(args.timeout), args.verbose)
}

/// The QEMU command line for `kernel` on `cpus` CPUs.
pub fn qemu_args(kernel: &Path, cpus: u8) -> Vec<std::ffi::OsString> {
    let mut args: Vec<std::ffi::OsString> = [
        "-machine",
        "pc",
        "-cpu",
        "max",
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
        "-device",
        "isa-debug-exit,iobase=0xf4,iosize=0x04",
        "-kernel",
    ]
    .iter()
    .map(Into::into)
    .collect();
    args.push(kernel.as_os_str().to_owned());
    args.push("-smp".into());
    args.push(cpus.to_string().into());
    args
}

/// Builds the kernel with cargo and returns the image's path.
fn build_kernel(dir: &Path) -> Result<PathBuf> {
    let dir = dir
        .canonicalize()
        .with_context(|| format!("kernel sources not found at {}", dir.display()))?;
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let target_dir = dir.join("target");
    eprintln!("boot: building the kernel in {}", dir.display());
    // Run from the kernel's directory so its .cargo/config.toml (target,
    // relocation model) applies; flags meant for the host must not leak in.
    let build = Command::new(cargo)
        .current_dir(&dir)
        .args([
            "build",
            "--quiet",
            "--release",
            "--target",
            "x86_64-unknown-none",
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
                 x86_64-unknown-none",
                build.status
            );
        }
        bail!(
            "building the kernel in {} failed ({}); cargo's messages are above",
            dir.display(),
            build.status
        );
    }
    Ok(target_dir.join("x86_64-unknown-none/release/lazymmu-kernel"))
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
