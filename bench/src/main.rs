//! Side-by-side attach/detach benchmark: probeset (multi link, per-probe set, naive loop of
//! links), the raw-syscall floor (`probeset::raw`), libbpf-rs, aya and bpftrace.
//!
//! `cargo xtask bench [--quick]` runs both parts: uprobes on the host, then kprobes in the
//! 6.12 VM (this host has no kprobes). By hand:
//!
//! - `probeset-bench [--quick] [--only SUBSTR]`: uprobes, here;
//! - `probeset-bench --setup`: builds the fixtures only;
//! - `probeset-bench --kprobes [--quick] [--only SUBSTR]`: kprobes, on a kernel that has them
//!   (in the VM; the fixtures must have been built on the host), printing one `OUTCOME` line
//!   per configuration;
//! - `probeset-bench --kprobe-results CONSOLE_LOG`: reads those lines back on the host and
//!   writes the kprobe results.
//!
//! The driver builds its fixtures (a C target with 1000 distinct functions, the peers' BPF
//! object), then runs every configuration in a child process of its own (the same binary with
//! `--child`), so each gets a fresh process and its peak RSS (`VmHWM`) is its own. Each run is
//! verified: the target calls each of its functions once, so every probed slot must read 1
//! after attach, and nothing may count after detach. Results go to `target/bench/`.

mod churn;
mod kprobes;
mod peers;
mod plot;
mod tick;

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::io::{BufRead, BufReader, Write as _};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// Functions in the generated target binary.
pub const TARGET_FUNCTIONS: usize = 1000;
/// Slots of every counter map (libc has fewer eligible functions than this).
pub const SLOTS: u32 = 8192;
/// `getpid` calls a kprobe run makes, and must see counted.
pub const GETPIDS: u64 = 10;

/// What is probed: functions of user binaries (on the host) or of the kernel (in the VM).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Kind {
    Uprobe,
    Kprobe,
}

impl Kind {
    pub fn name(self) -> &'static str {
        match self {
            Kind::Uprobe => "uprobe",
            Kind::Kprobe => "kprobe",
        }
    }

    fn parse(s: &str) -> Kind {
        match s {
            "uprobe" => Kind::Uprobe,
            "kprobe" => Kind::Kprobe,
            _ => panic!("kind {s}"),
        }
    }
}

/// One system under test.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Config {
    ProbesetMulti,
    RawMulti,
    LibbpfMulti,
    ProbesetSet,
    ProbesetLinks,
    RawPerf,
    LibbpfPerProbe,
    AyaPerProbe,
    Bpftrace,
    ProbesetChurn,
    ProbesetChurnPaced,
    LibbpfChurnPerProbe,
    LibbpfChurnMulti,
    ProbesetTick,
    LibbpfTick,
}

impl Config {
    const ALL: [Config; 15] = [
        Config::ProbesetMulti,
        Config::RawMulti,
        Config::LibbpfMulti,
        Config::ProbesetSet,
        Config::ProbesetLinks,
        Config::RawPerf,
        Config::LibbpfPerProbe,
        Config::AyaPerProbe,
        Config::Bpftrace,
        Config::ProbesetChurn,
        Config::ProbesetChurnPaced,
        Config::LibbpfChurnPerProbe,
        Config::LibbpfChurnMulti,
        Config::ProbesetTick,
        Config::LibbpfTick,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Config::ProbesetMulti => "probeset-multi",
            Config::RawMulti => "raw-multi",
            Config::LibbpfMulti => "libbpf-rs-multi",
            Config::ProbesetSet => "probeset-set",
            Config::ProbesetLinks => "probeset-links",
            Config::RawPerf => "raw-perf",
            Config::LibbpfPerProbe => "libbpf-rs",
            Config::AyaPerProbe => "aya",
            Config::Bpftrace => "bpftrace",
            Config::ProbesetChurn => "probeset-churn",
            Config::ProbesetChurnPaced => "probeset-churn-paced",
            Config::LibbpfChurnPerProbe => "libbpf-rs-churn",
            Config::LibbpfChurnMulti => "libbpf-rs-churn-multi",
            Config::ProbesetTick => "probeset-tick",
            Config::LibbpfTick => "libbpf-rs-tick",
        }
    }

    /// A tick configuration (`tick.rs`): times a detach and the runtime's ticks during it.
    pub fn is_tick(self) -> bool {
        matches!(self, Config::ProbesetTick | Config::LibbpfTick)
    }

    /// A churn configuration (`churn.rs`): times converging a stream of changes.
    pub fn is_churn(self) -> bool {
        matches!(
            self,
            Config::ProbesetChurn
                | Config::ProbesetChurnPaced
                | Config::LibbpfChurnPerProbe
                | Config::LibbpfChurnMulti
        )
    }

    /// The systems a configuration's ratios are taken against.
    fn peers(self) -> &'static [Config] {
        if self.is_tick() {
            &[Config::LibbpfTick]
        } else if self.is_churn() {
            &[Config::LibbpfChurnPerProbe, Config::LibbpfChurnMulti]
        } else {
            &[
                Config::LibbpfMulti,
                Config::LibbpfPerProbe,
                Config::AyaPerProbe,
                Config::Bpftrace,
            ]
        }
    }

    fn from_name(s: &str) -> Option<Config> {
        Config::ALL.into_iter().find(|c| c.name() == s)
    }

    /// One multi link for the whole batch (cold and warm are timed apart).
    pub fn is_multi(self) -> bool {
        matches!(
            self,
            Config::ProbesetMulti | Config::RawMulti | Config::LibbpfMulti
        )
    }

    /// The raw baseline of the same kind of link (none for churn).
    fn baseline(self) -> Option<Config> {
        if self.is_churn() || self.is_tick() {
            None
        } else if self.is_multi() {
            Some(Config::RawMulti)
        } else {
            Some(Config::RawPerf)
        }
    }
}

