//! One attach + detach of each system, timed, and verified by its counter map.

use std::ffi::CString;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::time::{Duration, Instant};

use probeset::counter::{Counter, Flavour};
use probeset::{Kprobe, Probe, ProbeSet, Uprobe};

use crate::{exercise, verify_attached, verify_detached, Config, Fixtures, Kind, Size, SLOTS};

/// What a configuration keeps between its runs: the loaded program and its map.
pub enum System {
    Probeset {
        counter: Counter,
        rt: tokio::runtime::Runtime,
        cfg: Config,
        kind: Kind,
    },
    Raw {
        counter: Counter,
        pmu: u32,
        cfg: Config,
        kind: Kind,
    },
    Libbpf {
        obj: libbpf_rs::Object,
        multi: bool,
        kind: Kind,
    },
    Aya {
        ebpf: aya::Ebpf,
        kind: Kind,
    },
}

type Points = [(Option<String>, u64)];

impl System {
    pub fn new(cfg: Config, kind: Kind, fx: &Fixtures) -> System {
        let multi_flavour = match kind {
            Kind::Uprobe => Flavour::UprobeMulti,
            Kind::Kprobe => Flavour::KprobeMulti,
        };
        match cfg {
            Config::ProbesetMulti
            | Config::ProbesetSet
            | Config::ProbesetLinks
            | Config::ProbesetChurn
            | Config::ProbesetChurnPaced
            | Config::ProbesetTick => {
                let flavour = if matches!(
                    cfg,
                    Config::ProbesetMulti | Config::ProbesetChurn | Config::ProbesetChurnPaced
                ) {
                    multi_flavour
                } else {
                    Flavour::Plain
                };
                System::Probeset {
                    counter: Counter::load(flavour, SLOTS).unwrap(),
                    rt: tokio::runtime::Builder::new_multi_thread()
                        .worker_threads(2)
                        .enable_all()
                        .build()
                        .unwrap(),
                    cfg,
                    kind,
                }
            }
            Config::RawMulti | Config::RawPerf => {
                let flavour = if cfg == Config::RawMulti {
                    multi_flavour
                } else {
                    Flavour::Plain
                };
                let pmu = std::fs::read_to_string(format!(
                    "/sys/bus/event_source/devices/{}/type",
                    kind.name()
                ))
                .unwrap()
                .trim()
                .parse()
                .unwrap();
                System::Raw {
                    counter: Counter::load(flavour, SLOTS).unwrap(),
                    pmu,
                    cfg,
                    kind,
                }
            }
            Config::LibbpfMulti
            | Config::LibbpfPerProbe
            | Config::LibbpfChurnPerProbe
            | Config::LibbpfChurnMulti
            | Config::LibbpfTick => {
                let open = libbpf_rs::ObjectBuilder::default()
                    .open_file(fx.object(kind, true))
                    .unwrap();
                System::Libbpf {
                    obj: open.load().unwrap(),
                    multi: cfg == Config::LibbpfMulti,
                    kind,
                }
            }
            Config::AyaPerProbe => {
                let mut ebpf = aya::Ebpf::load_file(fx.object(kind, false)).unwrap();
                let prog = ebpf.program_mut("count_plain").unwrap();
                match kind {
                    Kind::Uprobe => {
                        let p: &mut aya::programs::UProbe = prog.try_into().unwrap();
                        p.load().unwrap();
                    }
                    Kind::Kprobe => {
                        let p: &mut aya::programs::KProbe = prog.try_into().unwrap();
                        p.load().unwrap();
                    }
                }
                System::Aya { ebpf, kind }
            }
            Config::Bpftrace => unreachable!("bpftrace runs in the parent"),
        }
    }

