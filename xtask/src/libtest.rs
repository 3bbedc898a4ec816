//! Reading test output: libtest's `test result:` lines and the project's skip marker.

use std::fmt;

/// What a test prints (anywhere in a line, stdout or stderr) when it skips; in the VM tier a
/// skip is a failure, because the VM exists so that nothing has to skip.
pub const SKIP_MARKER: &str = "probeset-skip:";

/// Test counts summed over the `test result:` lines seen, plus skip markers.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Counts {
    /// Tests that passed.
    pub passed: u64,
    /// Tests that failed.
    pub failed: u64,
    /// Tests marked `#[ignore]` (not run).
    pub ignored: u64,
    /// Lines carrying [`SKIP_MARKER`].
    pub skipped: u64,
    /// How many `test result:` lines were seen (one per test binary that finished).
    pub results: u64,
}

impl Counts {
    /// Takes one output line into account.
    pub fn scan(&mut self, line: &str) {
        if line.contains(SKIP_MARKER) {
            self.skipped += 1;
        }
        if let Some((passed, failed, ignored)) = parse_result_line(line) {
            self.passed += passed;
            self.failed += failed;
            self.ignored += ignored;
            self.results += 1;
        }
    }

    /// Adds another set of counts to this one.
    pub fn add(&mut self, other: Counts) {
        self.passed += other.passed;
        self.failed += other.failed;
        self.ignored += other.ignored;
        self.skipped += other.skipped;
        self.results += other.results;
    }
}

impl fmt::Display for Counts {
    /// `N passed, M failed, K skipped` (and `, I ignored` when there are any).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} passed, {} failed, {} skipped",
            self.passed, self.failed, self.skipped
        )?;
        if self.ignored > 0 {
            write!(f, ", {} ignored", self.ignored)?;
        }
        Ok(())
    }
}

/// Parses `test result: ok. 3 passed; 1 failed; 2 ignored; 0 measured; 0 filtered out; ...`
/// (found anywhere in the line) into `(passed, failed, ignored)`.
pub fn parse_result_line(line: &str) -> Option<(u64, u64, u64)> {
    let rest = &line[line.find("test result: ")? + "test result: ".len()..];
    let (_verdict, rest) = rest.split_once(". ")?;
    let (mut passed, mut failed, mut ignored) = (None, None, None);
    for part in rest.split(';') {
        let mut words = part.split_whitespace();
        let (Some(n), Some(what)) = (words.next(), words.next()) else {
            continue;
        };
        let Ok(n) = n.parse::<u64>() else { continue };
        match what {
            "passed" => passed = Some(n),
            "failed" => failed = Some(n),
            "ignored" => ignored = Some(n),
            _ => {}
        }
    }
    Some((passed?, failed?, ignored.unwrap_or(0)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn result_lines() {
        assert_eq!(
            parse_result_line(
                "test result: ok. 14 passed; 0 failed; 2 ignored; 0 measured; 0 filtered out; finished in 0.21s"
            ),
            Some((14, 0, 2))
        );
        assert_eq!(
            parse_result_line(
                "[6.1] test result: FAILED. 1 passed; 3 failed; 0 ignored; 0 measured; 0 filtered out; finished in 1.00s"
            ),
            Some((1, 3, 0))
        );
        assert_eq!(parse_result_line("test result is fine"), None);
        assert_eq!(parse_result_line("running 3 tests"), None);
    }

    #[test]
    fn counting() {
        let mut c = Counts::default();
        for line in [
            "running 2 tests",
            "probeset-skip: no kprobe PMU here",
            "test a ... ok",
            "test result: ok. 2 passed; 0 failed; 1 ignored; 0 measured; 0 filtered out; finished in 0.00s",
            "test result: FAILED. 0 passed; 1 failed; 0 ignored; 0 measured; 0 filtered out; finished in 0.00s",
        ] {
            c.scan(line);
        }
        assert_eq!(
            c,
            Counts {
                passed: 2,
                failed: 1,
                ignored: 1,
                skipped: 1,
                results: 2
            }
        );
        assert_eq!(c.to_string(), "2 passed, 1 failed, 1 skipped, 1 ignored");
    }
}
