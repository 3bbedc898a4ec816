//! The dynamic perf PMUs `kprobe` and `uprobe` (`perf_kprobe`/`perf_uprobe`).
//!
//! Their type number and config format are read from
//! `/sys/bus/event_source/devices/{kprobe,uprobe}/`, once per process. The type differs
//! between kernels (8 here, 6 on Debian 6.1): it is read, never assumed.
//!
//! Minimum kernel version: 4.17 (e12f03d7031a "perf/core: Implement the `perf_kprobe` PMU",
//! 33ea4b24277b "perf/core: Implement the `perf_uprobe` PMU").

use std::path::Path;
use std::sync::OnceLock;

use crate::probe::ProbeKind;

const SYSFS_PMU: &str = "/sys/bus/event_source/devices";

/// What the kernel says about one dynamic PMU.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Pmu {
    /// `perf_event_attr.type`.
    pub type_: u32,
    /// The bit of `config` that makes a return probe.
    pub retprobe_bit: u32,
    /// Where `ref_ctr_offset` sits inside `config`: its lowest bit and its width (uprobe
    /// only; kernel 5.4+; `config:32-63` on x86-64, so 32 bits).
    pub ref_ctr: Option<(u32, u32)>,
}

/// The PMU for `kind`, or `None` when the kernel has none (no `CONFIG_KPROBES`, or a
/// kernel older than 4.17). Read once, then cached.
pub(crate) fn pmu(kind: ProbeKind) -> Option<Pmu> {
    static KPROBE: OnceLock<Option<Pmu>> = OnceLock::new();
    static UPROBE: OnceLock<Option<Pmu>> = OnceLock::new();
    let cell = match kind {
        ProbeKind::Kprobe => &KPROBE,
        ProbeKind::Uprobe => &UPROBE,
    };
    *cell.get_or_init(|| read_pmu(&Path::new(SYSFS_PMU).join(kind.pmu_name())))
}

fn read_pmu(dir: &Path) -> Option<Pmu> {
    let type_ = std::fs::read_to_string(dir.join("type"))
        .ok()?
        .trim()
        .parse()
        .ok()?;
    let retprobe_bit = parse_format(&std::fs::read_to_string(dir.join("format/retprobe")).ok()?)?.0;
    let ref_ctr = std::fs::read_to_string(dir.join("format/ref_ctr_offset"))
        .ok()
        .and_then(|s| parse_format(&s))
        .map(|(lo, hi)| (lo, hi - lo + 1));
    Some(Pmu {
        type_,
        retprobe_bit,
        ref_ctr,
    })
}

/// Parses a sysfs PMU format (`config:0`, `config:32-63`) into its bit range.
/// Only fields of `config` are accepted: the others carry the symbol and offset.
pub(crate) fn parse_format(s: &str) -> Option<(u32, u32)> {
    let bits = s.trim().strip_prefix("config:")?;
    let (lo, hi) = if let Some((lo, hi)) = bits.split_once('-') {
        (lo.parse().ok()?, hi.parse().ok()?)
    } else {
        let b = bits.parse().ok()?;
        (b, b)
    };
    (lo <= hi && hi < 64).then_some((lo, hi))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats() {
        assert_eq!(parse_format("config:0\n"), Some((0, 0)));
        assert_eq!(parse_format("config:32-63"), Some((32, 63)));
        assert_eq!(parse_format("config1:0-63"), None);
        assert_eq!(parse_format("config:64"), None);
        assert_eq!(parse_format("config:9-3"), None);
        assert_eq!(parse_format("garbage"), None);
    }

    #[test]
    fn reads_a_pmu_directory() {
        let dir = std::env::temp_dir().join(format!("probeset-pmu-{}", std::process::id()));
        std::fs::create_dir_all(dir.join("format")).unwrap();
        std::fs::write(dir.join("type"), "6\n").unwrap();
        std::fs::write(dir.join("format/retprobe"), "config:0\n").unwrap();
        assert_eq!(
            read_pmu(&dir),
            Some(Pmu {
                type_: 6,
                retprobe_bit: 0,
                ref_ctr: None
            })
        );
        std::fs::write(dir.join("format/ref_ctr_offset"), "config:32-63\n").unwrap();
        assert_eq!(read_pmu(&dir).unwrap().ref_ctr, Some((32, 32)));
        std::fs::remove_dir_all(&dir).unwrap();
        assert_eq!(read_pmu(&dir), None);
    }
}
