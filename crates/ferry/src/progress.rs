//! Live progress of an extract, per file (`connector sync`, `connector check`, `bench`): rows, MB of CSV text,
//! MB/s and elapsed time. On a terminal each file gets an `indicatif` line that redraws in place (stderr, at most
//! 20 times a second: indicatif's draw target limits it); otherwise one plain line per file, once it is done, with
//! no escape codes — what the commands print on stdout does not change.
//!
//! The extract calls [`Progress::tick`] at the start of each file, every 1,024 rows and with the final counts; the
//! files come one after another, so a file is done when the next one starts or at [`Progress::finish`].

use std::io::{IsTerminal, Write};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};

/// How often a bar's message (MB/s) is recomputed; the row count is set on every tick.
const MESSAGE_EVERY: Duration = Duration::from_millis(100);

/// One file's figures as shown: `sales.csv  120000 rows  14.2 MB  35.5 MB/s  0.4s`.
pub fn file_line(name: &str, rows: u64, bytes: u64, elapsed: Duration) -> String {
    format!(
        "{name:<18} {rows:>9} rows {:>8.1} MB {} {:>6.1}s",
        bytes as f64 / 1e6,
        rate(bytes, elapsed),
        elapsed.as_secs_f64()
    )
}

/// `35.5 MB/s`; `- MB/s` before a millisecond has passed.
pub fn rate(bytes: u64, elapsed: Duration) -> String {
    if elapsed < Duration::from_millis(1) {
        return format!("{:>6} MB/s", "-");
    }
    format!("{:>6.1} MB/s", bytes as f64 / 1e6 / elapsed.as_secs_f64())
}

enum Mode {
    Bars(MultiProgress),
    Lines(Box<dyn Write + Send>),
}

struct Current {
    name: String,
    started: Instant,
    rows: u64,
    bytes: u64,
    bar: Option<ProgressBar>,
    message_at: Option<Instant>,
    /// Said at the end of the file's line (`uploaded ...`).
    note: Option<String>,
}

struct State {
    mode: Mode,
    current: Option<Current>,
    done: Vec<ProgressBar>,
}

/// The reporter: pass `&|f: &str, r: u64, b: u64| p.tick(f, r, b)` to the extract.
pub struct Progress {
    state: Mutex<State>,
}

impl Progress {
    /// Bars on stderr when it is a terminal, plain lines on stderr otherwise.
    pub fn stderr() -> Progress {
        if std::io::stderr().is_terminal() {
            Progress::bars(ProgressDrawTarget::stderr())
        } else {
            Progress::lines(Box::new(std::io::stderr()))
        }
    }

    /// Bars drawn to `target` (tests pass [`ProgressDrawTarget::hidden`]).
    pub fn bars(target: ProgressDrawTarget) -> Progress {
        Progress::with(Mode::Bars(MultiProgress::with_draw_target(target)))
    }

    /// One plain line per finished file, written to `out`.
    pub fn lines(out: Box<dyn Write + Send>) -> Progress {
        Progress::with(Mode::Lines(out))
    }

    fn with(mode: Mode) -> Progress {
        Progress { state: Mutex::new(State { mode, current: None, done: Vec::new() }) }
    }

    /// The extract's callback: `file` has `rows` rows and `bytes` bytes of CSV text so far.
    pub fn tick(&self, file: &str, rows: u64, bytes: u64) {
        let Ok(mut st) = self.state.lock() else { return };
        if st.current.as_ref().is_some_and(|c| c.name != file) {
            st.finish_current();
        }
        if st.current.is_none() {
            let bar = match &st.mode {
                Mode::Bars(multi) => {
                    let bar = multi.add(ProgressBar::new_spinner());
                    let style = ProgressStyle::with_template("{prefix:<18} {pos:>9} rows {msg} {elapsed_precise}")
                        .unwrap_or_else(|_| ProgressStyle::default_spinner());
                    bar.set_style(style);
                    bar.set_prefix(file.to_string());
                    Some(bar)
                }
                Mode::Lines(_) => None,
            };
            st.current = Some(Current {
                name: file.to_string(),
                started: Instant::now(),
                rows: 0,
                bytes: 0,
                bar,
                message_at: None,
                note: None,
            });
        }
        let Some(c) = st.current.as_mut() else { return };
        c.rows = rows;
        c.bytes = bytes;
        if let Some(bar) = &c.bar {
            bar.set_position(rows);
            let now = Instant::now();
            if c.message_at.is_none_or(|t| now.duration_since(t) >= MESSAGE_EVERY) {
                c.message_at = Some(now);
                bar.set_message(bar_message(bytes, now.duration_since(c.started)));
            }
        }
    }

