//! How `plugworker dev` and `plugworker results` show result documents: a table a person can
//! read at a glance on a terminal, or the documents themselves as JSON lines when the output
//! goes to a program (a pipe, a file) or `--format json` asks for them.
//!
//! The table streams: each result is one row as it arrives, so the column widths are fixed
//! up front from the terminal's width instead of measured over every row. Every cell is
//! cut to its column (by display width, so CJK text lines up), and the summary column
//! takes whatever the terminal has left. A pipeline job's row names its pipeline and sums
//! up each step (`label=distracted-boyfriend text="WHEN YOU…" lang=en`).
//!
//! On a terminal, `plugworker dev` also keeps one progress line under the rows (jobs done
//! of the total, ok, failed, time elapsed), redrawn in place and cleared before each row,
//! so the rows stay together and the last line says where the run is.

use plugworker_jobs::{JobResult, Status, StepReport};
use serde::de::{Deserialize, Deserializer, MapAccess, Visitor};
use serde_json::Value;
use serde_json::value::RawValue;
use std::collections::BTreeMap;
use std::io::{self, Write};
use std::time::Duration;
use unicode_width::{UnicodeWidthChar, UnicodeWidthStr};

/// `--format`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    /// A table on a terminal, JSON lines otherwise.
    Auto,
    /// Always the table.
    Table,
    /// Always one JSON result document per line (the results queue's own format).
    Json,
}

impl Format {
    /// Whether this format, on this output, is the table.
    pub fn is_table(self, output_is_terminal: bool) -> bool {
        match self {
            Format::Auto => output_is_terminal,
            Format::Table => true,
            Format::Json => false,
        }
    }
}

/// Width used when the terminal does not say (`COLUMNS` unset, not a terminal).
pub const DEFAULT_WIDTH: usize = 100;
/// Narrowest table drawn; a narrower terminal wraps lines rather than lose a column.
const MIN_WIDTH: usize = 40;
/// Widest the job and algorithm columns get (`language_detection` fits).
const NAME: usize = 18;
const STATUS: usize = 6;
const MILLIS: usize = 9;
/// Two spaces between each of the five columns.
const GAPS: usize = 4 * 2;

/// Column widths for a table `width` columns wide: status and time fixed, job and
/// algorithm a quarter each of the rest (at most [`NAME`]), the summary whatever remains.
#[derive(Clone, Copy, Debug)]
struct Columns {
    name: usize,
    summary: usize,
}

impl Columns {
    fn for_width(width: usize) -> Self {
        let rest = width.max(MIN_WIDTH) - STATUS - MILLIS - GAPS;
        let name = (rest / 4).min(NAME);
        Self {
            name,
            summary: rest - 2 * name,
        }
    }
}

/// The terminal's width in columns: `COLUMNS` when set to a number, else what the terminal
/// on standard output reports, else [`DEFAULT_WIDTH`].
pub fn terminal_width() -> usize {
    if let Some(columns) = std::env::var("COLUMNS")
        .ok()
        .and_then(|c| c.trim().parse::<usize>().ok())
        .filter(|&c| c > 0)
    {
        return columns;
    }
    // SAFETY: TIOCGWINSZ fills a `winsize` we own; on failure it is left zeroed.
    let mut size: libc::winsize = unsafe { std::mem::zeroed() };
    let ok = unsafe { libc::ioctl(libc::STDOUT_FILENO, libc::TIOCGWINSZ, &mut size) } == 0;
    if ok && size.ws_col > 0 {
        size.ws_col as usize
    } else {
        DEFAULT_WIDTH
    }
}

/// Counts over the results shown, for the closing summary.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Tally {
    pub ok: usize,
    pub error: usize,
    pub unreadable: usize,
    total_ms: Vec<f64>,
}

impl Tally {
    fn add(&mut self, result: &JobResult) {
        match result.status {
            Status::Ok => self.ok += 1,
            Status::Error => self.error += 1,
        }
        self.total_ms.push(result.timings.total_ms);
    }

    /// One line: counts, then median and slowest time when any result carried one.
    pub fn line(&self) -> String {
        let shown = self.ok + self.error + self.unreadable;
        let mut line = format!(
            "{shown} result{}: {} ok, {} error",
            if shown == 1 { "" } else { "s" },
            self.ok,
            self.error
        );
        if self.unreadable > 0 {
            line.push_str(&format!(", {} not a result document", self.unreadable));
        }
        let mut times = self.total_ms.clone();
        if !times.is_empty() {
            times.sort_by(f64::total_cmp);
            let median = times[(times.len() - 1) / 2];
            let slowest = times[times.len() - 1];
            line.push_str(&format!(
                "; total ms: median {}, slowest {}",
                number(median),
                number(slowest)
            ));
        }
        line
    }
}

