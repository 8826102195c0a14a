//! Figures from a results directory (PNG and SVG; the font is embedded, no system font
//! libraries): parity curves, safety and EI transfer curves, the defense Pareto front and the
//! detection timeline. Like the report, a pure function of the results files.

use crate::experiment::results::{load_dir, RunRecord};
use crate::report::{group, Stat};
use crate::{Error, Result};
use plotters::coord::Shift;
use plotters::prelude::*;
use std::path::{Path, PathBuf};

/// DejaVu Sans (Bitstream Vera licence, see `assets/fonts/DejaVuSans-LICENSE.txt`).
static FONT: &[u8] = include_bytes!("../assets/fonts/DejaVuSans.ttf");
const FAMILY: &str = "sans-serif";

fn register_font() -> Result<()> {
    static DONE: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    let ok = *DONE.get_or_init(|| {
        plotters::style::register_font(FAMILY, FontStyle::Normal, FONT).is_ok()
            && plotters::style::register_font(FAMILY, FontStyle::Bold, FONT).is_ok()
    });
    if ok {
        Ok(())
    } else {
        Err(Error::Invalid(
            "the embedded font could not be loaded".into(),
        ))
    }
}

/// Category colours (Tableau 10), then the same with dashes.
const COLORS: [RGBColor; 10] = [
    RGBColor(31, 119, 180),
    RGBColor(255, 127, 14),
    RGBColor(44, 160, 44),
    RGBColor(214, 39, 40),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
    RGBColor(227, 119, 194),
    RGBColor(127, 127, 127),
    RGBColor(188, 189, 34),
    RGBColor(23, 190, 207),
];

/// One line: a grid point's mean and 95% half-width (over seeds) per x.
#[derive(Clone, Debug)]
pub struct Series {
    pub label: String,
    /// (x, mean, 95% half-width) sorted by x.
    pub points: Vec<(f64, f64, f64)>,
    /// The no-defense baseline (drawn black).
    pub baseline: bool,
}

/// Readable series label: `variant=` dropped, long labels shortened.
fn short(label: &str) -> String {
    let s = label.strip_prefix("variant=").unwrap_or(label);
    if s.chars().count() > 48 {
        let cut: String = s.chars().take(46).collect();
        format!("{cut}…")
    } else {
        s.to_string()
    }
}

fn is_baseline(point: &str) -> bool {
    let p = point.strip_prefix("variant=").unwrap_or(point);
    p == "none" || p.contains("defenses=none") && !p.contains("traffic")
}

/// Series of `metric` against the budget, one per grid point.
pub fn series(runs: &[RunRecord], metric: &str) -> Vec<Series> {
    let mut out: Vec<Series> = Vec::new();
    for ((point, budget), g) in group(runs) {
        let xs: Vec<f64> = g.iter().filter_map(|(_, c)| c.get(metric)).collect();
        let st = Stat::of(&xs);
        if !st.mean.is_finite() {
            continue;
        }
        let half = if st.half.is_finite() { st.half } else { 0.0 };
        let p = (budget as f64, st.mean, half);
        match out.iter_mut().find(|s| s.label == point) {
            Some(s) => s.points.push(p),
            None => out.push(Series {
                baseline: is_baseline(&point),
                label: point,
                points: vec![p],
            }),
        }
    }
    for s in out.iter_mut() {
        s.points.sort_by(|a, b| a.0.total_cmp(&b.0));
    }
    out
}

/// The teacher's value of a metric, from the first row that records it.
fn teacher_value(runs: &[RunRecord], metric: &str) -> Option<f64> {
    runs.iter()
        .flat_map(|r| r.rows.iter())
        .find_map(|r| r.get(&format!("teacher.{metric}")))
}

fn budgets(runs: &[RunRecord]) -> Vec<f64> {
    let mut b: Vec<f64> = runs
        .iter()
        .flat_map(|r| r.rows.iter())
        .map(|r| r.budget as f64)
        // Budget 0 (a base model's own row) has no place on a log axis: drawn as a level.
        .filter(|&b| b > 0.0)
        .collect();
    b.sort_by(f64::total_cmp);
    b.dedup();
    b
}

