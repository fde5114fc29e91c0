//! The charts of `lazymmu compare`: the SVG is read back and checked for
//! what a reader relies on (each label on the row of its bars or cells,
//! bars apart from each other, values inside their cells), the PNG for
//! being a PNG of the same picture, and the path written is reported.

use assert_cmd::Command;
use predicates::prelude::*;

fn lazymmu() -> Command {
    Command::cargo_bin("lazymmu").expect("the lazymmu binary is built")
}

/// A rectangle of the SVG.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Rect {
    x: f64,
    y: f64,
    width: f64,
    height: f64,
}

/// A text of the SVG: its anchor point and content.
#[derive(Debug, Clone)]
struct Text {
    x: f64,
    y: f64,
    /// Whether the anchor is the vertical centre (`dy="0.5ex"`) rather
    /// than the top.
    centred: bool,
    content: String,
}

fn attribute(element: &str, name: &str) -> Option<String> {
    let start = element.find(&format!(" {name}=\""))? + name.len() + 3;
    let end = element[start..].find('"')? + start;
    Some(element[start..end].to_owned())
}

fn number(element: &str, name: &str) -> f64 {
    attribute(element, name)
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("{name} in {element}"))
}

fn rects(svg: &str) -> Vec<Rect> {
    svg.split("<rect")
        .skip(1)
        .map(|e| Rect {
            x: number(e, "x"),
            y: number(e, "y"),
            width: number(e, "width"),
            height: number(e, "height"),
        })
        .collect()
}

fn texts(svg: &str) -> Vec<Text> {
    svg.split("<text")
        .skip(1)
        .map(|e| {
            let open = e.find('>').unwrap();
            let close = e.find("</text>").unwrap();
            Text {
                x: number(e, "x"),
                y: number(e, "y"),
                centred: attribute(&e[..open], "dy").as_deref() == Some("0.5ex"),
                content: e[open + 1..close].trim().to_owned(),
            }
        })
        .collect()
}

fn svg_of(args: &[&str]) -> (String, String) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("chart.svg");
    let out = lazymmu()
        .args(args)
        .arg("--svg")
        .arg(&path)
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stderr = String::from_utf8(out.stderr).unwrap();
    assert!(
        stderr.contains(&format!("wrote {}", path.display())),
        "the path written is reported: {stderr}"
    );
    (std::fs::read_to_string(&path).unwrap(), stderr)
}

#[test]
fn each_backend_label_shares_a_row_with_its_bars() {
    let backends = ["xen-pv", "s390", "x86-pks"];
    let (svg, stderr) = svg_of(&[
        "compare",
        "--backend",
        "xen-pv,s390,x86-pks",
        "--workload",
        "mprotect",
        "--pages",
        "1024",
        "--design",
        "all",
    ]);
    assert!(stderr.contains("bars: mprotect on 3 backends"), "{stderr}");
    assert!(svg.starts_with("<svg"));
    let texts = texts(&svg);
    // The legend names every series: eager and each design's lazy runs.
    for series in [
        "eager",
        "lazy (counters)",
        "lazy (stateful)",
        "lazy (percpu)",
    ] {
        assert!(texts.iter().any(|t| t.content == series), "{series}");
    }
    let rects = rects(&svg);
    // Bars start at the axis; the legend's swatches are 14 pixels square.
    let axis = rects
        .iter()
        .filter(|r| r.height > 14.0 && r.x > 0.0)
        .map(|r| r.x)
        .fold(f64::MAX, f64::min);
    let bars: Vec<Rect> = rects
        .iter()
        .copied()
        .filter(|r| r.x == axis && r.height > 14.0)
        .collect();
    assert_eq!(bars.len(), backends.len() * 4, "{bars:?}");
    for backend in backends {
        let label = texts
            .iter()
            .find(|t| t.content == backend)
            .unwrap_or_else(|| panic!("a label for {backend}"));
        assert!(label.centred);
        // The label's row: the bars whose vertical span holds the label's
        // centre, or lies next to a bar that does, within its group.
        let mut group: Vec<&Rect> = bars
            .iter()
            .filter(|b| (b.y - label.y).abs() <= 2.0 * b.height + 8.0)
            .collect();
        group.sort_by(|a, b| a.y.total_cmp(&b.y));
        assert_eq!(group.len(), 4, "{backend}: {group:?}");
        let top = group[0].y;
        let bottom = group[3].y + group[3].height;
        assert!(
            (top + bottom) / 2.0 - label.y <= 1.0 && label.y - (top + bottom) / 2.0 <= 1.0,
            "{backend}'s label at {} is not centred on its bars {top}..{bottom}",
            label.y
        );
        // Bars of a group do not touch.
        for pair in group.windows(2) {
            assert!(pair[0].y + pair[0].height < pair[1].y, "{pair:?}");
        }
        // Each bar carries its value at its end.
        for bar in &group {
            assert!(
                texts.iter().any(|t| t.centred
                    && (t.y - (bar.y + bar.height / 2.0)).abs() <= 1.0
                    && t.x >= bar.x + bar.width
                    && t.content.chars().next().is_some_and(|c| c.is_ascii_digit())),
                "{backend}: a value beside the bar at {}",
                bar.y
            );
        }
    }
}

