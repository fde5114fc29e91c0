//! Protection-key windows: faults outside, access inside, exact restore
//! after nesting, exceptions and migration, and the per-CPU policy's
//! preemption rule.

use lazymmu::cpu::KeyRegister;
use lazymmu::mm::pkey_window::{
    KeyRights, PkeyWindows, Pkrs, WindowError, WindowPolicy, WindowStats, WindowViolation,
};
use lazymmu::mm::testing::TestKeys;

const KEY: u8 = 3;

#[test]
fn register_encoding_follows_pkrs() {
    assert_eq!(Pkrs::INIT.rights(0), KeyRights::ReadWrite);
    for key in 1..16 {
        assert_eq!(Pkrs::INIT.rights(key), KeyRights::NoAccess);
    }
    let value = Pkrs(0)
        .with(5, KeyRights::ReadOnly)
        .with(2, KeyRights::NoAccess);
    assert_eq!(value, Pkrs((0b10 << 10) | (0b01 << 4)));
    assert!(value.allows(5, false) && !value.allows(5, true));
    assert!(!value.allows(2, false));
    assert!(value.allows(7, true));
}

#[test]
fn access_faults_outside_and_succeeds_inside_nested_windows() {
    for policy in WindowPolicy::ALL {
        let machine = TestKeys::new(1, 1);
        let windows = PkeyWindows::new(&machine, policy, KEY);
        // Another key's rights are part of what must come back exactly.
        machine.write_key(u64::from(Pkrs::INIT.with(7, KeyRights::ReadOnly).0));
        let before = machine.register(0);
        let fault = windows.access(false).unwrap_err();
        assert_eq!((fault.key, fault.write), (KEY, false));
        {
            let _a = windows.open().unwrap();
            let _b = windows.open().unwrap();
            let _c = windows.open().unwrap();
            assert_eq!(windows.depth(), 3);
            assert!(windows.access(true).is_ok());
            assert_eq!(windows.check(), Ok(()));
        }
        assert!(windows.access(false).is_err());
        assert_eq!(machine.register(0), before, "{policy:?}: restored exactly");
        assert_eq!(WindowStats::get(&windows.stats().register_writes), 2);
        assert_eq!(windows.check(), Ok(()));
        assert!(machine.preemptible(0));
    }
}

#[test]
fn an_exception_in_the_middle_of_nested_windows() {
    for policy in WindowPolicy::ALL {
        let machine = TestKeys::new(1, 1);
        let windows = PkeyWindows::new(&machine, policy, KEY);
        windows.open_raw().unwrap();
        windows.open_raw().unwrap();
        let open = machine.register(0);

        let frame = windows.exception_entry();
        assert_eq!(frame.depth(), 2);
        assert!(windows.access(true).is_err(), "the handler starts closed");
        assert_eq!(windows.check(), Ok(()));
        {
            let _handler = windows.open().unwrap();
            assert!(windows.access(true).is_ok());
            // A nested exception inside the handler's window.
            let inner = windows.exception_entry();
            assert!(windows.access(false).is_err());
            windows.exception_exit(inner);
            assert!(windows.access(true).is_ok());
        }
        assert!(windows.access(true).is_err());
        windows.exception_exit(frame);

        assert_eq!(
            machine.register(0),
            open,
            "{policy:?}: interrupted value back"
        );
        assert_eq!(windows.depth(), 2);
        assert!(windows.access(true).is_ok());
        windows.close_raw().unwrap();
        assert!(windows.access(true).is_ok(), "still one window open");
        windows.close_raw().unwrap();
        assert!(windows.access(true).is_err());
        assert_eq!(machine.register(0), Pkrs::INIT);
        assert!(machine.preemptible(0));
    }
}

#[test]
fn task_windows_survive_preemption_and_migration() {
    let machine = TestKeys::new(2, 3);
    let windows = PkeyWindows::new(&machine, WindowPolicy::Task, KEY);
    machine.run_on(0, |_| windows.open_raw()).unwrap();
    assert!(machine.preemptible(0));
    // Task 2 preempts task 0 on CPU 0 and must not inherit the window.
    machine.switch_to(&windows, 0, 2).unwrap();
    machine.run_on(0, |_| {
        assert!(windows.access(true).is_err());
        assert_eq!(windows.check(), Ok(()));
    });
    // Task 0 resumes on CPU 1, window still open.
    machine.switch_to(&windows, 1, 0).unwrap();
    machine.run_on(1, |_| {
        assert!(windows.access(true).is_ok());
        assert_eq!(windows.check(), Ok(()));
        windows.close_raw().unwrap();
        assert!(windows.access(true).is_err());
    });
    assert_eq!(machine.register(1), Pkrs::INIT);
    assert_eq!(machine.register(0), Pkrs::INIT);
}

#[test]
fn percpu_windows_disable_preemption_for_their_life() {
    let machine = TestKeys::new(1, 2);
    let windows = PkeyWindows::new(&machine, WindowPolicy::PerCpu, KEY);
    {
        let _outer = windows.open().unwrap();
        let _inner = windows.open().unwrap();
        assert!(!machine.preemptible(0));
    }
    assert!(machine.preemptible(0));
    assert_eq!(machine.task(0).depth(), 0, "the count lives in the CPU");
    // A switch outside any window is fine.
    machine.switch_to(&windows, 0, 1).unwrap();
}

#[test]
fn percpu_preemptible_variant_is_caught() {
    // A broken kernel that preempts inside a per-CPU window anyway.
    let machine = TestKeys::new(2, 3);
    let windows = PkeyWindows::new(&machine, WindowPolicy::PerCpu, KEY);
    machine.run_on(0, |_| windows.open_raw()).unwrap();
    assert_eq!(
        machine.switch_to(&windows, 0, 2),
        Err(WindowError::PreemptedInWindow)
    );
    assert_eq!(WindowStats::get(&windows.stats().preempted_in_window), 1);
    // The task now on CPU 0 sees a window count it never opened.
    machine.run_on(0, |_| {
        assert!(matches!(
            windows.check(),
            Err(WindowViolation::ClosedInsideWindow { depth: 1, .. })
        ));
    });
    // The task that opened it resumes elsewhere with the register open but
    // no count: stray writes pass, and its close underflows.
    machine.switch_to(&windows, 1, 0).unwrap();
    machine.run_on(1, |_| {
        assert!(matches!(
            windows.check(),
            Err(WindowViolation::OpenOutsideWindow { .. })
        ));
        assert_eq!(windows.close_raw(), Err(WindowError::Underflow));
    });
}

#[test]
fn misuse_is_refused_without_change() {
    for policy in WindowPolicy::ALL {
        let machine = TestKeys::new(1, 1);
        let windows = PkeyWindows::new(&machine, policy, KEY);
        assert_eq!(windows.close_raw(), Err(WindowError::Underflow));
        assert_eq!(machine.register(0), Pkrs::INIT);
        for _ in 0..255 {
            windows.open_raw().unwrap();
        }
        let register = machine.register(0);
        assert_eq!(windows.open_raw().map(|_| ()), Err(WindowError::Overflow));
        assert_eq!(windows.depth(), 255);
        assert_eq!(machine.register(0), register);
        for _ in 0..255 {
            windows.close_raw().unwrap();
        }
        assert_eq!(machine.register(0), Pkrs::INIT);
        assert!(
            machine.preemptible(0),
            "{policy:?}: failed open left no preempt count"
        );
    }
}