/// Writes results in the chosen format and keeps the tally.
pub struct ResultWriter<W: Write> {
    out: W,
    table: Option<(usize, Columns)>,
    header_written: bool,
    tally: Tally,
    progress: Option<Progress>,
}

/// The live progress line: `total` jobs expected, drawn `width` columns at most.
#[derive(Clone, Copy, Debug)]
struct Progress {
    total: usize,
    width: usize,
    elapsed: Duration,
    /// Whether the line is on screen now (the cursor is at its end).
    drawn: bool,
}

/// Moves to the start of the line and erases it (VT100, which every terminal speaks).
const ERASE_LINE: &str = "\r\x1b[2K";

/// `12.3s` under a minute, `4m05s` after.
fn elapsed_text(elapsed: Duration) -> String {
    let seconds = elapsed.as_secs_f64();
    if seconds < 60.0 {
        format!("{seconds:.1}s")
    } else {
        let whole = elapsed.as_secs();
        format!("{}m{:02}s", whole / 60, whole % 60)
    }
}

impl<W: Write> ResultWriter<W> {
    /// `table_width`: `Some(columns)` draws the table that wide, `None` writes JSON lines.
    pub fn new(out: W, table_width: Option<usize>) -> Self {
        Self {
            out,
            table: table_width.map(|w| (w.max(MIN_WIDTH), Columns::for_width(w))),
            header_written: false,
            tally: Tally::default(),
            progress: None,
        }
    }

    /// Keeps a progress line under the results (for a terminal `width` columns wide):
    /// `total` jobs expected.
    pub fn with_progress(mut self, total: usize, width: usize) -> Self {
        self.progress = Some(Progress {
            total,
            // One column short of the width: a line that fills it makes some terminals
            // wrap, and the erase would then clear only the wrapped part.
            width: width.max(MIN_WIDTH) - 1,
            elapsed: Duration::ZERO,
            drawn: false,
        });
        self
    }

    /// The progress line's text now.
    pub fn progress_line(&self) -> Option<String> {
        let progress = self.progress?;
        let done = self.tally.ok + self.tally.error + self.tally.unreadable;
        let line = format!(
            "{done}/{} done · {} ok · {} failed · {}",
            progress.total,
            self.tally.ok,
            self.tally.error + self.tally.unreadable,
            elapsed_text(progress.elapsed)
        );
        Some(fit(&line, progress.width))
    }

    /// Redraws the progress line with the time elapsed since the start.
    pub fn tick(&mut self, elapsed: Duration) -> io::Result<()> {
        if let Some(progress) = &mut self.progress {
            progress.elapsed = elapsed;
            self.draw_progress()?;
        }
        Ok(())
    }

    fn draw_progress(&mut self) -> io::Result<()> {
        let Some(line) = self.progress_line() else {
            return Ok(());
        };
        write!(self.out, "{ERASE_LINE}{line}")?;
        if let Some(progress) = &mut self.progress {
            progress.drawn = true;
        }
        self.out.flush()
    }

    /// Erases the progress line, so that what comes next starts a clean line.
    fn erase_progress(&mut self) -> io::Result<()> {
        if let Some(progress) = &mut self.progress
            && progress.drawn
        {
            progress.drawn = false;
            write!(self.out, "{ERASE_LINE}")?;
        }
        Ok(())
    }

    /// One result document.
    pub fn result(&mut self, result: &JobResult) -> io::Result<()> {
        self.tally.add(result);
        self.erase_progress()?;
        match self.table {
            None => writeln!(self.out, "{}", serde_json::to_string(result)?)?,
            Some((_, columns)) => self.row(columns, &Row::of(result, columns.summary))?,
        }
        if self.progress.is_some() {
            return self.draw_progress();
        }
        self.out.flush()
    }

