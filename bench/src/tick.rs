//! Is the runtime blocked? A 1 ms tokio interval on a one-thread runtime, timed while N
//! per-probe links detach: through `ProbeSet::detach().await`, and through libbpf-rs's links
//! dropped in the async code (what a tokio service holding libbpf-rs links does; aya's
//! `detach` is the same blocking call).
//!
//! Reported: the detach time, and the p99 and largest gap between ticks. Verified as every
//! run: each probe counted once while attached, nothing after.

use std::time::{Duration, Instant};

use crate::peers::{Held, System};
use crate::{exercise, verify_attached, verify_detached, Fixtures, Kind, Size};

/// The gaps between ticks of a 1 ms interval while a detach ran.
#[derive(Clone, Copy, Debug)]
pub struct Ticks {
    pub p99: Duration,
    pub max: Duration,
    pub count: usize,
}

impl System {
    /// One verified run: (detach time, ticks during it). The attach is untimed.
    pub fn tick(
        &mut self,
        fx: &Fixtures,
        size: Size,
        binary: &std::path::Path,
        pts: &[(Option<String>, u64)],
    ) -> Result<(Duration, Ticks), String> {
        let n = pts.len();
        let len = crate::TARGET_FUNCTIONS;
        let c0 = self.counts(len);
        let (_, held) = self.attach(binary, pts)?;
        exercise(fx, Kind::Uprobe);
        let c1 = self.counts(len);
        let delta: Vec<u64> = c1.iter().zip(&c0).map(|(a, b)| a - b).collect();
        let attached = verify_attached(Kind::Uprobe, size, &delta, n);
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| e.to_string())?;
        let (detach, ticks) = rt.block_on(async {
            let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
            let stop2 = stop.clone();
            let ticker = tokio::spawn(async move {
                let mut gaps = Vec::new();
                let mut iv = tokio::time::interval(Duration::from_millis(1));
                iv.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                iv.tick().await;
                let mut last = Instant::now();
                while !stop2.load(std::sync::atomic::Ordering::Relaxed) {
                    iv.tick().await;
                    let now = Instant::now();
                    gaps.push(now - last);
                    last = now;
                }
                gaps
            });
            // Let the ticker start before the detach.
            tokio::time::sleep(Duration::from_millis(5)).await;
            let t = Instant::now();
            let result = match held {
                Held::Set(set) => set.detach().await.map_err(|e| e.to_string()),
                Held::Libbpf(links) => {
                    drop(links);
                    Ok(())
                }
                _ => unreachable!("tick runs on probeset-set and libbpf-rs"),
            };
            let took = t.elapsed();
            stop.store(true, std::sync::atomic::Ordering::Relaxed);
            let mut gaps = ticker.await.map_err(|e| e.to_string())?;
            result?;
            gaps.sort();
            let ticks = Ticks {
                p99: gaps.get(gaps.len() * 99 / 100).copied().unwrap_or_default(),
                max: gaps.last().copied().unwrap_or_default(),
                count: gaps.len(),
            };
            Ok::<_, String>((took, ticks))
        })?;
        attached?;
        let c2 = self.counts(len);
        exercise(fx, Kind::Uprobe);
        verify_detached(&c2, &self.counts(len))?;
        Ok((detach, ticks))
    }
}