/// The house style of an axis grid: descriptions, label fonts and formats, no minor lines.
macro_rules! mesh {
    ($chart:expr, $x_desc:expr, $y_desc:expr, $x_fmt:literal, $y_fmt:literal) => {
        $chart
            .configure_mesh()
            .x_desc($x_desc)
            .y_desc($y_desc)
            .label_style((FAMILY, 15))
            .axis_desc_style((FAMILY, 16))
            .x_label_formatter(&|x| format!($x_fmt, x))
            .y_label_formatter(&|y| format!($y_fmt, y))
            .light_line_style(WHITE.mix(0.0))
            .draw()
    };
}

type DrawResult<DB> =
    std::result::Result<(), DrawingAreaErrorKind<<DB as DrawingBackend>::ErrorType>>;

/// A curve panel: `series` against the budget on a log axis, with bands and a teacher line;
/// a series' budget-0 value (a base model's own) is a dotted level in its colour.
fn curve_panel<DB: DrawingBackend>(
    area: &DrawingArea<DB, Shift>,
    title: &str,
    y_desc: &str,
    series: &[Series],
    teacher: Option<f64>,
    x_range: (f64, f64),
) -> DrawResult<DB> {
    let y_max = series
        .iter()
        .flat_map(|s| s.points.iter().map(|p| p.1 + p.2))
        .chain(teacher)
        .fold(0.0f64, f64::max)
        .max(0.1)
        * 1.08;
    let mut chart = ChartBuilder::on(area)
        .caption(title, (FAMILY, 22))
        .margin(12)
        .x_label_area_size(48)
        .y_label_area_size(64)
        .build_cartesian_2d((x_range.0..x_range.1).log_scale(), 0.0..y_max)?;
    mesh!(
        chart,
        "queries harvested (log scale)",
        y_desc,
        "{:.0}",
        "{:.2}"
    )?;
    if let Some(t) = teacher {
        let style = ShapeStyle::from(&BLACK.mix(0.7)).stroke_width(2);
        chart.draw_series(DashedLineSeries::new(
            vec![(x_range.0, t), (x_range.1, t)],
            10,
            6,
            style,
        ))?;
    }
    for (i, s) in series.iter().enumerate() {
        let (color, width) = series_style(series, i);
        let style = ShapeStyle::from(&color).stroke_width(width);
        // A base model's own value (budget 0): a dotted level in the series' colour.
        if let Some(base) = s.points.iter().find(|p| p.0 == 0.0) {
            chart.draw_series(DashedLineSeries::new(
                vec![(x_range.0, base.1), (x_range.1, base.1)],
                2,
                4,
                ShapeStyle::from(&color).stroke_width(1),
            ))?;
        }
        let points: Vec<&(f64, f64, f64)> = s.points.iter().filter(|p| p.0 > 0.0).collect();
        if points.iter().any(|p| p.2 > 0.0) {
            let mut band: Vec<(f64, f64)> = points.iter().map(|p| (p.0, p.1 + p.2)).collect();
            band.extend(points.iter().rev().map(|p| (p.0, (p.1 - p.2).max(0.0))));
            chart.draw_series(std::iter::once(Polygon::new(band, color.mix(0.15))))?;
        }
        let pts: Vec<(f64, f64)> = points.iter().map(|p| (p.0, p.1)).collect();
        chart.draw_series(LineSeries::new(pts.clone(), style))?;
        chart.draw_series(pts.iter().map(|&p| Circle::new(p, 3, color.filled())))?;
    }
    Ok(())
}

/// Colour and width of the `i`-th series of a list (the baseline is black and thicker).
fn series_style(series: &[Series], i: usize) -> (RGBColor, u32) {
    if series[i].baseline {
        return (BLACK, 3);
    }
    let k = series[..i].iter().filter(|s| !s.baseline).count();
    (COLORS[k % COLORS.len()], 2)
}

