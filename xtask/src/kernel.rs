//! The kernel matrix of the VM tier, and fetching a kernel image from Debian's archive.
//!
//! Each entry names a Debian meta package. At run time the meta package is resolved to the
//! versioned image package it depends on (`apt-cache depends`), which is downloaded with
//! `apt-get download`, unpacked with `dpkg-deb -x`, and cached under
//! `target/vm/kernels/<package>_<version>/boot/vmlinuz-*`. A second run with the same package
//! lists needs no network. Nothing is installed: the host's `/boot` is never touched.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::apt::Apt;
use crate::util::{err, run, Context, Result};

/// The kernels `cargo xtask vm` boots when no `--kernel` is given: (short name, Debian meta
/// package). Both come from Debian bookworm (the apt sources of this kind of machine).
///
/// To add a kernel, add a line here with a meta package whose image has `CONFIG_KPROBES`,
/// `CONFIG_BPF_EVENTS`, and serial console, initrd, tmpfs, tracefs and bpffs built in (the
/// initramfs loads no modules). No 5.10 image is in the bookworm archive (checked with
/// `apt-cache search linux-image-5.10` and `apt-cache policy`), so 5.10 is not in the matrix.
pub const MATRIX: &[(&str, &str)] = &[
    ("6.12", "linux-image-6.12-cloud-amd64"),
    ("6.1", "linux-image-cloud-amd64"),
];

/// Name of the file that marks a complete cache entry (written last).
const MARKER: &str = "probeset-kernel.txt";

/// A kernel to boot, as named on the command line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Spec {
    /// The short name (`6.12`), exported to the guest as `PROBESET_KERNEL`.
    pub name: String,
    /// The Debian package to resolve (a meta package or a versioned `linux-image-*`).
    pub package: String,
}

impl Spec {
    /// The whole matrix.
    pub fn matrix() -> Vec<Spec> {
        MATRIX
            .iter()
            .map(|(name, package)| Spec {
                name: (*name).to_owned(),
                package: (*package).to_owned(),
            })
            .collect()
    }

    /// Looks a `--kernel` argument up: a short name from [`MATRIX`], or any `linux-image-*`
    /// package name (meta or versioned), for trying a kernel before adding it to the matrix.
    pub fn lookup(arg: &str) -> Result<Spec> {
        if let Some((name, package)) = MATRIX.iter().find(|(name, _)| *name == arg) {
            return Ok(Spec {
                name: (*name).to_owned(),
                package: (*package).to_owned(),
            });
        }
        if let Some(rest) = arg.strip_prefix("linux-image-") {
            return Ok(Spec {
                name: rest.to_owned(),
                package: arg.to_owned(),
            });
        }
        let names: Vec<&str> = MATRIX.iter().map(|(name, _)| *name).collect();
        Err(err(format!(
            "unknown kernel `{arg}`: use one of {} or a Debian package name `linux-image-...`",
            names.join(", ")
        )))
    }
}

/// A kernel image ready to boot.
#[derive(Debug, Clone)]
pub struct Kernel {
    /// The spec it came from.
    pub spec: Spec,
    /// The kernel release (`uname -r`), e.g. `6.12.117+deb12-cloud-amd64`.
    pub release: String,
    /// The Debian package version, e.g. `6.12.117-1~deb12u1`.
    pub version: String,
    /// The bzImage to pass to qemu's `-kernel`.
    pub vmlinuz: PathBuf,
    /// Modules of this kernel the guest loads before the tests (`MODULES`, uncompressed).
    pub modules: Vec<PathBuf>,
}

/// The modules the guest loads (from the image's own `lib/modules/`): small, with no
/// dependencies, so the tests have a module's functions to probe as `MOD:SYM`.
const MODULES: [&str; 1] = ["kernel/drivers/net/dummy.ko"];

