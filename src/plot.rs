//! Figures from a results directory (PNG and SVG; the font is embedded, no system font
//! libraries): parity curves, safety and EI transfer curves, the defense Pareto front and the
//! detection timeline. Like the report, a pure function of the results files.
//!
//! House style, for a reader of a paper: at most [`MAX_PER_PANEL`] coloured series in a panel
//! (more become small multiples with shared axes, split by a grid key or by the first word of
//! the variant names, else in equal parts), each with its own colour and marker from a fixed
//! qualitative palette, the no-defense baseline in black in every panel; labels built from the
//! variant names and grid values (keys constant across the figure dropped and named once in a
//! note, `key=value` pairs compact, long ones wrapped or shortened at word and key boundaries,
//! never cut mid-word); legends outside the data; axes in short units (`50M`, `2.5k`); log-axis
//! ticks chosen from the budgets themselves, the smallest always among them, none colliding.

use crate::experiment::results::{load_dir, RunRecord};
use crate::report::{group, Stat};
use crate::{Error, Result};
use plotters::coord::ranged1d::{AsRangedCoord, DefaultFormatting, KeyPointHint};
use plotters::coord::Shift;
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// DejaVu Sans (Bitstream Vera licence, see `assets/fonts/DejaVuSans-LICENSE.txt`).
static FONT: &[u8] = include_bytes!("../assets/fonts/DejaVuSans.ttf");
const FAMILY: &str = "sans-serif";

// Font sizes in pixels. All even: plotters' ab_glyph renderer places each glyph at
// `(size / 2 + glyph top) as i32`, which rounds toward zero, so at an odd size the glyphs that
// rise above the middle (digits, capitals) land a pixel lower than short ones, and in the PNGs
// a full stop floated above the baseline (`1.0` read `1·0`). With an even size the sum is a
// whole number and every glyph sits on one baseline (test `png_text_sits_on_one_baseline`).
const TITLE: u32 = 22;
const CAPTION: u32 = 18;
const DESC: u32 = 16;
const TICK: u32 = 14;
const LEGEND: u32 = 14;
const NOTE: u32 = 14;
const LINE_H: i32 = 19;

/// Panels side by side at most (more wrap to another row).
const PANEL_COLS: usize = 3;

/// Coloured series in one panel at most (the baseline, in black, comes on top).
pub const MAX_PER_PANEL: usize = 6;

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

/// Qualitative palette (Okabe-Ito, colour-blind safe; the first six are the ones a panel
/// uses), then brown and grey.
const PALETTE: [RGBColor; 8] = [
    RGBColor(0, 114, 178),   // blue
    RGBColor(213, 94, 0),    // vermillion
    RGBColor(0, 158, 115),   // bluish green
    RGBColor(204, 121, 167), // reddish purple
    RGBColor(230, 159, 0),   // orange
    RGBColor(86, 180, 233),  // sky blue
    RGBColor(140, 86, 75),   // brown
    RGBColor(110, 110, 110), // grey
];
const GREY: RGBColor = RGBColor(90, 90, 90);

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Marker {
    Circle,
    Square,
    Triangle,
    Diamond,
    Down,
    Cross,
}
const MARKERS: [Marker; 6] = [
    Marker::Circle,
    Marker::Square,
    Marker::Triangle,
    Marker::Diamond,
    Marker::Down,
    Marker::Cross,
];

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Dash {
    Solid,
    Dashed,
    Dotted,
}

/// How one series is drawn.
#[derive(Clone, Copy, Debug, PartialEq)]
struct Look {
    color: RGBColor,
    width: u32,
    dash: Dash,
    marker: Option<Marker>,
}

/// The look of the `k`-th coloured series of a panel (the baseline: black, thicker, circles).
/// Colours and markers are distinct within the first [`MAX_PER_PANEL`]; past them (never
/// with the panels [`plan`] makes) the colours come round again dashed.
fn look(k: usize, baseline: bool) -> Look {
    if baseline {
        return Look {
            color: BLACK,
            width: 3,
            dash: Dash::Solid,
            marker: Some(Marker::Circle),
        };
    }
    let n = MAX_PER_PANEL;
    Look {
        color: PALETTE[k % n],
        width: 2,
        dash: if (k / n).is_multiple_of(2) {
            Dash::Solid
        } else {
            Dash::Dashed
        },
        marker: Some(MARKERS[k % MARKERS.len()]),
    }
}

// ---------------------------------------------------------------------------------------------
// Numbers and ticks

/// A number in short units: `50M` for 5e7, `1k` for 1000, `2.5k`, `300`, `0.25`; at most
/// three significant digits, trailing zeros dropped.
pub fn fmt_si(x: f64) -> String {
    if x == 0.0 || !x.is_finite() {
        return if x.is_nan() { "NaN".into() } else { "0".into() };
    }
    let a = x.abs();
    let (div, suffix) = if a >= 1e9 {
        (1e9, "G")
    } else if a >= 1e6 {
        (1e6, "M")
    } else if a >= 1e3 {
        (1e3, "k")
    } else {
        (1.0, "")
    };
    let v = x / div;
    let decimals = if v.abs() >= 100.0 {
        0
    } else if v.abs() >= 10.0 {
        1
    } else if v.abs() >= 1.0 || suffix.is_empty() && v.abs() >= 0.1 {
        2
    } else {
        3
    };
    format!("{}{suffix}", trim_zeros(format!("{v:.decimals$}")))
}

fn trim_zeros(s: String) -> String {
    if s.contains('.') {
        let t = s.trim_end_matches('0').trim_end_matches('.');
        if t == "-0" {
            "0".into()
        } else {
            t.to_string()
        }
    } else {
        s
    }
}

/// A tick label on an axis whose ticks are `step` apart: short units from 1000 up (`5k`,
/// `50M`), else as many decimals as the step needs, the same for every tick (`0.0`, `0.2`).
fn fmt_tick(x: f64, step: f64, max_abs: f64) -> String {
    if max_abs >= 1000.0 {
        return fmt_si(x);
    }
    let mut d = 0usize;
    while d < 6
        && ((step * 10f64.powi(d as i32)).round() - step * 10f64.powi(d as i32)).abs() > 1e-6
    {
        d += 1;
    }
    let s = format!("{x:.d$}");
    if s.starts_with('-') && s[1..].chars().all(|c| c == '0' || c == '.') {
        s[1..].to_string()
    } else {
        s
    }
}

/// Round ticks (steps of 1, 2, 2.5 or 5 times a power of ten) covering `lo..=hi`, about
/// `target` of them, and their step. `min_step` bounds the step from below (1 for days).
fn nice_ticks(lo: f64, hi: f64, target: usize, min_step: f64) -> (Vec<f64>, f64) {
    let span = (hi - lo).max(f64::MIN_POSITIVE);
    let raw = span / target.max(1) as f64;
    let mag = 10f64.powf(raw.log10().floor());
    let step = [1.0, 2.0, 2.5, 5.0, 10.0]
        .iter()
        .map(|m| m * mag)
        .find(|s| *s >= raw * 0.999)
        .unwrap_or(10.0 * mag)
        .max(min_step);
    let first = (lo / step - 1e-9).ceil() as i64;
    let last = (hi / step + 1e-9).floor() as i64;
    let ticks = (first..=last).map(|k| k as f64 * step).collect();
    (ticks, step)
}

/// Ticks for a log axis over `lo..hi` holding the budgets `budgets`: the budgets themselves
/// when there are at most six, else decades and their 2 and 5 multiples between the smallest
/// and the largest budget; the smallest budget always, then the largest, then the others,
/// each kept only if it lies at least `min_gap` (a fraction of the axis' length) from every
/// tick kept before it.
pub fn log_ticks(budgets: &[f64], lo: f64, hi: f64, min_gap: f64) -> Vec<f64> {
    let mut b: Vec<f64> = budgets
        .iter()
        .copied()
        .filter(|&x| x > 0.0 && x >= lo && x <= hi)
        .collect();
    b.sort_by(f64::total_cmp);
    b.dedup();
    if b.is_empty() || lo <= 0.0 || hi <= lo {
        return b;
    }
    let span = (hi / lo).ln();
    let pos = |x: f64| (x / lo).ln() / span;
    let mut candidates = vec![b[0], b[b.len() - 1]];
    if b.len() <= 6 {
        candidates.extend(b[1..b.len() - 1].iter().copied());
    } else {
        let (d0, d1) = (
            b[0].log10().floor() as i32,
            b[b.len() - 1].log10().ceil() as i32,
        );
        for m in [1.0, 2.0, 5.0] {
            for d in d0..=d1 {
                let v = m * 10f64.powi(d);
                if v > b[0] && v < b[b.len() - 1] {
                    candidates.push(v);
                }
            }
        }
    }
    let mut kept: Vec<f64> = Vec::new();
    for c in candidates {
        if kept.iter().all(|&k| (pos(c) - pos(k)).abs() >= min_gap) {
            kept.push(c);
        }
    }
    kept.sort_by(f64::total_cmp);
    kept
}

/// An axis with the ticks given (plotters' own `WithKeyPoints` loses the default formatting
/// a mesh needs for `f64`; the labels here come from the formatters anyway).
struct Ticked<R: Ranged> {
    inner: R,
    ticks: Vec<R::ValueType>,
}

fn ticked<A: AsRangedCoord>(a: A, ticks: Vec<A::Value>) -> Ticked<A::CoordDescType>
where
    A::CoordDescType: Ranged<ValueType = A::Value>,
{
    Ticked {
        inner: a.into(),
        ticks,
    }
}