/// A legend below the panels: entries in `cols` columns.
fn legend_strip<DB: DrawingBackend>(
    area: &DrawingArea<DB, Shift>,
    entries: &[(String, RGBColor, u32, bool)],
    cols: usize,
) -> DrawResult<DB> {
    let (w, _) = area.dim_in_pixel();
    let col_w = (w as i32 - 40) / cols as i32;
    for (i, (label, color, width, dashed)) in entries.iter().enumerate() {
        let (x, y) = (20 + (i % cols) as i32 * col_w, 10 + (i / cols) as i32 * 24);
        let style = ShapeStyle::from(color).stroke_width(*width);
        if *dashed {
            for seg in 0..3 {
                let x0 = x + seg * 10;
                area.draw(&PathElement::new(vec![(x0, y + 8), (x0 + 6, y + 8)], style))?;
            }
        } else {
            area.draw(&PathElement::new(vec![(x, y + 8), (x + 28, y + 8)], style))?;
        }
        area.draw(&Text::new(label.clone(), (x + 36, y), (FAMILY, 15)))?;
    }
    Ok(())
}

fn legend_rows(n: usize, cols: usize) -> u32 {
    n.div_ceil(cols) as u32
}

/// The Pareto panel: defender utility (x) against the copy's parity (y), one point per setting.
fn pareto_panel<DB: DrawingBackend>(
    area: &DrawingArea<DB, Shift>,
    points: &[(String, f64, f64, f64, f64, bool)],
) -> DrawResult<DB> {
    let x_min = points
        .iter()
        .map(|p| p.1 - p.2)
        .fold(1.0f64, f64::min)
        .min(0.9)
        - 0.03;
    let y_max = points.iter().map(|p| p.3 + p.4).fold(0.0f64, f64::max) * 1.1 + 0.01;
    let mut chart = ChartBuilder::on(area)
        .caption(
            "Defense Pareto: utility for honest users vs the copy's parity",
            (FAMILY, 22),
        )
        .margin(14)
        .x_label_area_size(48)
        .y_label_area_size(64)
        .build_cartesian_2d(x_min..1.06, 0.0..y_max)?;
    mesh!(chart, "utility for honest users: served capability / undefended x share of benign queries not blocked or degraded", "student parity (lower is better for the defender)", "{:.2}", "{:.2}")?;
    let mut labels: Vec<(i32, i32, String, RGBColor)> = Vec::new();
    for (i, (label, x, xe, y, ye, base)) in points.iter().enumerate() {
        let color = if *base {
            BLACK
        } else {
            COLORS[i % COLORS.len()]
        };
        chart.draw_series(std::iter::once(PathElement::new(
            vec![(*x, y - ye), (*x, y + ye)],
            color.mix(0.6),
        )))?;
        chart.draw_series(std::iter::once(PathElement::new(
            vec![(x - xe, *y), (x + xe, *y)],
            color.mix(0.6),
        )))?;
        chart.draw_series(std::iter::once(Circle::new((*x, *y), 5, color.filled())))?;
        let (px, py) = chart.backend_coord(&(*x, *y));
        labels.push((px, py, short(label), color));
    }
    // Labels: points within 160 px of each other horizontally form a column; each column's
    // labels are spread to at least 15 px apart, with a leader line where one moved.
    labels.sort_by_key(|l| (l.0, l.1));
    let mut placed: Vec<(i32, i32)> = Vec::new();
    let mut order: Vec<usize> = (0..labels.len()).collect();
    order.sort_by_key(|&i| labels[i].1);
    for i in order {
        let (px, py, text, color) = &labels[i];
        let mut ly = py - 7;
        while let Some(&(_, y)) = placed
            .iter()
            .filter(|(x, y)| (x - px).abs() < 160 && (y - ly).abs() < 15)
            .max_by_key(|(_, y)| *y)
        {
            ly = y + 15;
        }
        placed.push((*px, ly));
        if (ly + 7 - py).abs() > 4 {
            area.draw(&PathElement::new(
                vec![(*px, *py), (px + 9, ly + 7)],
                color.mix(0.5),
            ))?;
        }
        area.draw(&Text::new(text.clone(), (px + 10, ly), (FAMILY, 13)))?;
    }
    Ok(())
}