    pub(crate) fn counts(&self, len: usize) -> Vec<u64> {
        match self {
            System::Probeset { counter, .. } | System::Raw { counter, .. } => (0..len)
                .map(|i| counter.get(u32::try_from(i).unwrap()).unwrap())
                .collect(),
            System::Libbpf { obj, .. } => {
                use libbpf_rs::MapCore as _;
                let map = obj
                    .maps()
                    .find(|m| m.name() == "counts")
                    .expect("counts map");
                (0..len)
                    .map(|i| {
                        let key = u32::try_from(i).unwrap().to_ne_bytes();
                        let v = map.lookup(&key, libbpf_rs::MapFlags::ANY).unwrap().unwrap();
                        u64::from_ne_bytes(v[..8].try_into().unwrap())
                    })
                    .collect()
            }
            System::Aya { ebpf, .. } => {
                let arr: aya::maps::Array<_, u64> =
                    aya::maps::Array::try_from(ebpf.map("counts").unwrap()).unwrap();
                (0..len)
                    .map(|i| arr.get(&u32::try_from(i).unwrap(), 0).unwrap())
                    .collect()
            }
        }
    }

    /// One verified attach + detach: (attach time, detach time).
    pub fn run(
        &mut self,
        fx: &Fixtures,
        kind: Kind,
        size: Size,
        binary: &Path,
        pts: &Points,
    ) -> Result<(Duration, Duration), String> {
        let n = pts.len();
        let len = match size {
            Size::Target(_) => crate::TARGET_FUNCTIONS,
            Size::Libc => n,
        };
        let c0 = self.counts(len);
        let (attach, held) = self.attach(binary, pts)?;
        exercise(fx, kind);
        let c1 = self.counts(len);
        let delta: Vec<u64> = c1.iter().zip(&c0).map(|(a, b)| a - b).collect();
        let attached = verify_attached(kind, size, &delta, n);
        let t = Instant::now();
        self.detach(held)?;
        let detach = t.elapsed();
        attached?;
        let c2 = self.counts(len);
        exercise(fx, kind);
        let c3 = self.counts(len);
        verify_detached(&c2, &c3)?;
        Ok((attach, detach))
    }

