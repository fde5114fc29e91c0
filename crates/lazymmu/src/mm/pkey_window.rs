//! Nestable protection-key windows for device memory.
//!
//! Persistent memory mapped into the kernel is tagged with a supervisor
//! protection key whose default rights are "no access", so a stray kernel
//! write cannot corrupt it. Code that means to touch it opens a *window*:
//! the key register grants the key for the window's life and takes it back
//! when the window closes. Windows nest (a filesystem opens one, then calls
//! a helper that opens another), so the register is written only by the
//! outermost open and close, and a nesting count says which is which.
//! (Ira Weiny's "PKS/PMEM: Add Stray Write Protection" series, 2020–2022:
//! `pgmap_set_readwrite()` / `pgmap_set_noaccess()` with a per-task
//! nesting count; the PKRS value is kept in `thread_struct` across context
//! switches and in the extended `pt_regs` across exceptions.)
//!
//! Where the count lives is the [`WindowPolicy`]:
//!
//! - [`WindowPolicy::Task`]: in the task; the window survives preemption
//!   and migration because the register is saved per task at context switch
//!   and restored on whichever CPU the task resumes.
//! - [`WindowPolicy::PerCpu`]: in the CPU; the window must not move, so
//!   opening it disables preemption until it closes.
//!
//! Either way an exception saves the interrupted register value and count
//! in its frame, runs the handler with the default value and a zero count
//! (so the handler neither inherits the window nor is confused by it), and
//! restores both on return.
//!
//! The register is x86's IA32_PKRS (MSR 0x6E1): for key `k`, bit `2k` is
//! access-disable and bit `2k + 1` write-disable (Intel SDM Vol. 3A §4.6.2,
//! "Protection Keys"). `wrmsr` to it is not serialising (SDM Vol. 3A,
//! "Serializing Instructions", which lists the MSR writes exempt from
//! WRMSR's serialisation), so a window costs two cheap register writes.

use core::marker::PhantomData;
use core::sync::atomic::{AtomicU32, AtomicU64, AtomicU8, Ordering};

use crate::cpu::KeyRegister;

/// Number of protection keys.
pub const KEYS: u8 = 16;

/// Access rights one key grants.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum KeyRights {
    /// Reads and writes allowed.
    ReadWrite,
    /// Reads allowed, writes fault.
    ReadOnly,
    /// Every data access faults.
    NoAccess,
}

/// A value of the supervisor key register (IA32_PKRS layout).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct Pkrs(pub u32);

impl Pkrs {
    /// Key 0 (ordinary kernel memory) read-write, every other key no access:
    /// the value the kernel boots with and exceptions start from (Linux's
    /// `PKS_INIT_VALUE`).
    pub const INIT: Pkrs = Pkrs(0x5555_5554);

    /// The rights the register grants `key`.
    ///
    /// # Panics
    /// If `key >= KEYS`.
    pub const fn rights(self, key: u8) -> KeyRights {
        assert!(key < KEYS, "protection key out of range");
        let bits = (self.0 >> (2 * key)) & 0b11;
        if bits & 0b01 != 0 {
            KeyRights::NoAccess
        } else if bits & 0b10 != 0 {
            KeyRights::ReadOnly
        } else {
            KeyRights::ReadWrite
        }
    }

    /// The register with `key`'s rights set to `rights`, others unchanged.
    ///
    /// # Panics
    /// If `key >= KEYS`.
    pub const fn with(self, key: u8, rights: KeyRights) -> Pkrs {
        assert!(key < KEYS, "protection key out of range");
        let bits = match rights {
            KeyRights::ReadWrite => 0b00,
            KeyRights::ReadOnly => 0b10,
            KeyRights::NoAccess => 0b01,
        };
        Pkrs((self.0 & !(0b11 << (2 * key))) | (bits << (2 * key)))
    }

    /// Whether a read (or, with `write`, a write) of a page tagged `key` is
    /// allowed.
    pub const fn allows(self, key: u8, write: bool) -> bool {
        match self.rights(key) {
            KeyRights::ReadWrite => true,
            KeyRights::ReadOnly => !write,
            KeyRights::NoAccess => false,
        }
    }
}

/// Where the nesting count lives.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum WindowPolicy {
    /// In the task: windows survive preemption and migration.
    Task,
    /// In the CPU: a window disables preemption for its life.
    PerCpu,
}

impl WindowPolicy {
    /// Both policies.
    pub const ALL: [WindowPolicy; 2] = [WindowPolicy::Task, WindowPolicy::PerCpu];
}

