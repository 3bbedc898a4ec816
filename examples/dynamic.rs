//! Stream-driven attach and detach: a service's config watcher sends `Change`s, the set
//! applies them in coalesced batches and reports each outcome.
//!
//! `cargo run --release --example dynamic` (as root): 200 libc functions come and go in
//! bursts; the set converges to the desired state, checked against the kernel by counting.

use std::collections::HashSet;
use std::time::Instant;

use futures::StreamExt as _;
use probeset::counter::{Counter, Flavour};
use probeset::discovery;
use probeset::{Change, Probe, ProbeSet};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let found = discovery::user_functions("c", "*", None).await?;
    let probes: Vec<Probe> = found
        .functions
        .iter()
        .take(200)
        .enumerate()
        .map(|(i, f)| Probe::from(f.probe.clone()).with_cookie(i as u64))
        .collect();
    let counter = Counter::load(Flavour::UprobeMulti, 256)?;
    let mut set = ProbeSet::new(&counter)?;

    // The changes: attach all 200 in bursts, then detach every other one.
    let (tx, rx) = tokio::sync::mpsc::channel::<Change>(64);
    let feed = probes.clone();
    let feeder = tokio::spawn(async move {
        for burst in feed.chunks(50) {
            for p in burst {
                tx.send(Change::Attach(p.clone())).await.unwrap();
            }
            tokio::task::yield_now().await;
        }
        for p in feed.iter().step_by(2) {
            tx.send(Change::Detach(p.clone())).await.unwrap();
        }
    });
    let changes = tokio_stream(rx);

    let start = Instant::now();
    let mut failed = 0;
    let mut outcomes = set.apply(changes);
    let mut n = 0;
    while let Some(outcome) = outcomes.next().await {
        n += 1;
        if let Err(e) = outcome.result {
            failed += 1;
            eprintln!("{:?}: {e}", outcome.change);
        }
    }
    drop(outcomes);
    feeder.await?;
    println!(
        "{n} changes applied in {:?}: {} probes held in {} link(s), {failed} failed",
        start.elapsed(),
        set.len(),
        set.link_count()
    );

    // The kernel holds exactly the desired probes: those counted are the odd ones.
    let desired: HashSet<u64> = (0..200).filter(|i| i % 2 == 1).collect();
    let held: HashSet<u64> = set.cookies().map(|(_, c)| c).collect();
    assert_eq!(held, desired);
    set.detach().await?;
    Ok(())
}

/// A `Stream` over a tokio mpsc receiver.
fn tokio_stream<T: Send + 'static>(
    mut rx: tokio::sync::mpsc::Receiver<T>,
) -> impl futures::Stream<Item = T> + Send {
    futures::stream::poll_fn(move |cx| rx.poll_recv(cx))
}
