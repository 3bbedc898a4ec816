//! What funccount prints: the table (or its JSON), the skipped functions, durations, and
//! a stdout that stops quietly when its reader is gone.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::io::Write as _;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use crate::names;
use crate::Failure;

/// What the workload calls, and how often: `(function, calls, exact)`; not exact means
/// "at least" (the runtime and std call these too).
pub type Expected = Vec<(&'static str, u64, bool)>;

/// Where the lines go: the table (or JSON) to stdout; the other lines to stdout too, or
/// to stderr when stdout carries JSON.
#[derive(Clone, Copy)]
pub struct Out {
    pub json: bool,
}

impl Out {
    /// A line of the report: stdout, or stderr under `--json`.
    pub fn info(self, text: &str) -> Result<(), Failure> {
        if self.json {
            let _ = writeln!(std::io::stderr().lock(), "{text}");
            Ok(())
        } else {
            emit(&format!("{text}\n"))
        }
    }
}

/// Writes `text` to stdout. A reader that has gone (`| head -1`) is
/// [`Failure::BrokenPipe`], which stops funccount quietly.
pub fn emit(text: &str) -> Result<(), Failure> {
    let mut out = std::io::stdout().lock();
    out.write_all(text.as_bytes())
        .and_then(|()| out.flush())
        .map_err(|e| {
            if e.kind() == std::io::ErrorKind::BrokenPipe {
                Failure::BrokenPipe
            } else {
                Failure::Failed(format!("cannot write to stdout: {e}"))
            }
        })
}

/// Notified when stdout is a pipe whose reader has closed it, even while nothing is being
/// written (a `poll` with no events reports `POLLERR` then), so that funccount stops and
/// detaches at once rather than at its next line.
pub fn stdout_closed() -> Arc<tokio::sync::Notify> {
    use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
    use std::os::fd::AsFd as _;
    let notify = Arc::new(tokio::sync::Notify::new());
    let notifier = Arc::clone(&notify);
    // A plain thread: it may block for the whole run, and the process exits past it.
    let _ = std::thread::Builder::new()
        .name("stdout-watch".to_owned())
        .spawn(move || {
            let stdout = std::io::stdout();
            let mut fds = [PollFd::new(stdout.as_fd(), PollFlags::empty())];
            loop {
                match poll(&mut fds, PollTimeout::NONE) {
                    Err(nix::errno::Errno::EINTR) => {}
                    Err(_) => return,
                    Ok(_) => {
                        if fds[0]
                            .revents()
                            .is_some_and(|r| r.contains(PollFlags::POLLERR))
                        {
                            notifier.notify_one();
                        }
                        return;
                    }
                }
            }
        });
    notify
}

/// The rows with calls, most called first: `(label, count)`. Functions that show under
/// one name (Rust generics demangled without their hash) share a row.
pub fn rows<'a>(labels: &[&'a str], counts: &[u64]) -> Vec<(&'a str, u64)> {
    let mut sums: BTreeMap<&str, u64> = BTreeMap::new();
    for (label, count) in labels.iter().zip(counts).filter(|(_, c)| **c > 0) {
        *sums.entry(label).or_default() += count;
    }
    let mut rows: Vec<(&str, u64)> = sums.into_iter().collect();
    rows.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(b.0)));
    rows
}

fn expectation(expected: &Expected, label: &str) -> Option<(u64, bool)> {
    expected
        .iter()
        .find(|(f, _, _)| *f == label)
        .map(|(_, n, exact)| (*n, *exact))
}

fn meets(count: u64, (n, exact): (u64, bool)) -> bool {
    if exact {
        count == n
    } else {
        count >= n
    }
}

/// The table: names demangled and cut to [`names::MAX_NAME`].
pub fn table(labels: &[&str], counts: &[u64], expected: &Expected) -> String {
    let rows = rows(labels, counts);
    let shown: Vec<String> = rows.iter().map(|(l, _)| names::cap(l)).collect();
    let width = shown
        .iter()
        .map(|l| l.chars().count())
        .max()
        .unwrap_or(0)
        .max(8);
    let mut out = String::new();
    if expected.is_empty() {
        let _ = writeln!(out, "{:<width$} {:>12}", "FUNC", "COUNT");
    } else {
        let _ = writeln!(out, "{:<width$} {:>12} {:>10}", "FUNC", "COUNT", "EXPECTED");
    }
    for ((label, count), name) in rows.iter().zip(&shown) {
        let _ = write!(out, "{name:<width$} {count:>12}");
        if let Some((n, exact)) = expectation(expected, label) {
            let text = if exact {
                n.to_string()
            } else {
                format!(">={n}")
            };
            let mark = if meets(*count, (n, exact)) {
                ""
            } else {
                "  MISMATCH"
            };
            let _ = write!(out, " {text:>10}{mark}");
        }
        out.push('\n');
    }
    let silent = counts.iter().filter(|c| **c == 0).count();
    if silent > 0 {
        let _ = writeln!(out, "({silent} of {} functions not called)", labels.len());
    }
    out
}

