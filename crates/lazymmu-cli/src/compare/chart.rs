//! The charts of `lazymmu compare`, as SVG or PNG (plotters' SVG and
//! bitmap backends):
//!
//! - the matrix as a heatmap: a row per backend, a column per workload,
//!   each cell coloured by lazy/eager on a diverging scale centred at 1.0
//!   (blue where lazy sections save, red where they cost more, on a log
//!   scale so that 0.5 and 2 are equally strong) and annotated with its
//!   value; one panel per design;
//! - for a single workload, grouped bars: a group per backend, a bar per
//!   mode (and per design for the lazy runs), modelled cycles on a log
//!   axis, with a legend.
//!
//! A chart is first laid out as a [`Scene`] of rectangles, lines and texts
//! in pixels, then painted on either backend, so both formats show the
//! same picture.

use std::io::Write;
use std::sync::Once;

use ab_glyph::{Font, FontRef, PxScale, ScaleFont};
use anyhow::{anyhow, Result};
use lazymmu_sim::scenario::{BackendKind, DesignKind, ModeKind, RunResult};
use plotters::coord::Shift;
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};

use super::matrix::{Matrix, BROKEN};
use crate::text::{ratio, thousands};

/// The file format of a chart.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    /// Scalable vector graphics.
    Svg,
    /// A PNG bitmap.
    Png,
}

/// The font every text is set in.
const FONT: &str = "sans-serif";

/// Registers the embedded DejaVu Sans as [`FONT`], once: the bitmap
/// backend draws glyphs from it, and both backends measure text with it.
fn register_font() -> Result<()> {
    static REGISTER: Once = Once::new();
    let mut result = Ok(());
    REGISTER.call_once(|| {
        result = plotters::style::register_font(FONT, FontStyle::Normal, dejavu::sans::regular())
            .map_err(|_| anyhow!("the embedded font does not load"));
    });
    result
}

/// An sRGB colour.
type Rgb = (u8, u8, u8);

const BLACK_TEXT: Rgb = (20, 20, 20);
const WHITE_TEXT: Rgb = (255, 255, 255);
const GRID: Rgb = (215, 215, 215);
const MISSING: Rgb = (225, 225, 225);
/// The diverging scale's ends and middle (ColorBrewer RdBu).
const SAVES: Rgb = (33, 102, 172);
const NEUTRAL: Rgb = (247, 247, 247);
const COSTS: Rgb = (178, 24, 43);
/// The bars' colours: eager, then one per design's lazy runs
/// (ColorBrewer Dark2, distinguishable in print and by most colour-blind
/// readers).
const EAGER: Rgb = (140, 140, 140);
const LAZY: [Rgb; 3] = [(27, 158, 119), (217, 95, 2), (117, 112, 179)];

/// One thing to paint, in pixels from the top left.
#[derive(Clone)]
pub enum Shape {
    /// A filled rectangle from `(x0, y0)` to `(x1, y1)`.
    Rect {
        /// Corners.
        x0: i32,
        /// Corners.
        y0: i32,
        /// Corners.
        x1: i32,
        /// Corners.
        y1: i32,
        /// Fill.
        fill: Rgb,
    },
    /// A one-pixel line.
    Line {
        /// Ends.
        from: (i32, i32),
        /// Ends.
        to: (i32, i32),
        /// Colour.
        color: Rgb,
    },
    /// Text anchored at `at`.
    Text {
        /// The text.
        text: String,
        /// Anchor point.
        at: (i32, i32),
        /// Which point of the text's box `at` is.
        anchor: (HPos, VPos),
        /// Pixels.
        size: u32,
        /// Colour.
        color: Rgb,
    },
}

/// A laid-out chart.
#[derive(Clone, Default)]
pub struct Scene {
    /// Pixels.
    pub width: u32,
    /// Pixels.
    pub height: u32,
    /// Painted in order.
    pub shapes: Vec<Shape>,
}

impl Scene {
    fn rect(&mut self, x0: i32, y0: i32, x1: i32, y1: i32, fill: Rgb) {
        self.shapes.push(Shape::Rect {
            x0,
            y0,
            x1,
            y1,
            fill,
        });
    }

    fn line(&mut self, from: (i32, i32), to: (i32, i32), color: Rgb) {
        self.shapes.push(Shape::Line { from, to, color });
    }