impl<R: Ranged> Ranged for Ticked<R>
where
    R::ValueType: Clone,
{
    type FormatOption = DefaultFormatting;
    type ValueType = R::ValueType;

    fn map(&self, value: &Self::ValueType, limit: (i32, i32)) -> i32 {
        self.inner.map(value, limit)
    }

    fn key_points<H: KeyPointHint>(&self, hint: H) -> Vec<Self::ValueType> {
        if hint.weight().allow_light_points() {
            Vec::new()
        } else {
            self.ticks.clone()
        }
    }

    fn range(&self) -> std::ops::Range<Self::ValueType> {
        self.inner.range()
    }

    fn axis_pixel_range(&self, limit: (i32, i32)) -> std::ops::Range<i32> {
        self.inner.axis_pixel_range(limit)
    }
}

// ---------------------------------------------------------------------------------------------
// Labels

/// A grid point: (key, value) pairs in the order the sweep set them.
type Pairs = Vec<(String, String)>;

/// A grid value read for display: `name(a=1;b=2)` is a head and pairs, `a=1;b=2` pairs
/// alone, anything else plain.
#[derive(Clone, Debug, PartialEq)]
struct Parsed {
    head: Option<String>,
    pairs: Vec<(String, String)>,
    plain: Option<String>,
}

fn parse_list(s: &str) -> Option<Vec<(String, String)>> {
    let mut out = Vec::new();
    for part in s.split(';') {
        let (k, v) = part.split_once('=')?;
        if k.trim().is_empty() {
            return None;
        }
        out.push((k.trim().to_string(), v.trim().to_string()));
    }
    Some(out)
}

fn parse_value(v: &str) -> Parsed {
    let plain = || Parsed {
        head: None,
        pairs: vec![],
        plain: Some(v.to_string()),
    };
    if let Some(open) = v.find('(') {
        if v.ends_with(')') && open > 0 {
            let head = &v[..open];
            let inner = &v[open + 1..v.len() - 1];
            if !head.contains('=') {
                if let Some(pairs) = parse_list(inner) {
                    return Parsed {
                        head: Some(head.to_string()),
                        pairs,
                        plain: None,
                    };
                }
            }
        }
        return plain();
    }
    if v.contains('=') {
        if let Some(pairs) = parse_list(v) {
            return Parsed {
                head: None,
                pairs,
                plain: None,
            };
        }
    }
    plain()
}

/// Shown names of grid keys: the last dotted segment (`traffic.limit_change` ->
/// `limit_change`) unless two keys would share it.
fn key_names(keys: &[String]) -> BTreeMap<String, String> {
    let last = |k: &str| k.rsplit('.').next().unwrap_or(k).to_string();
    keys.iter()
        .map(|k| {
            let l = last(k);
            let clash = keys.iter().filter(|o| last(o) == l).count() > 1;
            (k.clone(), if clash { k.clone() } else { l })
        })
        .collect()
}

/// Everything needed to label the items of one figure.
struct Labeller {
    names: BTreeMap<String, String>,
    /// (key, head) -> sub-keys with one value across every structured value of that head
    /// (at least two distinct such values): left out of the labels.
    dropped: BTreeMap<(String, Option<String>), BTreeSet<String>>,
}

impl Labeller {
    fn new(items: &[Pairs], keys: &[String]) -> Labeller {
        let mut dropped = BTreeMap::new();
        for k in keys {
            let mut by_head: BTreeMap<Option<String>, Vec<Parsed>> = BTreeMap::new();
            for it in items {
                if let Some((_, v)) = it.iter().find(|(ik, _)| ik == k) {
                    let p = parse_value(v);
                    if p.plain.is_none() {
                        let vs = by_head.entry(p.head.clone()).or_default();
                        if !vs.contains(&p) {
                            vs.push(p);
                        }
                    }
                }
            }
            for (head, vs) in by_head {
                if vs.len() < 2 {
                    continue;
                }
                let same: BTreeSet<String> = vs[0]
                    .pairs
                    .iter()
                    .filter(|pair| vs.iter().all(|v| v.pairs.contains(pair)))
                    .map(|(sk, _)| sk.clone())
                    .collect();
                dropped.insert((k.clone(), head), same);
            }
        }
        Labeller {
            names: key_names(keys),
            dropped,
        }
    }

    /// One key's value for a label. `sole`: the only key of the label (a structured value
    /// then stands without the key's name).
    fn pair(&self, key: &str, value: &str, sole: bool) -> String {
        let name = self.names.get(key).map_or(key, String::as_str);
        if key == "variant" {
            return value.to_string();
        }
        let p = parse_value(value);
        if let Some(plain) = p.plain {
            return match plain.as_str() {
                "null" | "none" | "" => format!("no {name}"),
                "off" => format!("{name} off"),
                _ => format!("{name}={plain}"),
            };
        }
        let empty = BTreeSet::new();
        let drop = self
            .dropped
            .get(&(key.to_string(), p.head.clone()))
            .unwrap_or(&empty);
        let kept: Vec<String> = p
            .pairs
            .iter()
            .filter(|(sk, _)| !drop.contains(sk))
            .map(|(sk, sv)| format!("{sk}={sv}"))
            .collect();
        let body = if kept.len() > 3 {
            format!("{} +{} more", kept[..2].join(" "), kept.len() - 2)
        } else {
            kept.join(" ")
        };
        match (p.head, body.is_empty()) {
            (Some(h), true) => h,
            (Some(h), false) => format!("{h} {body}"),
            (None, true) => name.to_string(),
            (None, false) if sole => body,
            (None, false) => format!("{name}({body})"),
        }
    }

    /// An item's label from `keys`; `skip_word`: the variant's first word is the panel's.
    fn label(&self, item: &Pairs, keys: &[String], skip_word: bool) -> String {
        let used: Vec<&(String, String)> = keys
            .iter()
            .filter_map(|k| item.iter().find(|(ik, _)| ik == k))
            .collect();
        let sole = used.len() == 1;
        let parts: Vec<String> = used
            .iter()
            .map(|(k, v)| {
                if skip_word && k == "variant" {
                    v.split_once(' ').map_or(v.as_str(), |x| x.1).to_string()
                } else {
                    self.pair(k, v, sole)
                }
            })
            .collect();
        if parts.is_empty() {
            "all runs".into()
        } else {
            parts.join(", ")
        }
    }
}

/// A label's lines at most `max` wide (as `width` measures), broken only between words: a
/// word wider than `max` has a line to itself, whole.
fn wrap(text: &str, max: u32, width: &dyn Fn(&str) -> u32) -> Vec<String> {
    let mut lines: Vec<String> = Vec::new();
    let mut cur = String::new();
    for word in text.split_whitespace() {
        let trial = if cur.is_empty() {
            word.to_string()
        } else {
            format!("{cur} {word}")
        };
        if cur.is_empty() || width(&trial) <= max {
            cur = trial;
        } else {
            lines.push(std::mem::replace(&mut cur, word.to_string()));
        }
    }
    if !cur.is_empty() {
        lines.push(cur);
    }
    lines
}

fn text_w(s: &str, size: u32) -> u32 {
    (FAMILY, size as f64)
        .into_font()
        .box_size(s)
        .map(|b| b.0)
        .unwrap_or(s.chars().count() as u32 * size * 6 / 10)
}

/// One panel of a figure: a title (empty for none), its members (indices of the figure's
/// items, the baseline first) and their labels.
#[derive(Clone, Debug)]
struct Panel {
    title: String,
    members: Vec<usize>,
    labels: Vec<String>,
    /// How each member is drawn: a setting keeps its colour in every panel where the
    /// figure has at most [`MAX_PER_PANEL`] settings in all, else colours go by position.
    looks: Vec<Look>,
}

/// The looks of the panels' members (see [`Panel::looks`]).
fn assign_looks(panels: &mut [Panel], baseline: &[bool]) {
    let mut distinct: Vec<&str> = Vec::new();
    for p in panels.iter() {
        for (&i, l) in p.members.iter().zip(&p.labels) {
            if !baseline[i] && !distinct.contains(&l.as_str()) {
                distinct.push(l);
            }
        }
    }
    let global = distinct.len() <= MAX_PER_PANEL;
    let slots: Vec<Vec<Look>> = panels
        .iter()
        .map(|p| {
            let mut k = 0;
            p.members
                .iter()
                .zip(&p.labels)
                .map(|(&i, l)| {
                    if baseline[i] {
                        return look(0, true);
                    }
                    let slot = if global {
                        distinct.iter().position(|d| d == l).unwrap_or(k)
                    } else {
                        k
                    };
                    k += 1;
                    look(slot, false)
                })
                .collect()
        })
        .collect();
    for (p, l) in panels.iter_mut().zip(slots) {
        p.looks = l;
    }
}

/// The panels of a figure, and a note naming the grid values every item shares.
#[derive(Clone, Debug)]
struct Plan {
    panels: Vec<Panel>,
    note: Option<String>,
}

/// How the items of a figure go into panels. At most `max` non-baseline items a panel: more
/// are split by the grid key, or by the first word of the variant names, that makes the
/// fewest panels (two to six) within the bound; failing that (with `chunk`) into equal
/// parts, within the groups of a key with two to four values where there is one. Without
/// `chunk` (the Pareto front, whose points carry their own labels) only a key of two to four
/// values splits, else everything stays in one panel. A baseline is in every panel.
fn plan(items: &[Pairs], baseline: &[bool], max: usize, chunk: bool) -> Plan {
    let mut p = plan_panels(items, baseline, max, chunk);
    assign_looks(&mut p.panels, baseline);
    p
}

