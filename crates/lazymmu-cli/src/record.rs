//! `lazymmu record [-o FILE] [--no-perf] -- CMD [ARGS…]`: runs a program
//! under strace and perf and writes its program trace
//! (`docs/trace-format.md`).
//!
//! strace (`-f -ff -X raw -y`) decodes every memory-management and process
//! system call of every thread with its arguments and result. perf records,
//! in the kernel's own order, the entry of those same calls
//! (`raw_syscalls:sys_enter`), every page fault with its address and x86
//! error code (`exceptions:page_fault_user`/`_kernel`), every VMA the
//! kernel sets up or changes (`PERF_RECORD_MMAP2`, which shows the
//! mappings `execve` makes and the result of each `mmap`, `mprotect`,
//! `brk` and stack growth) and every thread's exit. The two are joined
//! call by call per thread, so the trace is in the kernel's order without
//! comparing clocks. Without perf (`--no-perf`) the trace orders calls by
//! strace's timestamps and says that touched pages are estimated.

mod perf;
mod strace;

use std::collections::{HashMap, HashSet, VecDeque};
use std::ffi::OsString;
use std::fs::{self, File};
use std::io::{BufRead, BufReader, BufWriter, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Stdio};

use anyhow::{bail, Context, Result};
use lazymmu_sim::program_trace::record::{
    Access, Backing, Call, Event, EventKind, ExitStatus, FileDecl, Outcome, Record, VmaReport,
};
use lazymmu_sim::program_trace::{summarize, FORMAT, PAGE_SIZE, VERSION};

use strace::{Entry, Returned, Syscall};

/// Arguments of `lazymmu record`.
#[derive(Debug, clap::Args)]
#[command(after_help = crate::exit::STATUSES)]
pub struct Args {
    /// Where to write the trace.
    #[arg(short, long, default_value = "lazymmu.trace")]
    pub output: PathBuf,
    /// Record without perf: page faults are not recorded and the trace
    /// says touched pages are estimated (every page of an accessible
    /// mapping counts as present once mapped).
    #[arg(long)]
    pub no_perf: bool,
    /// Keep strace's and perf's raw output in this directory.
    #[arg(long, value_name = "DIR")]
    pub keep_raw: Option<PathBuf>,
    /// The program and its arguments, after `--`.
    #[arg(last = true, required = true, value_name = "CMD")]
    pub command: Vec<OsString>,
}

/// x86-64 numbers of the calls a trace records (`arch/x86/entry/syscalls/
/// syscall_64.tbl`): perf's filter and the join with strace's lines.
const SYSCALLS: &[(&str, u64)] = &[
    ("mmap", 9),
    ("mprotect", 10),
    ("munmap", 11),
    ("brk", 12),
    ("mremap", 25),
    ("msync", 26),
    ("mincore", 27),
    ("madvise", 28),
    ("shmat", 30),
    ("clone", 56),
    ("fork", 57),
    ("vfork", 58),
    ("execve", 59),
    ("shmdt", 67),
    ("mlock", 149),
    ("munlock", 150),
    ("mlockall", 151),
    ("munlockall", 152),
    ("remap_file_pages", 216),
    ("mbind", 237),
    ("set_mempolicy", 238),
    ("get_mempolicy", 239),
    ("migrate_pages", 256),
    ("move_pages", 279),
    ("execveat", 322),
    ("mlock2", 325),
    ("pkey_mprotect", 329),
    ("clone3", 435),
    ("process_madvise", 440),
    ("map_shadow_stack", 453),
    ("mseal", 462),
];

fn syscall_number(name: &str) -> Option<u64> {
    SYSCALLS.iter().find(|(n, _)| *n == name).map(|(_, nr)| *nr)
}

/// A program on `PATH`.
fn find_program(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(name))
        .find(|candidate| candidate.is_file())
}

/// `/sys/kernel/tracing` or its debugfs twin, if the tracepoints are
/// visible there.
fn tracepoint_exists(group: &str, event: &str) -> bool {
    [
        "/sys/kernel/tracing/events",
        "/sys/kernel/debug/tracing/events",
    ]
    .iter()
    .any(|root| Path::new(root).join(group).join(event).exists())
}

