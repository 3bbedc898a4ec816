//! The command line, parsed with `lexopt`, and the probe specifiers bcc's `funccount`
//! takes (`p:`, `t:`, `u:` prefixes).

use std::ffi::OsString;
use std::time::Duration;

pub const USAGE: &str = "\
usage: funccount [OPTIONS] PATTERN... [-- COMMAND ARGS]
  PATTERN          vfs_* or p:vfs_* (kernel); c:str*, LIB:GLOB, /path/to/bin:GLOB or
                   p:LIB:GLOB (user space); t: (tracepoints) and u: (USDT) are not supported
  -r, --regexp     PATTERN's function part is a regular expression, not a glob
  -p, --pid PID    count only in process PID (user-space patterns)
  -d, --duration SECONDS  stop after SECONDS
  -i, --interval SECONDS  print the counts every SECONDS
  -T, --timestamp  print the time (HH:MM:SS, UTC) with each table
  -l, --list       list what the patterns would attach (and what they skip); attach nothing
  -v, --verbose    list every skipped function with its reason
      --json       print the counts as one JSON object (one per interval with -i)
      --ret        count returns (uretprobes/kretprobes) instead of entries
      --per-probe  use the plain program: one perf-event link per probe (slow to detach)
  -h, --help       this text
  -- COMMAND       run COMMAND and count only in it
With no arguments: common C library functions, counted while a built-in workload runs.";

#[derive(Debug, Default, PartialEq)]
#[expect(
    clippy::struct_excessive_bools,
    reason = "one bool per command-line flag"
)]
pub struct Options {
    pub pid: Option<i32>,
    pub duration: Option<Duration>,
    pub interval: Option<Duration>,
    pub ret: bool,
    pub per_probe: bool,
    pub regexp: bool,
    pub timestamp: bool,
    pub list: bool,
    pub verbose: bool,
    pub json: bool,
    pub patterns: Vec<String>,
    pub command: Vec<OsString>,
}

#[derive(Debug, PartialEq)]
pub enum Cli {
    Run(Options),
    Help,
}

fn seconds(flag: &str, value: &OsString) -> Result<Duration, String> {
    let text = value.to_string_lossy();
    text.parse::<f64>()
        .ok()
        .filter(|s| s.is_finite() && *s > 0.0)
        .map(Duration::from_secs_f64)
        .ok_or_else(|| format!("{flag} {text:?}: not a positive number of seconds"))
}

fn pid(value: &OsString) -> Result<i32, String> {
    value
        .to_str()
        .and_then(|v| v.parse::<i32>().ok())
        .filter(|p| *p > 0)
        .ok_or_else(|| format!("-p {value:?}: not a pid"))
}

/// Parses the arguments (without the program name). The first `--` ends funccount's
/// arguments: what follows is the command, options included.
pub fn parse_args(args: impl IntoIterator<Item = OsString>) -> Result<Cli, String> {
    use lexopt::Arg::{Long, Short, Value};
    let mut args: Vec<OsString> = args.into_iter().collect();
    let mut options = Options::default();
    if let Some(dashes) = args.iter().position(|a| a == "--") {
        options.command = args.split_off(dashes + 1);
        args.pop();
        if options.command.is_empty() {
            return Err("-- must be followed by a command".to_owned());
        }
    }
    let mut parser = lexopt::Parser::from_args(args);
    while let Some(arg) = parser.next().map_err(|e| e.to_string())? {
        match arg {
            Short('h') | Long("help") => return Ok(Cli::Help),
            Short('p') | Long("pid") => {
                let value = parser.value().map_err(needs("-p", "a pid"))?;
                options.pid = Some(pid(&value)?);
            }
            Short('d') | Long("duration") => {
                let value = parser.value().map_err(needs("-d", "a number of seconds"))?;
                options.duration = Some(seconds("-d", &value)?);
            }
            Short('i') | Long("interval") => {
                let value = parser.value().map_err(needs("-i", "a number of seconds"))?;
                options.interval = Some(seconds("-i", &value)?);
            }
            Short('r') | Long("regexp") => options.regexp = true,
            Short('T') | Long("timestamp") => options.timestamp = true,
            Short('l') | Long("list") => options.list = true,
            Short('v') | Long("verbose") => options.verbose = true,
            Long("json") => options.json = true,
            Long("ret") => options.ret = true,
            Long("per-probe") => options.per_probe = true,
            Value(value) => {
                let text = value
                    .into_string()
                    .map_err(|v| format!("{v:?}: not UTF-8"))?;
                options.patterns.push(text);
            }
            other => return Err(other.unexpected().to_string()),
        }
    }
    if options.pid.is_some() && !options.command.is_empty() {
        return Err("-p and -- COMMAND exclude each other: the command's pid is used".to_owned());
    }
    if options.regexp && options.patterns.is_empty() {
        return Err("-r needs a PATTERN".to_owned());
    }
    Ok(Cli::Run(options))
}