fn plan_panels(items: &[Pairs], baseline: &[bool], max: usize, chunk: bool) -> Plan {
    let mut keys: Vec<String> = Vec::new();
    for it in items {
        for (k, _) in it {
            if !keys.contains(k) {
                keys.push(k.clone());
            }
        }
    }
    let value = |i: usize, k: &str| -> String {
        items[i]
            .iter()
            .find(|(ik, _)| ik == k)
            .map_or(String::new(), |(_, v)| v.clone())
    };
    let varying: Vec<String> = keys
        .iter()
        .filter(|k| (1..items.len()).any(|i| value(i, k) != value(0, k)))
        .cloned()
        .collect();
    let constant: Vec<String> = keys
        .iter()
        .filter(|k| !varying.contains(k))
        .cloned()
        .collect();
    let lab = Labeller::new(items, &keys);
    let note = (items.len() > 1 && !constant.is_empty()).then(|| {
        let parts: Vec<String> = constant
            .iter()
            .map(|k| lab.pair(k, &value(0, k), false))
            .collect();
        format!("every line: {}", parts.join(", "))
    });
    let bases: Vec<usize> = (0..items.len()).filter(|&i| baseline[i]).collect();
    let others: Vec<usize> = (0..items.len()).filter(|&i| !baseline[i]).collect();
    let make = |title: String, group: &[usize], keys: &[String], skip: bool| -> Panel {
        let members: Vec<usize> = bases.iter().chain(group).copied().collect();
        let labels = members
            .iter()
            .map(|&i| {
                if baseline[i] {
                    lab.label(&items[i], &varying, false)
                } else {
                    lab.label(&items[i], keys, skip)
                }
            })
            .collect();
        Panel {
            title,
            members,
            labels,
            looks: Vec::new(),
        }
    };
    if others.len() <= max {
        return Plan {
            panels: vec![make(String::new(), &others, &varying, false)],
            note,
        };
    }
    // Candidate splits: (key, whether by the variant's first word, groups in order).
    // Items by a value of theirs, in order: (value, members).
    type Groups = Vec<(String, Vec<usize>)>;
    let groups_by = |f: &dyn Fn(usize) -> String| -> Groups {
        let mut g: Groups = Vec::new();
        for &i in &others {
            let v = f(i);
            match g.iter_mut().find(|(gv, _)| *gv == v) {
                Some((_, m)) => m.push(i),
                None => g.push((v, vec![i])),
            }
        }
        g
    };
    let mut cands: Vec<(String, bool, Groups)> = Vec::new();
    for k in &varying {
        if k == "variant" {
            let two_words = others.iter().all(|&i| value(i, k).trim().contains(' '));
            if chunk && two_words {
                let g = groups_by(&|i| {
                    value(i, "variant")
                        .split_once(' ')
                        .map_or(String::new(), |x| x.0.to_string())
                });
                cands.push((k.clone(), true, g));
            }
        }
        cands.push((k.clone(), false, groups_by(&|i| value(i, k))));
    }
    // A panel of the Pareto front may hold more than `max` points (they carry their labels).
    let bound = if chunk { max } else { usize::MAX };
    let fits = |g: &Groups, hi: usize| {
        (2..=hi).contains(&g.len()) && g.iter().all(|(_, m)| m.len() <= bound)
    };
    let best = cands
        .iter()
        .filter(|c| fits(&c.2, if chunk { 6 } else { 4 }))
        .min_by_key(|c| (c.2.len(), c.2.iter().map(|(_, m)| m.len()).max()));
    let title_of = |k: &str, by_word: bool, v: &str| -> String {
        if by_word || k == "variant" {
            v.to_string()
        } else {
            lab.pair(k, v, false)
        }
    };
    let rest = |k: &str, by_word: bool| -> Vec<String> {
        varying
            .iter()
            .filter(|x| by_word || x.as_str() != k)
            .cloned()
            .collect()
    };
    if let Some((k, by_word, g)) = best {
        let keys = rest(k, *by_word);
        let panels = g
            .iter()
            .map(|(v, m)| make(title_of(k, *by_word, v), m, &keys, *by_word))
            .collect();
        return Plan { panels, note };
    }
    if !chunk {
        return Plan {
            panels: vec![make(String::new(), &others, &varying, false)],
            note,
        };
    }
    // Equal parts, within the groups of a small key where there is one.
    let split = |m: &[usize]| -> Vec<Vec<usize>> {
        let parts = m.len().div_ceil(max);
        let base = m.len() / parts;
        let extra = m.len() % parts;
        let mut out = Vec::new();
        let mut at = 0;
        for p in 0..parts {
            let n = base + usize::from(p < extra);
            out.push(m[at..at + n].to_vec());
            at += n;
        }
        out
    };
    let small = cands
        .iter()
        .filter(|c| !c.1 && (2..=4).contains(&c.2.len()))
        .min_by_key(|c| c.2.len());
    let mut panels = Vec::new();
    match small {
        Some((k, _, g)) => {
            let keys = rest(k, false);
            for (v, m) in g {
                let parts = split(m);
                let n = parts.len();
                for (j, p) in parts.iter().enumerate() {
                    let t = title_of(k, false, v);
                    let t = if n > 1 {
                        format!("{t} ({} of {n})", j + 1)
                    } else {
                        t
                    };
                    panels.push(make(t, p, &keys, false));
                }
            }
        }
        None => {
            for p in split(&others) {
                panels.push(make(String::new(), &p, &varying, false));
            }
        }
    }
    Plan { panels, note }
}

/// The grid point of each point label in `runs`.
fn points_of(runs: &[RunRecord]) -> BTreeMap<String, Pairs> {
    runs.iter()
        .map(|r| (r.point_label(), r.point.clone()))
        .collect()
}

// ---------------------------------------------------------------------------------------------
// Data