    /// A message body as it came off the results queue: unchanged in JSON mode; in the
    /// table, parsed as a result document or shown as what it is.
    pub fn body(&mut self, body: &str) -> io::Result<()> {
        match (self.table, serde_json::from_str::<JobResult>(body)) {
            (Some(_), Ok(result)) => return self.result(&result),
            (None, Ok(result)) => {
                self.tally.add(&result);
                writeln!(self.out, "{body}")?;
            }
            (None, Err(_)) => {
                self.tally.unreadable += 1;
                writeln!(self.out, "{body}")?;
            }
            (Some((_, columns)), Err(error)) => {
                self.tally.unreadable += 1;
                let row = Row {
                    job: "?".into(),
                    algorithm: String::new(),
                    status: "?".into(),
                    millis: String::new(),
                    summary: format!("not a result document ({error}): {}", one_line(body)),
                };
                self.row(columns, &row)?;
            }
        }
        self.out.flush()
    }

    /// The closing summary (table only: JSON lines stay pure documents), and the tally.
    pub fn finish(mut self) -> io::Result<Tally> {
        // The summary says what the progress line said, and dev's last line how long.
        self.erase_progress()?;
        if let Some((width, _)) = self.table
            && self.header_written
        {
            writeln!(self.out, "{}", "─".repeat(width))?;
            writeln!(self.out, "{}", fit(&self.tally.line(), width))?;
            self.out.flush()?;
        }
        Ok(self.tally)
    }

    fn row(&mut self, columns: Columns, row: &Row) -> io::Result<()> {
        if !self.header_written {
            self.header_written = true;
            let header = Row {
                job: "JOB".into(),
                algorithm: "ALGORITHM".into(),
                status: "STATUS".into(),
                millis: "MS".into(),
                summary: "RESULT / ERROR".into(),
            };
            writeln!(self.out, "{}", header.render(columns))?;
        }
        writeln!(self.out, "{}", row.render(columns))
    }
}

/// One table row's cells, before fitting.
struct Row {
    job: String,
    algorithm: String,
    status: String,
    millis: String,
    summary: String,
}

impl Row {
    /// `width`: the summary column's, which a pipeline's steps share.
    fn of(result: &JobResult, width: usize) -> Self {
        let job = result
            .job_id
            .clone()
            .unwrap_or_else(|| format!("({})", result.message_id));
        let summary = match (&result.error, &result.result, &result.steps) {
            (error, _, Some(steps)) if !steps.is_empty() => {
                let line = summarize_steps(result.result.as_deref(), steps, width);
                match error {
                    Some(error) => format!("{line} · {}: {}", error.code, one_line(&error.message)),
                    None => line,
                }
            }
            (Some(error), _, _) => format!("{}: {}", error.code, one_line(&error.message)),
            (None, Some(document), _) => summarize(document.get()),
            (None, None, _) => String::new(),
        };
        // A pipeline job names its pipeline where others name their algorithm.
        let algorithm = match (&result.algorithm, &result.pipeline) {
            (Some(algorithm), _) => algorithm.clone(),
            (None, Some(pipeline)) => pipeline.name.clone(),
            (None, None) => String::new(),
        };
        Row {
            job,
            algorithm,
            status: match result.status {
                Status::Ok => "ok".into(),
                Status::Error => "error".into(),
            },
            millis: number(result.timings.total_ms),
            summary,
        }
    }

    fn render(&self, columns: Columns) -> String {
        let name = columns.name;
        let line = format!(
            "{}  {}  {}  {}  {}",
            pad(&fit(&self.job, name), name),
            pad(&fit(&self.algorithm, name), name),
            pad(&fit(&self.status, STATUS), STATUS),
            pad_left(&fit(&self.millis, MILLIS), MILLIS),
            fit(&self.summary, columns.summary),
        );
        line.trim_end().to_string()
    }
}

/// A result document in one line: its fields in the document's own order, scalars as
/// `name=value`, lists and objects by size (their detail is in the JSON).
pub fn summarize(document: &str) -> String {
    match serde_json::from_str::<Ordered>(document) {
        Ok(Ordered(fields)) => fields
            .iter()
            .map(|(name, value)| format!("{name}={}", scalar(value)))
            .collect::<Vec<_>>()
            .join(" "),
        Err(_) => match serde_json::from_str::<Value>(document) {
            Ok(value) => scalar(&value),
            Err(_) => one_line(document),
        },
    }
}

