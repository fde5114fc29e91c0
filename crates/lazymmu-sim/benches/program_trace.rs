//! Program traces: reading a trace of 100,000 system calls and building its
//! address-space history, against reading the same bytes line by line
//! (the floor any line-oriented reader pays) in the same run.
//!
//! The trace is the shipped traces (`traces/*.trace`) played one after
//! another, their times shifted, until 100,000 calls.
#![allow(missing_docs)] // criterion_group! generates undocumented items

use std::io::BufRead;
use std::path::PathBuf;

use criterion::{black_box, criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use lazymmu_sim::program_trace::reader::Reader;
use lazymmu_sim::program_trace::record::{EventKind, Record};
use lazymmu_sim::program_trace::summarize;

const CALLS: u64 = 100_000;

/// The shipped traces in a row until `CALLS` calls: the bytes, the events
/// and the calls among them.
fn build() -> (Vec<u8>, u64, u64) {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../traces");
    let mut paths: Vec<PathBuf> = std::fs::read_dir(&dir)
        .expect("traces/")
        .map(|e| e.expect("entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "trace"))
        .collect();
    paths.sort();
    let traces: Vec<Vec<Record>> = paths
        .iter()
        .map(|p| {
            let text = std::fs::read(p).expect("readable");
            Reader::new(&text[..], p.display().to_string())
                .collect::<Result<_, _>>()
                .expect("parses")
        })
        .collect();
    let mut out =
        String::from("lazymmu-trace 1\n@touches faults\n@fault-around 16\n@thp madvise\n");
    let (mut events, mut calls, mut offset) = (0u64, 0u64, 0u64);
    'fill: loop {
        for records in &traces {
            let mut last = 0;
            for record in records {
                match record {
                    Record::Meta { .. } => continue,
                    Record::File(_) => out.push_str(&record.to_string()),
                    Record::Event(event) => {
                        let mut event = event.clone();
                        last = event.time_us;
                        event.time_us += offset;
                        if matches!(event.kind, EventKind::Call { .. }) {
                            calls += 1;
                        }
                        events += 1;
                        out.push_str(&Record::Event(event).to_string());
                    }
                }
                out.push('\n');
                if calls >= CALLS {
                    break 'fill;
                }
            }
            offset += last + 1;
        }
    }
    (out.into_bytes(), events, calls)
}

fn bench(c: &mut Criterion) {
    let (bytes, events, calls) = build();
    let mut group = c.benchmark_group("program_trace");
    group.sample_size(10);
    group.throughput(Throughput::Elements(events));
    let id = format!("{calls}-calls-{events}-events");
    group.bench_with_input(BenchmarkId::new("replay", &id), &bytes, |b, bytes| {
        // Traces cut off mid-way leave live address spaces; that is fine.
        b.iter(|| black_box(summarize(&bytes[..], "bench").expect("parses")))
    });
    group.bench_with_input(
        BenchmarkId::new("baseline-read-lines", &id),
        &bytes,
        |b, bytes| {
            b.iter(|| {
                let mut reader = &bytes[..];
                let mut line = String::new();
                let mut n = 0u64;
                while reader.read_line(&mut line).expect("utf-8") > 0 {
                    n += line.len() as u64;
                    line.clear();
                }
                black_box(n)
            })
        },
    );
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