    fn text(&mut self, text: impl Into<String>, at: (i32, i32), anchor: (HPos, VPos), size: u32) {
        self.text_in(text, at, anchor, size, BLACK_TEXT);
    }

    fn text_in(
        &mut self,
        text: impl Into<String>,
        at: (i32, i32),
        anchor: (HPos, VPos),
        size: u32,
        color: Rgb,
    ) {
        self.shapes.push(Shape::Text {
            text: text.into(),
            at,
            anchor,
            size,
            color,
        });
    }
}

/// The width of `text` in pixels at `size`.
fn text_width(text: &str, size: u32) -> i32 {
    (FONT, size)
        .into_font()
        .box_size(text)
        .map_or(text.len() as i32 * size as i32 * 6 / 10, |(w, _)| w as i32)
}

/// Draws the chart of `matrices` (one workload: bars of `results`) to
/// `out` and says what it drew.
///
/// # Errors
/// Errors of the backends and of writing `out`.
pub fn draw(
    out: &mut impl Write,
    format: Format,
    matrices: &[Matrix],
    results: &[RunResult],
    caption: &str,
) -> Result<String> {
    register_font()?;
    let single_workload = matrices.iter().all(|m| m.workloads.len() == 1);
    let (scene, what) = if single_workload {
        let workload = matrices
            .first()
            .and_then(|m| m.workloads.first())
            .ok_or_else(|| anyhow!("no run to draw"))?;
        let backends = matrices.first().map_or(0, |m| m.backends.len());
        (
            bars(results, caption),
            format!("bars: {workload} on {backends} backends"),
        )
    } else {
        let (backends, workloads) = matrices
            .first()
            .map_or((0, 0), |m| (m.backends.len(), m.workloads.len()));
        (
            heatmap(matrices, caption),
            format!("heatmap: {backends} backends × {workloads} workloads"),
        )
    };
    match format {
        Format::Svg => {
            let mut svg = String::new();
            {
                let area = SVGBackend::with_string(&mut svg, (scene.width, scene.height))
                    .into_drawing_area();
                paint(&scene, &area, None)?;
                area.present().map_err(|e| anyhow!("{e}"))?;
            }
            out.write_all(svg.as_bytes())?;
        }
        Format::Png => {
            let mut pixels = vec![0u8; scene.width as usize * scene.height as usize * 3];
            {
                let area = BitMapBackend::with_buffer(&mut pixels, (scene.width, scene.height))
                    .into_drawing_area();
                let font = FontRef::try_from_slice(dejavu::sans::regular())
                    .map_err(|_| anyhow!("the embedded font does not load"))?;
                paint(&scene, &area, Some(&font))?;
                area.present().map_err(|e| anyhow!("{e}"))?;
            }
            let mut encoder = png::Encoder::new(&mut *out, scene.width, scene.height);
            encoder.set_color(png::ColorType::Rgb);
            encoder.set_depth(png::BitDepth::Eight);
            let mut writer = encoder.write_header()?;
            writer.write_image_data(&pixels)?;
            writer.finish()?;
        }
    }
    out.flush()?;
    Ok(what)
}

fn color(rgb: Rgb) -> RGBColor {
    RGBColor(rgb.0, rgb.1, rgb.2)
}

/// Paints `scene`; with `glyphs`, texts are drawn glyph by glyph from that
/// font (for bitmaps: plotters' own bitmap text leaves out each glyph's
/// left side bearing, which spaces letters unevenly), else by the
/// backend (SVG text).
fn paint<DB: DrawingBackend>(
    scene: &Scene,
    area: &DrawingArea<DB, Shift>,
    glyphs: Option<&FontRef<'_>>,
) -> Result<()> {
    let fail = |e: DrawingAreaErrorKind<DB::ErrorType>| anyhow!("{e}");
    area.fill(&WHITE).map_err(fail)?;
    for shape in &scene.shapes {
        match shape {
            Shape::Rect {
                x0,
                y0,
                x1,
                y1,
                fill,
            } => area
                .draw(&Rectangle::new(
                    [(*x0, *y0), (*x1, *y1)],
                    color(*fill).filled(),
                ))
                .map_err(fail)?,
            Shape::Line { from, to, color: c } => area
                .draw(&PathElement::new(vec![*from, *to], color(*c)))
                .map_err(fail)?,
            Shape::Text {
                text,
                at,
                anchor,
                size,
                color: c,
            } => match glyphs {
                Some(font) => draw_glyphs(area, font, text, *at, *anchor, *size, *c)?,
                None => {
                    let style = (FONT, *size)
                        .into_font()
                        .color(&color(*c))
                        .pos(Pos::new(anchor.0, anchor.1));
                    area.draw_text(text, &style, *at).map_err(fail)?;
                }
            },
        }
    }
    Ok(())
}