#[test]
fn the_heatmap_puts_each_value_in_its_cell_on_its_backends_row() {
    let backends = ["xen-pv", "arm64", "s390"];
    let workloads = ["fork", "vmalloc"];
    let (svg, stderr) = svg_of(&[
        "compare",
        "--backend",
        "xen-pv,arm64,s390",
        "--workload",
        "fork,vmalloc",
        "--pages",
        "1024",
    ]);
    assert!(
        stderr.contains("heatmap: 3 backends × 2 workloads"),
        "{stderr}"
    );
    let texts = texts(&svg);
    let rects = rects(&svg);
    let values: Vec<&Text> = texts
        .iter()
        .filter(|t| t.content.parse::<f64>().is_ok() && t.content.contains('.'))
        .filter(|t| t.centred)
        .collect();
    assert_eq!(values.len(), backends.len() * workloads.len());
    for value in &values {
        let cell = rects.iter().find(|r| {
            r.x < value.x
                && value.x < r.x + r.width
                && r.y < value.y
                && value.y < r.y + r.height
                && r.height < 100.0
        });
        assert!(cell.is_some(), "{value:?} lies in a cell");
    }
    for backend in backends {
        let label = texts.iter().find(|t| t.content == backend).unwrap();
        let on_row = values
            .iter()
            .filter(|v| (v.y - label.y).abs() < 1.0)
            .count();
        assert_eq!(on_row, workloads.len(), "{backend}'s row");
    }
    for workload in workloads {
        let label = texts.iter().find(|t| t.content == workload).unwrap();
        let in_column = values
            .iter()
            .filter(|v| (v.x - label.x).abs() < 1.0)
            .count();
        assert_eq!(in_column, backends.len(), "{workload}'s column");
    }
}

#[test]
fn png_is_written_and_reported() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("chart.png");
    lazymmu()
        .args([
            "compare",
            "--backend",
            "s390",
            "--workload",
            "fork,mprotect",
            "--pages",
            "256",
            "--png",
        ])
        .arg(&path)
        .assert()
        .code(0)
        .stderr(predicate::str::contains(format!(
            "wrote {}",
            path.display()
        )));
    let png = std::fs::read(&path).unwrap();
    assert_eq!(&png[..8], b"\x89PNG\r\n\x1a\n");
    // The picture has more than a background: some pixels are not white.
    assert!(png.len() > 2_000, "{} bytes", png.len());
}

#[test]
fn a_chart_that_cannot_be_written_fails_before_the_runs() {
    lazymmu()
        .args(["compare", "--svg", "/nonexistent/dir/x.svg"])
        .assert()
        .code(1)
        .stdout("")
        .stderr(predicate::str::starts_with(
            "error: cannot write /nonexistent/dir/x.svg",
        ));
}

#[test]
fn neighbour_workloads_alone_have_no_chart() {
    lazymmu()
        .args([
            "compare",
            "--workload",
            "ctxswitch",
            "--png",
            "/tmp/never-written.png",
        ])
        .assert()
        .code(2)
        .stdout("")
        .stderr(predicate::str::contains("--svg and --png draw"));
    assert!(!std::path::Path::new("/tmp/never-written.png").exists());
}