    /// Print a line of the command's own output (stdout) without tearing a bar being drawn.
    pub fn println(&self, line: &str) {
        match self.state.lock() {
            Ok(st) => match &st.mode {
                Mode::Bars(multi) => multi.suspend(|| println!("{line}")),
                Mode::Lines(_) => println!("{line}"),
            },
            Err(_) => println!("{line}"),
        }
    }

    /// `sync` uploaded `file` (`NAME.csv.bz2`, `bytes` compressed) while the extract goes on: that file's line
    /// says so — its bar, or its plain line if not written yet, else one more plain line. The file being
    /// extracted stays open (this never closes the current line).
    pub fn uploaded(&self, file: &str, bytes: u64) {
        let Ok(mut st) = self.state.lock() else { return };
        let name = file.strip_suffix(".bz2").unwrap_or(file);
        let note = format!("uploaded ({:.1} MB bz2)", bytes as f64 / 1e6);
        if let Some(c) = st.current.as_mut().filter(|c| c.name == name) {
            c.note = Some(note);
            return;
        }
        let st = &mut *st;
        match &mut st.mode {
            Mode::Bars(_) => {
                if let Some(bar) = st.done.iter().find(|b| b.prefix() == name) {
                    bar.finish_with_message(format!("{}  {note}", bar.message()));
                }
            }
            Mode::Lines(out) => {
                let _ = writeln!(out, "  {name:<18} {note}");
                let _ = out.flush();
            }
        }
    }

    /// Close the last file (its bar stays on screen with the final figures; or its plain line is written).
    pub fn finish(&self) {
        if let Ok(mut st) = self.state.lock() {
            st.finish_current();
        }
    }

    /// The bars of the finished files, in order (for tests; empty when writing plain lines).
    pub fn finished_bars(&self) -> Vec<ProgressBar> {
        self.state.lock().map(|st| st.done.clone()).unwrap_or_default()
    }
}

fn bar_message(bytes: u64, elapsed: Duration) -> String {
    format!("{:>8.1} MB {}", bytes as f64 / 1e6, rate(bytes, elapsed))
}

impl State {
    fn finish_current(&mut self) {
        let Some(c) = self.current.take() else { return };
        let elapsed = c.started.elapsed();
        match (&mut self.mode, c.bar) {
            (_, Some(bar)) => {
                bar.set_position(c.rows);
                let msg = bar_message(c.bytes, elapsed);
                bar.finish_with_message(match &c.note {
                    Some(n) => format!("{msg}  {n}"),
                    None => msg,
                });
                self.done.push(bar);
            }
            (Mode::Lines(out), None) => {
                // a closed stderr must not stop the extract
                let line = file_line(&c.name, c.rows, c.bytes, elapsed);
                let _ = match &c.note {
                    Some(n) => writeln!(out, "  {line}  {n}"),
                    None => writeln!(out, "  {line}"),
                };
                let _ = out.flush();
            }
            (Mode::Bars(_), None) => {}
        }
    }
}

