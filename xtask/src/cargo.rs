//! Calls into cargo: building test executables for the VM, and the host test run.

use std::io::{BufRead, BufReader, IsTerminal, Read};
use std::path::PathBuf;
use std::process::{ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::libtest::Counts;
use crate::report::Report;
use crate::util::{
    cargo, display_command, err, kill_tree, secs, target_dir, workspace_root, Context, Result,
};

/// The default limit for `cargo test --workspace` on the host, in seconds.
pub const DEFAULT_HOST_TIMEOUT: u64 = 1200;

/// The package whose integration tests the VM tier runs.
pub const PACKAGE: &str = "probeset";

/// Builds example `name` of [`PACKAGE`] (dev profile, as the tests) and returns its path.
pub fn build_example(name: &str) -> Result<PathBuf> {
    let mut cmd = cargo();
    cmd.current_dir(workspace_root())
        .args(["build", "-p", PACKAGE, "--example", name]);
    eprintln!("xtask: $ {}", display_command(&cmd));
    let status = cmd
        .status()
        .context(|| format!("cannot run `{}`", display_command(&cmd)))?;
    if !status.success() {
        return Err(err(format!("`{}` failed: {status}", display_command(&cmd))));
    }
    let exe = target_dir().join("debug/examples").join(name);
    if !exe.is_file() {
        return Err(err(format!("{} was not built", exe.display())));
    }
    Ok(exe)
}

/// Builds the integration-test targets `names` of [`PACKAGE`] and returns their executables.
///
/// Runs `cargo test -p probeset --no-run --message-format=json-render-diagnostics --test
/// NAME...` and takes `executable` from each `compiler-artifact` message whose `profile.test`
/// is true. Compiler diagnostics are shown as cargo would show them.
pub fn build_tests(names: &[String]) -> Result<Vec<PathBuf>> {
    let mut cmd = cargo();
    // `json-render-diagnostics`: JSON messages on stdout, and cargo itself renders compiler
    // diagnostics on stderr as usual (with colour on a terminal).
    cmd.current_dir(workspace_root()).args([
        "test",
        "-p",
        PACKAGE,
        "--no-run",
        "--message-format=json-render-diagnostics",
    ]);
    for name in names {
        cmd.args(["--test", name]);
    }
    eprintln!("xtask: $ {}", display_command(&cmd));
    let mut child = cmd
        .stdout(Stdio::piped())
        .spawn()
        .context(|| format!("cannot run `{}`", display_command(&cmd)))?;
    let stdout = child.stdout.take().expect("piped stdout");
    let mut executables = Vec::new();
    for line in BufReader::new(stdout).lines() {
        let line = line.context(|| "cannot read cargo's output".to_owned())?;
        let Ok(msg) = serde_json::from_str::<Value>(&line) else {
            // Not a JSON message (a build script's output, say): pass it through.
            println!("{line}");
            continue;
        };
        match msg.get("reason").and_then(Value::as_str) {
            Some("compiler-message") => {
                // Only in case cargo did not render it already.
                if let Some(rendered) = msg.pointer("/message/rendered").and_then(Value::as_str) {
                    eprint!("{rendered}");
                }
            }
            Some("compiler-artifact") => {
                if let Some(exe) = test_executable(&msg) {
                    executables.push(PathBuf::from(exe));
                }
            }
            _ => {}
        }
    }
    let status = child
        .wait()
        .context(|| "cannot wait for cargo".to_owned())?;
    if !status.success() {
        return Err(err(format!(
            "building the test executables failed (`{}`: {status})",
            display_command(&cmd)
        )));
    }
    if executables.is_empty() {
        return Err(err(format!(
            "`{}` built no test executable",
            display_command(&cmd)
        )));
    }
    Ok(executables)
}

/// The `executable` of a `compiler-artifact` message whose `profile.test` is true.
fn test_executable(artifact: &Value) -> Option<&str> {
    let is_test = artifact.pointer("/profile/test").and_then(Value::as_bool) == Some(true);
    if is_test {
        artifact.get("executable").and_then(Value::as_str)
    } else {
        None
    }
}

/// The outcome of `cargo test --workspace`.
#[derive(Debug)]
pub struct HostRun {
    /// cargo's exit status.
    pub status: ExitStatus,
    /// Counts from its output.
    pub counts: Counts,
    /// Whether it was killed after the timeout.
    pub timed_out: bool,
}

/// Runs `cargo test --workspace` on the host, streaming its output, and counts the results;
/// kills it (and the tests it started) after `timeout`.
///
/// Both streams are read: libtest prints its `test result:` lines on stdout, and the tests
/// print the skip marker on stderr (written directly, past libtest's capture).
pub fn host_tests(timeout: Duration) -> Result<HostRun> {
    let mut cmd = cargo();
    cmd.current_dir(workspace_root())
        .args(["test", "--workspace"]);
    if std::io::stderr().is_terminal() {
        // cargo's own messages keep their colour although its stderr is now a pipe.
        cmd.arg("--color=always");
    }
    eprintln!("xtask: $ {}", display_command(&cmd));
    // One pipe for both streams: cargo announces each test binary on stderr, and the
    // binary prints its result on stdout; read from two pipes, the two would interleave in
    // any order.
    let (reader, writer) = std::io::pipe().context(|| "cannot create a pipe".to_owned())?;
    let writer_err = writer
        .try_clone()
        .context(|| "cannot duplicate a pipe".to_owned())?;
    let mut child = cmd
        .stdout(writer)
        .stderr(writer_err)
        .spawn()
        .context(|| format!("cannot run `{}`", display_command(&cmd)))?;
    // The parent's copies of the write end are gone with `cmd`'s: the reader sees the end
    // when cargo and its tests exit.
    drop(cmd);
    let (tx, rx) = mpsc::channel::<(bool, String)>();
    let readers = [read_lines(reader, false, tx)];
    let mut counts = Counts::default();
    let log = target_dir().join("xtask/host-tests.log");
    let mut report = Report::new("host: ", Some(&log))?;
    eprintln!("xtask: the host tests' whole output: {}", log.display());
    let mut deadline = Instant::now() + timeout;
    let mut timed_out = false;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        // Both streams go to the report alike (the tag tells them apart in the log order).
        let (_is_stderr, line) = match rx.recv_timeout(left) {
            Ok(message) => message,
            Err(mpsc::RecvTimeoutError::Timeout) if !timed_out => {
                timed_out = true;
                eprintln!(
                    "xtask: host tests timed out after {}; killing cargo and its tests",
                    secs(timeout)
                );
                kill_tree(child.id());
                // Read what is left for a few seconds more.
                deadline = Instant::now() + Duration::from_secs(10);
                continue;
            }
            // All output read; or killed, yet something still holds the pipes open.
            Err(mpsc::RecvTimeoutError::Timeout | mpsc::RecvTimeoutError::Disconnected) => break,
        };
        report.line(&line);
        counts.scan(&line);
    }
    report.finish();
    let status = child
        .wait()
        .context(|| "cannot wait for cargo".to_owned())?;
    if !timed_out {
        for reader in readers {
            let _ = reader.join();
        }
    }
    Ok(HostRun {
        status,
        counts,
        timed_out,
    })
}