/// How many probes, and where.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Size {
    /// The first N functions of the generated target (uprobes) or of the chosen kernel
    /// functions (kprobes).
    Target(usize),
    /// Every eligible function of libc (not an ifunc, non-zero size, distinct offsets).
    Libc,
}

impl Size {
    fn label(self) -> String {
        match self {
            Size::Target(n) => n.to_string(),
            Size::Libc => "libc".to_string(),
        }
    }

    fn parse(s: &str) -> Size {
        if s == "libc" {
            Size::Libc
        } else {
            Size::Target(s.parse().expect("size"))
        }
    }
}

/// Where the fixtures are.
#[derive(Clone, Debug)]
pub struct Fixtures {
    /// The C target: `f_0000` ... `f_0999`, each called once by `main`.
    pub target: PathBuf,
    /// The peers' object with a `uprobe` and a `uprobe.multi` program.
    pub obj_multi: PathBuf,
    /// The same without the `uprobe.multi` program (aya 0.14 rejects that section).
    pub obj_plain: PathBuf,
    /// The kprobe flavours of the two (`kprobe` and `kprobe.multi` sections).
    pub kobj_multi: PathBuf,
    pub kobj_plain: PathBuf,
    /// The system libc, canonical path.
    pub libc: PathBuf,
}

/// What one run measured.
#[derive(Clone, Debug)]
pub struct Run {
    /// "cold" (after an idle pause), "warm" (right after another attach/detach) or "run".
    pub phase: &'static str,
    pub attach: Duration,
    pub detach: Duration,
    /// Probes attached (as verified).
    pub probes: usize,
    /// For the tick configurations: the runtime's ticks during the detach.
    pub ticks: Option<tick::Ticks>,
}

impl Fixtures {
    /// The peers' object for a kind of probe, with or without its multi program.
    pub fn object(&self, kind: Kind, multi: bool) -> &Path {
        match (kind, multi) {
            (Kind::Uprobe, true) => &self.obj_multi,
            (Kind::Uprobe, false) => &self.obj_plain,
            (Kind::Kprobe, true) => &self.kobj_multi,
            (Kind::Kprobe, false) => &self.kobj_plain,
        }
    }
}

/// `target/bench` of the workspace (no `..` in it: the VM has only the directories of the
/// files it was given).
fn out_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("bench/ has a parent")
        .join("target/bench")
}

fn run_cmd(cmd: &mut Command) {
    let status = cmd.status().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(status.success(), "{cmd:?} failed: {status}");
}

/// Builds the target and the BPF objects (a second or two; done on every start so the
/// fixtures always match the sources).
fn setup() -> Fixtures {
    let dir = out_dir();
    std::fs::create_dir_all(&dir).unwrap();
    let mut c =
        String::from("/* generated by bench/src/main.rs */\nvolatile unsigned long sink;\n");
    for i in 0..TARGET_FUNCTIONS {
        // Distinct bodies, so no identical-code folding can merge two functions.
        writeln!(
            c,
            "__attribute__((noinline, noipa)) void f_{i:04}(void) {{ sink += {}; }}",
            i + 1
        )
        .unwrap();
    }
    c.push_str("static void (*const table[])(void) = {\n");
    for i in 0..TARGET_FUNCTIONS {
        writeln!(c, "  f_{i:04},").unwrap();
    }
    c.push_str("};\nint main(void) {\n  for (unsigned i = 0; i < sizeof table / sizeof table[0]; i++) table[i]();\n  return 0;\n}\n");
    let src = dir.join("target.c");
    std::fs::write(&src, c).unwrap();
    let target = dir.join("target");
    run_cmd(
        Command::new("gcc")
            .args(["-O2", "-fno-ipa-icf", "-o"])
            .arg(&target)
            .arg(&src),
    );
    let bpf_src = Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/count.bpf.c");
    let fx = setup_paths();
    for (obj, defines) in [
        (&fx.obj_multi, &["-DWITH_MULTI"][..]),
        (&fx.obj_plain, &[][..]),
        (&fx.kobj_multi, &["-DWITH_MULTI", "-DKPROBE"][..]),
        (&fx.kobj_plain, &["-DKPROBE"][..]),
    ] {
        let mut cmd = Command::new("clang");
        cmd.args([
            "-O2",
            "-g",
            "-target",
            "bpf",
            "-I/usr/include/x86_64-linux-gnu",
            "-c",
        ])
        .arg(&bpf_src)
        .arg("-o")
        .arg(obj)
        .args(defines);
        run_cmd(&mut cmd);
    }
    assert_eq!(fx.target, target);
    fx
}

/// The probe points of a size: (binary, symbol if any, file offset); for kprobes the binary
/// is empty and every point a symbol.
pub fn points(fx: &Fixtures, kind: Kind, size: Size) -> (PathBuf, Vec<(Option<String>, u64)>) {
    if kind == Kind::Kprobe {
        let Size::Target(n) = size else {
            panic!("kprobe sizes are counts")
        };
        let text = std::fs::read_to_string(out_dir().join("kprobe_symbols.txt"))
            .expect("kprobe symbols (written by the parent's setup)");
        let pts: Vec<_> = text
            .lines()
            .take(n)
            .map(|l| (Some(l.to_owned()), 0))
            .collect();
        assert_eq!(pts.len(), n, "only {} kernel functions chosen", pts.len());
        return (PathBuf::new(), pts);
    }
    match size {
        Size::Target(n) => {
            let syms = probeset::elf::ElfSymbols::load(&fx.target).unwrap();
            let pts = (0..n)
                .map(|i| {
                    let name = format!("f_{i:04}");
                    let off = syms.resolve(&name).unwrap();
                    (Some(name), off)
                })
                .collect();
            (fx.target.clone(), pts)
        }
        Size::Libc => {
            let text = std::fs::read_to_string(out_dir().join("libc_offsets.txt"))
                .expect("libc offsets (written by the parent's setup)");
            let offs = text.lines().map(|l| l.parse().unwrap());
            (fx.libc.clone(), offs.map(|o| (None, o)).collect())
        }
    }
}