fn first_line(command: &mut Command) -> Option<String> {
    let output = command.stderr(Stdio::null()).output().ok()?;
    if !output.status.success() {
        return None;
    }
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .next()
        .map(|l| l.trim().to_owned())
}

/// Where the faults come from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum FaultSource {
    /// x86's `exceptions:page_fault_*` tracepoints, with the error code.
    Tracepoints,
    /// perf's `page-faults` software event: addresses only.
    SoftwareEvent,
}

/// Runs `lazymmu record`.
///
/// # Errors
/// strace or perf missing or failing, the command not starting, or the
/// trace file not written.
pub fn run(args: &Args) -> Result<ExitCode> {
    if std::env::consts::ARCH != "x86_64" {
        bail!(
            "record knows the x86-64 system call numbers only; this is {}",
            std::env::consts::ARCH
        );
    }
    let strace_path = find_program("strace").context(
        "strace is not installed: install the Debian package `strace` (`bash scripts/setup.sh` does)",
    )?;
    let strace_version = first_line(Command::new(&strace_path).arg("-V")).unwrap_or_default();
    let mut perf_setup = None;
    if !args.no_perf {
        let perf_path = find_program("perf").context(
            "perf is not installed: install the Debian package `linux-perf` (`bash scripts/setup.sh` does), \
             or record with --no-perf (touched pages are then estimated)",
        )?;
        let version = first_line(Command::new(&perf_path).arg("--version")).context(
            "perf is installed but does not run (`perf --version` failed): install the Debian package \
             `linux-perf` for this kernel, or record with --no-perf",
        )?;
        if !tracepoint_exists("raw_syscalls", "sys_enter") {
            bail!(
                "perf cannot see the raw_syscalls tracepoints (tracefs not mounted, or not root): \
                 run as root with /sys/kernel/tracing mounted, or record with --no-perf"
            );
        }
        let faults = if tracepoint_exists("exceptions", "page_fault_user") {
            FaultSource::Tracepoints
        } else {
            FaultSource::SoftwareEvent
        };
        perf_setup = Some((perf_path, version, faults));
    }

    let raw = match &args.keep_raw {
        Some(dir) => {
            fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
            RawDir {
                path: dir.clone(),
                keep: true,
            }
        }
        None => {
            let stamp = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos());
            let path =
                std::env::temp_dir().join(format!("lazymmu-record-{}-{stamp}", std::process::id()));
            fs::create_dir_all(&path)
                .with_context(|| format!("cannot create {}", path.display()))?;
            RawDir { path, keep: false }
        }
    };

    let mut strace_command: Vec<OsString> = vec![
        strace_path.into_os_string(),
        "-f".into(),
        "-ff".into(),
        "-q".into(),
        "-o".into(),
        raw.path.join("strace").into_os_string(),
        "--absolute-timestamps=unix,ns".into(),
        "-X".into(),
        "raw".into(),
        "-y".into(),
        "-e".into(),
        "trace=%memory,%process".into(),
        "--seccomp-bpf".into(),
        "--".into(),
    ];
    strace_command.extend(args.command.iter().cloned());

    let status = match &perf_setup {
        Some((perf_path, _, faults)) => {
            let filter = SYSCALLS
                .iter()
                .map(|(_, nr)| format!("id == {nr}"))
                .collect::<Vec<_>>()
                .join(" || ");
            let mut perf = Command::new(perf_path);
            perf.arg("record")
                .arg("-q")
                .args(["-o".as_ref(), raw.path.join("perf.data").as_os_str()])
                .args(["-k", "mono", "-m", "1024", "-d", "--no-buildid"]);
            match faults {
                FaultSource::Tracepoints => perf.args([
                    "-e",
                    "exceptions:page_fault_user",
                    "-e",
                    "exceptions:page_fault_kernel",
                ]),
                FaultSource::SoftwareEvent => perf.args(["-e", "page-faults", "-c", "1"]),
            };
            perf.args(["-e", "raw_syscalls:sys_enter", "--filter", &filter, "--"]);
            // perf prefixes PATH with its own directory and adds variables;
            // env gives strace, and so the program, the environment it
            // would have had.
            let env = find_program("env").context("env (coreutils) is not on PATH")?;
            perf.arg(env).arg("-i");
            for (key, value) in std::env::vars_os() {
                let mut pair = key;
                pair.push("=");
                pair.push(value);
                perf.arg(pair);
            }
            perf.args(&strace_command);
            perf.status().context("cannot start perf")?
        }
        None => Command::new(&strace_command[0])
            .args(&strace_command[1..])
            .status()
            .context("cannot start strace")?,
    };

    let threads = strace::read_dir(&raw.path, "strace")?;
    if threads.is_empty() {
        bail!(
            "strace recorded nothing ({}): is ptrace allowed here (`/proc/sys/kernel/yama/ptrace_scope`)?",
            status
        );
    }
    let mut trace = Trace::new(args);
    match &perf_setup {
        Some((perf_path, version, faults)) => {
            if !raw.path.join("perf.data").exists() {
                bail!("perf record failed ({status}); see its message above, or record with --no-perf");
            }
            trace.meta(
                "recorder",
                &format!(
                    "lazymmu {}; {strace_version}; {version}",
                    env!("CARGO_PKG_VERSION")
                ),
            );
            trace.meta("touches", "faults");
            trace.meta(
                "faults",
                match faults {
                    FaultSource::Tracepoints => {
                        "exceptions:page_fault_user exceptions:page_fault_kernel"
                    }
                    FaultSource::SoftwareEvent => "page-faults (no access kind)",
                },
            );
            trace.kernel_meta();
            join_with_perf(&mut trace, perf_path, &raw.path, threads)?;
        }
        None => {
            trace.meta(
                "recorder",
                &format!("lazymmu {}; {strace_version}", env!("CARGO_PKG_VERSION")),
            );
            trace.meta("touches", "whole-ranges");
            trace.comment(
                "touched pages are estimated: perf was not used, so no page fault was recorded; \
                 every page of an accessible mapping counts as present once mapped (an upper bound)",
            );
            trace.kernel_meta();
            order_by_strace_time(&mut trace, threads);
        }
    }
    let written = trace.write(&args.output)?;
    drop(raw);

    let file = File::open(&args.output)
        .with_context(|| format!("cannot reopen {}", args.output.display()))?;
    let summary = summarize(BufReader::new(file), &args.output.display().to_string())
        .with_context(|| {
            format!(
                "the trace just written does not parse: {}",
                args.output.display()
            )
        })?;
    eprintln!(
        "lazymmu record: wrote {} ({} events, {} bytes); the program {}",
        args.output.display(),
        written.events,
        written.bytes,
        written.program_status,
    );
    eprintln!(
        "lazymmu record: {} calls, {} faults, {} VMA reports; model disagreements: {}",
        summary.events(&[
            lazymmu_sim::program_trace::history::StepKind::Mmap,
            lazymmu_sim::program_trace::history::StepKind::Munmap,
            lazymmu_sim::program_trace::history::StepKind::Mprotect,
            lazymmu_sim::program_trace::history::StepKind::Mremap,
            lazymmu_sim::program_trace::history::StepKind::Brk,
            lazymmu_sim::program_trace::history::StepKind::Madvise,
            lazymmu_sim::program_trace::history::StepKind::Mlock,
            lazymmu_sim::program_trace::history::StepKind::Fork,
            lazymmu_sim::program_trace::history::StepKind::Thread,
            lazymmu_sim::program_trace::history::StepKind::Execve,
        ]),
        summary.events(&[lazymmu_sim::program_trace::history::StepKind::Fault]),
        summary.events(&[lazymmu_sim::program_trace::history::StepKind::Vma]),
        summary.disagreement_count(),
    );
    if written.lost > 0 || written.unmatched > 0 {
        eprintln!(
            "lazymmu record: warning: perf lost {} events and {} calls could not be joined; the trace says so",
            written.lost, written.unmatched
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// The scratch directory for strace's and perf's output.
struct RawDir {
    path: PathBuf,
    keep: bool,
}

impl Drop for RawDir {
    fn drop(&mut self) {
        if !self.keep {
            // Best effort: a leftover scratch directory is harmless.
            let _ = fs::remove_dir_all(&self.path);
        }
    }
}

/// What writing the trace produced.
struct Written {
    events: u64,
    bytes: u64,
    lost: u64,
    unmatched: u64,
    program_status: String,
}

/// The trace being assembled: header lines, file table and events.
struct Trace {
    header: Vec<String>,
    files: HashMap<String, u32>,
    lines: Vec<String>,
    events: u64,
    first_time: Option<u64>,
    last_time: u64,
    lost: u64,
    unmatched: u64,
    root: Option<u32>,
    program_status: String,
    /// The fault run being accumulated, and the (tid, page, access) seen
    /// since the last event that was not a fault.
    pending_fault: Option<(u64, u32, u64, u64, Access)>,
    seen_faults: HashSet<(u32, u64, Access)>,
}

impl Trace {
    fn new(args: &Args) -> Trace {
        let command: Vec<String> = args
            .command
            .iter()
            .map(|a| shell_quote(&a.to_string_lossy()))
            .collect();
        let mut trace = Trace {
            header: vec![format!("{FORMAT} {VERSION}")],
            files: HashMap::new(),
            lines: Vec::new(),
            events: 0,
            first_time: None,
            last_time: 0,
            lost: 0,
            unmatched: 0,
            root: None,
            program_status: "status unknown".to_owned(),
            pending_fault: None,
            seen_faults: HashSet::new(),
        };
        trace.meta("command", &command.join(" "));
        trace
    }

    fn meta(&mut self, key: &str, value: &str) {
        // A metadata value is the rest of one line.
        let value = value.replace(['\n', '\r'], " ");
        self.header.push(
            Record::Meta {
                key: key.to_owned(),
                value,
            }
            .to_string(),
        );
    }

    fn comment(&mut self, text: &str) {
        self.header.push(format!("# {text}"));
    }

    /// What the model needs to know about the recording kernel.
    fn kernel_meta(&mut self) {
        if let Ok(release) = fs::read_to_string("/proc/sys/kernel/osrelease") {
            self.meta("kernel", release.trim());
        }
        self.meta("page-size", &PAGE_SIZE.to_string());
        match fs::read_to_string("/sys/kernel/debug/fault_around_bytes")
            .ok()
            .and_then(|b| b.trim().parse::<u64>().ok())
        {
            Some(bytes) => self.meta("fault-around", &(bytes / PAGE_SIZE).max(1).to_string()),
            None => {
                self.comment(
                    "fault-around: /sys/kernel/debug/fault_around_bytes not readable; Linux's default (65536 bytes)",
                );
                self.meta("fault-around", "16");
            }
        }
        let thp = fs::read_to_string("/sys/kernel/mm/transparent_hugepage/enabled")
            .ok()
            .and_then(|s| {
                let open = s.find('[')?;
                let close = s[open..].find(']')? + open;
                Some(s[open + 1..close].to_owned())
            })
            .unwrap_or_else(|| "never".to_owned());
        self.meta("thp", &thp);
        let stack = fs::read_to_string("/proc/self/limits")
            .ok()
            .and_then(|limits| {
                limits
                    .lines()
                    .find(|l| l.starts_with("Max stack size"))
                    .and_then(|l| l.split_whitespace().nth(3).map(str::to_owned))
            });
        if let Some(stack) = stack {
            self.meta("stack-limit", &stack);
        }
        self.meta("task-size", "7ffffffff000");
    }

    /// The id of a file, declaring it on first use.
    fn file(&mut self, path: &str) -> u32 {
        if let Some(&id) = self.files.get(path) {
            return id;
        }
        let id = u32::try_from(self.files.len() + 1).unwrap_or(u32::MAX);
        self.files.insert(path.to_owned(), id);
        let size = fs::metadata(path)
            .ok()
            .filter(|m| m.is_file())
            .map(|m| m.len());
        self.lines.push(
            Record::File(FileDecl {
                id,
                size,
                path: path.to_owned(),
            })
            .to_string(),
        );
        id
    }

    fn time_us(&mut self, time_ns: u64) -> u64 {
        let first = *self.first_time.get_or_insert(time_ns);
        let us = time_ns.saturating_sub(first) / 1000;
        // Clocks of different sources never run backwards in the trace.
        self.last_time = self.last_time.max(us);
        self.last_time
    }

    fn push_event(&mut self, time_ns: u64, tid: u32, kind: EventKind) {
        if !matches!(kind, EventKind::Fault { .. }) {
            self.flush_fault();
            self.seen_faults.clear();
        }
        let time_us = self.time_us(time_ns);
        self.events += 1;
        self.lines
            .push(Record::Event(Event { time_us, tid, kind }).to_string());
    }

    fn flush_fault(&mut self) {
        if let Some((time_ns, tid, addr, pages, access)) = self.pending_fault.take() {
            let time_us = self.time_us(time_ns);
            self.events += 1;
            self.lines.push(
                Record::Event(Event {
                    time_us,
                    tid,
                    kind: EventKind::Fault {
                        addr,
                        pages,
                        access,
                    },
                })
                .to_string(),
            );
        }
    }

    /// A fault: consecutive pages of one thread with the same access
    /// become one line; a page already faulted the same way since the last
    /// other event is dropped.
    fn fault(&mut self, time_ns: u64, tid: u32, addr: u64, access: Access) {
        let page = addr & !(PAGE_SIZE - 1);
        if !self.seen_faults.insert((tid, page, access)) {
            return;
        }
        if let Some((_, t, start, pages, a)) = &mut self.pending_fault {
            if *t == tid && *a == access && *start + *pages * PAGE_SIZE == page {
                *pages += 1;
                return;
            }
        }
        self.flush_fault();
        self.pending_fault = Some((time_ns, tid, page, 1, access));
    }

    fn call(&mut self, tid: u32, call: &Syscall) {
        let result = match &call.result {
            Returned::Value(v) => Outcome::Returned(*v),
            Returned::Error(name) => Outcome::Failed(name.clone()),
            Returned::Unknown => Outcome::Unknown,
        };
        match self.convert(call) {
            Some(converted) => {
                let result = match (&converted, result) {
                    // A failed execve of the root is not a start.
                    (Call::Execve { .. }, Outcome::Returned(_)) if self.root.is_none() => {
                        self.root = Some(tid);
                        Outcome::Returned(0)
                    }
                    (_, r) => r,
                };
                self.push_event(
                    call.time_ns,
                    tid,
                    EventKind::Call {
                        call: converted,
                        result,
                    },
                );
            }
            None => {
                // A memory call the format does not model: its name and
                // result, so readers can count it.
                self.flush_fault();
                self.seen_faults.clear();
                let time_us = self.time_us(call.time_ns);
                self.events += 1;
                let result = match &call.result {
                    Returned::Value(v) => v.to_string(),
                    Returned::Error(name) => format!("-{name}"),
                    Returned::Unknown => "?".to_owned(),
                };
                self.lines
                    .push(format!("{time_us} {tid} {} = {result}", call.name));
            }
        }
    }

    /// A strace call as a trace call, `None` for calls the format does not
    /// model.
    fn convert(&mut self, call: &Syscall) -> Option<Call> {
        let arg = |i: usize| {
            call.args
                .get(i)
                .and_then(|a| strace::number(a))
                .unwrap_or(0)
        };
        Some(match call.name.as_str() {
            "mmap" => {
                let flags = arg(3);
                let file = if flags & 0x20 != 0 {
                    None
                } else {
                    let fd = call.args.get(4).map(String::as_str).unwrap_or("-1");
                    match strace::fd_path(fd) {
                        Some(path) => Some(self.file(&path)),
                        None if strace::number(fd) == Some(u64::MAX) => None,
                        None => Some(self.file(&format!("fd {fd}"))),
                    }
                };
                Call::Mmap {
                    addr: arg(0),
                    len: arg(1),
                    prot: arg(2),
                    flags,
                    file,
                    offset: arg(5),
                }
            }
            "munmap" => Call::Munmap {
                addr: arg(0),
                len: arg(1),
            },
            "mprotect" | "pkey_mprotect" => Call::Mprotect {
                addr: arg(0),
                len: arg(1),
                prot: arg(2),
            },
            "mremap" => Call::Mremap {
                old_addr: arg(0),
                old_len: arg(1),
                new_len: arg(2),
                flags: arg(3),
                new_addr: arg(4),
            },
            "brk" => Call::Brk { addr: arg(0) },
            "madvise" => Call::Madvise {
                addr: arg(0),
                len: arg(1),
                advice: arg(2),
            },
            // mlock is mlock2 without flags.
            "mlock" | "mlock2" => Call::Mlock {
                addr: arg(0),
                len: arg(1),
                flags: if call.name == "mlock2" { arg(2) } else { 0 },
            },
            "munlock" => Call::Munlock {
                addr: arg(0),
                len: arg(1),
            },
            "mlockall" => Call::Mlockall { flags: arg(0) },
            "munlockall" => Call::Munlockall,
            "clone" => Call::Clone {
                flags: strace::named(&call.args, "flags").unwrap_or(0x11),
            },
            "clone3" => Call::Clone {
                flags: strace::named(&call.args, "flags").unwrap_or(0)
                    | strace::named(&call.args, "exit_signal").unwrap_or(0),
            },
            // fork: SIGCHLD; vfork: CLONE_VM | CLONE_VFORK | SIGCHLD.
            "fork" => Call::Clone { flags: 0x11 },
            "vfork" => Call::Clone { flags: 0x4111 },
            "execve" | "execveat" => {
                let index = usize::from(call.name == "execveat");
                let file = call
                    .args
                    .get(index)
                    .and_then(|a| strace::string(a))
                    .map(|path| self.file(&path));
                Call::Execve { file }
            }
            _ => return None,
        })
    }

    fn exit(&mut self, time_ns: u64, tid: u32, status: &strace::Status) {
        let status = match status {
            strace::Status::Code(code) => ExitStatus::Code(*code),
            strace::Status::Signal(name) => ExitStatus::Signal(name.clone()),
        };
        if Some(tid) == self.root {
            self.program_status = match &status {
                ExitStatus::Code(code) => format!("exited with status {code}"),
                ExitStatus::Signal(name) => format!("was killed by {name}"),
            };
        }
        self.push_event(time_ns, tid, EventKind::Exit(status));
    }

    fn vma(&mut self, mapping: &perf::Mapping) {
        let perf::Mapping {
            tid,
            time_ns,
            start,
            len,
            pgoff,
            ref perms,
            ref name,
        } = *mapping;
        let bytes = perms.as_bytes();
        let prot = u64::from(bytes.first() == Some(&b'r'))
            | u64::from(bytes.get(1) == Some(&b'w')) << 1
            | u64::from(bytes.get(2) == Some(&b'x')) << 2;
        let shared = bytes.get(3) == Some(&b's');
        let backing = if name == "//anon" || name.is_empty() {
            Backing::Anonymous
        } else if name.starts_with('[') && name.ends_with(']') {
            Backing::Named(name.to_owned())
        } else {
            Backing::File(self.file(name))
        };
        self.push_event(
            time_ns,
            tid,
            EventKind::Vma(VmaReport {
                start,
                len,
                prot,
                shared,
                backing,
                offset: pgoff,
            }),
        );
    }

    fn write(mut self, path: &Path) -> Result<Written> {
        self.flush_fault();
        if self.lost > 0 {
            self.meta("lost-events", &self.lost.to_string());
        }
        if self.unmatched > 0 {
            self.meta("unjoined-calls", &self.unmatched.to_string());
        }
        let file =
            File::create(path).with_context(|| format!("cannot create {}", path.display()))?;
        let mut out = BufWriter::new(file);
        let mut bytes = 0u64;
        for line in self.header.iter().chain(&self.lines) {
            writeln!(out, "{line}").with_context(|| format!("cannot write {}", path.display()))?;
            bytes += line.len() as u64 + 1;
        }
        out.flush()
            .with_context(|| format!("cannot write {}", path.display()))?;
        Ok(Written {
            events: self.events,
            bytes,
            lost: self.lost,
            unmatched: self.unmatched,
            program_status: self.program_status,
        })
    }
}

/// Quotes a word for a shell when it needs it, on one line: control
/// characters use bash's `$'...'` escapes.
fn shell_quote(word: &str) -> String {
    if !word.is_empty()
        && word
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_./=:,+@%".contains(&b))
    {
        word.to_owned()
    } else if word.chars().any(char::is_control) {
        let mut quoted = String::from("$'");
        for c in word.chars() {
            match c {
                '\\' => quoted.push_str("\\\\"),
                '\'' => quoted.push_str("\\'"),
                '\n' => quoted.push_str("\\n"),
                '\t' => quoted.push_str("\\t"),
                '\r' => quoted.push_str("\\r"),
                c if c.is_control() => quoted.push_str(&format!("\\x{:02x}", u32::from(c))),
                c => quoted.push(c),
            }
        }
        quoted.push('\'');
        quoted
    } else {
        format!("'{}'", word.replace('\'', r"'\''"))
    }
}

/// Per-thread strace entries, consumed in order.
struct Threads {
    queues: HashMap<u32, VecDeque<Entry>>,
}

impl Threads {
    fn new(threads: Vec<(u32, Vec<Entry>)>) -> Threads {
        Threads {
            queues: threads
                .into_iter()
                .map(|(tid, entries)| (tid, entries.into_iter().collect()))
                .collect(),
        }
    }

    fn traced(&self, tid: u32) -> bool {
        self.queues.contains_key(&tid)
    }

    /// The strace call matching a perf `sys_enter` of `nr` in `tid`:
    /// calls perf does not see (no number here) are dropped on the way.
    fn take_call(&mut self, tid: u32, nr: u64) -> Option<Syscall> {
        let queue = self.queues.get_mut(&tid)?;
        loop {
            match queue.front() {
                Some(Entry::Call(call)) => match syscall_number(&call.name) {
                    None => {
                        queue.pop_front();
                    }
                    Some(n) if n == nr => {
                        return match queue.pop_front() {
                            Some(Entry::Call(call)) => Some(call),
                            _ => None,
                        };
                    }
                    Some(_) => return None,
                },
                _ => return None,
            }
        }
    }
}

/// The perf order: each `sys_enter` takes the thread's next strace call;
/// faults, VMA reports and exits come in between as perf saw them.
fn join_with_perf(
    trace: &mut Trace,
    perf_path: &Path,
    raw: &Path,
    threads: Vec<(u32, Vec<Entry>)>,
) -> Result<()> {
    let mut threads = Threads::new(threads);
    let mut script = Command::new(perf_path)
        .args(["script", "-i"])
        .arg(raw.join("perf.data"))
        .args([
            "--ns",
            "-F",
            "pid,tid,time,event,addr,trace",
            "--show-mmap-events",
            "--show-task-events",
            "--show-lost-events",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .context("cannot run perf script")?;
    let stdout = script.stdout.take().context("perf script has no output")?;
    // A thread's events count once its first call is joined (the root's
    // execve), so strace's own startup is left out.
    let mut started: HashSet<u32> = HashSet::new();
    let mut exited: HashSet<u32> = HashSet::new();
    for line in BufReader::new(stdout).lines() {
        let line = line.context("cannot read perf script output")?;
        let Some(event) = perf::parse_line(&line) else {
            continue;
        };
        match event {
            perf::Event::SysEnter { tid, time_ns, nr } => {
                if !threads.traced(tid) || exited.contains(&tid) {
                    continue;
                }
                match threads.take_call(tid, nr) {
                    Some(mut call) => {
                        started.insert(tid);
                        call.time_ns = time_ns;
                        if matches!(call.name.as_str(), "clone" | "clone3" | "fork" | "vfork") {
                            if let Returned::Value(child) = call.result {
                                if let Ok(child) = u32::try_from(child) {
                                    started.insert(child);
                                }
                            }
                        }
                        trace.call(tid, &call);
                    }
                    None if started.contains(&tid) => trace.unmatched += 1,
                    None => {}
                }
            }
            perf::Event::Fault {
                tid,
                time_ns,
                addr,
                error_code,
            } => {
                if !started.contains(&tid) || exited.contains(&tid) || addr >= 0x7fff_ffff_f000 {
                    continue;
                }
                let access = match error_code {
                    Some(code) if code & 0x10 != 0 => Access::Execute,
                    Some(code) if code & 0x2 != 0 => Access::Write,
                    Some(_) => Access::Read,
                    None => Access::Unknown,
                };
                trace.fault(time_ns, tid, addr, access);
            }
            perf::Event::Mmap(mapping) => {
                let tid = mapping.tid;
                if started.contains(&tid)
                    && !exited.contains(&tid)
                    && mapping.start < 0x7fff_ffff_f000
                {
                    trace.vma(&mapping);
                }
            }
            perf::Event::Exit { tid, time_ns } => {
                if !started.contains(&tid) || !exited.insert(tid) {
                    continue;
                }
                finish_thread(trace, &mut threads, tid, time_ns);
            }
            perf::Event::Lost { count } => trace.lost += count,
        }
    }
    let _ = script.wait();
    // Threads perf saw no exit for (lost events): their rest in strace's
    // order, at the end.
    let mut rest: Vec<u32> = threads
        .queues
        .keys()
        .copied()
        .filter(|t| !exited.contains(t))
        .collect();
    rest.sort_unstable();
    for tid in rest {
        if started.contains(&tid) {
            finish_thread(trace, &mut threads, tid, u64::MAX);
        }
    }
    Ok(())
}

/// Writes what is left of a thread's strace entries: calls perf never
/// matched (counted) and its exit.
fn finish_thread(trace: &mut Trace, threads: &mut Threads, tid: u32, time_ns: u64) {
    let Some(queue) = threads.queues.get_mut(&tid) else {
        return;
    };
    let entries: Vec<Entry> = queue.drain(..).collect();
    let time = if time_ns == u64::MAX {
        trace.first_time.unwrap_or(0) + (trace.last_time + 1) * 1000
    } else {
        time_ns
    };
    let mut ended = false;
    for entry in entries {
        match entry {
            Entry::Call(call) => {
                if syscall_number(&call.name).is_some() {
                    trace.unmatched += 1;
                    let call = Syscall {
                        time_ns: time,
                        ..call
                    };
                    trace.call(tid, &call);
                }
            }
            Entry::Exit { status, .. } => {
                trace.exit(time, tid, &status);
                ended = true;
            }
        }
    }
    if !ended {
        trace.exit(time, tid, &strace::Status::Code(0));
    }
}

/// Without perf: every thread's entries merged by strace's wall-clock
/// timestamps.
fn order_by_strace_time(trace: &mut Trace, threads: Vec<(u32, Vec<Entry>)>) {
    let mut all: Vec<(u64, usize, u32, Entry)> = Vec::new();
    for (tid, entries) in threads {
        for (index, entry) in entries.into_iter().enumerate() {
            let time = match &entry {
                Entry::Call(call) => call.time_ns,
                Entry::Exit { time_ns, .. } => *time_ns,
            };
            all.push((time, index, tid, entry));
        }
    }
    all.sort_by_key(|(time, index, tid, _)| (*time, *tid, *index));
    for (_, _, tid, entry) in all {
        match entry {
            Entry::Call(call) => {
                if syscall_number(&call.name).is_some() {
                    trace.call(tid, &call);
                }
            }
            Entry::Exit { time_ns, status } => trace.exit(time_ns, tid, &status),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::shell_quote;

    #[test]
    fn commands_stay_on_one_line() {
        assert_eq!(shell_quote("/usr/bin/python3"), "/usr/bin/python3");
        assert_eq!(shell_quote("import json"), "'import json'");
        assert_eq!(shell_quote("it's"), r"'it'\''s'");
        assert_eq!(shell_quote("a\nb\t'c'\\"), r"$'a\nb\t\'c\'\\'");
        assert_eq!(shell_quote("\u{1b}"), r"$'\x1b'");
    }
}