/// Draws `text` from `font`'s glyph outlines, anti-aliased, placed as the
/// SVG backend places it: plotters sets a text of size `s` at an em of
/// `s / 1.24` pixels, with the baseline 0.76 em below the top for
/// [`VPos::Top`] and half an x-height below the anchor for
/// [`VPos::Center`].
fn draw_glyphs<DB: DrawingBackend>(
    area: &DrawingArea<DB, Shift>,
    font: &FontRef<'_>,
    text: &str,
    at: (i32, i32),
    anchor: (HPos, VPos),
    size: u32,
    rgb: Rgb,
) -> Result<()> {
    let em = f64::from(size) / 1.24;
    let units = f64::from(font.units_per_em().unwrap_or(2048.0));
    let scale = PxScale::from((em * f64::from(font.height_unscaled()) / units) as f32);
    let scaled = font.as_scaled(scale);
    let mut width = 0.0f32;
    let mut previous = None;
    for c in text.chars() {
        let id = font.glyph_id(c);
        if let Some(p) = previous {
            width += scaled.kern(p, id);
        }
        width += scaled.h_advance(id);
        previous = Some(id);
    }
    let x0 = match anchor.0 {
        HPos::Left => f64::from(at.0),
        HPos::Center => f64::from(at.0) - f64::from(width) / 2.0,
        HPos::Right => f64::from(at.0) - f64::from(width),
    };
    // DejaVu Sans: x-height 1,120 of 2,048 units.
    let baseline = match anchor.1 {
        VPos::Top => f64::from(at.1) + 0.76 * em,
        VPos::Center => f64::from(at.1) + 0.5 * 0.547 * em,
        VPos::Bottom => f64::from(at.1),
    };
    let ink = color(rgb);
    let mut caret = x0 as f32;
    let mut previous = None;
    let mut result = Ok(());
    for c in text.chars() {
        let id = font.glyph_id(c);
        if let Some(p) = previous {
            caret += scaled.kern(p, id);
        }
        previous = Some(id);
        let glyph = id.with_scale_and_position(scale, ab_glyph::point(caret, baseline as f32));
        caret += scaled.h_advance(id);
        let Some(outline) = font.outline_glyph(glyph) else {
            continue;
        };
        let bounds = outline.px_bounds();
        outline.draw(|x, y, coverage| {
            if coverage > 0.0 && result.is_ok() {
                let point = (
                    bounds.min.x as i32 + x as i32,
                    bounds.min.y as i32 + y as i32,
                );
                result = area
                    .draw_pixel(point, &ink.mix(f64::from(coverage.min(1.0))))
                    .map_err(|e| anyhow!("{e}"));
            }
        });
    }
    result
}

/// Where a ratio falls on the diverging scale: -1 (saves the most) to 1
/// (costs the most), 0 at 1.0; `extent` is the log10 distance from 1.0
/// that reaches either end.
fn scale(ratio: f64, extent: f64) -> f64 {
    (ratio.log10() / extent).clamp(-1.0, 1.0)
}

fn blend(from: Rgb, to: Rgb, t: f64) -> Rgb {
    let mix = |a: u8, b: u8| (f64::from(a) + (f64::from(b) - f64::from(a)) * t).round() as u8;
    (mix(from.0, to.0), mix(from.1, to.1), mix(from.2, to.2))
}

/// The colour of a point of the diverging scale.
fn diverging(t: f64) -> Rgb {
    if t < 0.0 {
        blend(NEUTRAL, SAVES, -t)
    } else {
        blend(NEUTRAL, COSTS, t)
    }
}