/// libc's eligible functions (not an ifunc, non-zero size, distinct offsets), less those the
/// kernel refuses to probe (found by bisecting a raw multi link; untimed setup). Written to
/// `libc_offsets.txt`; returns (kept, refused).
fn libc_setup(fx: &Fixtures) -> (usize, Vec<u64>) {
    let syms = probeset::elf::ElfSymbols::load(&fx.libc).unwrap();
    let mut offs: Vec<u64> = syms
        .functions()
        .iter()
        .filter(|f| !f.ifunc && f.size > 0)
        .map(|f| f.offset)
        .collect();
    offs.sort_unstable();
    offs.dedup();
    offs.truncate(SLOTS as usize);
    let counter =
        probeset::counter::Counter::load(probeset::counter::Flavour::UprobeMulti, 1).unwrap();
    let path = std::ffi::CString::new(std::os::unix::ffi::OsStrExt::as_bytes(fx.libc.as_os_str()))
        .unwrap();
    let accepts = |o: &[u64]| {
        probeset::raw::link_uprobe_multi(counter.program(), &path, o, &vec![0; o.len()], false)
            .is_ok()
    };
    fn bisect(o: &[u64], accepts: &dyn Fn(&[u64]) -> bool, bad: &mut Vec<u64>) {
        if o.is_empty() || accepts(o) {
            return;
        }
        if o.len() == 1 {
            bad.push(o[0]);
            return;
        }
        let (a, b) = o.split_at(o.len() / 2);
        bisect(a, accepts, bad);
        bisect(b, accepts, bad);
    }
    let mut bad = Vec::new();
    bisect(&offs, &accepts, &mut bad);
    offs.retain(|o| !bad.contains(o));
    let text: String = offs.iter().map(|o| format!("{o}\n")).collect();
    std::fs::write(out_dir().join("libc_offsets.txt"), text).unwrap();
    (offs.len(), bad)
}

/// Uprobes: runs the target once (each `f_i` called once). Kprobes: calls `getpid`
/// [`GETPIDS`] times.
pub fn exercise(fx: &Fixtures, kind: Kind) {
    match kind {
        Kind::Uprobe => run_cmd(&mut Command::new(&fx.target)),
        Kind::Kprobe => {
            for _ in 0..GETPIDS {
                std::hint::black_box(nix::unistd::getpid());
            }
        }
    }
}

/// Checks the counts read after the exercise: each probed slot of the target exactly 1; for
/// libc (counted system-wide, by every process) something counted; for kprobes the `getpid`
/// slot (0) at least [`GETPIDS`] (other processes may call it too).
pub fn verify_attached(kind: Kind, size: Size, counts: &[u64], n: usize) -> Result<(), String> {
    if kind == Kind::Kprobe {
        return if counts[0] >= GETPIDS {
            Ok(())
        } else {
            Err(format!(
                "the __x64_sys_getpid probe counted {} of {GETPIDS} calls",
                counts[0]
            ))
        };
    }
    match size {
        Size::Target(_) => {
            let bad: Vec<usize> = (0..n).filter(|&i| counts[i] != 1).collect();
            let extra: u64 = counts[n..].iter().sum();
            if bad.is_empty() && extra == 0 {
                Ok(())
            } else {
                Err(format!(
                    "{} of {n} slots not exactly 1 (first {:?}: {:?}); {extra} counts past slot {n}",
                    bad.len(),
                    bad.first(),
                    bad.first().map(|&i| counts[i])
                ))
            }
        }
        Size::Libc => {
            let hit = counts[..n].iter().filter(|&&c| c > 0).count();
            if hit > 0 {
                Ok(())
            } else {
                Err("no libc function counted".into())
            }
        }
    }
}

/// After detach nothing may count any more.
pub fn verify_detached(before: &[u64], after: &[u64]) -> Result<(), String> {
    if before == after {
        Ok(())
    } else {
        let sum = |v: &[u64]| v.iter().sum::<u64>();
        Err(format!(
            "{} counts after detach",
            sum(after).saturating_sub(sum(before))
        ))
    }
}

pub fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

fn vm_hwm_kb(pid: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1).map(|v| v.parse().unwrap_or(0)))
        })
        .unwrap_or(0)
}

/// The child: runs one configuration `runs` times (for multi configurations, `runs` cold and
/// `runs` warm) and prints one `RUN` line each, then `HWM`.
fn child(args: &[String]) {
    let kind = Kind::parse(&args[0]);
    let cfg = Config::from_name(&args[1]).expect("config");
    let size = Size::parse(&args[2]);
    let runs: usize = args[3].parse().unwrap();
    let cold_gap = Duration::from_millis(args[4].parse().unwrap());
    let fx = setup_paths();
    let mut sys = peers::System::new(cfg, kind, &fx);
    let (binary, pts) = points(&fx, kind, size);
    let mut phases = Vec::new();
    for _ in 0..runs {
        if cfg.is_multi() {
            phases.push("cold");
            phases.push("warm");
        } else {
            phases.push("run");
        }
    }
    for phase in phases {
        if phase == "cold" {
            std::thread::sleep(cold_gap);
        }
        if cfg.is_tick() {
            match sys.tick(&fx, size, &binary, &pts) {
                Ok((detach, t)) => {
                    println!("RUN {phase} 0 {:.4} {}", ms(detach), pts.len());
                    println!("TICK {:.4} {:.4} {}", ms(t.p99), ms(t.max), t.count);
                }
                Err(e) => {
                    println!("FAIL {phase} {e}");
                    std::process::exit(1);
                }
            }
            continue;
        }
        let run = if cfg.is_churn() {
            sys.churn(cfg, &fx, &binary, &pts)
        } else {
            sys.run(&fx, kind, size, &binary, &pts)
        };
        match run {
            Ok((attach, detach)) => println!(
                "RUN {phase} {:.4} {:.4} {}",
                ms(attach),
                ms(detach),
                pts.len()
            ),
            Err(e) => {
                println!("FAIL {phase} {e}");
                std::process::exit(1);
            }
        }
    }
    println!("HWM {}", vm_hwm_kb("self"));
}