    pub(crate) fn attach(
        &mut self,
        binary: &Path,
        pts: &Points,
    ) -> Result<(Duration, Held), String> {
        let err = |e: &dyn std::fmt::Display| e.to_string();
        let cookie = |i: usize| u64::try_from(i).unwrap();
        match self {
            System::Probeset {
                counter,
                rt,
                cfg,
                kind,
            } => {
                let probes: Vec<Probe> = pts
                    .iter()
                    .enumerate()
                    .map(|(i, (sym, off))| match (*kind, sym) {
                        (Kind::Kprobe, Some(s)) => Kprobe::new(s.as_str()).cookie(cookie(i)).into(),
                        (Kind::Kprobe, None) => unreachable!("kprobes are by symbol"),
                        (Kind::Uprobe, Some(s)) => {
                            Uprobe::new(binary, s.as_str()).cookie(cookie(i)).into()
                        }
                        (Kind::Uprobe, None) => {
                            Uprobe::at_offset(binary, *off).cookie(cookie(i)).into()
                        }
                    })
                    .collect();
                let links_loop = *cfg == Config::ProbesetLinks;
                let counter = &*counter;
                rt.block_on(async move {
                    let t = Instant::now();
                    if links_loop {
                        let mut links = Vec::with_capacity(probes.len());
                        for p in probes {
                            links.push(p.attach(counter).await.map_err(|e| err(&e))?);
                        }
                        Ok((t.elapsed(), Held::Links(links)))
                    } else {
                        let mut set = ProbeSet::new(counter).map_err(|e| err(&e))?;
                        set.attach(probes).await.map_err(|e| err(&e))?;
                        Ok((t.elapsed(), Held::Set(set)))
                    }
                })
            }
            System::Raw {
                counter,
                pmu,
                cfg,
                kind: Kind::Kprobe,
            } => {
                // Kprobes: a symbol each (the PMU's config1 is the name, config2 the offset).
                let names: Vec<CString> = pts
                    .iter()
                    .map(|p| CString::new(p.0.clone().unwrap()).unwrap())
                    .collect();
                let cookies: Vec<u64> = (0..pts.len()).map(cookie).collect();
                let t = Instant::now();
                if *cfg == Config::RawMulti {
                    let syms: Vec<&std::ffi::CStr> = names.iter().map(CString::as_c_str).collect();
                    let link =
                        probeset::raw::link_kprobe_multi(counter.program(), &syms, &cookies, false)
                            .map_err(|e| err(&e))?;
                    Ok((t.elapsed(), Held::Fds(vec![(link, None)])))
                } else {
                    let points = names.iter().map(|n| (n.as_c_str(), 0));
                    let fds = raw_perf_links(counter.program(), *pmu, points)?;
                    Ok((t.elapsed(), Held::Fds(fds)))
                }
            }
            System::Raw {
                counter, pmu, cfg, ..
            } => {
                let path = CString::new(binary.as_os_str().as_bytes()).unwrap();
                let offsets: Vec<u64> = pts.iter().map(|p| p.1).collect();
                let cookies: Vec<u64> = (0..pts.len()).map(cookie).collect();
                let t = Instant::now();
                if *cfg == Config::RawMulti {
                    let link = probeset::raw::link_uprobe_multi(
                        counter.program(),
                        &path,
                        &offsets,
                        &cookies,
                        false,
                    )
                    .map_err(|e| err(&e))?;
                    Ok((t.elapsed(), Held::Fds(vec![(link, None)])))
                } else {
                    let points = offsets.iter().map(|&off| (path.as_c_str(), off));
                    let fds = raw_perf_links(counter.program(), *pmu, points)?;
                    Ok((t.elapsed(), Held::Fds(fds)))
                }
            }
            System::Libbpf { obj, multi, kind } => {
                let name = if *multi { "count_multi" } else { "count_plain" };
                let prog = obj
                    .progs_mut()
                    .find(|p| p.name() == name)
                    .expect("program in object");
                let t = Instant::now();
                if *kind == Kind::Kprobe {
                    let names = pts.iter().map(|p| p.0.clone().unwrap());
                    if *multi {
                        let opts = libbpf_rs::KprobeMultiOpts {
                            symbols: names.collect(),
                            cookies: (0..pts.len()).map(cookie).collect(),
                            retprobe: false,
                            ..Default::default()
                        };
                        let link = prog
                            .attach_kprobe_multi_with_opts(opts)
                            .map_err(|e| err(&e))?;
                        return Ok((t.elapsed(), Held::Libbpf(vec![link])));
                    }
                    let mut links = Vec::with_capacity(pts.len());
                    for (i, name) in names.enumerate() {
                        let opts = libbpf_rs::KprobeOpts {
                            cookie: cookie(i),
                            ..Default::default()
                        };
                        links.push(
                            prog.attach_kprobe_with_opts(false, name, opts)
                                .map_err(|e| err(&e))?,
                        );
                    }
                    return Ok((t.elapsed(), Held::Libbpf(links)));
                }
                if *multi {
                    let mut opts = libbpf_rs::UprobeMultiOpts {
                        cookies: (0..pts.len()).map(cookie).collect(),
                        ..Default::default()
                    };
                    if pts[0].0.is_some() {
                        opts.syms = pts.iter().map(|p| p.0.clone().unwrap()).collect();
                    } else {
                        opts.offsets = pts.iter().map(|p| usize::try_from(p.1).unwrap()).collect();
                    }
                    let link = prog
                        .attach_uprobe_multi_with_opts(-1, binary, "", opts)
                        .map_err(|e| err(&e))?;
                    Ok((t.elapsed(), Held::Libbpf(vec![link])))
                } else {
                    let mut links = Vec::with_capacity(pts.len());
                    for (i, (sym, off)) in pts.iter().enumerate() {
                        let opts = libbpf_rs::UprobeOpts {
                            cookie: cookie(i),
                            func_name: sym.clone(),
                            ..Default::default()
                        };
                        let at = if sym.is_some() {
                            0
                        } else {
                            usize::try_from(*off).unwrap()
                        };
                        links.push(
                            prog.attach_uprobe_with_opts(-1, binary, at, opts)
                                .map_err(|e| err(&e))?,
                        );
                    }
                    Ok((t.elapsed(), Held::Libbpf(links)))
                }
            }
            System::Aya {
                ebpf,
                kind: Kind::Kprobe,
            } => {
                // aya 0.14 takes no cookie for a kprobe: every probe counts in slot 0.
                let prog: &mut aya::programs::KProbe =
                    ebpf.program_mut("count_plain").unwrap().try_into().unwrap();
                let t = Instant::now();
                let mut ids = Vec::with_capacity(pts.len());
                for (sym, _) in pts {
                    ids.push(
                        prog.attach(sym.as_deref().unwrap(), 0)
                            .map_err(|e| err(&e))?,
                    );
                }
                Ok((t.elapsed(), Held::AyaK(ids)))
            }
            System::Aya { ebpf, .. } => {
                use aya::programs::uprobe::{UProbeAttachLocation, UProbeAttachPoint, UProbeScope};
                let prog: &mut aya::programs::UProbe =
                    ebpf.program_mut("count_plain").unwrap().try_into().unwrap();
                let t = Instant::now();
                let mut ids = Vec::with_capacity(pts.len());
                for (i, (sym, off)) in pts.iter().enumerate() {
                    let location = match sym {
                        Some(s) => UProbeAttachLocation::Symbol(s.as_str()),
                        None => UProbeAttachLocation::AbsoluteOffset(*off),
                    };
                    let point = UProbeAttachPoint {
                        location,
                        cookie: Some(cookie(i)),
                    };
                    ids.push(
                        prog.attach(point, binary, UProbeScope::AllProcesses)
                            .map_err(|e| err(&e))?,
                    );
                }
                Ok((t.elapsed(), Held::Aya(ids)))
            }
        }
    }