/// The message for an option given without its value.
fn needs(flag: &'static str, what: &'static str) -> impl Fn(lexopt::Error) -> String {
    move |_| format!("{flag} needs {what}")
}

/// What one pattern names, with bcc's prefixes taken off.
#[derive(Debug, PartialEq)]
pub enum Spec<'a> {
    /// Kernel functions (`vfs_*`, `p:vfs_*`).
    Kernel(&'a str),
    /// Functions of a user-space binary (`c:str*`, `p:c:str*`).
    User { target: &'a str, name: &'a str },
}

/// Splits a pattern as bcc's `funccount` does: `[p:]NAME` is a kernel function,
/// `[p:]LIB:NAME` a user-space one; `t:` (tracepoints) and `u:` (USDT probes) are refused.
/// The library ends at the first `:` (a regular expression may contain `::`).
pub fn parse_spec(pattern: &str) -> Result<Spec<'_>, String> {
    let text = pattern.strip_prefix("p:").unwrap_or(pattern);
    let unsupported = |what: &str| {
        Err(format!(
            "{pattern:?}: the {what} prefix is not supported yet; write NAME (kernel) or \
             LIB:NAME (user space)"
        ))
    };
    if text.len() == pattern.len() {
        if pattern.starts_with("t:") {
            return unsupported("t: (tracepoint)");
        }
        if pattern.starts_with("u:") {
            return unsupported("u: (USDT probe)");
        }
    }
    match text.split_once(':') {
        None if text.is_empty() => Err(format!("pattern {pattern:?}: no function name")),
        None => Ok(Spec::Kernel(text)),
        Some((target, name)) if target.is_empty() || name.is_empty() => Err(format!(
            "pattern {pattern:?}: write LIB:NAME with both parts, e.g. c:malloc"
        )),
        Some((target, name)) => Ok(Spec::User { target, name }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(list: &[&str]) -> Vec<OsString> {
        list.iter().map(OsString::from).collect()
    }

    fn run(list: &[&str]) -> Options {
        match parse_args(args(list)) {
            Ok(Cli::Run(o)) => o,
            other => panic!("{list:?}: {other:?}"),
        }
    }

    #[test]
    fn command_lines() {
        assert_eq!(run(&[]), Options::default());
        let o = run(&[
            "-p", "12", "-d", "1.5", "-i", "1", "--ret", "c:str*", "vfs_*",
        ]);
        assert!(!o.per_probe && !o.regexp);
        assert_eq!(o.pid, Some(12));
        assert_eq!(o.duration, Some(Duration::from_millis(1500)));
        assert_eq!(o.interval, Some(Duration::from_secs(1)));
        assert!(o.ret);
        assert_eq!(o.patterns, ["c:str*", "vfs_*"]);
        let o = run(&["c:getpid", "--", "ls", "-l", "--", "-p"]);
        assert_eq!(o.command, args(&["ls", "-l", "--", "-p"]));
        assert_eq!(parse_args(args(&["-h"])), Ok(Cli::Help));
        for bad in [
            &["-p"][..],
            &["-p", "x"],
            &["-p", "0"],
            &["-d", "-1"],
            &["-i", "nan"],
            &["--bogus"],
            &["c:x", "--"],
            &["-p", "1", "c:x", "--", "ls"],
            &["-r"],
        ] {
            assert!(parse_args(args(bad)).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn spellings() {
        for spelling in [
            &["-d1", "-p123"][..],
            &["-d", "1", "-p", "123"],
            &["--duration=1", "--pid=123"],
            &["--duration", "1", "--pid", "123"],
        ] {
            let o = run(spelling);
            assert_eq!(o.duration, Some(Duration::from_secs(1)), "{spelling:?}");
            assert_eq!(o.pid, Some(123), "{spelling:?}");
        }
        let o = run(&["-Ti", "5", "-r", "-lv", "--json", "x"]);
        assert!(o.timestamp && o.regexp && o.list && o.verbose && o.json && !o.ret);
        assert_eq!(o.interval, Some(Duration::from_secs(5)));
    }

    #[test]
    fn specs() {
        assert_eq!(parse_spec("vfs_*"), Ok(Spec::Kernel("vfs_*")));
        assert_eq!(parse_spec("p:vfs_*"), Ok(Spec::Kernel("vfs_*")));
        let user = Spec::User {
            target: "c",
            name: "str*",
        };
        assert_eq!(parse_spec("c:str*"), Ok(user));
        assert_eq!(
            parse_spec("p:app:a::b.*"),
            Ok(Spec::User {
                target: "app",
                name: "a::b.*"
            })
        );
        let t = parse_spec("t:sched:sched_fork").unwrap_err();
        assert!(t.contains("t: (tracepoint) prefix is not supported"), "{t}");
        assert!(parse_spec("u:node:gc*").unwrap_err().contains("u: (USDT"));
        for bad in ["", "p:", "c:", ":x"] {
            assert!(parse_spec(bad).is_err(), "{bad:?}");
        }
    }
}
