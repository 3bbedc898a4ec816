//! Debian's apt, used for the host tools (qemu, busybox-static) and the guest kernels.
//!
//! The host's `/boot` is never touched: kernels are fetched with `apt-get download` and unpacked
//! with `dpkg-deb -x` (see `kernel.rs`).

use std::path::Path;
use std::process::Command;

use crate::util::{err, on_path, output, run, Result};

/// The packages that give the host what the VM tier runs.
pub const HOST_PACKAGES: [&str; 2] = ["qemu-system-x86", "busybox-static"];

/// The qemu binary for the guest.
pub const QEMU: &str = "qemu-system-x86_64";

/// Where `busybox-static` puts its binary; copied into the initramfs as-is.
pub const BUSYBOX: &str = "/bin/busybox";

/// Seconds apt waits for another apt/dpkg run to release its lock instead of failing at once.
const LOCK_TIMEOUT: &str = "DPkg::Lock::Timeout=300";

/// Runs apt, remembering whether `apt-get update` already ran in this process.
#[derive(Debug, Default)]
pub struct Apt {
    updated: bool,
}

impl Apt {
    /// Whether `apt-get update` ran in this process.
    pub fn updated(&self) -> bool {
        self.updated
    }

    /// `apt-get update`, at most once per process.
    pub fn update(&mut self) -> Result<()> {
        if self.updated {
            return Ok(());
        }
        need_root("apt-get update")?;
        run(Command::new("apt-get").args(["-o", LOCK_TIMEOUT, "update"])).map_err(|e| {
            err(format!(
                "{e}\n(the package lists could not be refreshed: is Debian's archive reachable?)"
            ))
        })?;
        self.updated = true;
        Ok(())
    }

    /// Installs `qemu-system-x86` and `busybox-static` unless `qemu-system-x86_64` and
    /// `/bin/busybox` are already there.
    pub fn ensure_host_tools(&mut self) -> Result<()> {
        let missing: Vec<&str> = [
            (!on_path(QEMU)).then_some(QEMU),
            (!Path::new(BUSYBOX).is_file()).then_some(BUSYBOX),
        ]
        .into_iter()
        .flatten()
        .collect();
        if missing.is_empty() {
            return Ok(());
        }
        eprintln!(
            "xtask: {} missing; installing {}",
            missing.join(" and "),
            HOST_PACKAGES.join(" ")
        );
        need_root(&format!("apt-get install {}", HOST_PACKAGES.join(" ")))?;
        self.update()?;
        let had_qemu_img = on_path("qemu-img");
        install(&HOST_PACKAGES)?;
        // The `rust` machine image ships qemu-utils (qemu-img) from bookworm-backports; apt
        // removes it to install bookworm's qemu-system-x86. Put bookworm's qemu-utils back so
        // that qemu-img stays available.
        if had_qemu_img && !on_path("qemu-img") {
            eprintln!(
                "xtask: apt removed qemu-utils (a newer qemu-img) for qemu-system-x86; \
                 installing the matching qemu-utils so that qemu-img stays available"
            );
            install(&["qemu-utils"])?;
        }
        if !on_path(QEMU) || !Path::new(BUSYBOX).is_file() {
            return Err(err(format!(
                "installed {} but {QEMU} or {BUSYBOX} is still missing",
                HOST_PACKAGES.join(" ")
            )));
        }
        Ok(())
    }

    /// Installs whichever of `packages` is not installed (by `dpkg-query`).
    pub fn ensure_packages(&mut self, packages: &[&str]) -> Result<()> {
        let missing: Vec<&str> = packages
            .iter()
            .copied()
            .filter(|p| !is_installed(p))
            .collect();
        if missing.is_empty() {
            return Ok(());
        }
        eprintln!("xtask: installing {}", missing.join(" "));
        need_root(&format!("apt-get install {}", missing.join(" ")))?;
        if install(&missing).is_err() {
            // Stale or missing package lists: refresh once and try again.
            self.update()?;
            install(&missing)?;
        }
        Ok(())
    }

    /// `apt-cache <args>`, quietly; the standard output.
    pub fn cache(args: &[&str]) -> Result<String> {
        output(Command::new("apt-cache").args(args))
    }

    /// `apt-get download <package>=<version>` into `dir`.
    pub fn download(package: &str, version: &str, dir: &Path) -> Result<()> {
        run(Command::new("apt-get")
            .current_dir(dir)
            .args(["-o", "APT::Sandbox::User=root", "download"])
            .arg(format!("{package}={version}")))
    }
}

/// `apt-get install -y --no-install-recommends <packages>`.
/// Whether Debian package `package` is installed.
fn is_installed(package: &str) -> bool {
    Command::new("dpkg-query")
        .args(["-W", "-f=${Status}", package])
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains("install ok installed"))
}

fn install(packages: &[&str]) -> Result<()> {
    run(Command::new("apt-get")
        .env("DEBIAN_FRONTEND", "noninteractive")
        .args([
            "-o",
            LOCK_TIMEOUT,
            "install",
            "-y",
            "--no-install-recommends",
        ])
        .args(packages))
}

/// Fails with a clear message when `what` needs root and this process is not root.
fn need_root(what: &str) -> Result<()> {
    if crate::util::is_root() {
        Ok(())
    } else {
        Err(err(format!(
            "`{what}` needs root; run as root (or install {} by hand and run once as root to \
             cache the kernels)",
            HOST_PACKAGES.join(" ")
        )))
    }
}