/// Sends each line of `source` (lossy UTF-8, line end dropped) with `tag` to `tx`.
fn read_lines(
    source: impl Read + Send + 'static,
    tag: bool,
    tx: mpsc::Sender<(bool, String)>,
) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        let mut reader = BufReader::new(source);
        let mut buf = Vec::new();
        while let Ok(n) = reader.read_until(b'\n', &mut buf) {
            if n == 0 {
                break;
            }
            let line = String::from_utf8_lossy(&buf);
            let line = line.trim_end_matches(['\n', '\r']).to_owned();
            buf.clear();
            if tx.send((tag, line)).is_err() {
                break;
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A `compiler-artifact` line as cargo prints it, with `profile.test` set to `test`.
    fn artifact(test: bool) -> Value {
        let line = format!(
            r#"{{"reason":"compiler-artifact","package_id":"path+file:///w#probeset@0.1.0","target":{{"kind":["test"],"name":"kprobe"}},"profile":{{"opt_level":"0","debuginfo":2,"test":{test}}},"executable":"/w/target/debug/deps/kprobe-1a2b","fresh":false,"filenames":["/w/target/debug/deps/kprobe-1a2b"]}}"#
        );
        serde_json::from_str(&line).unwrap()
    }

    #[test]
    fn takes_the_executable_of_a_test_artifact() {
        assert_eq!(
            test_executable(&artifact(true)),
            Some("/w/target/debug/deps/kprobe-1a2b")
        );
        assert_eq!(test_executable(&artifact(false)), None);
    }
}