/// One line: a grid point's mean and 95% half-width (over seeds) per x.
#[derive(Clone, Debug)]
pub struct Series {
    pub label: String,
    /// (x, mean, 95% half-width) sorted by x.
    pub points: Vec<(f64, f64, f64)>,
    /// The no-defense baseline (drawn black).
    pub baseline: bool,
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

// ---------------------------------------------------------------------------------------------
// Drawing

type DrawResult<DB> =
    std::result::Result<(), DrawingAreaErrorKind<<DB as DrawingBackend>::ErrorType>>;
type Root<DB> = DrawingArea<DB, Shift>;

/// A rectangle in figure pixels.
#[derive(Clone, Copy, Debug)]
struct Rect {
    x: i32,
    y: i32,
    w: i32,
    h: i32,
}

impl Rect {
    fn area<DB: DrawingBackend>(&self, root: &Root<DB>) -> Root<DB> {
        root.clone().shrink(
            (self.x, self.y),
            (self.w.max(1) as u32, self.h.max(1) as u32),
        )
    }
    /// The top `h` pixels, and the rest.
    fn cut_top(&self, h: i32) -> (Rect, Rect) {
        let h = h.clamp(0, self.h);
        (
            Rect { h, ..*self },
            Rect {
                y: self.y + h,
                h: self.h - h,
                ..*self
            },
        )
    }
    fn cut_bottom(&self, h: i32) -> (Rect, Rect) {
        self.cut_top(self.h - h)
    }
    /// `n` equal columns.
    fn columns(&self, n: usize) -> Vec<Rect> {
        split(self.x, self.w, n)
            .map(|(x, w)| Rect { x, w, ..*self })
            .collect()
    }
    /// `n` cells, at most `max_cols` a row, rows of equal height.
    fn grid(&self, n: usize, max_cols: usize) -> Vec<Rect> {
        let cols = n.clamp(1, max_cols.max(1));
        self.rows(n.div_ceil(cols))
            .iter()
            .flat_map(|r| r.columns(cols))
            .take(n)
            .collect()
    }
    /// `n` equal rows.
    fn rows(&self, n: usize) -> Vec<Rect> {
        split(self.y, self.h, n)
            .map(|(y, h)| Rect { y, h, ..*self })
            .collect()
    }
}

/// `len` pixels from `start` cut into `n` parts (at least one) that differ by at most one
/// pixel: each part's start and length.
fn split(start: i32, len: i32, n: usize) -> impl Iterator<Item = (i32, i32)> {
    let n = n.max(1) as i32;
    (0..n).map(move |i| (start + len * i / n, len * (i + 1) / n - len * i / n))
}

fn text<DB: DrawingBackend>(
    root: &Root<DB>,
    s: &str,
    at: (i32, i32),
    size: u32,
    pos: Pos,
    color: RGBColor,
) -> DrawResult<DB> {
    let style = TextStyle::from((FAMILY, size as f64).into_font())
        .color(&color)
        .pos(pos);
    root.draw(&Text::new(s.to_string(), at, style))
}

const TOP_LEFT: Pos = Pos {
    h_pos: HPos::Left,
    v_pos: VPos::Top,
};
const TOP_CENTER: Pos = Pos {
    h_pos: HPos::Center,
    v_pos: VPos::Top,
};

fn draw_marker<DB: DrawingBackend>(
    root: &Root<DB>,
    m: Marker,
    (x, y): (i32, i32),
    r: i32,
    color: RGBColor,
) -> DrawResult<DB> {
    let fill = color.filled();
    match m {
        Marker::Circle => root.draw(&Circle::new((x, y), r, fill)),
        Marker::Square => root.draw(&Rectangle::new([(x - r, y - r), (x + r, y + r)], fill)),
        Marker::Triangle => root.draw(&Polygon::new(
            vec![(x, y - r - 1), (x + r + 1, y + r), (x - r - 1, y + r)],
            fill,
        )),
        Marker::Down => root.draw(&Polygon::new(
            vec![(x, y + r + 1), (x + r + 1, y - r), (x - r - 1, y - r)],
            fill,
        )),
        Marker::Diamond => root.draw(&Polygon::new(
            vec![
                (x, y - r - 2),
                (x + r + 1, y),
                (x, y + r + 2),
                (x - r - 1, y),
            ],
            fill,
        )),
        Marker::Cross => {
            let s = ShapeStyle::from(&color).stroke_width(3);
            root.draw(&PathElement::new(vec![(x - r, y - r), (x + r, y + r)], s))?;
            root.draw(&PathElement::new(vec![(x - r, y + r), (x + r, y - r)], s))
        }
    }
}

/// A polyline in figure pixels in a look's dash.
fn draw_path<DB: DrawingBackend>(
    root: &Root<DB>,
    pts: &[(i32, i32)],
    color: RGBColor,
    width: u32,
    dash: Dash,
) -> DrawResult<DB> {
    let style = ShapeStyle::from(&color).stroke_width(width);
    let (on, off) = match dash {
        Dash::Solid => return root.draw(&PathElement::new(pts.to_vec(), style)),
        Dash::Dashed => (9.0, 6.0),
        Dash::Dotted => (2.0, 4.0),
    };
    for w in pts.windows(2) {
        let (a, b) = (w[0], w[1]);
        let len = (((b.0 - a.0).pow(2) + (b.1 - a.1).pow(2)) as f64).sqrt();
        if len == 0.0 {
            continue;
        }
        let (dx, dy) = ((b.0 - a.0) as f64 / len, (b.1 - a.1) as f64 / len);
        let mut t = 0.0;
        while t < len {
            let e = (t + on).min(len);
            let p = |s: f64| (a.0 + (dx * s).round() as i32, a.1 + (dy * s).round() as i32);
            root.draw(&PathElement::new(vec![p(t), p(e)], style))?;
            t += on + off;
        }
    }
    Ok(())
}

/// One legend entry: a label and how its sample is drawn.
#[derive(Clone, Debug)]
struct Entry {
    label: String,
    look: Look,
}

/// Legend entries laid out in columns: (x, y, lines) per entry relative to the legend's
/// corner, and the total height.
struct LegendLayout {
    cells: Vec<(i32, i32, Vec<String>)>,
    height: i32,
}

fn legend_layout(entries: &[Entry], width: i32) -> LegendLayout {
    let pad = 12;
    let sample = 40;
    let widest = entries
        .iter()
        .map(|e| text_w(&e.label, LEGEND) as i32)
        .max()
        .unwrap_or(0);
    // As many columns as the widest label allows, at most 4 and no more than entries.
    let usable = (width - 2 * pad).max(120);
    let cols = ((usable / (widest + sample + 24).max(1)) as usize).clamp(1, 4);
    let cols = cols.min(entries.len().max(1));
    let col_w = usable / cols as i32;
    let max_text = (col_w - sample - 16).max(60) as u32;
    let mut cells = Vec::new();
    let mut y = 6;
    for row in entries.chunks(cols) {
        let mut row_h = 1;
        for (c, e) in row.iter().enumerate() {
            let lines = wrap(&e.label, max_text, &|s| text_w(s, LEGEND));
            row_h = row_h.max(lines.len() as i32);
            cells.push((pad + c as i32 * col_w, y, lines));
        }
        y += row_h * LINE_H + 6;
    }
    LegendLayout {
        cells,
        height: y + 4,
    }
}

fn draw_legend<DB: DrawingBackend>(
    root: &Root<DB>,
    at: Rect,
    layout: &LegendLayout,
    entries: &[Entry],
) -> DrawResult<DB> {
    for ((x, y, lines), e) in layout.cells.iter().zip(entries) {
        let (x, y) = (at.x + x, at.y + y);
        let mid = y + LINE_H / 2 - 1;
        draw_path(
            root,
            &[(x, mid), (x + 32, mid)],
            e.look.color,
            e.look.width,
            e.look.dash,
        )?;
        if let Some(m) = e.look.marker {
            draw_marker(root, m, (x + 16, mid), 4, e.look.color)?;
        }
        for (j, l) in lines.iter().enumerate() {
            text(
                root,
                l,
                (x + 40, y + 2 + j as i32 * LINE_H),
                LEGEND,
                TOP_LEFT,
                BLACK,
            )?;
        }
    }
    Ok(())
}

/// The figure's title and note at the top of `r`; returns the rest.
fn draw_header<DB: DrawingBackend>(
    root: &Root<DB>,
    r: Rect,
    title: &str,
    note: Option<&str>,
) -> std::result::Result<Rect, DrawingAreaErrorKind<DB::ErrorType>> {
    let mut y = r.y + 10;
    if !title.is_empty() {
        text(root, title, (r.x + r.w / 2, y), TITLE, TOP_CENTER, BLACK)?;
        y += TITLE as i32 + 8;
    }
    if let Some(n) = note {
        for line in wrap(n, (r.w - 80) as u32, &|s| text_w(s, NOTE)) {
            text(root, &line, (r.x + r.w / 2, y), NOTE, TOP_CENTER, GREY)?;
            y += LINE_H;
        }
        y += 4;
    }
    Ok(Rect {
        y,
        h: r.h - (y - r.y),
        ..r
    })
}

/// Pixels a y axis needs for its tick labels and its description beside them.
fn y_area(labels: &[String]) -> i32 {
    let w = labels.iter().map(|l| text_w(l, TICK)).max().unwrap_or(0) as i32;
    w + DESC as i32 + 26
}

/// The house style of an axis grid: descriptions, tick fonts and formats, faint grid lines.
macro_rules! mesh {
    ($chart:expr, $x_desc:expr, $y_desc:expr, $x_fmt:expr, $y_fmt:expr) => {
        $chart
            .configure_mesh()
            .x_desc($x_desc)
            .y_desc($y_desc)
            .label_style((FAMILY, TICK as f64))
            .axis_desc_style((FAMILY, DESC as f64))
            .x_label_formatter($x_fmt)
            .y_label_formatter($y_fmt)
            .bold_line_style(BLACK.mix(0.12))
            .light_line_style(WHITE.mix(0.0))
            .draw()
    };
}

/// One metric of a curve figure.
struct Metric {
    title: String,
    y_desc: String,
    series: Vec<Series>,
    teacher: Option<f64>,
}

/// A curve panel: series against the budget on a log axis with explicit ticks, bands and a
/// teacher line; a series' budget-0 value (a base model's own) is a dotted level in its colour.
#[allow(clippy::too_many_arguments)]
fn curve_panel<DB: DrawingBackend>(
    root: &Root<DB>,
    r: Rect,
    caption: &str,
    y_desc: &str,
    series: &[(&Series, Look)],
    teacher: Option<f64>,
    x_range: (f64, f64),
    budgets: &[f64],
    (y_min, y_max): (f64, f64),
) -> DrawResult<DB> {
    let (y_ticks, y_step) = nice_ticks(y_min, y_max, 8, 0.0);
    let y_fmt = |y: &f64| fmt_tick(*y, y_step, y_max.max(-y_min));
    let y_labels: Vec<String> = y_ticks.iter().map(y_fmt).collect();
    let ya = y_area(&y_labels);
    let plot_w = (r.w - ya - 40).max(50) as f64;
    let widest = budgets
        .iter()
        .map(|b| text_w(&fmt_si(*b), TICK))
        .max()
        .unwrap_or(30) as f64;
    let x_ticks = log_ticks(budgets, x_range.0, x_range.1, (widest + 18.0) / plot_w);
    let area = r.area(root);
    let mut b = ChartBuilder::on(&area);
    if !caption.is_empty() {
        b.caption(caption, (FAMILY, CAPTION as f64));
    }
    let mut chart = b
        .margin(10)
        .margin_right(24)
        .x_label_area_size(52)
        .y_label_area_size(ya)
        .build_cartesian_2d(
            ticked((x_range.0..x_range.1).log_scale(), x_ticks),
            ticked(y_min..y_max, y_ticks),
        )?;
    mesh!(
        chart,
        "queries harvested (log scale)",
        y_desc,
        &|x: &f64| fmt_si(*x),
        &y_fmt
    )?;
    let px = |chart: &ChartContext<'_, DB, _>, x: f64, y: f64| chart.backend_coord(&(x, y));
    if let Some(t) = teacher {
        let a = px(&chart, x_range.0, t);
        let b = px(&chart, x_range.1, t);
        draw_path(root, &[a, b], RGBColor(60, 60, 60), 2, Dash::Dashed)?;
    }
    // Bands first, under every line.
    for (s, lk) in series {
        let points: Vec<&(f64, f64, f64)> = s.points.iter().filter(|p| p.0 > 0.0).collect();
        if points.iter().any(|p| p.2 > 0.0) {
            let mut band: Vec<(f64, f64)> = points
                .iter()
                .map(|p| (p.0, (p.1 + p.2).min(y_max)))
                .collect();
            band.extend(points.iter().rev().map(|p| (p.0, (p.1 - p.2).max(y_min))));
            chart.draw_series(std::iter::once(Polygon::new(band, lk.color.mix(0.12))))?;
        }
    }
    for (s, lk) in series {
        // A base model's own value (budget 0): a dotted level in the series' colour.
        if let Some(base) = s.points.iter().find(|p| p.0 == 0.0) {
            let a = px(&chart, x_range.0, base.1);
            let b = px(&chart, x_range.1, base.1);
            draw_path(root, &[a, b], lk.color, 2, Dash::Dotted)?;
        }
        let pix: Vec<(i32, i32)> = s
            .points
            .iter()
            .filter(|p| p.0 > 0.0)
            .map(|p| px(&chart, p.0, p.1))
            .collect();
        draw_path(root, &pix, lk.color, lk.width, lk.dash)?;
        if let Some(m) = lk.marker {
            for &p in &pix {
                draw_marker(root, m, p, 4, lk.color)?;
            }
        }
    }
    Ok(())
}

/// The entries a curve legend starts with: the teacher, and the dotted base-model level.
fn curve_key(metrics: &[Metric]) -> Vec<Entry> {
    let mut out = Vec::new();
    if metrics.iter().any(|m| m.teacher.is_some()) {
        out.push(Entry {
            label: "teacher".into(),
            look: Look {
                color: RGBColor(60, 60, 60),
                width: 2,
                dash: Dash::Dashed,
                marker: None,
            },
        });
    }
    if metrics
        .iter()
        .any(|m| m.series.iter().any(|s| s.points.iter().any(|p| p.0 == 0.0)))
    {
        out.push(Entry {
            label: "base model alone (budget 0), dotted in its colour".into(),
            look: Look {
                color: GREY,
                width: 2,
                dash: Dash::Dotted,
                marker: None,
            },
        });
    }
    out
}

fn draw_curves<DB: DrawingBackend>(
    root: &Root<DB>,
    title: &str,
    metrics: &[Metric],
    plan: &Plan,
    labels: &[String],
    x_range: (f64, f64),
    budgets: &[f64],
) -> DrawResult<DB> {
    let (w, h) = root.dim_in_pixel();
    let full = Rect {
        x: 0,
        y: 0,
        w: w as i32,
        h: h as i32,
    };
    // Every panel of a metric shares its y range: from 0 (or the lowest mean, if below) to
    // the top of the bands, but no further than 1.3 times the highest mean or teacher level:
    // the bands of a few seeds can run far beyond the data, and are cut there.
    let mut cut = false;
    let y_range: Vec<(f64, f64)> = metrics
        .iter()
        .map(|m| {
            let means = || m.series.iter().flat_map(|s| s.points.iter().map(|p| p.1));
            let top = means().chain(m.teacher).fold(0.0f64, f64::max).max(0.1);
            let bands = m
                .series
                .iter()
                .flat_map(|s| s.points.iter().map(|p| p.1 + p.2))
                .chain(m.teacher)
                .fold(0.0f64, f64::max);
            cut |= bands > top * 1.3;
            let low = means().fold(0.0f64, f64::min);
            let y_min = if low < 0.0 { low - 0.08 * top } else { 0.0 };
            (y_min, bands.min(top * 1.3).max(0.1) * 1.05)
        })
        .collect();
    let note = [
        Some(if cut {
            "bands: 95% intervals over seeds (cut at the top of the axis)"
        } else {
            "bands: 95% intervals over seeds"
        }),
        plan.note.as_deref(),
    ]
    .iter()
    .flatten()
    .copied()
    .collect::<Vec<_>>()
    .join("; ");
    let body = draw_header(root, full, title, Some(&note))?;
    let key = curve_key(metrics);
    let one = metrics.len() == 1;
    // One metric: panels side by side, each with its legend below; several: one row of
    // metrics per panel, its legend below the row.
    let cells = if one {
        body.grid(plan.panels.len(), PANEL_COLS)
    } else {
        body.rows(plan.panels.len())
    };
    for (cell, panel) in cells.iter().zip(&plan.panels) {
        let mut entries = key.clone();
        let mut drawn: Vec<(&str, Look)> = Vec::new();
        for ((&i, label), &lk) in panel.members.iter().zip(&panel.labels).zip(&panel.looks) {
            drawn.push((labels[i].as_str(), lk));
            entries.push(Entry {
                label: label.clone(),
                look: lk,
            });
        }
        let layout = legend_layout(&entries, cell.w);
        let (charts, legend) = cell.cut_bottom(layout.height);
        let panel_cells = if one {
            vec![charts]
        } else {
            charts.columns(metrics.len())
        };
        for (j, (pc, m)) in panel_cells.iter().zip(metrics).enumerate() {
            let series: Vec<(&Series, Look)> = drawn
                .iter()
                .filter_map(|(l, lk)| m.series.iter().find(|s| s.label == *l).map(|s| (s, *lk)))
                .collect();
            let caption = match (one, panel.title.is_empty()) {
                (true, _) => panel.title.clone(),
                (false, true) => m.title.clone(),
                (false, false) => format!("{}: {}", m.title, panel.title),
            };
            curve_panel(
                root, *pc, &caption, &m.y_desc, &series, m.teacher, x_range, budgets, y_range[j],
            )?;
        }
        draw_legend(root, legend, &layout, &entries)?;
    }
    Ok(())
}

/// A Pareto point: label (grid point), utility, its half-width, parity, its half-width,
/// whether it is the baseline.
type ParetoPoint = (String, f64, f64, f64, f64, bool);

/// Places labels of sizes `sizes` beside the points `at` (figure pixels) inside `bounds`:
/// nearest the point's height first, right of it rather than left, never overlapping another
/// label or a point. Returns each label's top-left corner.
fn place_labels(at: &[(i32, i32)], sizes: &[(i32, i32)], bounds: Rect) -> Vec<(i32, i32)> {
    let mut placed: Vec<(i32, i32, i32, i32)> = Vec::new();
    let mut out = vec![(0, 0); at.len()];
    let overlaps = |a: (i32, i32, i32, i32), b: (i32, i32, i32, i32)| {
        a.0 < b.0 + b.2 && b.0 < a.0 + a.2 && a.1 < b.1 + b.3 && b.1 < a.1 + a.3
    };
    let mut order: Vec<usize> = (0..at.len()).collect();
    order.sort_by_key(|&i| (at[i].1, at[i].0));
    for i in order {
        let (px, py) = at[i];
        let (w, h) = sizes[i];
        // (cost, corner): the distance moved; a label on the left counts as 5 lines more.
        let mut best: Option<(i32, (i32, i32))> = None;
        for step in 0..400 {
            let d = if step % 2 == 0 {
                step / 2
            } else {
                -(step / 2 + 1)
            } * (h / 3 + 1);
            if best.is_some_and(|b| d.abs() > b.0) {
                break;
            }
            for (x, extra) in [(px + 10, 0), (px - 10 - w, 5 * h)] {
                let r = (x, py - h / 2 + d, w, h);
                let cost = d.abs() + extra;
                if best.is_some_and(|b| cost >= b.0) {
                    continue;
                }
                let inside = r.0 >= bounds.x
                    && r.1 >= bounds.y
                    && r.0 + r.2 <= bounds.x + bounds.w
                    && r.1 + r.3 <= bounds.y + bounds.h;
                // Clear of other labels, and of every point by a margin (a label right beside
                // another point would read as that point's).
                let free = placed.iter().all(|p| !overlaps(r, *p))
                    && at
                        .iter()
                        .all(|&(qx, qy)| !overlaps(r, (qx - 9, qy - 9, 18, 18)));
                if inside && free {
                    best = Some((cost, (r.0, r.1)));
                }
            }
        }
        // No free place (a figure far too crowded): beside the point, overlapping.
        let (x, y) = best.map_or((px + 10, py - h / 2), |b| b.1);
        placed.push((x, y, w, h));
        out[i] = (x, y);
    }
    out
}

/// Where some points are adaptive attackers (`X (counter)`), each panel split in two side by
/// side: the naive attacker's points, and the adaptive ones with the naive point of each
/// (joined by a line) and the baseline.
fn naive_beside_adaptive(plan: Plan, pts: &[ParetoPoint]) -> Plan {
    if !pts.iter().any(|p| naive_of(&p.0).is_some()) {
        return plan;
    }
    let mut panels = Vec::new();
    for panel in plan.panels {
        let keep = |f: &dyn Fn(usize) -> bool| -> Panel {
            let mut out = Panel {
                title: String::new(),
                members: vec![],
                labels: vec![],
                looks: vec![],
            };
            for (j, &i) in panel.members.iter().enumerate() {
                if f(i) {
                    out.members.push(i);
                    out.labels.push(panel.labels[j].clone());
                    out.looks.push(panel.looks[j]);
                }
            }
            out
        };
        let adaptive: Vec<String> = panel
            .members
            .iter()
            .filter_map(|&i| naive_of(&pts[i].0))
            .collect();
        let mut naive = keep(&|i| naive_of(&pts[i].0).is_none());
        let mut adapt =
            keep(&|i| pts[i].5 || naive_of(&pts[i].0).is_some() || adaptive.contains(&pts[i].0));
        let sep = if panel.title.is_empty() { "" } else { ": " };
        naive.title = format!("{}{sep}naive attacker", panel.title);
        adapt.title = format!(
            "{}{sep}adaptive attacker (a line from its naive point)",
            panel.title
        );
        panels.push(naive);
        panels.push(adapt);
    }
    Plan {
        panels,
        note: plan.note,
    }
}

/// The naive defense's point label of an adaptive one: `variant=X (counter)` -> `variant=X`
/// (None for a point without a counter).
fn naive_of(label: &str) -> Option<String> {
    let (head, rest) = label.split_once(" (")?;
    let close = rest.find(')')?;
    Some(format!("{head}{}", &rest[close + 1..]))
}

fn draw_pareto<DB: DrawingBackend>(
    root: &Root<DB>,
    points: &[ParetoPoint],
    plan: &Plan,
) -> DrawResult<DB> {
    let (w, h) = root.dim_in_pixel();
    let full = Rect {
        x: 0,
        y: 0,
        w: w as i32,
        h: h as i32,
    };
    // Shared axes. The parity axis ends a little above the highest point: longer bars run off
    // the top, marked with an arrowhead.
    let y_top = points.iter().map(|p| p.3).fold(0.0f64, f64::max);
    let y_max = points
        .iter()
        .map(|p| p.3 + p.4)
        .fold(0.0f64, f64::max)
        .min(y_top * 1.5 + 0.02)
        * 1.05
        + 0.01;
    let clipped = points.iter().any(|p| p.3 + p.4 > y_max);
    let note = [
        Some(
            "utility for honest users: served capability relative to no defense x share of \
             benign queries neither blocked nor degraded; bars: 95% intervals over seeds",
        ),
        clipped.then_some("arrowheads: bars that run on above the axis"),
        plan.note.as_deref(),
    ]
    .iter()
    .flatten()
    .copied()
    .collect::<Vec<_>>()
    .join("; ");
    let body = draw_header(
        root,
        full,
        "Defense Pareto: utility for honest users vs the copy's parity",
        Some(&note),
    )?;
    let cols = body.grid(plan.panels.len(), 2);
    let widest = plan
        .panels
        .iter()
        .flat_map(|p| p.labels.iter())
        .map(|l| text_w(l, LEGEND) as i32)
        .max()
        .unwrap_or(0);
    let x_lo_d = points
        .iter()
        .map(|p| p.1 - p.2)
        .fold(f64::INFINITY, f64::min);
    let x_hi_d = points.iter().map(|p| p.1 + p.2).fold(1.0f64, f64::max);
    let span = (x_hi_d - x_lo_d).max(0.02);
    let x_lo = x_hi_d - span * 1.04;
    let (y_ticks, y_step) = nice_ticks(0.0, y_max, 8, 0.0);
    let y_fmt = |y: &f64| fmt_tick(*y, y_step, y_max);
    let ya = y_area(&y_ticks.iter().map(y_fmt).collect::<Vec<_>>());
    // Room on the right for the labels of the rightmost points.
    let plot_w = (cols[0].w - ya - 40).max(100) as f64;
    let room = (((widest + 30) as f64) / plot_w).min(0.45);
    let x_hi = x_hi_d + (x_hi_d - x_lo) * room / (1.0 - room);
    let (x_ticks, x_step) = nice_ticks(x_lo, x_hi_d, 6, 0.0);
    let x_fmt = |x: &f64| fmt_tick(*x, x_step, 1.0);
    for (cell, panel) in cols.iter().zip(&plan.panels) {
        let area = cell.area(root);
        let mut b = ChartBuilder::on(&area);
        if !panel.title.is_empty() {
            b.caption(&panel.title, (FAMILY, CAPTION as f64));
        }
        let mut chart = b
            .margin(12)
            .x_label_area_size(52)
            .y_label_area_size(ya)
            .build_cartesian_2d(
                ticked(x_lo..x_hi, x_ticks.clone()),
                ticked(0.0..y_max, y_ticks.clone()),
            )?;
        mesh!(
            chart,
            "utility for honest users (higher is better)",
            "student parity (lower is better for the defender)",
            &x_fmt,
            &y_fmt
        )?;
        let (xr, yr) = chart.plotting_area().get_pixel_range();
        let bounds = Rect {
            x: xr.start,
            y: yr.start,
            w: xr.end - xr.start,
            h: yr.end - yr.start,
        };
        let mut at = Vec::new();
        let mut sizes = Vec::new();
        let mut colors = Vec::new();
        let mut k = 0;
        for (&i, label) in panel.members.iter().zip(&panel.labels) {
            let (_, x, xe, y, ye, base) = &points[i];
            // Points carry their labels: colours (only to tie a label to its point) cycle
            // through the whole palette.
            let c = if *base {
                BLACK
            } else {
                k += 1;
                PALETTE[(k - 1) % PALETTE.len()]
            };
            let bar = ShapeStyle::from(&c.mix(0.5)).stroke_width(1);
            let (y0, y1) = ((y - ye).max(0.0), (y + ye).min(y_max));
            chart.draw_series([
                PathElement::new(vec![(*x, y0), (*x, y1)], bar),
                PathElement::new(vec![((x - xe).max(x_lo), *y), (x + xe, *y)], bar),
            ])?;
            if y + ye > y_max {
                let (tx, ty) = chart.backend_coord(&(*x, y_max));
                root.draw(&Polygon::new(
                    vec![(tx, ty), (tx - 4, ty + 8), (tx + 4, ty + 8)],
                    c.mix(0.7).filled(),
                ))?;
            }
            at.push(chart.backend_coord(&(*x, *y)));
            sizes.push((text_w(label, LEGEND) as i32 + 2, LINE_H - 2));
            colors.push(c);
        }
        // Each adaptive point (`X (counter)`) joined to its naive defense's (`X`).
        for (j, &i) in panel.members.iter().enumerate() {
            let Some(naive) = naive_of(&points[i].0) else {
                continue;
            };
            if let Some(n) = panel.members.iter().position(|&m| points[m].0 == naive) {
                let style = ShapeStyle::from(&colors[j].mix(0.6)).stroke_width(2);
                root.draw(&PathElement::new(vec![at[n], at[j]], style))?;
            }
        }
        let corners = place_labels(&at, &sizes, bounds);
        for (j, label) in panel.labels.iter().enumerate() {
            let (p, c, s) = (at[j], corners[j], sizes[j]);
            let mid = c.1 + s.1 / 2;
            if (mid - p.1).abs() > s.1 / 2 || c.0 < p.0 {
                let end = if c.0 >= p.0 {
                    (c.0 - 2, mid)
                } else {
                    (c.0 + s.0 + 2, mid)
                };
                root.draw(&PathElement::new(vec![p, end], colors[j].mix(0.85)))?;
            }
            text(root, label, (c.0, c.1 + 1), LEGEND, TOP_LEFT, BLACK)?;
        }
        // The baseline's marker last, on top of any it coincides with.
        let mut order: Vec<usize> = (0..colors.len()).collect();
        order.sort_by_key(|&j| colors[j] == BLACK);
        for j in order {
            let r = if colors[j] == BLACK { 6 } else { 5 };
            draw_marker(root, Marker::Circle, at[j], r, colors[j])?;
        }
    }
    Ok(())
}

/// A setting's timeline: label (grid point), (day, cumulative attacker queries served,
/// actions that day), whether it is the baseline.
type TimelineLine = (String, Vec<(f64, f64, f64)>, bool);

fn draw_timeline<DB: DrawingBackend>(
    root: &Root<DB>,
    lines: &[TimelineLine],
    changes: &[f64],
    plan: &Plan,
) -> DrawResult<DB> {
    let (w, h) = root.dim_in_pixel();
    let full = Rect {
        x: 0,
        y: 0,
        w: w as i32,
        h: h as i32,
    };
    let body = draw_header(
        root,
        full,
        "Detection timeline: attacker queries served, and actions on attacker accounts",
        plan.note.as_deref(),
    )?;
    let days = lines
        .iter()
        .flat_map(|l| l.1.iter().map(|p| p.0))
        .fold(1.0f64, f64::max);
    let served_max = lines
        .iter()
        .flat_map(|l| l.1.iter().map(|p| p.1))
        .fold(1.0f64, f64::max)
        * 1.06;
    let act_max = lines
        .iter()
        .flat_map(|l| l.1.iter().map(|p| p.2))
        .fold(1.0f64, f64::max)
        * 1.1;
    let (x_ticks, x_step) = nice_ticks(0.0, days, 9, 1.0);
    let (s_ticks, s_step) = nice_ticks(0.0, served_max, 6, 1.0);
    let (a_ticks, a_step) = nice_ticks(0.0, act_max, 4, 1.0);
    let x_fmt = |x: &f64| fmt_tick(*x, x_step, days);
    let s_fmt = |y: &f64| fmt_tick(*y, s_step, served_max);
    let a_fmt = |y: &f64| fmt_tick(*y, a_step, act_max);
    let ya = y_area(
        &s_ticks
            .iter()
            .map(s_fmt)
            .chain(a_ticks.iter().map(a_fmt))
            .collect::<Vec<_>>(),
    );
    let mark = Look {
        color: RGBColor(60, 60, 60),
        width: 2,
        dash: Dash::Dashed,
        marker: None,
    };
    let cols = body.grid(plan.panels.len(), PANEL_COLS);
    // The legends below the panels all take the height of the tallest.
    let entries_of = |panel: &Panel| -> Vec<(usize, Entry)> {
        let mut out: Vec<(usize, Entry)> = panel
            .members
            .iter()
            .zip(&panel.labels)
            .zip(&panel.looks)
            .map(|((&i, label), &lk)| {
                (
                    i,
                    Entry {
                        label: label.clone(),
                        look: lk,
                    },
                )
            })
            .collect();
        for &d in changes {
            out.push((
                usize::MAX,
                Entry {
                    label: format!("limit change (day {})", fmt_si(d)),
                    look: mark,
                },
            ));
        }
        out
    };
    let legend_h = plan
        .panels
        .iter()
        .zip(&cols)
        .map(|(p, c)| {
            let e: Vec<Entry> = entries_of(p).into_iter().map(|x| x.1).collect();
            legend_layout(&e, c.w).height
        })
        .max()
        .unwrap_or(0);
    for (cell, panel) in cols.iter().zip(&plan.panels) {
        let entries = entries_of(panel);
        let (charts, legend) = cell.cut_bottom(legend_h);
        let cap = if panel.title.is_empty() {
            0
        } else {
            CAPTION as i32 + 14
        };
        let (head, charts) = charts.cut_top(cap);
        if cap > 0 {
            text(
                root,
                &panel.title,
                (head.x + head.w / 2, head.y + 6),
                CAPTION,
                TOP_CENTER,
                BLACK,
            )?;
        }
        let (top, bottom) = charts.cut_top(charts.h * 3 / 5);
        for (r, y_hi, y_ticks, y_desc, which) in [
            (top, served_max, &s_ticks, "queries served (cumulative)", 1),
            (bottom, act_max, &a_ticks, "actions per day", 2),
        ] {
            let area = r.area(root);
            let mut chart = ChartBuilder::on(&area)
                .margin(10)
                .margin_right(20)
                .x_label_area_size(48)
                .y_label_area_size(ya)
                .build_cartesian_2d(
                    ticked(0.0..days, x_ticks.clone()),
                    ticked(0.0..y_hi, y_ticks.clone()),
                )?;
            if which == 1 {
                mesh!(chart, "simulated day", y_desc, &x_fmt, &s_fmt)?;
            } else {
                mesh!(chart, "simulated day", y_desc, &x_fmt, &a_fmt)?;
            }
            for &d in changes {
                let a = chart.backend_coord(&(d, 0.0));
                let b = chart.backend_coord(&(d, y_hi));
                draw_path(root, &[a, b], mark.color, 2, Dash::Dashed)?;
            }
            for (i, e) in &entries {
                let Some((_, pts, _)) = lines.get(*i) else {
                    continue;
                };
                let pix: Vec<(i32, i32)> = pts
                    .iter()
                    .map(|p| chart.backend_coord(&(p.0, if which == 1 { p.1 } else { p.2 })))
                    .collect();
                draw_path(root, &pix, e.look.color, e.look.width, e.look.dash)?;
                if let Some(m) = e.look.marker {
                    // Markers: on the lower panel on the days with actions; on the upper a few
                    // per line, staggered from line to line so that lines that coincide still
                    // show each of their markers.
                    let n_lines = entries.iter().filter(|x| x.0 != usize::MAX).count();
                    let every = (pts.len() / 8).max(n_lines).clamp(1, pts.len().max(2) - 1);
                    let slot = entries.iter().position(|x| x.0 == *i).unwrap_or(0) % every;
                    for (j, p) in pts.iter().enumerate() {
                        let show = if which == 1 {
                            j % every == (slot + 1) % every || j + 1 == pts.len()
                        } else {
                            p.2 > 0.0
                        };
                        if show && j > 0 {
                            draw_marker(root, m, pix[j], 4, e.look.color)?;
                        }
                    }
                }
            }
        }
        let e: Vec<Entry> = entries.into_iter().map(|x| x.1).collect();
        let layout = legend_layout(&e, legend.w);
        draw_legend(root, legend, &layout, &e)?;
    }
    Ok(())
}

/// What one figure draws; rendered once per backend.
enum Figure {
    Curves {
        title: String,
        metrics: Vec<Metric>,
        plan: Plan,
        /// The grid point of each item of the plan.
        labels: Vec<String>,
        x_range: (f64, f64),
        budgets: Vec<f64>,
    },
    Pareto(Vec<ParetoPoint>, Plan),
    /// The lines, the days of the provider's limit changes, the panels.
    Timeline(Vec<TimelineLine>, Vec<f64>, Plan),
}

fn draw<DB: DrawingBackend>(root: DrawingArea<DB, Shift>, fig: &Figure) -> DrawResult<DB> {
    root.fill(&WHITE)?;
    match fig {
        Figure::Curves {
            title,
            metrics,
            plan,
            labels,
            x_range,
            budgets,
        } => draw_curves(&root, title, metrics, plan, labels, *x_range, budgets)?,
        Figure::Pareto(points, plan) => draw_pareto(&root, points, plan)?,
        Figure::Timeline(lines, changes, plan) => draw_timeline(&root, lines, changes, plan)?,
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

/// A curve figure over `metrics`: the panels planned over every grid point any metric has.
fn curves(
    title: &str,
    metrics: Vec<Metric>,
    points: &BTreeMap<String, Pairs>,
    x_range: (f64, f64),
    budgets: &[f64],
) -> (Figure, usize) {
    let mut labels: Vec<String> = Vec::new();
    let mut base: Vec<bool> = Vec::new();
    for s in metrics.iter().flat_map(|m| m.series.iter()) {
        if !labels.contains(&s.label) {
            labels.push(s.label.clone());
            base.push(s.baseline);
        }
    }
    let items: Vec<Pairs> = labels
        .iter()
        .map(|l| points.get(l).cloned().unwrap_or_default())
        .collect();
    let plan = plan(&items, &base, MAX_PER_PANEL, true);
    let n = plan.panels.len();
    (
        Figure::Curves {
            title: title.to_string(),
            metrics,
            plan,
            labels,
            x_range,
            budgets: budgets.to_vec(),
        },
        n,
    )
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
    let points = points_of(&runs);
    let mut written = Vec::new();
    let b = budgets(&runs);
    if b.len() >= 2 {
        let x_range = (b[0] * 0.8, b[b.len() - 1] * 1.25);
        let (parity, n) = curves(
            "Parity curve: the copy's capability relative to the teacher",
            vec![Metric {
                title: String::new(),
                y_desc: "parity".into(),
                series: series(&runs, "parity"),
                teacher: Some(1.0),
            }],
            &points,
            x_range,
            &b,
        );
        let (cols, rows) = (n.min(PANEL_COLS) as u32, n.div_ceil(PANEL_COLS) as u32);
        written.extend(render(
            &parity,
            &out.join("parity"),
            (1200.max(620 * cols), 760 * rows),
        )?);
        let (transfer, n) = curves(
            "",
            vec![
                Metric {
                    title: "Safety transfer".into(),
                    y_desc: "student / teacher balanced safety".into(),
                    series: series(&runs, "safety.transfer"),
                    teacher: Some(1.0),
                },
                Metric {
                    title: "Acting on distress in the words".into(),
                    y_desc: "SUPPORT - false alarms (ei.act.words)".into(),
                    series: series(&runs, "ei.act.words"),
                    teacher: teacher_value(&runs, "ei.act.words"),
                },
                Metric {
                    title: "Acting on distress in the voice".into(),
                    y_desc: "SUPPORT - false alarms (ei.act.voice)".into(),
                    series: series(&runs, "ei.act.voice"),
                    teacher: teacher_value(&runs, "ei.act.voice"),
                },
            ],
            &points,
            x_range,
            &b,
        );
        written.extend(render(
            &transfer,
            &out.join("transfer"),
            (1800, 80 + 620 * n as u32),
        )?);
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
        let pts: Vec<ParetoPoint> = utility
            .iter()
            .filter_map(|(l, u, ue)| {
                parity
                    .iter()
                    .find(|p| &p.0 == l)
                    .map(|p| (l.clone(), *u, *ue, p.1, p.2, is_baseline(l)))
            })
            .collect();
        let items: Vec<Pairs> = pts
            .iter()
            .map(|p| points.get(&p.0).cloned().unwrap_or_default())
            .collect();
        let base: Vec<bool> = pts.iter().map(|p| p.5).collect();
        let plan = naive_beside_adaptive(plan(&items, &base, 12, false), &pts);
        let n = plan.panels.len();
        let (cols, rows) = (n.min(2) as u32, n.div_ceil(2) as u32);
        written.extend(render(
            &Figure::Pareto(pts, plan),
            &out.join("pareto"),
            (1400.max(800 * cols), 100 + 900 * rows),
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
            let items: Vec<Pairs> = acted
                .iter()
                .map(|l| points.get(&l.0).cloned().unwrap_or_default())
                .collect();
            let base: Vec<bool> = acted.iter().map(|l| l.2).collect();
            let plan = plan(&items, &base, MAX_PER_PANEL, true);
            let n = plan.panels.len();
            let (cols, rows) = (n.min(PANEL_COLS) as u32, n.div_ceil(PANEL_COLS) as u32);
            written.extend(render(
                &Figure::Timeline(acted, changes, plan),
                &out.join("timeline"),
                (1400.max(580 * cols), 100 + 900 * rows),
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

#[cfg(test)]
mod tests {
    use super::*;

    fn pairs(kv: &[(&str, &str)]) -> Pairs {
        kv.iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn chars(s: &str) -> u32 {
        s.chars().count() as u32
    }

    #[test]
    fn an_adaptive_point_is_joined_to_its_naive_defense() {
        assert_eq!(
            naive_of("variant=noise 8.0 (repeats 3 + mean)").as_deref(),
            Some("variant=noise 8.0")
        );
        assert_eq!(
            naive_of("variant=delta 5 share 1.0 (rewrite),world.answers=one").as_deref(),
            Some("variant=delta 5 share 1.0,world.answers=one")
        );
        assert_eq!(naive_of("variant=noise 8.0"), None);
    }

    #[test]
    fn plot_units_are_short() {
        assert_eq!(fmt_si(5e7), "50M");
        assert_eq!(fmt_si(1000.0), "1k");
        assert_eq!(fmt_si(2500.0), "2.5k");
        assert_eq!(fmt_si(300.0), "300");
        assert_eq!(fmt_si(10000.0), "10k");
        assert_eq!(fmt_si(0.0), "0");
        assert_eq!(fmt_si(1.5e9), "1.5G");
        assert_eq!(fmt_si(12345.0), "12.3k");
        // Axis ticks: short units from 1000 up, else the decimals the step needs.
        assert_eq!(fmt_tick(5e7, 1e7, 5.5e7), "50M");
        assert_eq!(fmt_tick(0.2, 0.2, 1.08), "0.2");
        assert_eq!(fmt_tick(0.0, 0.2, 1.08), "0.0");
        assert_eq!(fmt_tick(0.05, 0.05, 0.35), "0.05");
        assert_eq!(fmt_tick(0.25, 0.025, 0.3), "0.250");
    }

    #[test]
    fn plot_nice_ticks_are_round_and_cover_the_range() {
        let (t, step) = nice_ticks(0.0, 5.5e7, 6, 1.0);
        assert_eq!(step, 1e7);
        assert_eq!(t.first(), Some(&0.0));
        assert_eq!(t.last(), Some(&5e7));
        let (t, step) = nice_ticks(0.0, 7.0, 9, 1.0);
        assert_eq!(step, 1.0, "days step by whole days");
        assert_eq!(t.len(), 8);
        let (_, step) = nice_ticks(0.0, 1.08, 8, 0.0);
        assert!((step - 0.2).abs() < 1e-12, "{step}");
    }

    fn gaps_ok(t: &[f64], lo: f64, hi: f64, gap: f64) -> bool {
        let span = (hi / lo).ln();
        t.windows(2)
            .all(|w| (w[1] / w[0]).ln() / span >= gap - 1e-12)
    }

    #[test]
    fn plot_log_ticks_include_the_smallest_budget_and_never_collide() {
        let (lo, hi) = (240.0, 12500.0);
        let t = log_ticks(&[300.0, 3000.0, 10000.0], lo, hi, 0.08);
        assert_eq!(t, vec![300.0, 3000.0, 10000.0]);
        // Budgets bunched at the top: the smallest and the largest stay, the ones that would
        // touch them go.
        let b = [300.0, 1000.0, 8000.0, 9000.0, 10000.0];
        let t = log_ticks(&b, lo, hi, 0.08);
        assert!(t.contains(&300.0) && t.contains(&10000.0), "{t:?}");
        assert!(!t.contains(&9000.0) && !t.contains(&8000.0), "{t:?}");
        assert!(gaps_ok(&t, lo, hi, 0.08), "{t:?}");
        // Many budgets: 1-2-5 decades between the smallest and the largest.
        let many: Vec<f64> = (1..=20).map(|i| 300.0 * i as f64).collect();
        let (lo, hi) = (240.0, 7500.0);
        let t = log_ticks(&many, lo, hi, 0.07);
        assert_eq!(t[0], 300.0);
        assert_eq!(*t.last().unwrap(), 6000.0);
        assert!(t.contains(&1000.0) && t.contains(&2000.0), "{t:?}");
        assert!(gaps_ok(&t, lo, hi, 0.07), "{t:?}");
        for gap in [0.01, 0.05, 0.1, 0.3, 0.9] {
            let t = log_ticks(&many, lo, hi, gap);
            assert_eq!(t[0], 300.0, "gap {gap}");
            assert!(gaps_ok(&t, lo, hi, gap), "gap {gap}: {t:?}");
        }
    }

    #[test]
    fn plot_long_labels_wrap_between_words_only() {
        let label = "naive per_account, limit_change(day=21 factor=2) with a rather long tail \
                     of words and an_extraordinarily_long_single_token_that_does_not_fit";
        let lines = wrap(label, 24, &chars);
        assert!(lines.len() > 3);
        let words: Vec<&str> = label.split_whitespace().collect();
        let back: Vec<&str> = lines.iter().flat_map(|l| l.split_whitespace()).collect();
        assert_eq!(back, words, "every word whole and in order");
        for l in &lines {
            assert!(
                chars(l) <= 24 || !l.contains(' '),
                "only a single word may overflow: {l:?}"
            );
        }
    }

    #[test]
    fn plot_labels_come_from_variants_and_grid_values() {
        // campaign_2026: 3 attackers x 3 detectors x 2 limit changes, minus settings never
        // acted on.
        let mut items = Vec::new();
        for a in ["naive", "adaptive", "ignore"] {
            for d in ["off", "per_account", "cross_account"] {
                for l in ["null", "day=21;factor=2"] {
                    items.push(pairs(&[
                        ("variant", &format!("{a} {d}")),
                        ("traffic.limit_change", l),
                    ]));
                }
            }
        }
        items.truncate(15);
        let base = vec![false; items.len()];
        let p = plan(&items, &base, MAX_PER_PANEL, true);
        let titles: Vec<&str> = p.panels.iter().map(|x| x.title.as_str()).collect();
        assert_eq!(titles, ["naive", "adaptive", "ignore"]);
        for panel in &p.panels {
            assert!(panel.members.len() <= MAX_PER_PANEL);
            for l in &panel.labels {
                assert!(!l.contains("variant=") && !l.contains("traffic."), "{l}");
                assert!(!l.contains(';'), "{l}");
            }
        }
        assert_eq!(p.panels[0].labels[0], "off, no limit_change");
        assert_eq!(p.panels[0].labels[1], "off, limit_change(day=21 factor=2)");
        // watermark_share: the watermark's constant parameters left out, the baseline named.
        let wm = |s: &str| format!("watermark(gamma=0.25;delta=5.0;key=42;share={s})");
        let items: Vec<Pairs> = ["none".to_string(), wm("0.25"), wm("0.5"), wm("1.0")]
            .iter()
            .map(|v| pairs(&[("api.defenses", v)]))
            .collect();
        let p = plan(&items, &[true, false, false, false], MAX_PER_PANEL, true);
        assert_eq!(
            p.panels[0].labels,
            [
                "no defenses",
                "watermark share=0.25",
                "watermark share=0.5",
                "watermark share=1.0"
            ]
        );
        // A key constant across the figure is named once in the note, not in every label.
        let det = "volume_per_day=500;min_entropy=0.35;reasoning_share=0.7;mmd=0.15;\
                   cluster_size=5;prada_w=0.5;sync_share=0.5";
        let items: Vec<Pairs> = (0..18)
            .map(|i| {
                pairs(&[
                    ("variant", &format!("attacker {i}")),
                    ("traffic.detectors", det),
                ])
            })
            .collect();
        let p = plan(&items, &[false; 18], MAX_PER_PANEL, true);
        assert_eq!(p.panels.len(), 3, "18 settings: three panels of six");
        assert!(p.panels.iter().all(|x| x.members.len() == 6));
        assert_eq!(p.panels[0].labels[0], "attacker 0");
        let note = p.note.unwrap();
        assert!(
            note.contains("detectors(volume_per_day=500 min_entropy=0.35"),
            "{note}"
        );
        assert!(note.contains("+5 more"), "{note}");
        // Keys shown by their last segment, numbers as key=value.
        let items: Vec<Pairs> = ["0", "5"]
            .iter()
            .map(|v| pairs(&[("api.logprobs", v)]))
            .collect();
        let p = plan(&items, &[false, false], MAX_PER_PANEL, true);
        assert_eq!(p.panels[0].labels, ["logprobs=0", "logprobs=5"]);
    }

    #[test]
    fn plot_colours_are_distinct_within_a_panel() {
        let looks: Vec<Look> = (0..MAX_PER_PANEL).map(|k| look(k, false)).collect();
        for i in 0..looks.len() {
            for j in 0..i {
                assert_ne!(looks[i].color, looks[j].color);
                assert_ne!(looks[i].marker, looks[j].marker);
                // Clearly different: far apart in RGB.
                let (a, b) = (looks[i].color, looks[j].color);
                let d = ((a.0 as f64 - b.0 as f64).powi(2)
                    + (a.1 as f64 - b.1 as f64).powi(2)
                    + (a.2 as f64 - b.2 as f64).powi(2))
                .sqrt();
                assert!(d > 60.0, "{a:?} vs {b:?}");
            }
            assert_ne!(looks[i].color, BLACK, "black is the baseline's");
        }
    }

    #[test]
    fn plot_pareto_labels_never_overlap() {
        // 19 points in one column, as compare_defenses has at utility 1.0.
        let at: Vec<(i32, i32)> = (0..19).map(|i| (900, 300 + i * 9)).collect();
        let sizes = vec![(180, 17); at.len()];
        let bounds = Rect {
            x: 80,
            y: 40,
            w: 1100,
            h: 800,
        };
        let c = place_labels(&at, &sizes, bounds);
        for i in 0..c.len() {
            let a = (c[i].0, c[i].1, sizes[i].0, sizes[i].1);
            assert!(a.0 >= bounds.x && a.1 >= bounds.y && a.1 + a.3 <= bounds.y + bounds.h);
            for j in 0..i {
                let b = (c[j].0, c[j].1, sizes[j].0, sizes[j].1);
                let overlap =
                    a.0 < b.0 + b.2 && b.0 < a.0 + a.2 && a.1 < b.1 + b.3 && b.1 < a.1 + a.3;
                assert!(!overlap, "labels {i} and {j} overlap");
            }
        }
    }

    /// The lowest inked row of `s` drawn at font size `size` in a PNG buffer.
    fn bottom_row(s: &str, size: u32) -> usize {
        let (w, h) = (200u32, 80u32);
        let mut buf = vec![255u8; (w * h * 3) as usize];
        {
            let root = BitMapBackend::with_buffer(&mut buf, (w, h)).into_drawing_area();
            text(&root, s, (10, 10), size, TOP_LEFT, BLACK).unwrap();
            root.present().unwrap();
        }
        (0..h as usize)
            .rev()
            .find(|&y| (0..w as usize).any(|x| buf[(y * w as usize + x) * 3] < 128))
            .unwrap()
    }

    #[test]
    fn png_text_sits_on_one_baseline() {
        register_font().unwrap();
        // A full stop and a digit both stand on the baseline: their lowest rows must agree
        // at every size the figures use (at odd sizes plotters put the stop a pixel high).
        for size in [TITLE, CAPTION, DESC, TICK, LEGEND, NOTE] {
            assert_eq!(
                bottom_row(".", size),
                bottom_row("1", size),
                "size {size}: '.' and '1' on different baselines"
            );
        }
        assert_ne!(
            bottom_row(".", 15),
            bottom_row("1", 15),
            "the odd-size effect itself"
        );
    }

    /// The text of every `<text>` element of an SVG.
    fn svg_texts(path: &Path) -> Vec<String> {
        let s = std::fs::read_to_string(path).unwrap();
        s.split("<text")
            .skip(1)
            .filter_map(|t| t.split_once('>').and_then(|(_, r)| r.split_once("</text>")))
            .map(|(t, _)| t.trim().to_string())
            .collect()
    }

    #[test]
    fn plot_sample_figures_read_cleanly() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("results/samples");
        let tmp = std::env::temp_dir().join(format!("distill-plot-test-{}", std::process::id()));
        // Quickstart: the smallest budget is a tick, and no raw keys.
        let q = tmp.join("quickstart");
        plot_dir(&root.join("quickstart"), Some(&q)).unwrap();
        let t = svg_texts(&q.join("parity.svg"));
        for tick in ["300", "3k", "10k"] {
            assert!(t.iter().any(|x| x == tick), "no tick {tick}: {t:?}");
        }
        assert!(t.iter().any(|x| x == "logprobs=0"), "{t:?}");
        assert!(!t.iter().any(|x| x.contains("api.")), "{t:?}");
        // campaign_2026: short units, three panels, no raw keys, nothing cut with an ellipsis.
        let c = tmp.join("campaign");
        plot_dir(&root.join("campaign_2026"), Some(&c)).unwrap();
        let t = svg_texts(&c.join("timeline.svg"));
        assert!(t.iter().any(|x| x == "50M"), "{t:?}");
        assert!(!t.iter().any(|x| x.contains("000000")), "{t:?}");
        for x in &t {
            assert!(!x.contains("traffic.") && !x.contains('…'), "{x}");
        }
        for panel in ["naive", "adaptive", "ignore"] {
            assert!(t.iter().any(|x| x == panel), "no panel {panel}");
        }
        std::fs::remove_dir_all(&tmp).ok();
    }
}