/// The same counts as one JSON object on one line; the final one (`total`) also says
/// what was traced (`about`'s fields).
pub fn json(
    labels: &[&str],
    counts: &[u64],
    expected: &Expected,
    elapsed: Duration,
    about: Option<serde_json::Value>,
) -> String {
    let last = about.is_some();
    let rows: Vec<serde_json::Value> = rows(labels, counts)
        .into_iter()
        .map(|(label, count)| {
            let mut row = serde_json::json!({ "function": label, "count": count });
            if let Some((n, exact)) = expectation(expected, label) {
                row["expected"] = n.into();
                row["exact"] = exact.into();
                row["matches"] = meets(count, (n, exact)).into();
            }
            row
        })
        .collect();
    let mut value = serde_json::json!({
        "total": last,
        "elapsed_s": elapsed.as_secs_f64(),
        "functions": labels.len(),
        "rows": rows,
    });
    if let (Some(serde_json::Value::Object(about)), Some(object)) = (about, value.as_object_mut()) {
        object.extend(about);
    }
    format!("{value}\n")
}

/// A reason for the summary: `alias of X` and `ambiguous: N addresses` counted as one.
fn reason_kind(reason: &str) -> &str {
    if reason.starts_with("alias of ") {
        "alias of another name at the same address"
    } else if reason.starts_with("ambiguous: ") {
        "ambiguous: several addresses"
    } else {
        reason
    }
}

/// How many functions were skipped for each reason.
pub fn per_reason(skipped: &[(String, String)]) -> BTreeMap<&str, usize> {
    let mut per: BTreeMap<&str, usize> = BTreeMap::new();
    for (_, reason) in skipped {
        *per.entry(reason_kind(reason)).or_default() += 1;
    }
    per
}

/// The skipped functions: a count per reason, or with `verbose` each one with its reason.
pub fn skipped(skipped: &[(String, String)], verbose: bool) -> String {
    let mut out = String::new();
    if skipped.is_empty() {
        return out;
    }
    if verbose {
        let _ = writeln!(out, "skipped {}:", skipped.len());
        for (name, reason) in skipped {
            let _ = writeln!(out, "  {}: {reason}", names::demangle(name));
        }
    } else {
        let _ = writeln!(out, "skipped {} (-v lists them):", skipped.len());
        for (reason, n) in per_reason(skipped) {
            let _ = writeln!(out, "  {n:>6}  {reason}");
        }
    }
    out
}

/// `-l`: the functions, one a line, then `skipped NAME: REASON` lines.
pub fn listing(labels: &[&str], skipped: &[(String, String)]) -> String {
    let mut out = String::new();
    for label in labels {
        let _ = writeln!(out, "{label}");
    }
    for (name, reason) in skipped {
        let _ = writeln!(out, "skipped {}: {reason}", names::demangle(name));
    }
    out
}

/// `-l --json`: the same as one object.
pub fn listing_json(labels: &[&str], skipped: &[(String, String)]) -> String {
    let skipped: Vec<serde_json::Value> = skipped
        .iter()
        .map(|(name, reason)| {
            serde_json::json!({ "function": names::demangle(name), "reason": reason })
        })
        .collect();
    format!(
        "{}\n",
        serde_json::json!({ "functions": labels, "skipped": skipped })
    )
}

/// The time of day, `HH:MM:SS` (UTC).
pub fn clock() -> String {
    let secs = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
        % 86_400;
    format!("{:02}:{:02}:{:02}", secs / 3600, secs / 60 % 60, secs % 60)
}

pub fn plural(n: usize, noun: &str) -> String {
    if n == 1 {
        format!("1 {noun}")
    } else {
        format!("{n} {noun}s")
    }
}

/// A duration for people: milliseconds below a second, seconds above.
pub fn duration(d: Duration) -> String {
    if d >= Duration::from_secs(1) {
        format!("{:.2} s", d.as_secs_f64())
    } else {
        format!("{:.1} ms", d.as_secs_f64() * 1000.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(duration(Duration::from_micros(12_340)), "12.3 ms");
        assert_eq!(duration(Duration::from_millis(2_500)), "2.50 s");
    }

    #[test]
    fn long_names_keep_the_table_aligned() {
        let long = "x".repeat(200);
        let text = table(&["short", &long], &[1, 2], &Vec::new());
        let widths: Vec<usize> = text.lines().map(|l| l.chars().count()).collect();
        assert!(widths.iter().all(|w| *w == widths[0]), "{text}");
        assert!(text.contains('\u{2026}'), "{text}");
    }

    #[test]
    fn skipped_per_reason() {
        let list = [
            ("open64".to_owned(), "alias of open".to_owned()),
            ("creat64".to_owned(), "alias of creat".to_owned()),
            ("strlen".to_owned(), "ifunc resolver".to_owned()),
        ];
        let short = skipped(&list, false);
        assert!(short.contains("skipped 3"), "{short}");
        assert!(short.contains("     2  alias of another name"), "{short}");
        assert!(!short.contains("open64"), "{short}");
        let long = skipped(&list, true);
        assert!(long.contains("  open64: alias of open"), "{long}");
    }
}
