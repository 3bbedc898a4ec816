//! `cargo xtask bench`: the side-by-side benchmark of `bench/` (probeset, a raw-syscall
//! baseline, libbpf-rs, aya, bpftrace), with the Debian packages it needs.

use crate::apt::Apt;
use crate::util::{cargo, display_command, workspace_root, Context, Result};

/// What the driver needs: clang for the peers' BPF object, gcc for the target program,
/// bpftrace, and the build dependencies of libbpf-rs's vendored libbpf.
const PACKAGES: [&str; 6] = [
    "clang",
    "gcc",
    "bpftrace",
    "libelf-dev",
    "zlib1g-dev",
    "pkg-config",
];

/// Installs what is missing, then runs `cargo run --release --manifest-path bench/Cargo.toml
/// -- ARGS` (`--quick` for the small subset). Whether it succeeded.
pub fn run(args: &[String], apt: &mut Apt) -> Result<bool> {
    apt.ensure_packages(&PACKAGES)?;
    let mut cmd = cargo();
    cmd.current_dir(workspace_root())
        .args([
            "run",
            "--release",
            "--manifest-path",
            "bench/Cargo.toml",
            "--",
        ])
        .args(args);
    eprintln!("xtask: $ {}", display_command(&cmd));
    let status = cmd
        .status()
        .context(|| format!("cannot run `{}`", display_command(&cmd)))?;
    Ok(status.success())
}