/// Paths of the fixtures (built by [`setup`]).
fn setup_paths() -> Fixtures {
    let dir = out_dir();
    Fixtures {
        target: dir.join("target"),
        obj_multi: dir.join("count_multi.bpf.o"),
        obj_plain: dir.join("count_plain.bpf.o"),
        kobj_multi: dir.join("count_kprobe_multi.bpf.o"),
        kobj_plain: dir.join("count_kprobe_plain.bpf.o"),
        libc: std::fs::canonicalize("/lib/x86_64-linux-gnu/libc.so.6").unwrap(),
    }
}

/// One configuration's outcome in the parent.
#[derive(Clone, Debug)]
pub struct Outcome {
    pub kind: Kind,
    pub cfg: Config,
    pub size: Size,
    pub probes: usize,
    pub runs: Vec<Run>,
    pub hwm_kb: u64,
    pub error: Option<String>,
}

impl Outcome {
    /// Median (attach, detach, total) of the runs of a phase group: "cold", or "warm"
    /// (which for per-probe configurations means their runs).
    pub fn medians(&self, cold: bool) -> Option<(f64, f64, f64)> {
        let sel: Vec<&Run> = self.runs_in(cold).collect();
        if sel.is_empty() || self.error.is_some() {
            return None;
        }
        let mut a: Vec<f64> = sel.iter().map(|r| ms(r.attach)).collect();
        let mut d: Vec<f64> = sel.iter().map(|r| ms(r.detach)).collect();
        let mut t: Vec<f64> = sel.iter().map(|r| ms(r.attach + r.detach)).collect();
        Some((median(&mut a), median(&mut d), median(&mut t)))
    }

    /// The runs of a phase group (see [`Outcome::medians`]).
    fn runs_in(&self, cold: bool) -> impl Iterator<Item = &Run> {
        self.runs
            .iter()
            .filter(move |r| (r.phase == "cold") == cold)
    }

    /// The name of a phase group: "cold", "warm" (multi links) or "run" (per probe).
    fn phase(&self, cold: bool) -> &'static str {
        if cold {
            "cold"
        } else if self.cfg.is_multi() {
            "warm"
        } else {
            "run"
        }
    }

    /// One line that carries the whole outcome from the VM to the host:
    /// `OUTCOME KIND CONFIG SIZE PROBES RSS_KB PHASE:ATTACH:DETACH,...|- [ERROR...]`.
    pub fn to_line(&self) -> String {
        let runs: Vec<String> = self
            .runs
            .iter()
            .map(|r| format!("{}:{:.4}:{:.4}", r.phase, ms(r.attach), ms(r.detach)))
            .collect();
        let mut line = format!(
            "OUTCOME {} {} {} {} {} {}",
            self.kind.name(),
            self.cfg.name(),
            self.size.label(),
            self.probes,
            self.hwm_kb,
            if runs.is_empty() {
                "-".to_owned()
            } else {
                runs.join(",")
            }
        );
        if let Some(e) = &self.error {
            write!(line, " {e}").unwrap();
        }
        line
    }

    /// The inverse of [`Outcome::to_line`], for a line that contains one.
    pub fn from_line(line: &str) -> Option<Outcome> {
        let rest = &line[line.find("OUTCOME ")? + "OUTCOME ".len()..];
        let f: Vec<&str> = rest.trim_end().splitn(7, ' ').collect();
        if f.len() < 6 {
            return None;
        }
        let probes: usize = f[3].parse().ok()?;
        let mut runs = Vec::new();
        if f[5] != "-" {
            for r in f[5].split(',') {
                let p: Vec<&str> = r.split(':').collect();
                let phase = match *p.first()? {
                    "cold" => "cold",
                    "warm" => "warm",
                    _ => "run",
                };
                let t = |i: usize| -> Option<Duration> {
                    Some(Duration::from_secs_f64(
                        p.get(i)?.parse::<f64>().ok()? / 1e3,
                    ))
                };
                runs.push(Run {
                    phase,
                    attach: t(1)?,
                    detach: t(2)?,
                    probes,
                    ticks: None,
                });
            }
        }
        Some(Outcome {
            kind: Kind::parse(f[0]),
            cfg: Config::from_name(f[1])?,
            size: Size::parse(f[2]),
            probes,
            runs,
            hwm_kb: f[4].parse().ok()?,
            error: f.get(6).map(|e| (*e).to_owned()),
        })
    }
}

