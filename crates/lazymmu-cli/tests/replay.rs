//! `lazymmu replay` end to end: exact output, standard input, errors and
//! exit statuses.

use assert_cmd::Command;
use predicates::prelude::*;
use std::io::Write;

const WORKED_EXAMPLE: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../../examples/worked-example.trace"
);

/// The worked example of docs/design.md §2 as the counter design replays it.
const WORKED_EXAMPLE_OUTPUT: &str = "\
2 enable enable=1 pause=0 active=true hook=enter
3 enable enable=2 pause=0 active=true hook=-
4 pause enable=2 pause=1 active=false hook=leave
5 enable enable=2 pause=1 active=false hook=-
6 resume enable=2 pause=0 active=true hook=enter
7 disable enable=1 pause=0 active=true hook=flush
8 disable enable=0 pause=0 active=false hook=leave
";

fn lazymmu() -> Command {
    Command::cargo_bin("lazymmu").expect("the lazymmu binary is built")
}

#[test]
fn worked_example_with_the_default_design() {
    lazymmu()
        .args(["replay", WORKED_EXAMPLE])
        .assert()
        .success()
        .stdout(WORKED_EXAMPLE_OUTPUT)
        .stderr("");
}

#[test]
fn worked_example_per_cpu_matches_counters() {
    lazymmu()
        .args(["replay", "--design", "percpu", WORKED_EXAMPLE])
        .assert()
        .success()
        .stdout(WORKED_EXAMPLE_OUTPUT);
}

#[test]
fn worked_example_stateful_same_hooks_flags_for_counters() {
    lazymmu()
        .args(["replay", "--design", "stateful", WORKED_EXAMPLE])
        .assert()
        .success()
        .stdout(
            "\
2 enable enable=1 pause=0 active=true hook=enter
3 enable enable=1 pause=0 active=true hook=-
4 pause enable=1 pause=1 active=false hook=leave
5 enable enable=1 pause=1 active=false hook=-
6 resume enable=1 pause=0 active=true hook=enter
7 disable enable=1 pause=0 active=true hook=flush
8 disable enable=0 pause=0 active=false hook=leave
",
        );
}

#[test]
fn standard_input_with_comments_blank_lines_and_interrupts() {
    lazymmu()
        .args(["replay", "-"])
        .write_stdin(
            "# comment\n\nenable\nirq_enter  # handler\ndisable\nenable\nirq_exit\ndisable\n",
        )
        .assert()
        .success()
        .stdout(
            "\
3 enable enable=1 pause=0 active=true hook=enter
4 irq_enter enable=1 pause=0 active=false hook=-
5 disable enable=1 pause=0 active=false hook=-
6 enable enable=1 pause=0 active=false hook=-
7 irq_exit enable=1 pause=0 active=true hook=-
8 disable enable=0 pause=0 active=false hook=leave
",
        );
}

#[test]
fn pause_outside_a_section_and_misuse() {
    for design in ["counters", "stateful", "percpu"] {
        lazymmu()
            .args(["replay", "--design", design, "-"])
            .write_stdin("pause\nresume\nresume\ndisable\nirq_exit\n")
            .assert()
            .success()
            .stdout(
                "\
1 pause enable=0 pause=1 active=false hook=-
2 resume enable=0 pause=0 active=false hook=-
3 resume enable=0 pause=0 active=false hook=- misuse=underflow
4 disable enable=0 pause=0 active=false hook=- misuse=underflow
5 irq_exit enable=0 pause=0 active=false hook=- misuse=underflow
",
            );
    }
}