/// Window state kept in a task (`thread_struct.pkrs` plus the nesting
/// count).
#[derive(Debug)]
pub struct TaskKeyState {
    depth: AtomicU8,
    before_open: AtomicU32,
    saved: AtomicU32,
}

impl TaskKeyState {
    /// A new task: no window, the boot register value.
    pub const fn new() -> Self {
        Self {
            depth: AtomicU8::new(0),
            before_open: AtomicU32::new(Pkrs::INIT.0),
            saved: AtomicU32::new(Pkrs::INIT.0),
        }
    }

    /// Windows open in the task (task policy only).
    pub fn depth(&self) -> u8 {
        self.depth.load(Ordering::Acquire)
    }

    /// The register value saved when the task was last switched out.
    pub fn saved(&self) -> Pkrs {
        Pkrs(self.saved.load(Ordering::Acquire))
    }

    /// The register value the task's outermost open window found, which
    /// its close restores (task policy only).
    pub fn before_open(&self) -> Pkrs {
        Pkrs(self.before_open.load(Ordering::Acquire))
    }
}

impl Default for TaskKeyState {
    fn default() -> Self {
        Self::new()
    }
}

/// Window state kept in a CPU (per-CPU policy).
#[derive(Debug)]
pub struct CpuKeyState {
    depth: AtomicU8,
    before_open: AtomicU32,
}

impl CpuKeyState {
    /// A CPU with no window open.
    pub const fn new() -> Self {
        Self {
            depth: AtomicU8::new(0),
            before_open: AtomicU32::new(Pkrs::INIT.0),
        }
    }

    /// Windows open on the CPU (per-CPU policy only).
    pub fn depth(&self) -> u8 {
        self.depth.load(Ordering::Acquire)
    }

    /// The register value the CPU's outermost open window found, which its
    /// close restores (per-CPU policy only).
    pub fn before_open(&self) -> Pkrs {
        Pkrs(self.before_open.load(Ordering::Acquire))
    }
}

impl Default for CpuKeyState {
    fn default() -> Self {
        Self::new()
    }
}

/// What protection-key windows need from the machine, on top of the key
/// register ([`KeyRegister`], holding an IA32_PKRS value) and preemption
/// control ([`crate::cpu::Cpu`]).
pub trait PkeyMachine: KeyRegister {
    /// The window state of the task running on this CPU.
    fn task_keys(&self) -> &TaskKeyState;
    /// The window state of this CPU.
    fn cpu_keys(&self) -> &CpuKeyState;
}

impl<M: PkeyMachine + ?Sized> PkeyMachine for &M {
    fn task_keys(&self) -> &TaskKeyState {
        (**self).task_keys()
    }
    fn cpu_keys(&self) -> &CpuKeyState {
        (**self).cpu_keys()
    }
}

/// Misuse of the window API, or a broken rule the API detected. A refused
/// call changes nothing.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WindowError {
    /// 255 windows already open.
    Overflow,
    /// A close without an open (in the current context).
    Underflow,
    /// Under the per-CPU policy, the task was switched out with a window
    /// open on its CPU: the window stays behind with the CPU.
    PreemptedInWindow,
}

impl core::fmt::Display for WindowError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str(match self {
            WindowError::Overflow => "255 protection-key windows are already open",
            WindowError::Underflow => "a protection-key window closed without an open",
            WindowError::PreemptedInWindow => {
                "the task was switched out with a per-CPU protection-key window open"
            }
        })
    }
}

impl core::error::Error for WindowError {}

/// An access the register refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KeyFault {
    /// The key of the page accessed.
    pub key: u8,
    /// Whether it was a write.
    pub write: bool,
    /// The register at the time.
    pub register: Pkrs,
}

/// A disagreement between the windows open and the register.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WindowViolation {
    /// A window is open in the current context but the register refuses
    /// the key.
    ClosedInsideWindow {
        /// Windows open.
        depth: u8,
        /// The register.
        register: Pkrs,
    },
    /// No window is open in the current context but the register grants the
    /// key: stray writes would reach device memory.
    OpenOutsideWindow {
        /// The register.
        register: Pkrs,
    },
}

/// Saved at exception entry, restored at exception return.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[must_use = "the frame must be handed back to exception_exit"]
pub struct ExceptionFrame {
    register: Pkrs,
    depth: u8,
}

impl ExceptionFrame {
    /// The interrupted register value.
    pub fn register(&self) -> Pkrs {
        self.register
    }
    /// The interrupted nesting count.
    pub fn depth(&self) -> u8 {
        self.depth
    }
}