/// A setting's timeline: label, (day, cumulative attacker queries served, actions that day),
/// whether it is the baseline.
type TimelineLine = (String, Vec<(f64, f64, f64)>, bool);

/// Timeline panels: cumulative attacker queries served, and actions on attacker accounts, per
/// simulated day.
fn timeline_panels<DB: DrawingBackend>(
    top: &DrawingArea<DB, Shift>,
    bottom: &DrawingArea<DB, Shift>,
    lines: &[TimelineLine],
    changes: &[f64],
) -> DrawResult<DB> {
    let days = lines
        .iter()
        .flat_map(|l| l.1.iter().map(|p| p.0))
        .fold(1.0f64, f64::max);
    let served_max = lines
        .iter()
        .flat_map(|l| l.1.iter().map(|p| p.1))
        .fold(1.0f64, f64::max)
        * 1.08;
    let act_max = lines
        .iter()
        .flat_map(|l| l.1.iter().map(|p| p.2))
        .fold(1.0f64, f64::max)
        * 1.1;
    let mut c1 = ChartBuilder::on(top)
        .caption(
            "Detection timeline: the campaign's harvest and the actions against it",
            (FAMILY, 22),
        )
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(72)
        .build_cartesian_2d(0.0..days, 0.0..served_max)?;
    mesh!(
        c1,
        "simulated day",
        "attacker queries served (cumulative)",
        "{:.0}",
        "{:.0}"
    )?;
    let mut c2 = ChartBuilder::on(bottom)
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(72)
        .build_cartesian_2d(0.0..days, 0.0..act_max)?;
    mesh!(
        c2,
        "simulated day",
        "actions on attacker accounts per day",
        "{:.0}",
        "{:.0}"
    )?;
    let mut k = 0;
    for (label, pts, base) in lines {
        let color = if *base {
            BLACK
        } else {
            let c = COLORS[k % COLORS.len()];
            k += 1;
            c
        };
        let style = ShapeStyle::from(&color).stroke_width(if *base { 3 } else { 2 });
        c1.draw_series(LineSeries::new(pts.iter().map(|p| (p.0, p.1)), style))?
            .label(short(label))
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 24, y)], style));
        c2.draw_series(LineSeries::new(pts.iter().map(|p| (p.0, p.2)), style))?;
        c2.draw_series(
            pts.iter()
                .filter(|p| p.2 > 0.0)
                .map(|p| Circle::new((p.0, p.2), 4, color.filled())),
        )?;
    }
    // The provider's limit changes, as vertical marks on both panels.
    let mark = ShapeStyle::from(&BLACK.mix(0.6)).stroke_width(2);
    for &day in changes {
        c1.draw_series(DashedLineSeries::new(
            [(day, 0.0), (day, served_max)],
            8,
            6,
            mark,
        ))?
        .label(format!("limit change (day {day})"))
        .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 24, y)], mark));
        c2.draw_series(DashedLineSeries::new(
            [(day, 0.0), (day, act_max)],
            8,
            6,
            mark,
        ))?;
    }
    c1.configure_series_labels()
        .position(SeriesLabelPosition::LowerRight)
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK.mix(0.4))
        .label_font((FAMILY, 14))
        .draw()?;
    Ok(())
}

/// What one figure draws; rendered once per backend.
enum Figure {
    Curves {
        panels: Vec<(String, String, Vec<Series>, Option<f64>)>,
        x_range: (f64, f64),
    },
    Pareto(Vec<(String, f64, f64, f64, f64, bool)>),
    /// The lines, and the days of the provider's limit changes.
    Timeline(Vec<TimelineLine>, Vec<f64>),
}