    pub(crate) fn detach(&mut self, held: Held) -> Result<(), String> {
        match (self, held) {
            (System::Probeset { rt, .. }, Held::Set(set)) => {
                rt.block_on(set.detach()).map_err(|e| e.to_string())
            }
            (System::Probeset { rt, .. }, Held::Links(links)) => rt.block_on(async {
                for l in links {
                    l.detach().await.map_err(|e| e.to_string())?;
                }
                Ok(())
            }),
            (_, Held::Fds(fds)) => {
                // Link first, then its perf event: the order a detach takes.
                drop(fds);
                Ok(())
            }
            (_, Held::Libbpf(links)) => {
                drop(links);
                Ok(())
            }
            (System::Aya { ebpf, .. }, Held::AyaK(ids)) => {
                let prog: &mut aya::programs::KProbe =
                    ebpf.program_mut("count_plain").unwrap().try_into().unwrap();
                for id in ids {
                    prog.detach(id).map_err(|e| e.to_string())?;
                }
                Ok(())
            }
            (System::Aya { ebpf, .. }, Held::Aya(ids)) => {
                let prog: &mut aya::programs::UProbe =
                    ebpf.program_mut("count_plain").unwrap().try_into().unwrap();
                for id in ids {
                    prog.detach(id).map_err(|e| e.to_string())?;
                }
                Ok(())
            }
            _ => unreachable!("held by another system"),
        }
    }
}

/// The bare per-probe path: a PMU perf event (`config1` = the name or path, `config2` = the
/// offset) and a BPF perf link for each point, cookie = its index.
fn raw_perf_links<'a>(
    prog: std::os::fd::BorrowedFd<'_>,
    pmu: u32,
    points: impl Iterator<Item = (&'a std::ffi::CStr, u64)>,
) -> Result<Vec<(OwnedFd, Option<OwnedFd>)>, String> {
    let mut fds = Vec::new();
    for (i, (name, offset)) in points.enumerate() {
        let perf =
            probeset::raw::perf_probe_open(pmu, 0, name, offset).map_err(|e| e.to_string())?;
        let link = probeset::raw::link_perf(prog, perf.as_fd(), u64::try_from(i).unwrap())
            .map_err(|e| e.to_string())?;
        fds.push((link, Some(perf)));
    }
    Ok(fds)
}

/// What an attach holds until its detach.
pub enum Held {
    Set(ProbeSet),
    Links(Vec<probeset::Link>),
    Fds(Vec<(OwnedFd, Option<OwnedFd>)>),
    Libbpf(Vec<libbpf_rs::Link>),
    Aya(Vec<aya::programs::uprobe::UProbeLinkId>),
    AyaK(Vec<aya::programs::kprobe::KProbeLinkId>),
}