fn spawn_child(kind: Kind, cfg: Config, size: Size, runs: usize, cold_gap_ms: u64) -> Outcome {
    let exe = std::env::current_exe().unwrap();
    let out = Command::new(exe)
        .args([
            "--child",
            kind.name(),
            cfg.name(),
            &size.label(),
            &runs.to_string(),
            &cold_gap_ms.to_string(),
        ])
        .stderr(Stdio::inherit())
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    let mut o = Outcome {
        kind,
        cfg,
        size,
        probes: 0,
        runs: Vec::new(),
        hwm_kb: 0,
        error: None,
    };
    for line in text.lines() {
        let f: Vec<&str> = line.split_whitespace().collect();
        match f.first().copied() {
            Some("RUN") => {
                let phase = match f[1] {
                    "cold" => "cold",
                    "warm" => "warm",
                    _ => "run",
                };
                o.probes = f[4].parse().unwrap();
                o.runs.push(Run {
                    phase,
                    attach: Duration::from_secs_f64(f[2].parse::<f64>().unwrap() / 1e3),
                    detach: Duration::from_secs_f64(f[3].parse::<f64>().unwrap() / 1e3),
                    probes: o.probes,
                    ticks: None,
                });
            }
            Some("TICK") => {
                let d = |i: usize| Duration::from_secs_f64(f[i].parse::<f64>().unwrap() / 1e3);
                if let Some(r) = o.runs.last_mut() {
                    r.ticks = Some(tick::Ticks {
                        p99: d(1),
                        max: d(2),
                        count: f[3].parse().unwrap(),
                    });
                }
            }
            Some("HWM") => o.hwm_kb = f[1].parse().unwrap_or(0),
            Some("FAIL") => o.error = Some(f[2..].join(" ")),
            _ => {}
        }
    }
    if !out.status.success() && o.error.is_none() {
        o.error = Some(format!("child exited with {}", out.status));
    }
    o
}

/// How long bpftrace may take to start, and to exit.
const BPFTRACE_LIMIT: Duration = Duration::from_secs(900);

/// bpftrace, whole process: from spawn to its BEGIN probe's output (BEGIN fires after every
/// probe is attached), then from SIGINT to exit. Verified by its `@c` count: exactly `n` on
/// the target, at least [`GETPIDS`] for kprobes.
fn bpftrace(fx: &Fixtures, kind: Kind, size: Size, runs: usize) -> Outcome {
    let Size::Target(n) = size else {
        unreachable!("bpftrace runs on the target only")
    };
    let probes = match kind {
        // f_0000..f_0999: a glob per power of ten, so the probe list stays short.
        Kind::Uprobe => {
            let glob = match n {
                10 => "f_000*",
                100 => "f_00*",
                1000 => "f_*",
                _ => panic!("bpftrace sizes are 10, 100, 1000"),
            };
            format!("uprobe:{}:{glob}", fx.target.display())
        }
        // The same functions as every other system: a list (a glob would take others).
        Kind::Kprobe => {
            let (_, pts) = points(fx, kind, size);
            let list: Vec<String> = pts
                .iter()
                .map(|p| format!("kprobe:{}", p.0.as_deref().unwrap()))
                .collect();
            list.join(",\n")
        }
    };
    let script_path = out_dir().join(format!("bpftrace_{}_{n}.bt", kind.name()));
    std::fs::write(
        &script_path,
        format!("BEGIN {{ printf(\"ready\\n\"); }}\n{probes}\n{{ @c = count(); }}\n"),
    )
    .unwrap();
    let mut o = Outcome {
        kind,
        cfg: Config::Bpftrace,
        size,
        probes: n,
        runs: Vec::new(),
        hwm_kb: 0,
        error: None,
    };
    for _ in 0..runs {
        let t0 = Instant::now();
        let mut child = Command::new("bpftrace")
            .args(["-B", "line"])
            .arg(&script_path)
            // Its default limit is 512 probes (BEGIN counts as one).
            .env("BPFTRACE_MAX_PROBES", "4096")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(out_dir().join("bpftrace.stderr")).unwrap())
            .spawn()
            .expect("bpftrace (apt-get install bpftrace)");
        // Lines come through a thread, so that a bpftrace that hangs is killed after
        // BPFTRACE_LIMIT instead of stopping the whole benchmark.
        let (tx, lines) = std::sync::mpsc::channel::<String>();
        let stdout = BufReader::new(child.stdout.take().unwrap());
        std::thread::spawn(move || {
            for line in stdout.lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let mut all = String::new();
        let ready = loop {
            match lines.recv_timeout(BPFTRACE_LIMIT.saturating_sub(t0.elapsed())) {
                Ok(line) => {
                    all.push_str(&line);
                    all.push('\n');
                    if line.trim() == "ready" {
                        break true;
                    }
                }
                Err(_) => break false,
            }
        };
        let attach = t0.elapsed();
        if !ready {
            let _ = child.kill();
            let _ = child.wait();
            let err =
                std::fs::read_to_string(out_dir().join("bpftrace.stderr")).unwrap_or_default();
            o.error = Some(format!(
                "bpftrace did not start within {} s: {all}{err}",
                attach.as_secs()
            ));
            return o;
        }
        exercise(fx, kind);
        let pid = child.id();
        o.hwm_kb = o.hwm_kb.max(vm_hwm_kb(&pid.to_string()));
        // In the VM, bpftrace 0.17 sometimes missed a SIGINT sent right after BEGIN (it sat
        // there for minutes): let it settle (untimed), and repeat the signal every 5 s while
        // it has not exited (harmless when it is merely slow to detach).
        std::thread::sleep(Duration::from_millis(500));
        let sigint = || {
            nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(i32::try_from(pid).unwrap()),
                nix::sys::signal::Signal::SIGINT,
            )
        };
        let t1 = Instant::now();
        sigint().unwrap();
        let mut rest = String::new();
        let mut repeats = 0;
        let exited = loop {
            match lines.recv_timeout(Duration::from_secs(5)) {
                Ok(line) => {
                    rest.push_str(&line);
                    rest.push('\n');
                }
                Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => break true,
                Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {
                    if t1.elapsed() > BPFTRACE_LIMIT {
                        break false;
                    }
                    repeats += 1;
                    let _ = sigint();
                }
            }
        };
        if repeats > 0 {
            eprintln!("    bpftrace n={n}: SIGINT repeated {repeats} times while it detached");
        }
        if !exited {
            let _ = child.kill();
            let _ = child.wait();
            o.error = Some(format!(
                "bpftrace did not exit within {} s of SIGINT",
                BPFTRACE_LIMIT.as_secs()
            ));
            return o;
        }
        child.wait().unwrap();
        let detach = t1.elapsed();
        let count = rest
            .lines()
            .find_map(|l| l.trim().strip_prefix("@c: "))
            .and_then(|v| v.trim().parse::<usize>().ok());
        let counted = match kind {
            Kind::Uprobe => count == Some(n),
            Kind::Kprobe => count.is_some_and(|c| c as u64 >= GETPIDS),
        };
        if !counted {
            o.error = Some(format!(
                "bpftrace counted {count:?}, expected {}",
                match kind {
                    Kind::Uprobe => format!("{n}"),
                    Kind::Kprobe => format!("at least {GETPIDS}"),
                }
            ));
            return o;
        }
        o.runs.push(Run {
            phase: "run",
            attach,
            detach,
            probes: n,
            ticks: None,
        });
    }
    o
}