fn draw<DB: DrawingBackend>(root: DrawingArea<DB, Shift>, fig: &Figure) -> DrawResult<DB> {
    root.fill(&WHITE)?;
    match fig {
        Figure::Curves { panels, x_range } => {
            let series = &panels[0].2;
            let cols = if panels.len() > 1 { 3 } else { 2 };
            let mut entries = vec![("teacher".to_string(), BLACK.mix(0.7).to_rgba(), 2, true)];
            entries.truncate(panels.iter().any(|p| p.3.is_some()) as usize);
            let entries: Vec<(String, RGBColor, u32, bool)> = entries
                .into_iter()
                .map(|(l, c, w, d)| (l, RGBColor(c.0, c.1, c.2), w, d))
                .chain((0..series.len()).map(|i| {
                    let (c, w) = series_style(series, i);
                    (short(&series[i].label), c, w, false)
                }))
                .collect();
            let legend_h = legend_rows(entries.len(), cols) * 24 + 24;
            let (h, _) = (root.dim_in_pixel().1, 0);
            let (charts, legend) = root.split_vertically(h - legend_h);
            let areas = charts.split_evenly((1, panels.len()));
            for (area, (title, y, series, teacher)) in areas.iter().zip(panels) {
                curve_panel(area, title, y, series, *teacher, *x_range)?;
            }
            legend_strip(&legend, &entries, cols)?;
        }
        Figure::Pareto(points) => pareto_panel(&root, points)?,
        Figure::Timeline(lines, changes) => {
            let (top, bottom) = root.split_vertically(root.dim_in_pixel().1 * 3 / 5);
            timeline_panels(&top, &bottom, lines, changes)?;
        }
    }
    root.present()
}

fn render(fig: &Figure, base: &Path, size: (u32, u32)) -> Result<Vec<PathBuf>> {
    let png = base.with_extension("png");
    let svg = base.with_extension("svg");
    // Each file is drawn under a temporary name and renamed into place: a full disk leaves
    // the previous figure (or none), never an empty or truncated one.
    crate::fsutil::write_atomic_with(&png, |tmp| {
        draw(BitMapBackend::new(tmp, size).into_drawing_area(), fig).map_err(|e| e.to_string())
    })?;
    crate::fsutil::write_atomic_with(&svg, |tmp| {
        draw(SVGBackend::new(tmp, size).into_drawing_area(), fig).map_err(|e| e.to_string())
    })?;
    Ok(vec![png, svg])
}

