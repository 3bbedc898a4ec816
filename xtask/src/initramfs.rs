//! The guest's initramfs: busybox, an `/init` script, the test executables and their shared
//! libraries.
//!
//! Everything sits at its host path, so a dynamically linked executable built on the host runs
//! unchanged (it needs only what `ldd` lists: libc, `libgcc_s` and the dynamic loader). The
//! archive is packed with `busybox cpio -o -H newc -R 0:0` (the host has no `cpio`) and
//! `gzip -1`.

use std::fmt::Write as _;
use std::fs;
use std::io::Write as _;
use std::os::unix::fs::{symlink, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use crate::apt::BUSYBOX;
use crate::util::{display_command, err, output, shell_quote, Context, Result};

/// One program for the guest to run, with its arguments.
#[derive(Debug, Clone)]
pub struct Payload {
    /// Absolute host path; the program sits at the same path in the guest.
    pub exe: PathBuf,
    /// Arguments passed to it.
    pub args: Vec<String>,
}

/// Which environment the guest's `/init` sets up; see [`init_script`].
#[derive(Debug, Clone)]
pub struct Guest {
    /// The programs to run, in order.
    pub payloads: Vec<Payload>,
    /// The working directory of the programs (created in the initramfs, empty).
    pub workdir: PathBuf,
    /// More programs the payloads run (the `funccount` example), at their host paths.
    pub extras: Vec<PathBuf>,
    /// Data files the payloads read (the benchmark's BPF objects), at their host paths.
    pub files: Vec<PathBuf>,
}

/// The kernel command line word that carries the kernel's short name to `/init`.
pub const KERNEL_PARAM: &str = "probeset.kernel";

/// The line `/init` writes to the second serial port: `PROBESET_RC=<status>`.
pub const RC_PREFIX: &str = "PROBESET_RC=";

/// Builds `<dir>/root/` and packs it into `<dir>/initrd.gz`; returns the archive's path.
pub fn build(dir: &Path, guest: &Guest) -> Result<PathBuf> {
    let root = dir.join("root");
    if root.exists() {
        fs::remove_dir_all(&root).context(|| format!("cannot remove {}", root.display()))?;
    }
    for d in ["bin", "dev", "proc", "sys", "tmp", "etc", "root"] {
        mkdir(&root.join(d))?;
    }
    symlink("bin", root.join("sbin")).context(|| "cannot create sbin symlink".to_owned())?;

    // busybox and one symlink per applet (never `busybox` itself: a self-link fails the boot
    // with error -40, ELOOP).
    copy_file(Path::new(BUSYBOX), &root.join("bin/busybox"))?;
    let applets = output(Command::new(BUSYBOX).arg("--list"))?;
    for applet in applets.lines().map(str::trim) {
        if applet.is_empty() || applet == "busybox" || applet.contains('/') {
            continue;
        }
        let link = root.join("bin").join(applet);
        symlink("busybox", &link).context(|| format!("cannot create {}", link.display()))?;
    }

    // The executables and their libraries, at their host paths.
    for exe in guest.payloads.iter().map(|p| &p.exe).chain(&guest.extras) {
        place(&root, exe)?;
        for lib in shared_libraries(exe)? {
            place(&root, &lib)?;
        }
    }
    for file in &guest.files {
        place(&root, file)?;
    }
    // The loader's cache, so libraries found through it on the host are found in the guest.
    if Path::new("/etc/ld.so.cache").is_file() {
        copy_file(Path::new("/etc/ld.so.cache"), &root.join("etc/ld.so.cache"))?;
    }
    mkdir(&under(&root, &guest.workdir))?;

    let init = root.join("init");
    fs::write(&init, init_script(guest)).context(|| format!("cannot write {}", init.display()))?;
    fs::set_permissions(&init, fs::Permissions::from_mode(0o755))
        .context(|| format!("cannot chmod {}", init.display()))?;

    let archive = dir.join("initrd.gz");
    pack(&root, &archive)?;
    Ok(archive)
}

/// `base` with one kernel's modules appended at `/modules/` (a second archive: the kernel
/// unpacks concatenated archives one after the other), as `<dir>/initrd.gz`.
pub fn with_modules(base: &Path, modules: &[PathBuf], dir: &Path) -> Result<PathBuf> {
    fs::create_dir_all(dir).context(|| format!("cannot create {}", dir.display()))?;
    let root = dir.join("modules-root");
    if root.exists() {
        fs::remove_dir_all(&root).context(|| format!("cannot remove {}", root.display()))?;
    }
    mkdir(&root.join("modules"))?;
    for m in modules {
        let name = m
            .file_name()
            .ok_or_else(|| err(format!("{} has no name", m.display())))?;
        copy_file(m, &root.join("modules").join(name))?;
    }
    let extra = dir.join("modules.gz");
    pack(&root, &extra)?;
    let mut bytes = fs::read(base).context(|| format!("cannot read {}", base.display()))?;
    bytes.extend(fs::read(&extra).context(|| format!("cannot read {}", extra.display()))?);
    let archive = dir.join("initrd.gz");
    fs::write(&archive, bytes).context(|| format!("cannot write {}", archive.display()))?;
    Ok(archive)
}

/// The guest's `/init` (busybox sh): mount what the tests need, run each payload, report the
/// overall status on `/dev/ttyS1` as `PROBESET_RC=<n>`, power off.
pub fn init_script(guest: &Guest) -> String {
    let mut s = String::from(
        r#"#!/bin/sh
# Generated by `cargo xtask vm`: PID 1 of the test VM.
export PATH=/bin:/sbin:/usr/bin:/usr/sbin
mnt() {
    mount -t "$1" "$1" "$2" || echo "probeset-vm: warning: cannot mount $1 on $2"
}
mnt proc /proc
mnt sysfs /sys
mnt devtmpfs /dev
# The initramfs root is already a writable tmpfs: no tmpfs over /tmp, which would hide
# the payloads of a workspace that lives under /tmp.
mkdir -p /tmp
mnt tracefs /sys/kernel/tracing
mnt debugfs /sys/kernel/debug
mnt bpf /sys/fs/bpf
# This kernel's modules that the tests probe (MOD:SYM), appended to the initramfs.
for m in /modules/*.ko; do
    [ -e "$m" ] && { insmod "$m" || echo "probeset-vm: warning: cannot load $m"; }
done
ulimit -l unlimited
PROBESET_KERNEL=unknown
for word in $(cat /proc/cmdline); do
    case "$word" in
"#,
    );
    let _ = writeln!(
        s,
        "        {KERNEL_PARAM}=*) PROBESET_KERNEL=\"${{word#{KERNEL_PARAM}=}}\" ;;"
    );
    s.push_str(
        r#"    esac
done
export PROBESET_VM=1 PROBESET_KERNEL RUST_BACKTRACE=1 HOME=/tmp TMPDIR=/tmp
echo "probeset-vm: kernel $(uname -r), PROBESET_KERNEL=$PROBESET_KERNEL"
"#,
    );
    let _ = writeln!(s, "cd {}", shell_quote(&guest.workdir.to_string_lossy()));
    s.push_str("rc=0\n");
    for payload in &guest.payloads {
        let mut command = shell_quote(&payload.exe.to_string_lossy());
        for arg in &payload.args {
            command.push(' ');
            command.push_str(&shell_quote(arg));
        }
        let _ = write!(
            s,
            r#"echo {start}
{command}
status=$?
echo "probeset-vm: exit status $status"
if [ "$status" -ne 0 ] && [ "$rc" -eq 0 ]; then rc=$status; fi
"#,
            start = shell_quote(&format!("probeset-vm: running {command}")),
        );
    }
    let _ = write!(
        s,
        r#"echo "probeset-vm: overall status $rc"
echo "{RC_PREFIX}$rc" > /dev/ttyS1
sync
poweroff -f
"#
    );
    s
}

/// `path` (absolute) re-rooted under `root`.
fn under(root: &Path, path: &Path) -> PathBuf {
    root.join(path.strip_prefix("/").unwrap_or(path))
}

fn mkdir(dir: &Path) -> Result<()> {
    fs::create_dir_all(dir).context(|| format!("cannot create {}", dir.display()))
}

/// Copies a file's content (following symlinks) and permissions, replacing whatever is there.
fn copy_file(from: &Path, to: &Path) -> Result<()> {
    if let Some(parent) = to.parent() {
        mkdir(parent)?;
    }
    if to.symlink_metadata().is_ok() {
        fs::remove_file(to).context(|| format!("cannot replace {}", to.display()))?;
    }
    fs::copy(from, to)
        .map(drop)
        .context(|| format!("cannot copy {} to {}", from.display(), to.display()))
}

/// Copies a host file to the same path inside `root`.
fn place(root: &Path, host_path: &Path) -> Result<()> {
    copy_file(host_path, &under(root, host_path))
}

/// The shared libraries (and dynamic loader) `ldd` lists for `exe`; none for a static one.
fn shared_libraries(exe: &Path) -> Result<Vec<PathBuf>> {
    let mut cmd = Command::new("ldd");
    cmd.arg(exe);
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .context(|| format!("cannot run `{}`", display_command(&cmd)))?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        // "not a dynamic executable" (static binary or script): nothing to copy.
        let text = format!("{stdout}{}", String::from_utf8_lossy(&out.stderr));
        if text.contains("not a dynamic executable") || text.contains("statically linked") {
            return Ok(Vec::new());
        }
        return Err(err(format!(
            "`{}` failed ({}): {}",
            display_command(&cmd),
            out.status,
            text.trim()
        )));
    }
    parse_ldd(&stdout).map_err(|e| err(format!("{}: {e}", exe.display())))
}

/// Parses `ldd` output into absolute library paths.
fn parse_ldd(text: &str) -> Result<Vec<PathBuf>> {
    let mut libs = Vec::new();
    for line in text.lines().map(str::trim) {
        let target = match line.split_once("=>") {
            Some((name, target)) => {
                let target = target.trim();
                if target.starts_with("not found") {
                    return Err(err(format!("shared library {} not found", name.trim())));
                }
                target
            }
            None => line,
        };
        if let Some(path) = target
            .split_whitespace()
            .next()
            .filter(|p| p.starts_with('/'))
        {
            libs.push(PathBuf::from(path));
        }
    }
    Ok(libs)
}

/// Packs `root` into a gzip'd newc cpio archive at `archive`.
fn pack(root: &Path, archive: &Path) -> Result<()> {
    let mut names = Vec::new();
    list(root, Path::new(""), &mut names)?;
    let file =
        fs::File::create(archive).context(|| format!("cannot create {}", archive.display()))?;
    let mut gzip = Command::new("gzip")
        .arg("-1")
        .stdin(Stdio::piped())
        .stdout(file)
        .spawn()
        .context(|| "cannot run gzip".to_owned())?;
    let gzip_in = gzip.stdin.take().expect("piped stdin");
    let mut cpio = Command::new(BUSYBOX)
        .args(["cpio", "-o", "-H", "newc", "-R", "0:0"])
        .current_dir(root)
        .stdin(Stdio::piped())
        .stdout(gzip_in)
        .stderr(Stdio::piped())
        .spawn()
        .context(|| format!("cannot run {BUSYBOX} cpio"))?;
    let mut cpio_in = cpio.stdin.take().expect("piped stdin");
    let mut list_text = names.join("\n");
    list_text.push('\n');
    let writer = std::thread::spawn(move || cpio_in.write_all(list_text.as_bytes()));
    let cpio_out = cpio
        .wait_with_output()
        .context(|| format!("{BUSYBOX} cpio"))?;
    writer
        .join()
        .map_err(|_| err("cpio writer thread panicked"))?
        .context(|| format!("cannot feed {BUSYBOX} cpio"))?;
    let gzip_status = gzip.wait().context(|| "gzip".to_owned())?;
    if !cpio_out.status.success() {
        return Err(err(format!(
            "{BUSYBOX} cpio failed ({}): {}",
            cpio_out.status,
            String::from_utf8_lossy(&cpio_out.stderr).trim()
        )));
    }
    if !gzip_status.success() {
        return Err(err(format!("gzip -1 failed ({gzip_status})")));
    }
    Ok(())
}

/// Lists `root/rel` recursively, each directory before its contents, as relative paths.
fn list(root: &Path, rel: &Path, names: &mut Vec<String>) -> Result<()> {
    let dir = root.join(rel);
    let mut entries: Vec<_> = fs::read_dir(&dir)
        .context(|| format!("cannot read {}", dir.display()))?
        .filter_map(Result::ok)
        .collect();
    entries.sort_by_key(fs::DirEntry::file_name);
    for entry in entries {
        let rel_path = rel.join(entry.file_name());
        names.push(rel_path.to_string_lossy().into_owned());
        let file_type = entry
            .file_type()
            .context(|| format!("cannot stat {}", entry.path().display()))?;
        if file_type.is_dir() {
            list(root, &rel_path, names)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ldd_output() {
        let text = "\tlinux-vdso.so.1 (0x00007ffd)\n\tlibgcc_s.so.1 => /lib/x86_64-linux-gnu/libgcc_s.so.1 (0x00007f)\n\tlibc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x00007f)\n\t/lib64/ld-linux-x86-64.so.2 (0x00007f)\n";
        assert_eq!(
            parse_ldd(text).unwrap(),
            [
                PathBuf::from("/lib/x86_64-linux-gnu/libgcc_s.so.1"),
                PathBuf::from("/lib/x86_64-linux-gnu/libc.so.6"),
                PathBuf::from("/lib64/ld-linux-x86-64.so.2"),
            ]
        );
        assert!(parse_ldd("\tlibfoo.so.1 => not found\n").is_err());
    }

    #[test]
    fn init_runs_payloads_and_reports() {
        let guest = Guest {
            payloads: vec![Payload {
                exe: PathBuf::from("/w/target/debug/deps/kprobe-1a"),
                args: vec!["--test-threads=1".into(), "a b".into()],
            }],
            workdir: PathBuf::from("/w"),
            extras: Vec::new(),
            files: Vec::new(),
        };
        let script = init_script(&guest);
        assert!(script.starts_with("#!/bin/sh\n"));
        assert!(script.contains("\n/w/target/debug/deps/kprobe-1a --test-threads=1 'a b'\n"));
        assert!(
            script.contains("probeset.kernel=*) PROBESET_KERNEL=\"${word#probeset.kernel=}\" ;;")
        );
        assert!(script.contains("export PROBESET_VM=1 PROBESET_KERNEL RUST_BACKTRACE=1"));
        assert!(script.contains("ulimit -l unlimited"));
        assert!(script.contains("mnt bpf /sys/fs/bpf"));
        assert!(script.contains("echo \"PROBESET_RC=$rc\" > /dev/ttyS1"));
        assert!(script.trim_end().ends_with("poweroff -f"));
        // Nothing the script prints may look like a skip marker or a kernel oops.
        assert!(!script.contains(crate::libtest::SKIP_MARKER));
        assert!(!script.contains("BUG:"));
    }
}
