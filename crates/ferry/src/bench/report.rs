//! The bench's output: the final table (ours beside each tool) and the number formats of every line.

use std::path::Path;

use super::measure::{RssSample, Timed};
use super::tools::Theirs;

/// One row of the final table: our figure and one tool's, on the same data (the notes say when not).
pub(super) struct Line {
    stage: String,
    data: String,
    ours: Option<Timed>,
    rss: Option<RssSample>,
    tool: String,
    theirs: Theirs,
    note: String,
}

impl Line {
    pub(super) fn ours(stage: &str, data: String, t: Timed, rss: Option<RssSample>, note: String) -> Line {
        Line { stage: stage.into(), data, ours: Some(t), rss, tool: "-".into(), theirs: Theirs::NoTool, note }
    }

    pub(super) fn tool(tool: &str, theirs: Theirs) -> Line {
        Line {
            stage: String::new(),
            data: String::new(),
            ours: None,
            rss: None,
            tool: tool.into(),
            theirs,
            note: String::new(),
        }
    }

    pub(super) fn with_tool(self, tool: &str, theirs: Theirs) -> Line {
        Line { tool: tool.into(), theirs, ..self }
    }

    /// Puts our figure on a tool's line.
    pub(super) fn set_ours(&mut self, stage: &str, data: String, t: Timed, rss: Option<RssSample>, note: String) {
        (self.stage, self.data, self.ours, self.rss, self.note) = (stage.into(), data, Some(t), rss, note);
    }
}

pub(super) fn print_table(lines: &[Line]) {
    const N: usize = 11;
    const HEAD: [&str; N] = [
        "stage",
        "data",
        "ours s",
        "ours CPU s",
        "ours MB/s",
        "peak RSS (+stage)",
        "tool",
        "tool s",
        "tool CPU s",
        "tool MB/s",
        "notes",
    ];
    const RIGHT: [bool; N] = [false, false, true, true, true, true, false, true, true, true, false];
    let figures = |t: Option<&Timed>| match t {
        Some(t) => [secs(t.secs), t.cpu.map(secs).unwrap_or_default(), format!("{:.1}", t.mb_s())],
        None => Default::default(),
    };
    let rows: Vec<[String; N]> = lines
        .iter()
        .map(|l| {
            let [os, oc, or] = figures(l.ours.as_ref());
            let [ts, tc, tr] = match &l.theirs {
                Theirs::Ran(t) => figures(Some(t)),
                Theirs::NoTool => Default::default(),
                other => [other.short(), String::new(), String::new()],
            };
            let rss = l.rss.map(|r| show(Some(r))).unwrap_or_default();
            [l.stage.clone(), l.data.clone(), os, oc, or, rss, l.tool.clone(), ts, tc, tr, l.note.clone()]
        })
        .collect();
    let mut width = HEAD.map(str::len);
    for r in &rows {
        for (w, c) in width.iter_mut().zip(r) {
            *w = (*w).max(c.chars().count());
        }
    }
    let fmt = |cells: [&str; N]| {
        let parts: Vec<String> = cells
            .iter()
            .zip(width)
            .zip(RIGHT)
            .map(|((c, w), right)| if right { format!("{c:>w$}") } else { format!("{c:<w$}") })
            .collect();
        parts.join(" | ").trim_end().to_string()
    };
    println!("{}", fmt(HEAD));
    println!("{}", width.map(|w| "-".repeat(w)).join("-|-"));
    for r in &rows {
        println!("{}", fmt(r.each_ref().map(String::as_str)));
    }
}

/// `123 MiB (+45)`: the peak, and how far it rose over the stage's starting RSS.
pub(super) fn show(s: Option<RssSample>) -> String {
    match s {
        None => "?".into(),
        Some(RssSample { peak, base: None }) => format!("{} MiB", peak / 1024),
        Some(RssSample { peak, base: Some(b) }) => format!("{} MiB (+{})", peak / 1024, peak.saturating_sub(b) / 1024),
    }
}

/// Seconds with three decimals below 1 s, two above.
pub(super) fn secs(s: f64) -> String {
    if s < 1.0 { format!("{s:.3}") } else { format!("{s:.2}") }
}

pub(super) fn file_name(p: &Path) -> String {
    p.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default()
}

pub(super) fn mb(bytes: u64) -> String {
    format!("{:.1} MB", bytes as f64 / 1e6)
}

pub(super) fn ratio(plain: u64, compressed: u64) -> f64 {
    plain as f64 / compressed.max(1) as f64
}

pub(super) fn per_sec(n: u64, secs: f64) -> u64 {
    (n as f64 / secs.max(1e-9)) as u64
}

/// `1234567` -> `1,234,567`.
pub(super) fn int(n: u64) -> String {
    ferry_connector::check::thousands(n)
}

/// A plain table: a header, a rule, then the rows; columns marked in `right` are right-aligned.
pub(super) fn print_grid(head: &[&str], right: &[bool], rows: &[Vec<String>]) {
    let mut width: Vec<usize> = head.iter().map(|h| h.chars().count()).collect();
    for r in rows {
        for (w, c) in width.iter_mut().zip(r) {
            *w = (*w).max(c.chars().count());
        }
    }
    let fmt = |cells: &mut dyn Iterator<Item = &str>| {
        let parts: Vec<String> = cells
            .zip(&width)
            .enumerate()
            .map(
                |(i, (c, &w))| {
                    if right.get(i).copied().unwrap_or(false) { format!("{c:>w$}") } else { format!("{c:<w$}") }
                },
            )
            .collect();
        parts.join(" | ").trim_end().to_string()
    };
    println!("{}", fmt(&mut head.iter().copied()));
    println!("{}", width.iter().map(|&w| "-".repeat(w)).collect::<Vec<_>>().join("-|-"));
    for r in rows {
        println!("{}", fmt(&mut r.iter().map(String::as_str)));
    }
}