impl Drop for Progress {
    fn drop(&mut self) {
        self.finish();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    /// A `Write` the test can read back.
    #[derive(Clone, Default)]
    struct Shared(Arc<Mutex<Vec<u8>>>);
    impl Write for Shared {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn figures_of_a_file() {
        let line = file_line("sales.csv", 2048, 5_000_000, Duration::from_secs(2));
        assert!(line.starts_with("sales.csv "), "{line}");
        assert!(line.contains(" 2048 rows"), "{line}");
        assert!(line.contains("5.0 MB"), "{line}");
        assert!(line.contains("2.5 MB/s"), "{line}");
        assert!(line.contains("2.0s"), "{line}");
        assert!(rate(1, Duration::ZERO).contains("- MB/s"));
    }

    #[test]
    fn plain_lines_when_not_a_terminal() {
        let out = Shared::default();
        let p = Progress::lines(Box::new(out.clone()));
        p.tick("items.csv", 0, 0);
        p.tick("items.csv", 1024, 40_000);
        p.tick("items.csv", 1500, 60_000);
        p.tick("sales.csv", 0, 0);
        // items.csv is written when sales.csv starts; sales.csv at the end
        let first = String::from_utf8(out.0.lock().unwrap().clone()).unwrap();
        assert_eq!(first.lines().count(), 1, "{first}");
        p.tick("sales.csv", 3000, 120_000);
        drop(p);
        let text = String::from_utf8(out.0.lock().unwrap().clone()).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 2, "{text}");
        assert!(lines[0].contains("items.csv") && lines[0].contains(" 1500 rows") && lines[0].contains("0.1 MB"));
        assert!(lines[1].contains("sales.csv") && lines[1].contains(" 3000 rows") && lines[1].contains("0.1 MB"));
        assert!(lines.iter().all(|l| l.contains("MB/s") && l.ends_with('s')), "{text}");
        assert!(!text.contains('\u{1b}'), "no escape codes: {text:?}");
        assert!(Progress::lines(Box::new(Shared::default())).finished_bars().is_empty());
    }

    #[test]
    fn an_upload_during_the_extract_is_told_on_its_files_line_and_leaves_the_current_one_open() {
        let out = Shared::default();
        let p = Progress::lines(Box::new(out.clone()));
        p.tick("items.csv", 10, 1_000);
        p.tick("sales.csv", 0, 0);
        // items.csv's line is out; its upload comes while sales.csv is extracted
        p.uploaded("items.csv.bz2", 300_000);
        p.tick("sales.csv", 20, 2_000);
        // sales.csv is uploaded before its line is written: the note goes on that line
        p.uploaded("sales.csv.bz2", 500_000);
        p.tick("sales.csv", 30, 3_000);
        p.finish();
        let text = String::from_utf8(out.0.lock().unwrap().clone()).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 3, "{text}");
        assert!(lines[0].contains("items.csv") && !lines[0].contains("uploaded"), "{text}");
        assert!(lines[1].contains("items.csv") && lines[1].contains("uploaded (0.3 MB bz2)"), "{text}");
        assert!(
            lines[2].contains("sales.csv") && lines[2].contains(" 30 rows"),
            "the current file was not closed early: {text}"
        );
        assert!(lines[2].ends_with("uploaded (0.5 MB bz2)"), "{text}");

        let p = Progress::bars(ProgressDrawTarget::hidden());
        p.tick("items.csv", 5, 500);
        p.tick("sales.csv", 1, 100);
        p.uploaded("items.csv.bz2", 1_000_000);
        p.tick("sales.csv", 2, 200);
        p.finish();
        let bars = p.finished_bars();
        assert_eq!(bars.len(), 2);
        assert!(bars[0].message().ends_with("uploaded (1.0 MB bz2)"), "{}", bars[0].message());
        assert_eq!(bars[1].position(), 2, "sales.csv kept counting after the upload of items.csv");
    }

    #[test]
    fn bars_count_rows_and_rate() {
        let p = Progress::bars(ProgressDrawTarget::hidden());
        p.tick("items.csv", 0, 0);
        std::thread::sleep(Duration::from_millis(20));
        p.tick("items.csv", 2048, 4_000_000);
        p.tick("stock.csv", 0, 0);
        p.tick("stock.csv", 10, 500);
        p.finish();
        let bars = p.finished_bars();
        assert_eq!(bars.len(), 2);
        assert!(bars.iter().all(ProgressBar::is_finished));
        assert_eq!((bars[0].prefix(), bars[0].position()), ("items.csv".to_string(), 2048));
        assert_eq!((bars[1].prefix(), bars[1].position()), ("stock.csv".to_string(), 10));
        // 4 MB in at least 20 ms: a rate was computed, at most 200 MB/s
        let msg = bars[0].message();
        assert!(msg.contains("4.0 MB"), "{msg}");
        let mbs: f64 = msg.split("MB/s").next().unwrap().split_whitespace().last().unwrap().parse().unwrap();
        assert!(mbs > 0.0 && mbs <= 200.0, "{msg}");
        // finishing twice (and the drop) add nothing
        p.finish();
        assert_eq!(p.finished_bars().len(), 2);
    }
}