/// The figures the data supports, written under `out` (default `<dir>/figures`). Returns the
/// files written.
pub fn plot_dir(dir: &Path, out: Option<&Path>) -> Result<Vec<PathBuf>> {
    register_font()?;
    let runs = load_dir(dir)?;
    crate::experiment::results::check_records_one_config(dir, &runs)?;
    let out = out.map_or_else(|| dir.join("figures"), Path::to_path_buf);
    std::fs::create_dir_all(&out).map_err(|e| Error::io(&out, e))?;
    crate::fsutil::clean_stale_temps(&out);
    let mut written = Vec::new();
    let b = budgets(&runs);
    if b.len() >= 2 {
        let x_range = (b[0] * 0.8, b[b.len() - 1] * 1.25);
        let parity = Figure::Curves {
            panels: vec![(
                "Parity curve: the copy's capability relative to the teacher".into(),
                "parity".into(),
                series(&runs, "parity"),
                Some(1.0),
            )],
            x_range,
        };
        written.extend(render(&parity, &out.join("parity"), (1200, 760))?);
        let transfer = Figure::Curves {
            panels: vec![
                (
                    "Safety transfer".into(),
                    "student / teacher balanced safety".into(),
                    series(&runs, "safety.transfer"),
                    Some(1.0),
                ),
                (
                    "Acting on distress in the words".into(),
                    "SUPPORT - false alarms (ei.act.words)".into(),
                    series(&runs, "ei.act.words"),
                    teacher_value(&runs, "ei.act.words"),
                ),
                (
                    "Acting on distress in the voice".into(),
                    "SUPPORT - false alarms (ei.act.voice)".into(),
                    series(&runs, "ei.act.voice"),
                    teacher_value(&runs, "ei.act.voice"),
                ),
            ],
            x_range,
        };
        written.extend(render(&transfer, &out.join("transfer"), (1800, 640))?);
    }
    // Pareto: one point per setting at the largest budget.
    let top = b.last().copied().unwrap_or(0.0);
    let at_top = |metric: &str| -> Vec<(String, f64, f64)> {
        series(&runs, metric)
            .into_iter()
            .filter_map(|s| {
                s.points
                    .iter()
                    .find(|p| p.0 == top)
                    .map(|p| (s.label.clone(), p.1, p.2))
            })
            .collect()
    };
    // Utility for honest users: the served capability under output defenses, times the share of
    // their queries neither blocked nor degraded by detection and access defenses.
    let blocked = at_top("detection.benign_blocked_share");
    let degraded = at_top("detection.benign_degraded_share");
    let lost = |label: &str| -> f64 {
        [&blocked, &degraded]
            .iter()
            .filter_map(|v| v.iter().find(|x| x.0 == label).map(|x| x.1))
            .sum()
    };
    let utility: Vec<(String, f64, f64)> = at_top("defense.utility")
        .into_iter()
        .map(|(l, u, ue)| {
            let keep = 1.0 - lost(&l);
            (l, u * keep, ue * keep)
        })
        .collect();
    let distinct = utility
        .iter()
        .map(|u| (u.1 * 1e6) as i64)
        .collect::<std::collections::BTreeSet<_>>()
        .len();
    if utility.len() >= 2 && distinct >= 2 {
        let parity = at_top("parity");
        let points: Vec<_> = utility
            .iter()
            .filter_map(|(l, u, ue)| {
                parity
                    .iter()
                    .find(|p| &p.0 == l)
                    .map(|p| (l.clone(), *u, *ue, p.1, p.2, is_baseline(l)))
            })
            .collect();
        written.extend(render(
            &Figure::Pareto(points),
            &out.join("pareto"),
            (1400, 1000),
        )?);
    }
    // Timeline: the first seed of each setting; settings whose campaign was acted on or cut.
    let mut lines: Vec<TimelineLine> = Vec::new();
    let mut changes: Vec<f64> = Vec::new();
    for r in &runs {
        let Some(days) = r.timeline.as_ref().and_then(|t| t["days"].as_array()) else {
            continue;
        };
        if let Some(day) = r
            .timeline
            .as_ref()
            .and_then(|t| t["limit_change_day"].as_f64())
        {
            if !changes.contains(&day) {
                changes.push(day);
            }
        }
        let point = r.point_label();
        if lines.iter().any(|l| l.0 == point) {
            continue;
        }
        let mut cum = 0.0;
        let pts: Vec<(f64, f64, f64)> = days
            .iter()
            .map(|d| {
                cum += d["attacker_served"].as_f64().unwrap_or(0.0);
                (
                    d["day"].as_f64().unwrap_or(0.0) + 1.0,
                    cum,
                    d["attacker_actions"].as_f64().unwrap_or(0.0),
                )
            })
            .collect();
        let mut with_start = vec![(0.0, 0.0, 0.0)];
        with_start.extend(pts);
        lines.push((point.clone(), with_start, is_baseline(&point)));
    }
    if !lines.is_empty() {
        let full = lines
            .iter()
            .map(|l| l.1.last().map_or(0.0, |p| p.1))
            .fold(0.0f64, f64::max);
        let acted: Vec<_> = lines
            .iter()
            .filter(|l| {
                l.2 || l.1.iter().any(|p| p.2 > 0.0)
                    || l.1.last().map_or(0.0, |p| p.1) < 0.95 * full
            })
            .cloned()
            .collect();
        if !acted.is_empty() {
            written.extend(render(
                &Figure::Timeline(acted, changes),
                &out.join("timeline"),
                (1400, 1000),
            )?);
        }
    }
    if written.is_empty() {
        return Err(Error::Invalid(format!(
            "{}: nothing to plot (one budget checkpoint, no defense utility, no traffic timeline)",
            dir.display()
        )));
    }
    Ok(written)
}
