//! Quiet output: one line per test binary, and a failing binary's output in full.
//!
//! Every line still goes to a log file (the host's under `target/xtask/`, each guest's
//! console log under `target/vm/run/`); the terminal gets a summary line per test binary
//! (`host: tests/uprobe.rs: 11 passed, 0 failed, 0 skipped (12.3 s)`), the whole output of
//! a binary that failed or ended without a result, errors and skip markers. Set
//! `PROBESET_XTASK_VERBOSE=1` to stream every line as before.

use std::fs::File;
use std::io::Write as _;
use std::path::Path;
use std::time::Instant;

use crate::libtest::{parse_result_line, Counts, SKIP_MARKER};
use crate::util::{secs, Context, Result};

/// Whether every line is streamed (`PROBESET_XTASK_VERBOSE` set).
pub fn verbose() -> bool {
    std::env::var_os("PROBESET_XTASK_VERBOSE").is_some()
}

/// The output of one test binary, held until its result line.
struct Chunk {
    name: String,
    lines: Vec<String>,
    started: Instant,
}

/// Prints a test run quietly (see the module docs).
pub struct Report {
    prefix: String,
    log: Option<File>,
    verbose: bool,
    current: Option<Chunk>,
}

impl Report {
    /// A report whose lines start with `prefix` (`host: `, `[6.12] `), logging to `log`.
    pub fn new(prefix: &str, log: Option<&Path>) -> Result<Report> {
        let log = match log {
            Some(path) => {
                if let Some(dir) = path.parent() {
                    std::fs::create_dir_all(dir)
                        .context(|| format!("cannot create {}", dir.display()))?;
                }
                Some(File::create(path).context(|| format!("cannot create {}", path.display()))?)
            }
            None => None,
        };
        Ok(Report {
            prefix: prefix.to_owned(),
            log,
            verbose: verbose(),
            current: None,
        })
    }

    /// Takes one line of output.
    pub fn line(&mut self, line: &str) {
        if let Some(log) = &mut self.log {
            let _ = writeln!(log, "{line}");
        }
        if self.verbose {
            println!("{}{line}", self.prefix);
            return;
        }
        if let Some(name) = binary_started(line) {
            self.flush_unfinished();
            self.current = Some(Chunk {
                name,
                lines: Vec::new(),
                started: Instant::now(),
            });
            return;
        }
        let notable = line.contains(SKIP_MARKER) || line.trim_start().starts_with("error");
        match &mut self.current {
            Some(chunk) => {
                chunk.lines.push(line.to_owned());
                if notable {
                    println!("{}{line}", self.prefix);
                }
                if parse_result_line(line).is_some() {
                    self.finish_chunk(line);
                }
            }
            None if notable => println!("{}{line}", self.prefix),
            None => {}
        }
    }

    /// Ends the run: a binary that never printed its result is shown in full.
    pub fn finish(&mut self) {
        self.flush_unfinished();
    }

    fn finish_chunk(&mut self, result: &str) {
        let Some(chunk) = self.current.take() else {
            return;
        };
        let mut counts = Counts::default();
        for l in &chunk.lines {
            counts.scan(l);
        }
        let failed = counts.failed > 0 || result.contains("FAILED");
        if failed {
            self.show(&chunk);
        }
        println!(
            "{}{}: {counts} ({}){}",
            self.prefix,
            chunk.name,
            secs(chunk.started.elapsed()),
            if failed { " -- FAILED" } else { "" }
        );
    }

    fn flush_unfinished(&mut self) {
        if let Some(chunk) = self.current.take() {
            if !chunk.lines.is_empty() {
                self.show(&chunk);
                println!("{}{}: ended without a test result", self.prefix, chunk.name);
            }
        }
    }

    fn show(&self, chunk: &Chunk) {
        println!("{}---- output of {} ----", self.prefix, chunk.name);
        for l in &chunk.lines {
            println!("{}{l}", self.prefix);
        }
        println!("{}---- end of {} ----", self.prefix, chunk.name);
    }
}

/// The test binary a line announces: cargo's `Running tests/x.rs (target/...)`,
/// `Running unittests src/lib.rs (...)`, `Doc-tests probeset`, or the guest's
/// `probeset-vm: running /path/to/x-0123abcd ...`.
fn binary_started(line: &str) -> Option<String> {
    let t = line.trim();
    if let Some(rest) = t.strip_prefix("Running ") {
        let rest = rest.strip_prefix("unittests ").unwrap_or(rest);
        return Some(rest.split(" (").next().unwrap_or(rest).to_owned());
    }
    if let Some(rest) = t.strip_prefix("Doc-tests ") {
        return Some(format!("doc tests of {rest}"));
    }
    let rest = t.strip_prefix("probeset-vm: running ")?;
    let exe = rest.split_whitespace().next()?.trim_matches('\'');
    let name = Path::new(exe).file_name()?.to_string_lossy().into_owned();
    // Test executables are `NAME-<16 hex>`.
    Some(match name.rsplit_once('-') {
        Some((base, hash)) if hash.len() == 16 && hash.bytes().all(|b| b.is_ascii_hexdigit()) => {
            base.to_owned()
        }
        _ => name,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn binaries_are_named() {
        assert_eq!(
            binary_started("     Running tests/uprobe.rs (target/debug/deps/uprobe-0123)")
                .as_deref(),
            Some("tests/uprobe.rs")
        );
        assert_eq!(
            binary_started("     Running unittests src/lib.rs (target/debug/deps/probeset-1)")
                .as_deref(),
            Some("src/lib.rs")
        );
        assert_eq!(
            binary_started("   Doc-tests probeset").as_deref(),
            Some("doc tests of probeset")
        );
        assert_eq!(
            binary_started("probeset-vm: running '/w/target/debug/deps/kprobe-0123456789abcdef' '--test-threads=1'")
                .as_deref(),
            Some("kprobe")
        );
        assert_eq!(binary_started("test x ... ok"), None);
    }
}