/// The uprobe matrix: (configuration, size, runs).
fn matrix(quick: bool) -> Vec<(Config, Size, usize)> {
    let mut m = Vec::new();
    let multis = [Config::ProbesetMulti, Config::RawMulti, Config::LibbpfMulti];
    let singles = [
        Config::ProbesetSet,
        Config::ProbesetLinks,
        Config::RawPerf,
        Config::LibbpfPerProbe,
        Config::AyaPerProbe,
        Config::Bpftrace,
    ];
    if quick {
        for c in multis {
            m.push((c, Size::Target(1000), 2));
            m.push((c, Size::Libc, 1));
        }
        for c in singles {
            m.push((
                c,
                Size::Target(10),
                if c == Config::Bpftrace { 1 } else { 3 },
            ));
        }
        m.push((Config::ProbesetChurn, Size::Target(1000), 1));
        m.push((Config::ProbesetTick, Size::Target(10), 1));
        m.push((Config::LibbpfTick, Size::Target(10), 1));
    } else {
        for c in multis {
            for s in [
                Size::Target(10),
                Size::Target(100),
                Size::Target(1000),
                Size::Libc,
            ] {
                m.push((c, s, 5));
            }
        }
        for c in singles {
            m.push((c, Size::Target(10), 5));
            m.push((c, Size::Target(100), 3));
            // ~110 s of kernel detach time per run: once.
            m.push((c, Size::Target(1000), 1));
        }
        // Churn of 1000 changes: libbpf-rs's approaches take ~30-50 s each: once.
        m.push((Config::ProbesetChurn, Size::Target(1000), 5));
        m.push((Config::ProbesetChurnPaced, Size::Target(1000), 3));
        m.push((Config::LibbpfChurnPerProbe, Size::Target(1000), 1));
        m.push((Config::LibbpfChurnMulti, Size::Target(1000), 1));
        // A 1 ms tick while 100 per-probe links detach (~11 s for libbpf-rs).
        m.push((Config::ProbesetTick, Size::Target(100), 3));
        m.push((Config::LibbpfTick, Size::Target(100), 3));
    }
    m
}

fn fmt_ratio(a: f64, b: f64) -> String {
    let r = a / b;
    if r < 0.01 {
        format!("{r:.2e}")
    } else {
        format!("{r:.3}")
    }
}

fn report(outcomes: &[Outcome]) -> String {
    let mut text = String::new();
    let by: BTreeMap<(Size, Config), &Outcome> =
        outcomes.iter().map(|o| ((o.size, o.cfg), o)).collect();
    for o in outcomes {
        if let Some(e) = &o.error {
            writeln!(
                text,
                "{} n={} {} FAILED: {e}",
                o.kind.name(),
                o.size.label(),
                o.cfg.name()
            )
            .unwrap();
            continue;
        }
        if o.cfg.is_tick() {
            writeln!(text, "{}", tick_line(o, &by)).unwrap();
            continue;
        }
        for cold in [true, false] {
            let Some(med) = o.medians(cold) else { continue };
            let name = if cold {
                format!("{}-cold", o.cfg.name())
            } else {
                o.cfg.name().to_string()
            };
            let first = if o.cfg.is_churn() {
                "converge"
            } else {
                "attach"
            };
            for (metric, idx) in [(first, 0), ("detach", 1), ("total", 2)] {
                let pick = |m: (f64, f64, f64)| [m.0, m.1, m.2][idx];
                let v = pick(med);
                let mut line = format!(
                    "{} {metric} n={} {name} median_ms={v:.3}",
                    o.kind.name(),
                    o.size.label()
                );
                let base = o.cfg.baseline();
                if let Some(b) = base
                    .and_then(|base| by.get(&(o.size, base)))
                    .and_then(|b| b.medians(cold))
                {
                    write!(line, " vs_raw={}", fmt_ratio(v, pick(b))).unwrap();
                }
                for &p in o.cfg.peers() {
                    if p == o.cfg {
                        continue;
                    }
                    if let Some(b) = by
                        .get(&(o.size, p))
                        .and_then(|b| b.medians(cold && p.is_multi()))
                    {
                        write!(line, " vs_{}={}", p.name(), fmt_ratio(v, pick(b))).unwrap();
                    }
                }
                write!(
                    line,
                    " probes={} runs={} rss_kb={}",
                    o.probes,
                    o.runs_in(cold).count(),
                    o.hwm_kb
                )
                .unwrap();
                writeln!(text, "{line}").unwrap();
            }
        }
    }
    text
}

/// Medians of a tick configuration's runs: (detach ms, p99 gap ms, largest gap ms, ticks).
fn tick_medians(o: &Outcome) -> Option<(f64, f64, f64, f64)> {
    let ticks: Vec<(f64, tick::Ticks)> = o
        .runs
        .iter()
        .filter_map(|r| Some((ms(r.detach), r.ticks?)))
        .collect();
    if ticks.is_empty() || o.error.is_some() {
        return None;
    }
    let col = |f: &dyn Fn(&(f64, tick::Ticks)) -> f64| {
        median(&mut ticks.iter().map(f).collect::<Vec<f64>>())
    };
    Some((
        col(&|t| t.0),
        col(&|t| ms(t.1.p99)),
        col(&|t| ms(t.1.max)),
        col(&|t| t.1.count as f64),
    ))
}

