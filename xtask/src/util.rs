//! Small shared helpers: the error type, running commands, workspace paths.

use std::fmt;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};

/// An error with a human-readable message; context is prepended as `context: cause`.
#[derive(Debug)]
pub struct Error(String);

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Error {}

/// The result type used across the xtask.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Builds an [`Error`] from a message.
pub fn err(msg: impl Into<String>) -> Error {
    Error(msg.into())
}

/// Adds a description of what was being done to any displayable error.
pub trait Context<T> {
    /// Wraps the error as `"{what}: {error}"`.
    fn context(self, what: impl FnOnce() -> String) -> Result<T>;
}

impl<T, E: fmt::Display> Context<T> for Result<T, E> {
    fn context(self, what: impl FnOnce() -> String) -> Result<T> {
        self.map_err(|e| Error(format!("{}: {e}", what())))
    }
}

/// Renders a command line the way a person would type it (for logs and error messages).
pub fn display_command(cmd: &Command) -> String {
    let mut out = cmd.get_program().to_string_lossy().into_owned();
    for arg in cmd.get_args() {
        out.push(' ');
        out.push_str(&shell_quote(&arg.to_string_lossy()));
    }
    out
}

/// Quotes a word for a POSIX shell (busybox sh in the guest, or a log line on the host).
pub fn shell_quote(word: &str) -> String {
    let plain = !word.is_empty()
        && word
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_./=+:,@%".contains(&b));
    if plain {
        word.to_owned()
    } else {
        format!("'{}'", word.replace('\'', r"'\''"))
    }
}

/// Spawns a command, waits for it, and returns its exit status; the output goes to the terminal.
pub fn status(cmd: &mut Command) -> Result<ExitStatus> {
    eprintln!("xtask: $ {}", display_command(cmd));
    cmd.status()
        .context(|| format!("cannot run `{}`", display_command(cmd)))
}

/// Runs a command with its output on the terminal; fails unless it exits 0.
pub fn run(cmd: &mut Command) -> Result<()> {
    let st = status(cmd)?;
    if st.success() {
        Ok(())
    } else {
        Err(err(format!("`{}` failed ({st})", display_command(cmd))))
    }
}

/// Runs a command quietly and returns its standard output; fails (with its standard error in
/// the message) unless it exits 0.
pub fn output(cmd: &mut Command) -> Result<String> {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .context(|| format!("cannot run `{}`", display_command(cmd)))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(err(format!(
            "`{}` failed ({}): {}",
            display_command(cmd),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        )))
    }
}

/// Whether `name` is an executable found on `PATH`.
pub fn on_path(name: &str) -> bool {
    std::env::var_os("PATH").is_some_and(|path| {
        std::env::split_paths(&path).any(|dir| {
            let file = dir.join(name);
            file.is_file()
        })
    })
}

/// Whether this process runs with effective uid 0 (read from `/proc/self/status`).
pub fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|status| {
            status
                .lines()
                .find_map(|l| l.strip_prefix("Uid:"))
                .and_then(|ids| ids.split_whitespace().nth(1).map(|euid| euid == "0"))
        })
        .unwrap_or(false)
}

/// The cargo binary that started us (cargo sets `CARGO` for `cargo run`), or `cargo`.
pub fn cargo() -> Command {
    Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()))
}

/// The workspace root (the parent of this crate's directory).
pub fn workspace_root() -> PathBuf {
    let xtask_dir = Path::new(env!("CARGO_MANIFEST_DIR"));
    xtask_dir.parent().unwrap_or(xtask_dir).to_path_buf()
}

/// Cargo's target directory: `CARGO_TARGET_DIR` if set, else `<workspace>/target`.
pub fn target_dir() -> PathBuf {
    match std::env::var_os("CARGO_TARGET_DIR") {
        Some(dir) => {
            let dir = PathBuf::from(dir);
            if dir.is_absolute() {
                dir
            } else {
                std::env::current_dir().unwrap_or_default().join(dir)
            }
        }
        None => workspace_root().join("target"),
    }
}

/// Kills (SIGKILL) process `pid` and every descendant, found through `/proc/*/stat`; each by
/// its id. Used when a run times out, so that a hung test does not outlive its runner.
pub fn kill_tree(pid: u32) {
    // (pid, parent pid) of every process.
    let mut parents: Vec<(u32, u32)> = Vec::new();
    if let Ok(entries) = std::fs::read_dir("/proc") {
        for entry in entries.filter_map(std::result::Result::ok) {
            let Some(proc_id) = entry
                .file_name()
                .to_str()
                .and_then(|n| n.parse::<u32>().ok())
            else {
                continue;
            };
            let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else {
                continue;
            };
            // `pid (comm) state ppid ...`; comm may hold spaces and parentheses.
            let parent_id = stat
                .rsplit_once(')')
                .and_then(|(_, rest)| rest.split_whitespace().nth(1))
                .and_then(|f| f.parse::<u32>().ok());
            if let Some(parent_id) = parent_id {
                parents.push((proc_id, parent_id));
            }
        }
    }
    let mut tree = vec![pid];
    let mut i = 0;
    while i < tree.len() {
        let parent = tree[i];
        tree.extend(
            parents
                .iter()
                .filter(|(_, parent_id)| *parent_id == parent)
                .map(|(proc_id, _)| *proc_id),
        );
        i += 1;
    }
    let _ = Command::new("kill")
        .arg("-KILL")
        .args(tree.iter().map(u32::to_string))
        .stderr(Stdio::null())
        .status();
}

/// Formats a duration in seconds with one decimal, e.g. `12.3 s`.
pub fn secs(d: std::time::Duration) -> String {
    format!("{:.1} s", d.as_secs_f64())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quoting() {
        assert_eq!(shell_quote("/work/a-b_c.d"), "/work/a-b_c.d");
        assert_eq!(shell_quote(""), "''");
        assert_eq!(shell_quote("a b"), "'a b'");
        assert_eq!(shell_quote("it's"), r"'it'\''s'");
        assert_eq!(shell_quote("$HOME"), "'$HOME'");
    }
}