#[test]
fn overflow_at_255_changes_nothing() {
    let trace = "enable\n".repeat(256);
    let output = lazymmu()
        .args(["replay", "-"])
        .write_stdin(trace)
        .assert()
        .success()
        .get_output()
        .stdout
        .clone();
    let output = String::from_utf8(output).unwrap();
    let lines: Vec<&str> = output.lines().collect();
    assert_eq!(lines.len(), 256);
    assert_eq!(
        lines[254],
        "255 enable enable=255 pause=0 active=true hook=-"
    );
    assert_eq!(
        lines[255],
        "256 enable enable=255 pause=0 active=true hook=- misuse=overflow"
    );
}

#[test]
fn unknown_operation_names_its_line_and_stops() {
    let mut file = tempfile::NamedTempFile::new().unwrap();
    write!(file, "enable\n\nflush\ndisable\n").unwrap();
    let path = file.path().to_str().unwrap().to_owned();
    lazymmu()
        .args(["replay", &path])
        .assert()
        .code(2)
        .stdout("1 enable enable=1 pause=0 active=true hook=enter\n")
        .stderr(format!("error: {path}:3: unknown operation `flush`\n"));
}

#[test]
fn unknown_operation_on_standard_input() {
    lazymmu()
        .args(["replay", "-"])
        .write_stdin("enable extra\nenable\n")
        .assert()
        .code(2)
        .stdout("")
        .stderr("error: <stdin>:1: unknown operation `enable extra`\n");
}

#[test]
fn missing_file_is_an_io_error_not_a_panic() {
    lazymmu()
        .args(["replay", "no/such/trace"])
        .assert()
        .code(1)
        .stdout("")
        .stderr(
            predicate::str::starts_with("error: cannot open trace no/such/trace: ")
                .and(predicate::str::contains("panicked").not()),
        );
}

#[test]
fn unknown_option_and_unknown_design_exit_2() {
    lazymmu()
        .args(["replay", "--fast", WORKED_EXAMPLE])
        .assert()
        .code(2)
        .stdout("")
        .stderr(predicate::str::contains("--fast"));
    lazymmu()
        .args(["replay", "--design", "tagged", WORKED_EXAMPLE])
        .assert()
        .code(2)
        .stdout("")
        .stderr(predicate::str::contains("tagged"));
    lazymmu().args(["replay"]).assert().code(2).stdout("");
}

#[test]
fn unreadable_line_names_its_line() {
    lazymmu()
        .args(["replay", "-", "--design", "percpu"])
        .write_stdin(&b"enable\n\xff\xfe\n"[..])
        .assert()
        .code(2)
        .stdout("1 enable enable=1 pause=0 active=true hook=enter\n")
        .stderr(predicate::str::starts_with(
            "error: <stdin>:2: not UTF-8 text",
        ));
}

#[test]
fn an_endless_line_is_refused_at_the_limit() {
    lazymmu()
        .args(["replay", "/dev/zero"])
        .assert()
        .code(2)
        .stdout("")
        .stderr(predicate::str::starts_with(
            "error: /dev/zero:1: line longer than the limit of 4,096 bytes: `\\0",
        ));
}

#[test]
fn a_long_unknown_operation_is_quoted_in_80_characters() {
    let word = "x".repeat(4_000);
    let out = lazymmu()
        .args(["replay", "-"])
        .write_stdin(format!("enable\n{word}\n"))
        .assert()
        .code(2)
        .get_output()
        .stderr
        .clone();
    let message = String::from_utf8(out).unwrap();
    assert_eq!(
        message,
        format!(
            "error: <stdin>:2: unknown operation `{}`…\n",
            "x".repeat(80)
        )
    );
}

#[test]
fn output_to_a_closed_pipe_ends_quietly() {
    // Far more output than a pipe holds, to a reader that has gone.
    let dir = tempfile::tempdir().unwrap();
    let trace = dir.path().join("long.trace");
    std::fs::write(&trace, "enable\ndisable\n".repeat(200_000)).unwrap();
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_lazymmu"))
        .arg("replay")
        .arg(&trace)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    drop(child.stdout.take());
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(0));
    assert_eq!(String::from_utf8_lossy(&out.stderr), "");
}