/// What the windows cost and what went wrong.
#[derive(Debug, Default)]
pub struct WindowStats {
    /// Opens accepted.
    pub opens: AtomicU64,
    /// Closes accepted.
    pub closes: AtomicU64,
    /// Key-register writes.
    pub register_writes: AtomicU64,
    /// Context switches handled.
    pub switches: AtomicU64,
    /// Exceptions handled.
    pub exceptions: AtomicU64,
    /// Switches out of a CPU with a per-CPU window open.
    pub preempted_in_window: AtomicU64,
}

impl WindowStats {
    /// Reads a counter.
    pub fn get(counter: &AtomicU64) -> u64 {
        counter.load(Ordering::Relaxed)
    }
}

/// Nestable windows on one key under one [`WindowPolicy`].
///
/// ```
/// use lazymmu::mm::pkey_window::{PkeyWindows, WindowPolicy};
/// use lazymmu::mm::testing::TestKeys;
/// let machine = TestKeys::new(1, 1);
/// let windows = PkeyWindows::new(&machine, WindowPolicy::Task, 3);
/// assert!(windows.access(true).is_err());
/// {
///     let _outer = windows.open().unwrap();
///     let _inner = windows.open().unwrap();
///     assert!(windows.access(true).is_ok());
/// }
/// assert!(windows.access(true).is_err());
/// ```
pub struct PkeyWindows<M> {
    machine: M,
    policy: WindowPolicy,
    key: u8,
    stats: WindowStats,
}

impl<M: PkeyMachine> PkeyWindows<M> {
    /// Windows on `key` over `machine`.
    ///
    /// # Panics
    /// If `key` is 0 (ordinary kernel memory) or not below [`KEYS`].
    pub fn new(machine: M, policy: WindowPolicy, key: u8) -> Self {
        assert!(key > 0 && key < KEYS, "device key must be 1..16");
        Self {
            machine,
            policy,
            key,
            stats: WindowStats::default(),
        }
    }

    /// The policy in force.
    pub fn policy(&self) -> WindowPolicy {
        self.policy
    }

    /// The key the windows open.
    pub fn key(&self) -> u8 {
        self.key
    }

    /// What the windows did.
    pub fn stats(&self) -> &WindowStats {
        &self.stats
    }

    /// The machine.
    pub fn machine(&self) -> &M {
        &self.machine
    }

    /// Windows open in the current context.
    pub fn depth(&self) -> u8 {
        match self.policy {
            WindowPolicy::Task => self.machine.task_keys().depth(),
            WindowPolicy::PerCpu => self.machine.cpu_keys().depth(),
        }
    }