/// Copies `MODULES` out of an unpacked image (`root`) into `out/modules/`, uncompressing
/// `.ko.xz`/`.ko.zst`.
fn keep_modules(root: &Path, out: &Path) -> Result<()> {
    let modules = out.join("modules");
    fs::create_dir_all(&modules).context(|| format!("cannot create {}", modules.display()))?;
    let lib = root.join("lib/modules");
    let release_dir = fs::read_dir(&lib)
        .context(|| format!("cannot read {}", lib.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .find(|p| p.is_dir())
        .ok_or_else(|| err(format!("{} holds no kernel release", lib.display())))?;
    for module in MODULES {
        let base = release_dir.join(module);
        let name = base.file_name().expect("a module has a file name");
        let target = modules.join(name);
        if base.is_file() {
            fs::copy(&base, &target).context(|| format!("cannot copy {}", base.display()))?;
            continue;
        }
        let (packed, tool) = [("xz", "xz"), ("zst", "zstd")]
            .into_iter()
            .map(|(ext, tool)| (base.with_extension(format!("ko.{ext}")), tool))
            .find(|(p, _)| p.is_file())
            .ok_or_else(|| err(format!("the image has no {module}")))?;
        let bytes = output_bytes(Command::new(tool).arg("-dc").arg(&packed))?;
        fs::write(&target, bytes).context(|| format!("cannot write {}", target.display()))?;
    }
    Ok(())
}

/// The standard output of `cmd`, which must succeed.
fn output_bytes(cmd: &mut Command) -> Result<Vec<u8>> {
    let out = cmd
        .output()
        .context(|| format!("cannot run {}", crate::util::display_command(cmd)))?;
    if !out.status.success() {
        return Err(err(format!(
            "{} failed: {}",
            crate::util::display_command(cmd),
            String::from_utf8_lossy(&out.stderr)
        )));
    }
    Ok(out.stdout)
}

/// Resolves, downloads (unless cached) and unpacks the kernel for `spec` under `cache`.
///
/// Runs `apt-get update` (once) when apt knows nothing about the package or a download fails
/// (stale lists name versions the archive no longer serves). When the archive cannot be
/// reached at all, falls back to the newest cached image for the same package, with a warning.
pub fn prepare(spec: &Spec, apt: &mut Apt, cache: &Path) -> Result<Kernel> {
    fs::create_dir_all(cache).context(|| format!("cannot create {}", cache.display()))?;
    let first = attempt(spec, cache);
    let error = match first {
        Ok(kernel) => return Ok(kernel),
        Err(e) if apt.updated() => e,
        Err(e) => {
            eprintln!("xtask: {e}\nxtask: refreshing the package lists and trying again");
            match apt.update().and_then(|()| attempt(spec, cache)) {
                Ok(kernel) => return Ok(kernel),
                Err(e) => e,
            }
        }
    };
    match newest_cached(spec, cache) {
        Some(kernel) => {
            eprintln!(
                "xtask: warning: {error}\nxtask: warning: using the cached {} {} instead",
                spec.package, kernel.version
            );
            Ok(kernel)
        }
        None => Err(err(format!("kernel {}: {error}", spec.name))),
    }
}

/// One try: resolve with the current package lists, then use the cache or download.
fn attempt(spec: &Spec, cache: &Path) -> Result<Kernel> {
    let (package, version) = resolve(&spec.package)?;
    let dir = cache.join(format!("{package}_{version}"));
    if let Some(kernel) = load(spec, &dir) {
        return Ok(kernel);
    }
    eprintln!(
        "xtask: kernel {}: downloading {package} {version}",
        spec.name
    );
    fetch(&package, &version, spec, cache, &dir)?;
    load(spec, &dir).ok_or_else(|| err(format!("{} holds no boot/vmlinuz-*", dir.display())))
}

/// Resolves a package to `(versioned image package, candidate version)`.
fn resolve(package: &str) -> Result<(String, String)> {
    let depends = Apt::cache(&["depends", package])
        .map_err(|_| err(format!("apt knows no package `{package}`")))?;
    let image = image_dependency(&depends).unwrap_or_else(|| package.to_owned());
    let policy = Apt::cache(&["policy", &image])?;
    let version = candidate(&policy)
        .ok_or_else(|| err(format!("apt has no installable version of `{image}`")))?;
    Ok((image, version))
}

/// The `linux-image-*` package a meta package depends on, from `apt-cache depends` output.
fn image_dependency(depends: &str) -> Option<String> {
    depends.lines().find_map(|line| {
        let dep = line
            .trim()
            .trim_start_matches('|')
            .strip_prefix("Depends:")?
            .trim();
        dep.starts_with("linux-image-").then(|| dep.to_owned())
    })
}

/// The `Candidate:` version from `apt-cache policy` output.
fn candidate(policy: &str) -> Option<String> {
    policy.lines().find_map(|line| {
        let v = line.trim().strip_prefix("Candidate:")?.trim();
        (!v.is_empty() && v != "(none)").then(|| v.to_owned())
    })
}

/// Downloads and unpacks `package=version`, keeping only `boot/`, into `dir` (atomically).
fn fetch(package: &str, version: &str, spec: &Spec, cache: &Path, dir: &Path) -> Result<()> {
    let tmp = cache.join(format!(".tmp-{package}_{version}-{}", std::process::id()));
    let _ = fs::remove_dir_all(&tmp);
    fs::create_dir_all(&tmp).context(|| format!("cannot create {}", tmp.display()))?;
    let result = (|| {
        Apt::download(package, version, &tmp)?;
        let deb = fs::read_dir(&tmp)
            .context(|| format!("cannot read {}", tmp.display()))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .find(|p| p.extension().is_some_and(|x| x == "deb"))
            .ok_or_else(|| {
                err(format!(
                    "apt-get download left no .deb in {}",
                    tmp.display()
                ))
            })?;
        let root = tmp.join("root");
        run(Command::new("dpkg-deb").arg("-x").arg(&deb).arg(&root))?;
        let out = tmp.join("out");
        fs::create_dir_all(&out).context(|| format!("cannot create {}", out.display()))?;
        fs::rename(root.join("boot"), out.join("boot"))
            .context(|| format!("{} has no boot/ directory", deb.display()))?;
        keep_modules(&root, &out)?;
        fs::write(
            out.join(MARKER),
            format!(
                "spec={}\npackage={package}\nversion={version}\n",
                spec.package
            ),
        )
        .context(|| format!("cannot write into {}", out.display()))?;
        let _ = fs::remove_dir_all(dir);
        fs::rename(&out, dir).context(|| format!("cannot create {}", dir.display()))
    })();
    let _ = fs::remove_dir_all(&tmp);
    result
}

/// A complete cache entry, if `dir` is one.
fn load(spec: &Spec, dir: &Path) -> Option<Kernel> {
    let marker = fs::read_to_string(dir.join(MARKER)).ok()?;
    let field = |key: &str| {
        marker
            .lines()
            .find_map(|l| l.strip_prefix(key)?.strip_prefix('=').map(str::to_owned))
    };
    let version = field("version")?;
    let vmlinuz = fs::read_dir(dir.join("boot"))
        .ok()?
        .filter_map(Result::ok)
        .map(|e| e.path())
        .find(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("vmlinuz-"))
        })?;
    let release = vmlinuz
        .file_name()?
        .to_str()?
        .strip_prefix("vmlinuz-")?
        .to_owned();
    // An entry unpacked before modules were kept is incomplete: fetched again.
    let modules: Vec<PathBuf> = MODULES
        .iter()
        .map(|m| {
            dir.join("modules")
                .join(Path::new(m).file_name().expect("a file name"))
        })
        .collect();
    if !modules.iter().all(|m| m.is_file()) {
        return None;
    }
    Some(Kernel {
        spec: spec.clone(),
        release,
        version,
        vmlinuz,
        modules,
    })
}