/// `uprobe tick n=100 probeset-tick detach_ms=... tick_p99_ms=... tick_max_ms=... ticks=...`
fn tick_line(o: &Outcome, by: &BTreeMap<(Size, Config), &Outcome>) -> String {
    let Some((d, p99, max, count)) = tick_medians(o) else {
        return format!(
            "{} tick n={} {}: no runs",
            o.kind.name(),
            o.size.label(),
            o.cfg.name()
        );
    };
    let mut line = format!(
        "{} tick n={} {} detach_ms={d:.1} tick_p99_ms={p99:.2} tick_max_ms={max:.1} ticks={count:.0}",
        o.kind.name(),
        o.size.label(),
        o.cfg.name()
    );
    if o.cfg != Config::LibbpfTick {
        if let Some((_, _, peer_max, _)) = by
            .get(&(o.size, Config::LibbpfTick))
            .and_then(|p| tick_medians(p))
        {
            write!(line, " max_vs_libbpf-rs-tick={}", fmt_ratio(max, peer_max)).unwrap();
        }
    }
    write!(line, " runs={}", o.runs.len()).unwrap();
    line
}

fn write_results(outcomes: &[Outcome], quick: bool, dir: &Path) {
    std::fs::create_dir_all(dir).unwrap();
    let mut csv = String::from("config,n,probes,phase,attach_ms,detach_ms\n");
    let mut summary = String::from(
        "config,phase,n,probes,attach_median_ms,detach_median_ms,total_median_ms,runs,rss_kb\n",
    );
    let mut json = format!("{{\"quick\": {quick}, \"results\": [\n");
    let mut first = true;
    for o in outcomes {
        for r in &o.runs {
            writeln!(
                csv,
                "{},{},{},{},{:.4},{:.4}",
                o.cfg.name(),
                o.size.label(),
                r.probes,
                r.phase,
                ms(r.attach),
                ms(r.detach)
            )
            .unwrap();
        }
        for cold in [true, false] {
            let Some((a, d, t)) = o.medians(cold) else {
                continue;
            };
            let phase = o.phase(cold);
            let runs = o.runs_in(cold).count();
            writeln!(
                summary,
                "{},{phase},{},{},{a:.4},{d:.4},{t:.4},{runs},{}",
                o.cfg.name(),
                o.size.label(),
                o.probes,
                o.hwm_kb
            )
            .unwrap();
            if !first {
                json.push_str(",\n");
            }
            first = false;
            write!(
                json,
                "  {{\"config\": \"{}\", \"phase\": \"{phase}\", \"n\": \"{}\", \"probes\": {}, \"attach_median_ms\": {a:.4}, \"detach_median_ms\": {d:.4}, \"total_median_ms\": {t:.4}, \"runs\": {runs}, \"rss_kb\": {}, \"verified\": true}}",
                o.cfg.name(),
                o.size.label(),
                o.probes,
                o.hwm_kb
            )
            .unwrap();
        }
        if let Some(e) = &o.error {
            if !first {
                json.push_str(",\n");
            }
            first = false;
            write!(
                json,
                "  {{\"config\": \"{}\", \"n\": \"{}\", \"error\": {:?}}}",
                o.cfg.name(),
                o.size.label(),
                e
            )
            .unwrap();
        }
    }
    json.push_str("\n]}\n");
    std::fs::write(dir.join("runs.csv"), csv).unwrap();
    std::fs::write(dir.join("summary.csv"), &summary).unwrap();
    std::fs::write(dir.join("results.json"), json).unwrap();
    plot::svg(outcomes, &dir.join("attach_detach.svg"));
    if let Some(o) = outcomes.first() {
        eprintln!("{} results: {}", o.kind.name(), dir.display());
    }
    std::fs::write(dir.join("table.md"), table(outcomes)).unwrap();
}