/// A pipeline job's steps in one line no wider than `width` (when it can be): each step as
/// `name=` and its output's first field (the template, the text, the language: what the
/// algorithm's output leads with), `name=✗ code` for a step that failed (an optional one
/// included). Steps come in the result's order (the pipeline's), then any others by start.
/// Long values are cut, the longest first, so every step stays on the line.
fn summarize_steps(
    document: Option<&RawValue>,
    steps: &BTreeMap<String, StepReport>,
    width: usize,
) -> String {
    let outputs = document
        .and_then(|d| serde_json::from_str::<Ordered<Box<RawValue>>>(d.get()).ok())
        .map(|Ordered(fields)| fields)
        .unwrap_or_default();
    let mut names: Vec<&str> = outputs.iter().map(|(name, _)| name.as_str()).collect();
    let mut rest: Vec<(&String, &StepReport)> = steps
        .iter()
        .filter(|(name, _)| !names.contains(&name.as_str()))
        .collect();
    rest.sort_by(|a, b| a.1.timings.started_ms.total_cmp(&b.1.timings.started_ms));
    names.extend(rest.iter().map(|(name, _)| name.as_str()));

    // (label, value, quoted): the label is kept whole, the value may be cut.
    let cells: Vec<(String, String, bool)> = names
        .iter()
        .map(|&name| {
            let report = steps.get(name);
            if let Some(error) = report.and_then(|r| r.error.as_ref()) {
                // The code is what tells failures apart: kept whole, like the label.
                return (format!("{name}=✗ {}", error.code), String::new(), false);
            }
            let output = outputs
                .iter()
                .find(|(n, _)| n == name)
                .map(|(_, v)| v.get())
                .or_else(|| report.and_then(|r| r.result.as_deref()).map(RawValue::get));
            // An object's first field in the output's own order; any other value itself.
            let lead = output.and_then(|text| match serde_json::from_str::<Ordered>(text) {
                Ok(Ordered(fields)) => fields.into_iter().next().map(|(_, v)| v),
                Err(_) => serde_json::from_str::<Value>(text).ok(),
            });
            match lead {
                None | Some(Value::Null) => (format!("{name}="), "✗".into(), false),
                Some(Value::String(text)) => {
                    let text = one_line(&text);
                    let quoted = text.is_empty() || text.contains(' ');
                    (format!("{name}="), text, quoted)
                }
                Some(value) => (format!("{name}="), scalar(&value), false),
            }
        })
        .collect();

    // What the values may take: the width less the labels, quotes and separators, shared
    // out so that short values keep their length and long ones split what is left.
    let fixed: usize = cells
        .iter()
        .map(|(label, _, quoted)| UnicodeWidthStr::width(label.as_str()) + 2 * usize::from(*quoted))
        .sum::<usize>()
        + cells.len().saturating_sub(1);
    let mut left = width.saturating_sub(fixed);
    let mut order: Vec<usize> = (0..cells.len()).collect();
    order.sort_by_key(|&i| UnicodeWidthStr::width(cells[i].1.as_str()));
    let mut budget = vec![0; cells.len()];
    for (done, &i) in order.iter().enumerate() {
        let share = left / (cells.len() - done);
        budget[i] = UnicodeWidthStr::width(cells[i].1.as_str()).min(share.max(2));
        left = left.saturating_sub(budget[i]);
    }
    cells
        .iter()
        .zip(budget)
        .map(|((label, value, quoted), room)| {
            let value = fit(value, room);
            if *quoted {
                format!("{label}\"{value}\"")
            } else {
                format!("{label}{value}")
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}

fn scalar(value: &Value) -> String {
    match value {
        Value::String(text) => {
            let text = one_line(text);
            if text.is_empty() || text.contains(' ') {
                format!("\"{text}\"")
            } else {
                text
            }
        }
        Value::Number(n) => n
            .as_f64()
            .filter(|_| n.is_f64())
            .map_or(n.to_string(), number),
        Value::Bool(b) => b.to_string(),
        Value::Null => "null".into(),
        Value::Array(items) => format!("[{} items]", items.len()),
        Value::Object(fields) => format!("{{{} fields}}", fields.len()),
    }
}

/// Lines joined with " / ", runs of other white space as one space.
fn one_line(text: &str) -> String {
    text.lines()
        .map(|line| line.split_whitespace().collect::<Vec<_>>().join(" "))
        .filter(|line| !line.is_empty())
        .collect::<Vec<_>>()
        .join(" / ")
}

/// A float with at most three decimals and no trailing zeros.
fn number(value: f64) -> String {
    let text = format!("{value:.3}");
    let text = text.trim_end_matches('0').trim_end_matches('.');
    if text.is_empty() || text == "-" {
        "0".into()
    } else {
        text.into()
    }
}

/// Cut to `width` display columns, marking the cut with `…`.
fn fit(text: &str, width: usize) -> String {
    if UnicodeWidthStr::width(text) <= width {
        return text.to_string();
    }
    let mut out = String::new();
    let mut used = 0;
    for c in text.chars() {
        let w = c.width().unwrap_or(0);
        if used + w + 1 > width {
            break;
        }
        out.push(c);
        used += w;
    }
    out.push('…');
    out
}

fn pad(text: &str, width: usize) -> String {
    let fill = width.saturating_sub(UnicodeWidthStr::width(text));
    format!("{text}{}", " ".repeat(fill))
}

fn pad_left(text: &str, width: usize) -> String {
    let fill = width.saturating_sub(UnicodeWidthStr::width(text));
    format!("{}{text}", " ".repeat(fill))
}

/// A JSON object's fields in the order the document gives them (serde_json's `Value`
/// sorts them, which would put `confidence` before `language`).
struct Ordered<V = Value>(Vec<(String, V)>);

impl<'de, V: Deserialize<'de>> Deserialize<'de> for Ordered<V> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Fields<V>(std::marker::PhantomData<V>);
        impl<'de, V: Deserialize<'de>> Visitor<'de> for Fields<V> {
            type Value = Ordered<V>;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Ordered<V>, A::Error> {
                let mut fields = Vec::new();
                while let Some(entry) = map.next_entry::<String, V>()? {
                    fields.push(entry);
                }
                Ok(Ordered(fields))
            }
        }
        deserializer.deserialize_map(Fields(std::marker::PhantomData))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use plugworker_jobs::{ErrorClass, ErrorInfo, PipelineInfo, StepTimings, Timings};

    fn ok(id: &str, algorithm: &str, document: &str, ms: f64) -> JobResult {
        JobResult {
            job_id: Some(id.into()),
            message_id: "m-1".into(),
            algorithm: Some(algorithm.into()),
            status: Status::Ok,
            result: Some(RawValue::from_string(document.into()).unwrap()),
            error: None,
            runner: None,
            algorithm_version: None,
            trace_id: None,
            attempt: 1,
            timings: Timings {
                total_ms: ms,
                ..Timings::default()
            },
            pipeline: None,
            steps: None,
        }
    }

    fn failed(id: Option<&str>, code: &str, message: &str) -> JobResult {
        JobResult {
            job_id: id.map(Into::into),
            status: Status::Error,
            result: None,
            error: Some(ErrorInfo {
                code: code.into(),
                message: message.into(),
                class: ErrorClass::Permanent,
                step: None,
            }),
            ..ok("x", "language_detection", "{}", 2.0)
        }
    }

    fn table(width: usize, results: &[JobResult]) -> (String, Tally) {
        let mut out = Vec::new();
        let mut writer = ResultWriter::new(&mut out, Some(width));
        for result in results {
            writer.result(result).unwrap();
        }
        let tally = writer.finish().unwrap();
        (String::from_utf8(out).unwrap(), tally)
    }

    #[test]
    fn a_table_row_per_result_then_a_summary_within_the_terminal_width() {
        let results = [
            ok(
                "english",
                "language_detection",
                r#"{"language":"en","iso639_3":"eng","name":"English","confidence":0.9912345,"reliable":true}"#,
                3.25,
            ),
            ok(
                "meme-ocr",
                "ocr",
                r#"{"text":"WHEN THE JOB\nFINALLY REACHES THE\nRUNNER","lines":[1,2,3],"engine":"ppocr"}"#,
                241.0,
            ),
            failed(
                Some("wrong-type"),
                "invalid_payload",
                "/text: 42 is not of type \"string\"\nsecond line",
            ),
        ];
        let (text, tally) = table(100, &results);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(
            lines.len(),
            1 + 3 + 2,
            "header, rows, rule and summary:\n{text}"
        );
        assert!(lines[0].starts_with("JOB") && lines[0].contains("RESULT / ERROR"));
        for line in &lines {
            assert!(
                UnicodeWidthStr::width(*line) <= 100,
                "wider than 100: {line:?}"
            );
        }
        assert!(lines[1].starts_with("english "), "{}", lines[1]);
        assert!(
            lines[1].contains("language=en iso639_3=eng name=English"),
            "document order: {}",
            lines[1]
        );
        assert!(lines[1].contains(" 3.25 "), "ms: {}", lines[1]);
        assert!(
            lines[2].contains("text=\"WHEN THE JOB / FINALLY"),
            "lines joined: {}",
            lines[2]
        );
        assert!(lines[3].contains("error") && lines[3].contains("invalid_payload: /text: 42"));
        assert!(!lines[3].contains('\n'));
        assert_eq!((tally.ok, tally.error), (2, 1));
        assert_eq!(
            lines[5],
            "3 results: 2 ok, 1 error; total ms: median 3.25, slowest 241"
        );
    }

    #[test]
    fn long_cells_are_cut_and_marked_and_wide_characters_count_double() {
        let long = "x".repeat(500);
        let results = [
            ok(
                &"j".repeat(40),
                "language_detection",
                &format!(r#"{{"text":"{long}"}}"#),
                1.0,
            ),
            ok(
                "日本語のジョブ識別子です長い",
                "language_detection",
                r#"{"name":"Japanese"}"#,
                1.0,
            ),
        ];
        for width in [40, 60, 100, 160] {
            let (text, _) = table(width, &results);
            for line in text.lines() {
                assert!(
                    UnicodeWidthStr::width(line) <= width,
                    "wider than {width}: {line:?}"
                );
            }
            let row = text.lines().nth(1).unwrap();
            assert!(row.ends_with('…'), "cut summary is marked: {row}");
            let name = Columns::for_width(width).name;
            assert!(
                row.starts_with(&format!("{}…", "j".repeat(name - 1))),
                "{row}"
            );
            // The Japanese id is cut to the column by display width, and the next column
            // starts where it does on the other rows.
            let japanese = text.lines().nth(2).unwrap();
            let column = |line: &str| {
                let at = line.find("  ok  ").expect("a status column");
                UnicodeWidthStr::width(&line[..at])
            };
            assert_eq!(column(row), column(japanese), "aligned:\n{row}\n{japanese}");
        }
        // A terminal narrower than the table's floor still gets every column.
        let (text, _) = table(20, &results);
        let row = text.lines().nth(1).unwrap();
        assert!(row.contains("ok") && row.contains("text="), "{row}");
    }

    #[test]
    fn json_lines_are_the_documents_themselves_with_no_summary() {
        let results = [
            ok("a", "echo", r#"{"echo":1}"#, 1.0),
            failed(None, "no_runner", "none"),
        ];
        let mut out = Vec::new();
        let mut writer = ResultWriter::new(&mut out, None);
        for result in &results {
            writer.result(result).unwrap();
        }
        writer.body("not json").unwrap();
        let tally = writer.finish().unwrap();
        let text = String::from_utf8(out).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 3);
        assert_eq!(lines[0], serde_json::to_string(&results[0]).unwrap());
        assert_eq!(lines[2], "not json", "bodies pass through unchanged");
        assert_eq!((tally.ok, tally.error, tally.unreadable), (1, 1, 1));
    }

    #[test]
    fn queue_bodies_in_the_table_are_parsed_or_named_for_what_they_are() {
        let mut out = Vec::new();
        let mut writer = ResultWriter::new(&mut out, Some(90));
        writer
            .body(&serde_json::to_string(&ok("a", "echo", r#"{"echo":"hi"}"#, 1.5)).unwrap())
            .unwrap();
        writer.body("{\"not\": \"a result\"}").unwrap();
        let tally = writer.finish().unwrap();
        let text = String::from_utf8(out).unwrap();
        assert!(text.contains("echo=hi"), "{text}");
        assert!(text.contains("not a result document"), "{text}");
        assert_eq!(tally.unreadable, 1);
        assert!(text.ends_with("2 results: 1 ok, 0 error, 1 not a result document; total ms: median 1.5, slowest 1.5\n"), "{text}");
    }

    fn step(
        algorithm: &str,
        output: Option<&str>,
        error: Option<&str>,
        started: f64,
    ) -> StepReport {
        StepReport {
            algorithm: algorithm.into(),
            runner: None,
            algorithm_version: None,
            attempt: 1,
            calls: 1,
            timings: StepTimings {
                started_ms: started,
                ..StepTimings::default()
            },
            result: output.map(|o| RawValue::from_string(o.into()).unwrap()),
            error: error.map(|code| ErrorInfo {
                code: code.into(),
                message: format!("{code} happened"),
                class: ErrorClass::Permanent,
                step: None,
            }),
        }
    }

    const LABEL: &str = r#"{"label":"distracted-boyfriend","score":0.91}"#;
    const TEXT: &str =
        r#"{"text":"WHEN YOU SEE A NEW\nJAVASCRIPT FRAMEWORK","lines":[1,2],"engine":"ppocr"}"#;
    const LANG: &str = r#"{"language":"en","iso639_3":"eng","confidence":0.99}"#;

    /// The meme pipeline's result: `lang` as given (`None`: failed, optional).
    fn meme(id: &str, lang: Option<&str>) -> JobResult {
        let lang_output = lang.unwrap_or("null");
        let document = format!(r#"{{"label":{LABEL},"text":{TEXT},"lang":{lang_output}}}"#);
        let mut steps = BTreeMap::new();
        steps.insert(
            "label".to_string(),
            step("meme_classifier", Some(LABEL), None, 1.0),
        );
        steps.insert("text".to_string(), step("ocr", Some(TEXT), None, 1.0));
        let lang_step = match lang {
            Some(output) => step("language_detection", Some(output), None, 300.0),
            None => step(
                "language_detection",
                Some("null"),
                Some("input_not_found"),
                300.0,
            ),
        };
        steps.insert("lang".to_string(), lang_step);
        JobResult {
            algorithm: None,
            pipeline: Some(PipelineInfo {
                name: "meme_report".into(),
                revision: Some(7),
            }),
            steps: Some(steps),
            ..ok(id, "x", &document, 320.0)
        }
    }

    #[test]
    fn a_pipeline_job_is_one_row_naming_the_pipeline_with_each_steps_lead_value() {
        let (text, tally) = table(160, &[meme("meme-report-1", Some(LANG))]);
        let row = text.lines().nth(1).unwrap();
        assert!(row.starts_with("meme-report-1"), "{row}");
        assert!(
            row.contains("  meme_report  "),
            "the pipeline's name: {row}"
        );
        assert!(
            row.ends_with(r#"label=distracted-boyfriend text="WHEN YOU SEE A NEW / JAVASCRIPT FRAMEWORK" lang=en"#),
            "steps in the pipeline's order, each by its output's first field: {row}"
        );
        assert_eq!(tally.ok, 1);
        // Narrower: the long text is cut first, every step stays on the line.
        for width in [40, 60, 100, 120] {
            let (text, _) = table(width, &[meme("meme-report-1", Some(LANG))]);
            let row = text.lines().nth(1).unwrap();
            assert!(
                UnicodeWidthStr::width(row) <= width,
                "wider than {width}: {row:?}"
            );
            if width < 100 {
                continue; // a summary column narrower than the three labels: cut at its end
            }
            let summary = &row[row.find("label=").expect("the label step")..];
            assert!(
                summary.contains(" text=\"WH") && summary.contains("…\""),
                "{width}: {summary}"
            );
            assert!(summary.ends_with(" lang=en"), "{width}: {summary}");
        }
    }

    #[test]
    fn failed_steps_show_their_code_and_a_failed_job_its_error() {
        let (text, _) = table(120, &[meme("no-text", None)]);
        let row = text.lines().nth(1).unwrap();
        assert!(
            row.ends_with(" lang=✗ input_not_found"),
            "an optional step that failed: {row}"
        );
        assert!(row.contains("  ok  "), "{row}");

        let mut steps = BTreeMap::new();
        steps.insert(
            "label".to_string(),
            step("meme_classifier", Some(LABEL), None, 1.0),
        );
        steps.insert(
            "text".to_string(),
            step("ocr", None, Some("invalid_payload"), 2.0),
        );
        let mut failed = failed(Some("broken"), "invalid_payload", "image: not a PNG");
        failed.error.as_mut().unwrap().step = Some("text".into());
        failed.algorithm = None;
        failed.pipeline = Some(PipelineInfo {
            name: "inline".into(),
            revision: None,
        });
        failed.steps = Some(steps);
        let (text, tally) = table(160, &[failed]);
        let row = text.lines().nth(1).unwrap();
        assert!(
            row.contains("  inline  ") && row.contains("  error  "),
            "{row}"
        );
        assert!(
            row.ends_with("label=distracted-boyfriend text=✗ invalid_payload · invalid_payload: image: not a PNG"),
            "finished steps by start, then the job's error: {row}"
        );
        assert_eq!(tally.error, 1);
    }

    #[test]
    fn a_terminal_gets_one_progress_line_redrawn_under_the_rows_then_erased() {
        let mut out = Vec::new();
        let mut writer = ResultWriter::new(&mut out, Some(100)).with_progress(3, 100);
        writer.tick(Duration::from_millis(500)).unwrap();
        writer
            .result(&ok("a", "echo", r#"{"echo":1}"#, 1.0))
            .unwrap();
        writer.tick(Duration::from_millis(1500)).unwrap();
        writer
            .result(&failed(Some("b"), "invalid_payload", "no"))
            .unwrap();
        assert_eq!(
            writer.progress_line().unwrap(),
            "2/3 done · 1 ok · 1 failed · 1.5s"
        );
        writer.tick(Duration::from_secs(65)).unwrap();
        writer.finish().unwrap();
        let text = String::from_utf8(out).unwrap();
        // What a terminal shows: each erase goes back to the start of the line and clears it.
        let mut screen: Vec<String> = vec![String::new()];
        for (i, piece) in text.split(ERASE_LINE).enumerate() {
            if i > 0 {
                screen.last_mut().unwrap().clear();
            }
            let mut lines = piece.split('\n');
            screen.last_mut().unwrap().push_str(lines.next().unwrap());
            screen.extend(lines.map(str::to_string));
        }
        let screen: Vec<&str> = screen.iter().map(String::as_str).collect();
        assert!(screen[0].starts_with("JOB"), "{screen:#?}");
        assert!(
            screen[1].starts_with("a ") && screen[2].starts_with("b "),
            "{screen:#?}"
        );
        assert!(
            screen[3].starts_with('─'),
            "rows together, no progress between: {screen:#?}"
        );
        assert!(
            screen[4].starts_with("2 results: 1 ok, 1 error"),
            "{screen:#?}"
        );
        assert_eq!(screen[5], "", "the progress line is gone: {screen:#?}");
        // Each redraw: after the first row, and at each tick.
        assert!(
            text.contains("0/3 done · 0 ok · 0 failed · 0.5s"),
            "{text:?}"
        );
        assert!(
            text.contains("1/3 done · 1 ok · 0 failed · 0.5s"),
            "{text:?}"
        );
        assert!(
            text.contains("2/3 done · 1 ok · 1 failed · 1m05s"),
            "{text:?}"
        );

        // A narrow terminal: the line is cut short of the width, so it never wraps.
        let mut out = Vec::new();
        let mut writer = ResultWriter::new(&mut out, Some(40)).with_progress(12345, 40);
        writer.tick(Duration::from_secs(3)).unwrap();
        let line = writer.progress_line().unwrap();
        assert!(UnicodeWidthStr::width(line.as_str()) < 40, "{line}");
    }

    #[test]
    fn without_progress_nothing_but_rows_is_written() {
        let mut out = Vec::new();
        let mut writer = ResultWriter::new(&mut out, None);
        writer.tick(Duration::from_secs(1)).unwrap();
        writer
            .result(&ok("a", "echo", r#"{"echo":1}"#, 1.0))
            .unwrap();
        assert!(writer.progress_line().is_none());
        writer.finish().unwrap();
        let text = String::from_utf8(out).unwrap();
        assert!(!text.contains('\r') && !text.contains('\x1b'), "{text:?}");
        assert_eq!(text.lines().count(), 1);
    }

    #[test]
    fn auto_is_a_table_only_on_a_terminal() {
        assert!(Format::Auto.is_table(true));
        assert!(!Format::Auto.is_table(false));
        assert!(Format::Table.is_table(false));
        assert!(!Format::Json.is_table(true));
    }

    #[test]
    fn numbers_and_scalars_read_naturally() {
        assert_eq!(number(241.0), "241");
        assert_eq!(number(0.99123), "0.991");
        assert_eq!(number(0.0), "0");
        assert_eq!(
            summarize(r#"{"sum": 3, "ok": true, "none": null, "o": {"a": 1}}"#),
            "sum=3 ok=true none=null o={1 fields}"
        );
        assert_eq!(summarize("[1, 2]"), "[2 items]");
        assert_eq!(
            summarize(r#"{"label":"chelsea-the-cat","score":0.8123}"#),
            "label=chelsea-the-cat score=0.812"
        );
    }
}