/// The most recently unpacked cache entry that was fetched for the same package name.
fn newest_cached(spec: &Spec, cache: &Path) -> Option<Kernel> {
    let mut entries: Vec<(std::time::SystemTime, Kernel)> = fs::read_dir(cache)
        .ok()?
        .filter_map(Result::ok)
        .filter_map(|e| {
            let dir = e.path();
            let marker = fs::read_to_string(dir.join(MARKER)).ok()?;
            marker
                .lines()
                .any(|l| l.strip_prefix("spec=") == Some(spec.package.as_str()))
                .then_some(())?;
            let mtime = fs::metadata(dir.join(MARKER)).ok()?.modified().ok()?;
            Some((mtime, load(spec, &dir)?))
        })
        .collect();
    entries.sort_by_key(|(mtime, _)| *mtime);
    entries.pop().map(|(_, kernel)| kernel)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn meta_package_dependency() {
        let out =
            "linux-image-6.12-cloud-amd64\n  Depends: linux-image-6.12.117+deb12-cloud-amd64\n";
        assert_eq!(
            image_dependency(out).as_deref(),
            Some("linux-image-6.12.117+deb12-cloud-amd64")
        );
        let versioned = "linux-image-6.1.0-56-cloud-amd64\n  Depends: kmod\n |Depends: initramfs-tools\n  Conflicts: linux-image-6.1.0-56-cloud-amd64-unsigned\n";
        assert_eq!(image_dependency(versioned), None);
    }

    #[test]
    fn policy_candidate() {
        let out = "linux-image-6.1.0-56-cloud-amd64:\n  Installed: (none)\n  Candidate: 6.1.192-2\n  Version table:\n";
        assert_eq!(candidate(out).as_deref(), Some("6.1.192-2"));
        assert_eq!(
            candidate("x:\n  Installed: (none)\n  Candidate: (none)\n"),
            None
        );
        assert_eq!(candidate(""), None);
    }

    #[test]
    fn lookup_names() {
        assert_eq!(
            Spec::lookup("6.1").unwrap().package,
            "linux-image-cloud-amd64"
        );
        assert_eq!(
            Spec::lookup("linux-image-6.12.117+deb12-cloud-amd64")
                .unwrap()
                .name,
            "6.12.117+deb12-cloud-amd64"
        );
        assert!(Spec::lookup("5.10").is_err());
    }
}