/// The heatmap: a panel per design, then the colour scale.
pub fn heatmap(matrices: &[Matrix], caption: &str) -> Scene {
    const MARGIN: i32 = 20;
    const CELL_W: i32 = 112;
    const CELL_H: i32 = 38;
    const HEADER: i32 = 28;
    const TITLE: i32 = 30;
    const GAP: i32 = 24;
    const SCALE_H: i32 = 70;
    let labels = matrices
        .iter()
        .flat_map(|m| m.backends.iter())
        .map(|b| text_width(b.name(), 15))
        .max()
        .unwrap_or(0)
        + 16;
    let columns = matrices
        .iter()
        .map(|m| m.workloads.len())
        .max()
        .unwrap_or(0) as i32;
    let column_w = matrices
        .iter()
        .flat_map(|m| m.workloads.iter())
        .map(|w| text_width(w.name(), 14) + 12)
        .max()
        .unwrap_or(0)
        .max(CELL_W);
    // The scale reaches the strongest ratio, and at least 2× either way.
    let extent = matrices
        .iter()
        .flat_map(Matrix::ratios)
        .filter(|r| *r > 0.0)
        .map(|r| r.log10().abs())
        .fold(2f64.log10(), f64::max);

    let mut scene = Scene::default();
    let title = "lazy/eager modelled cycles: below 1.0 (blue) lazy sections save, \
                 above (red) they cost more";
    let mut y = MARGIN;
    scene.text(title, (MARGIN, y), (HPos::Left, VPos::Top), 18);
    y += 24;
    scene.text(caption, (MARGIN, y), (HPos::Left, VPos::Top), 13);
    y += TITLE;
    let left = MARGIN + labels;
    for m in matrices {
        if matrices.len() > 1 {
            scene.text(
                format!("design {}", m.design),
                (MARGIN, y),
                (HPos::Left, VPos::Top),
                15,
            );
            y += 24;
        }
        for (column, w) in m.workloads.iter().enumerate() {
            let x = left + column as i32 * column_w + column_w / 2;
            scene.text(
                w.name(),
                (x, y + HEADER / 2),
                (HPos::Center, VPos::Center),
                14,
            );
        }
        y += HEADER;
        for (row, &backend) in m.backends.iter().enumerate() {
            let top = y + row as i32 * CELL_H;
            scene.text(
                backend.name(),
                (MARGIN, top + CELL_H / 2),
                (HPos::Left, VPos::Center),
                15,
            );
            for (column, &workload) in m.workloads.iter().enumerate() {
                let x0 = left + column as i32 * column_w;
                let cell = m.cell(backend, workload);
                let value = cell.and_then(|c| c.ratio());
                let (fill, ink) = match value {
                    Some(r) if r > 0.0 => {
                        let t = scale(r, extent);
                        let ink = if t.abs() > 0.55 {
                            WHITE_TEXT
                        } else {
                            BLACK_TEXT
                        };
                        (diverging(t), ink)
                    }
                    Some(_) => (diverging(-1.0), WHITE_TEXT),
                    None => (MISSING, BLACK_TEXT),
                };
                // A white gap of 2 pixels separates the cells.
                scene.rect(x0 + 1, top + 1, x0 + column_w - 1, top + CELL_H - 1, fill);
                let label = cell.map_or_else(|| "not run".to_owned(), |c| c.label());
                scene.text_in(
                    label,
                    (x0 + column_w / 2, top + CELL_H / 2),
                    (HPos::Center, VPos::Center),
                    15,
                    ink,
                );
            }
        }
        y += m.backends.len() as i32 * CELL_H + GAP;
    }

    // The colour scale: a gradient with ticks at powers of ten and at the
    // ends, and what each side means.
    let bar_w = (columns * column_w).clamp(360, 720);
    let bar_x = left;
    let steps = 120;
    for step in 0..steps {
        let t = -1.0 + 2.0 * (f64::from(step) + 0.5) / f64::from(steps);
        let x0 = bar_x + bar_w * step / steps;
        let x1 = bar_x + bar_w * (step + 1) / steps;
        scene.rect(x0, y, x1, y + 16, diverging(t));
    }
    let lowest = -(extent.floor() as i32);
    for power in lowest..=extent.floor() as i32 {
        let t = scale(10f64.powi(power), extent);
        let x = bar_x + ((t + 1.0) / 2.0 * f64::from(bar_w)).round() as i32;
        scene.line((x, y + 16), (x, y + 22), BLACK_TEXT);
        scene.text(
            power_of_ten(power),
            (x, y + 24),
            (HPos::Center, VPos::Top),
            12,
        );
    }
    scene.text("lazy saves", (bar_x, y + 44), (HPos::Left, VPos::Top), 12);
    scene.text(
        "lazy costs more",
        (bar_x + bar_w, y + 44),
        (HPos::Right, VPos::Top),
        12,
    );
    y += SCALE_H;
    if matrices.iter().any(Matrix::broken) {
        scene.text(
            format!("{BROKEN} a run broke an invariant: lazymmu compare prints the violations"),
            (MARGIN, y),
            (HPos::Left, VPos::Top),
            13,
        );
        y += 24;
    }

    let width = left + columns * column_w + MARGIN;
    let title_w = MARGIN + text_width(title, 18) + MARGIN;
    scene.width = width.max(title_w).max(bar_x + bar_w + MARGIN) as u32;
    scene.height = (y + MARGIN / 2) as u32;
    scene
}