/// A Markdown table of the medians with the ratios that matter: to the raw baseline of the
/// same link kind, to libbpf-rs's same path, to aya (per probe) and to bpftrace.
fn table(outcomes: &[Outcome]) -> String {
    let by: BTreeMap<(Size, Config), &Outcome> =
        outcomes.iter().map(|o| ((o.size, o.cfg), o)).collect();
    let mut t = String::from(
        "| n | system | phase | attach ms | detach ms | total ms | total vs raw | total vs libbpf-rs | total vs aya | total vs bpftrace | runs | peak RSS MiB |\n|---|---|---|---|---|---|---|---|---|---|---|---|\n",
    );
    let mut rows: Vec<&Outcome> = outcomes
        .iter()
        .filter(|o| !o.cfg.is_churn() && !o.cfg.is_tick())
        .collect();
    rows.sort_by_key(|o| (o.size, o.cfg));
    for o in rows {
        for cold in [true, false] {
            let Some((a, d, tot)) = o.medians(cold) else {
                continue;
            };
            let phase = match o.phase(cold) {
                "run" => "-",
                p => p,
            };
            let ratio = |c: Config, cold: bool| {
                by.get(&(o.size, c))
                    .and_then(|b| b.medians(cold && c.is_multi()))
                    .map_or_else(|| "-".to_string(), |b| fmt_ratio(tot, b.2))
            };
            let libbpf = if o.cfg.is_multi() {
                Config::LibbpfMulti
            } else {
                Config::LibbpfPerProbe
            };
            let runs = o.runs_in(cold).count();
            writeln!(
                t,
                "| {} | {} | {phase} | {a:.2} | {d:.1} | {tot:.1} | {} | {} | {} | {} | {runs} | {:.1} |",
                o.size.label(),
                o.cfg.name(),
                o.cfg
                    .baseline()
                    .map_or_else(|| "-".to_string(), |b| ratio(b, cold)),
                ratio(libbpf, cold),
                ratio(Config::AyaPerProbe, false),
                ratio(Config::Bpftrace, false),
                o.hwm_kb as f64 / 1024.0
            )
            .unwrap();
        }
    }
    let churn: Vec<&Outcome> = outcomes.iter().filter(|o| o.cfg.is_churn()).collect();
    if !churn.is_empty() {
        t.push_str("\n| churn of n changes | system | converge ms | detach ms | converge vs libbpf-rs per probe | converge vs libbpf-rs multi re-created | runs | peak RSS MiB |\n|---|---|---|---|---|---|---|---|\n");
        for o in churn {
            let Some((a, d, _)) = o.medians(false) else {
                continue;
            };
            let ratio = |c: Config| {
                by.get(&(o.size, c))
                    .and_then(|b| b.medians(false))
                    .map_or_else(|| "-".to_string(), |b| fmt_ratio(a, b.0))
            };
            writeln!(
                t,
                "| {} | {} | {a:.1} | {d:.1} | {} | {} | {} | {:.1} |",
                o.size.label(),
                o.cfg.name(),
                ratio(Config::LibbpfChurnPerProbe),
                ratio(Config::LibbpfChurnMulti),
                o.runs.len(),
                o.hwm_kb as f64 / 1024.0
            )
            .unwrap();
        }
    }
    let ticks: Vec<&Outcome> = outcomes.iter().filter(|o| o.cfg.is_tick()).collect();
    if !ticks.is_empty() {
        t.push_str("\n| per-probe links detached | system | detach ms | 1 ms tick: p99 gap ms | largest gap ms | ticks seen | runs |\n|---|---|---|---|---|---|---|\n");
        for o in ticks {
            let Some((d, p99, max, count)) = tick_medians(o) else {
                continue;
            };
            writeln!(
                t,
                "| {} | {} | {d:.1} | {p99:.2} | {max:.1} | {count:.0} | {} |",
                o.size.label(),
                o.cfg.name(),
                o.runs.len()
            )
            .unwrap();
        }
    }
    t
}

/// Runs a matrix, a child process per configuration (bpftrace from here), printing a line per
/// configuration as it ends (and, for kprobes, its `OUTCOME` line on stdout for the host).
fn run_matrix(
    fx: &Fixtures,
    kind: Kind,
    m: Vec<(Config, Size, usize)>,
    only: Option<&str>,
    cold_gap_ms: u64,
) -> Vec<Outcome> {
    let mut outcomes = Vec::new();
    for (cfg, size, runs) in m {
        if only.is_some_and(|o| !cfg.name().contains(o)) {
            continue;
        }
        let t = Instant::now();
        let o = if cfg == Config::Bpftrace {
            bpftrace(fx, kind, size, runs)
        } else {
            spawn_child(kind, cfg, size, runs, cold_gap_ms)
        };
        let line = report(std::slice::from_ref(&o));
        eprint!("  [{:>6.1} s] {line}", t.elapsed().as_secs_f64());
        if kprobes::in_vm() {
            println!("{}", o.to_line());
        }
        std::io::stderr().flush().unwrap();
        std::io::stdout().flush().unwrap();
        outcomes.push(o);
    }
    outcomes
}

/// Raises the soft `RLIMIT_NOFILE` to the hard one, as tracing agents do: 1000 per-probe links
/// are 1000 descriptors for probeset and 2000 for the others (link + perf event), past the
/// usual soft limit of 1024. Inherited by the children.
fn raise_fd_limit() {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    let (_, hard) = getrlimit(Resource::RLIMIT_NOFILE).expect("getrlimit");
    setrlimit(Resource::RLIMIT_NOFILE, hard, hard).expect("setrlimit");
}

fn main() {
    raise_fd_limit();
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().map(String::as_str) == Some("--child") {
        child(&args[1..]);
        return;
    }
    let quick = args.iter().any(|a| a == "--quick");
    let value = |flag: &str| {
        args.iter()
            .position(|a| a == flag)
            .map(|i| args.get(i + 1).expect("a value after the flag").clone())
    };
    let only = value("--only");
    if let Some(log) = value("--kprobe-results") {
        std::process::exit(if kprobes::kprobe_results(Path::new(&log), quick) {
            0
        } else {
            1
        });
    }
    assert!(
        nix::unistd::geteuid().is_root(),
        "the benchmark attaches real probes: run it as root"
    );
    if args.iter().any(|a| a == "--setup") {
        let fx = setup();
        eprintln!("probeset-bench: fixtures in {}", out_dir().display());
        drop(fx);
        return;
    }
    if args.iter().any(|a| a == "--kprobes") {
        std::process::exit(if kprobes::kprobes(quick, only.as_deref()) {
            0
        } else {
            1
        });
    }
    let started = Instant::now();
    let fx = setup();
    let (libc_n, refused) = libc_setup(&fx);
    eprintln!(
        "probeset-bench: {} mode; target {} ({TARGET_FUNCTIONS} functions); libc {} ({libc_n} eligible functions; {} more refused by the kernel: {:x?})",
        if quick { "quick" } else { "full" },
        fx.target.display(),
        fx.libc.display(),
        refused.len(),
        refused
    );
    let cold_gap_ms = if quick { 500 } else { 1000 };
    let outcomes = run_matrix(
        &fx,
        Kind::Uprobe,
        matrix(quick),
        only.as_deref(),
        cold_gap_ms,
    );
    println!("{}", report(&outcomes));
    write_results(&outcomes, quick, &out_dir());
    println!(
        "results: {}/{{results.json,summary.csv,runs.csv,attach_detach.svg}} ({:.0} s)",
        out_dir().display(),
        started.elapsed().as_secs_f64()
    );
    if outcomes.iter().any(|o| o.error.is_some()) {
        std::process::exit(1);
    }
}