    /// Opens a window; the guard closes it.
    ///
    /// # Errors
    /// [`WindowError::Overflow`] with 255 windows open.
    pub fn open(&self) -> Result<Window<'_, M>, WindowError> {
        self.open_raw()?;
        Ok(Window {
            windows: self,
            _task_bound: PhantomData,
        })
    }

    /// Opens a window without a guard (`pgmap_set_readwrite()`).
    ///
    /// # Errors
    /// [`WindowError::Overflow`] with 255 windows open.
    pub fn open_raw(&self) -> Result<(), WindowError> {
        if self.policy == WindowPolicy::PerCpu {
            // Before reading the CPU's count: the window must not move
            // between reading it and writing the register.
            self.machine.preempt_disable();
        }
        let (depth, before_open) = self.slots();
        let current = depth.load(Ordering::Acquire);
        if current == u8::MAX {
            if self.policy == WindowPolicy::PerCpu {
                self.machine.preempt_enable();
            }
            return Err(WindowError::Overflow);
        }
        if current == 0 {
            let register = self.register();
            before_open.store(register.0, Ordering::Release);
            self.write_register(register.with(self.key, KeyRights::ReadWrite));
        }
        depth.store(current + 1, Ordering::Release);
        self.stats.opens.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    /// Closes a window (`pgmap_set_noaccess()`); the outermost close
    /// restores the register exactly as the outermost open found it.
    ///
    /// # Errors
    /// [`WindowError::Underflow`] with no window open in this context.
    pub fn close_raw(&self) -> Result<(), WindowError> {
        let (depth, before_open) = self.slots();
        let current = depth.load(Ordering::Acquire);
        if current == 0 {
            return Err(WindowError::Underflow);
        }
        depth.store(current - 1, Ordering::Release);
        if current == 1 {
            self.write_register(Pkrs(before_open.load(Ordering::Acquire)));
        }
        self.stats.closes.fetch_add(1, Ordering::Relaxed);
        if self.policy == WindowPolicy::PerCpu {
            self.machine.preempt_enable();
        }
        Ok(())
    }

    /// Context switch on this CPU from the task with `prev` to the task
    /// with `next`: saves the register in `prev`, loads `next`'s (skipping
    /// the write when equal, as Linux does with its per-CPU cache of the
    /// register).
    ///
    /// # Errors
    /// [`WindowError::PreemptedInWindow`] under the per-CPU policy when a
    /// window is open on this CPU; the switch is still carried out, since
    /// the scheduler cannot refuse it.
    pub fn context_switch(
        &self,
        prev: &TaskKeyState,
        next: &TaskKeyState,
    ) -> Result<(), WindowError> {
        self.stats.switches.fetch_add(1, Ordering::Relaxed);
        let register = self.register();
        prev.saved.store(register.0, Ordering::Release);
        let wanted = next.saved();
        if wanted != register {
            self.write_register(wanted);
        }
        if self.policy == WindowPolicy::PerCpu && self.machine.cpu_keys().depth() > 0 {
            self.stats
                .preempted_in_window
                .fetch_add(1, Ordering::Relaxed);
            return Err(WindowError::PreemptedInWindow);
        }
        Ok(())
    }

    /// Exception entry: saves the interrupted register and count, and runs
    /// the handler with the boot register value and no window open.
    pub fn exception_entry(&self) -> ExceptionFrame {
        self.stats.exceptions.fetch_add(1, Ordering::Relaxed);
        let (depth, _) = self.slots();
        let frame = ExceptionFrame {
            register: self.register(),
            depth: depth.load(Ordering::Acquire),
        };
        depth.store(0, Ordering::Release);
        if frame.register != Pkrs::INIT {
            self.write_register(Pkrs::INIT);
        }
        frame
    }

    /// Exception return: restores what [`Self::exception_entry`] saved.
    /// Windows the handler left open are abandoned (their count is
    /// overwritten), and the register is the interrupted one again.
    pub fn exception_exit(&self, frame: ExceptionFrame) {
        let (depth, _) = self.slots();
        depth.store(frame.depth, Ordering::Release);
        if self.register() != frame.register {
            self.write_register(frame.register);
        }
    }

    /// A data access to a page tagged with this window's key, as the
    /// hardware judges it.
    ///
    /// # Errors
    /// [`KeyFault`] when the register refuses it.
    pub fn access(&self, write: bool) -> Result<(), KeyFault> {
        let register = self.register();
        if register.allows(self.key, write) {
            Ok(())
        } else {
            Err(KeyFault {
                key: self.key,
                write,
                register,
            })
        }
    }

    /// Checks that the register agrees with the windows open in the current
    /// context: read-write for the key inside, no access outside.
    ///
    /// # Errors
    /// The [`WindowViolation`] found.
    pub fn check(&self) -> Result<(), WindowViolation> {
        let register = self.register();
        let depth = self.depth();
        match (depth > 0, register.rights(self.key)) {
            (true, KeyRights::ReadWrite) | (false, KeyRights::NoAccess) => Ok(()),
            (true, _) => Err(WindowViolation::ClosedInsideWindow { depth, register }),
            (false, _) => Err(WindowViolation::OpenOutsideWindow { register }),
        }
    }

    fn slots(&self) -> (&AtomicU8, &AtomicU32) {
        match self.policy {
            WindowPolicy::Task => {
                let task = self.machine.task_keys();
                (&task.depth, &task.before_open)
            }
            WindowPolicy::PerCpu => {
                let cpu = self.machine.cpu_keys();
                (&cpu.depth, &cpu.before_open)
            }
        }
    }

    fn register(&self) -> Pkrs {
        Pkrs(self.machine.read_key() as u32)
    }

    fn write_register(&self, value: Pkrs) {
        self.stats.register_writes.fetch_add(1, Ordering::Relaxed);
        self.machine.write_key(u64::from(value.0));
    }
}

/// An open window; dropping it closes the window. Bound to the task that
/// opened it: not `Send`.
#[must_use = "dropping the window at once closes it"]
pub struct Window<'a, M: PkeyMachine> {
    windows: &'a PkeyWindows<M>,
    _task_bound: PhantomData<*const ()>,
}

impl<M: PkeyMachine> Drop for Window<'_, M> {
    fn drop(&mut self) {
        // A refused close means the count was reset underneath the guard
        // (an exception frame overwrote it); there is nothing to undo.
        let _ = self.windows.close_raw();
    }
}