/// `10^power` as a tick label: 0.01, 0.1, 1, 10, 100.
fn power_of_ten(power: i32) -> String {
    let digits = usize::try_from(-power).unwrap_or(0);
    format!("{:.digits$}", 10f64.powi(power))
}

/// A series of bars: a mode, and for lazy runs the design.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Series {
    mode: ModeKind,
    design: Option<DesignKind>,
}

impl Series {
    fn label(self) -> String {
        match self.design {
            None => self.mode.name().to_owned(),
            Some(d) => format!("{} ({d})", self.mode),
        }
    }
}

/// Grouped bars of one workload: a group per backend, a bar per series.
pub fn bars(results: &[RunResult], caption: &str) -> Scene {
    const MARGIN: i32 = 20;
    const BAR_H: i32 = 18;
    const BAR_GAP: i32 = 3;
    const GROUP_GAP: i32 = 16;
    const PLOT_W: i32 = 620;
    const VALUE_W: i32 = 190;
    let mut backends: Vec<BackendKind> = Vec::new();
    let mut series: Vec<Series> = Vec::new();
    // The eager runs of every design are the same run (no lazy sections):
    // one eager series.
    series.push(Series {
        mode: ModeKind::Eager,
        design: None,
    });
    for r in results {
        if !backends.contains(&r.backend) {
            backends.push(r.backend);
        }
        let s = Series {
            mode: r.mode,
            design: (r.mode == ModeKind::Lazy).then_some(r.design),
        };
        if !series.contains(&s) {
            series.push(s);
        }
    }
    let workload = results.first().map_or("", |r| r.workload.name());
    let cycles = |backend: BackendKind, s: Series| {
        results
            .iter()
            .find(|r| {
                r.backend == backend && r.mode == s.mode && s.design.is_none_or(|d| d == r.design)
            })
            .map(|r| r.cycles)
    };
    let eager = |backend| {
        cycles(
            backend,
            Series {
                mode: ModeKind::Eager,
                design: None,
            },
        )
    };
    let values: Vec<u64> = results
        .iter()
        .map(|r| r.cycles)
        .filter(|&c| c > 0)
        .collect();
    let low = values.iter().copied().min().unwrap_or(1);
    let high = values.iter().copied().max().unwrap_or(10);
    // The axis starts at the decade below the smallest value and ends a
    // little past the largest.
    let first_decade = (low as f64).log10().floor() as i32;
    let end = ((high as f64).log10() + 0.1).max(f64::from(first_decade) + 1.0);
    let last_decade = end.floor() as i32;
    let span = end - f64::from(first_decade);

    let labels = backends
        .iter()
        .map(|b| text_width(b.name(), 15))
        .max()
        .unwrap_or(0)
        + 16;
    let left = MARGIN + labels;
    let x_of = |value: u64| -> i32 {
        if value == 0 {
            return left;
        }
        let t = ((value as f64).log10() - f64::from(first_decade)) / span;
        left + (t.clamp(0.0, 1.0) * f64::from(PLOT_W)).round() as i32
    };

    let mut scene = Scene::default();
    let mut y = MARGIN;
    scene.text(
        format!("{workload}: modelled cycles of each backend, eager and lazy (log scale)"),
        (MARGIN, y),
        (HPos::Left, VPos::Top),
        18,
    );
    y += 24;
    scene.text(caption, (MARGIN, y), (HPos::Left, VPos::Top), 13);
    y += 26;
    // The legend: a swatch and a name per series.
    let mut x = left;
    for (index, s) in series.iter().enumerate() {
        scene.rect(x, y, x + 14, y + 14, series_color(index));
        scene.text(s.label(), (x + 20, y + 7), (HPos::Left, VPos::Center), 13);
        x += 20 + text_width(&s.label(), 13) + 24;
    }
    y += 28;

    let group_h = series.len() as i32 * (BAR_H + BAR_GAP) - BAR_GAP;
    let plot_top = y;
    let plot_bottom = y + backends.len() as i32 * (group_h + GROUP_GAP) - GROUP_GAP;
    for decade in first_decade..=last_decade {
        let x = x_of(10u64.pow(decade.max(0) as u32));
        scene.line((x, plot_top - 4), (x, plot_bottom + 4), GRID);
        scene.text(
            decade_label(decade),
            (x, plot_bottom + 8),
            (HPos::Center, VPos::Top),
            12,
        );
    }
    for (group, &backend) in backends.iter().enumerate() {
        let top = plot_top + group as i32 * (group_h + GROUP_GAP);
        scene.text(
            backend.name(),
            (MARGIN, top + group_h / 2),
            (HPos::Left, VPos::Center),
            15,
        );
        for (index, &s) in series.iter().enumerate() {
            let y0 = top + index as i32 * (BAR_H + BAR_GAP);
            let Some(value) = cycles(backend, s) else {
                continue;
            };
            let x1 = x_of(value).max(left + 1);
            scene.rect(left, y0, x1, y0 + BAR_H, series_color(index));
            let mut label = thousands(value);
            if s.mode == ModeKind::Lazy {
                if let Some(e) = eager(backend).filter(|&e| e > 0) {
                    label += &format!("  ({} of eager)", ratio(value as f64 / e as f64));
                }
            }
            scene.text(
                label,
                (x1 + 6, y0 + BAR_H / 2),
                (HPos::Left, VPos::Center),
                12,
            );
        }
    }
    scene.line((left, plot_top - 4), (left, plot_bottom + 4), BLACK_TEXT);
    y = plot_bottom + 28;
    scene.text(
        "modelled cycles",
        (left + PLOT_W / 2, y),
        (HPos::Center, VPos::Top),
        13,
    );
    y += 20;
    scene.width = (left + PLOT_W + VALUE_W + MARGIN) as u32;
    scene.height = (y + MARGIN / 2) as u32;
    scene
}

fn series_color(index: usize) -> Rgb {
    match index {
        0 => EAGER,
        n => LAZY[(n - 1) % LAZY.len()],
    }
}

/// `10^decade` as an axis label: 1, 10, 100, 1k, ... 1G.
fn decade_label(decade: i32) -> String {
    const NAMES: [&str; 10] = [
        "1", "10", "100", "1k", "10k", "100k", "1M", "10M", "100M", "1G",
    ];
    usize::try_from(decade)
        .ok()
        .and_then(|d| NAMES.get(d))
        .map_or_else(|| format!("1e{decade}"), |s| (*s).to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_scale_is_centred_at_one_and_symmetric_in_log() {
        let extent = 2.0;
        assert_eq!(scale(1.0, extent), 0.0);
        assert!((scale(0.1, extent) + scale(10.0, extent)).abs() < 1e-12);
        assert_eq!(scale(1e-9, extent), -1.0);
        assert_eq!(diverging(0.0), NEUTRAL);
        assert_eq!(diverging(-1.0), SAVES);
        assert_eq!(diverging(1.0), COSTS);
    }

    #[test]
    fn tick_and_axis_labels() {
        assert_eq!(power_of_ten(-2), "0.01");
        assert_eq!(power_of_ten(0), "1");
        assert_eq!(power_of_ten(2), "100");
        assert_eq!(decade_label(3), "1k");
        assert_eq!(decade_label(7), "10M");
        assert_eq!(decade_label(12), "1e12");
    }
}
