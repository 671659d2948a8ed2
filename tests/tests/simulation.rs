//! The simulation tier (see `settle_tests::sim`): 1,000 seeds per run, each a coordinator
//! over in-memory SQLite with simulated participants and broker, on simulated time.
//!
//! `SETTLE_SIM_SEEDS=N` runs seeds 1..=N (1,000 by default); `SETTLE_SIM_BASE=B` starts
//! them after B instead (to explore new seeds); `SETTLE_SIM_SEED=S` runs only seed S and
//! prints its report: what a failure says to run (`SETTLE_SIM_TRACE=1` prints its trace of
//! calls too). A seed must replay exactly: seed S, and otherwise the first
//! [`REPLAYED`] seeds, are run a second time, and each run's trace must be the same.

#![recursion_limit = "256"]

use std::collections::BTreeMap;

use settle_tests::sim::{run_seed, SeedReport};
use tokio::task::JoinSet;

/// Seeds simulated at once.
const AT_ONCE: usize = 8;
/// Seeds run a second time, whose traces must be the same as the first run's.
const REPLAYED: usize = 50;

fn env_u64(name: &str) -> Option<u64> {
    std::env::var(name).ok().and_then(|v| v.trim().parse().ok())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_seeds_keep_every_invariant() -> anyhow::Result<()> {
    settle_tests::init();
    let seeds: Vec<u64> = match env_u64("SETTLE_SIM_SEED") {
        Some(seed) => vec![seed],
        None => {
            let base = env_u64("SETTLE_SIM_BASE").unwrap_or(0);
            let n = env_u64("SETTLE_SIM_SEEDS").unwrap_or(1_000);
            (base + 1..=base + n).collect()
        }
    };
    let started = std::time::Instant::now();
    let mut reports: Vec<SeedReport> = Vec::with_capacity(seeds.len());
    let mut running = JoinSet::new();
    let mut pending = seeds.iter().copied();
    loop {
        while running.len() < AT_ONCE {
            let Some(seed) = pending.next() else { break };
            running.spawn(async move { (seed, run_seed(seed).await) });
        }
        let Some(done) = running.join_next().await else {
            break;
        };
        let (seed, report) = done?;
        let report = report.map_err(|e| anyhow::anyhow!("seed {seed}: {e:#}"))?;
        if seeds.len() == 1 {
            let mut shown = report.clone();
            let trace = std::mem::take(&mut shown.trace);
            println!(
                "{shown:#?}\ntrace: {} calls and publishes, digest {:016x}",
                trace.len(),
                report.digest()
            );
            if std::env::var_os("SETTLE_SIM_TRACE").is_some() {
                for line in &trace {
                    println!("  {line}");
                }
            }
        }
        reports.push(report);
    }

    // The same seed, run again, makes the same calls in the same order with the same
    // outcomes.
    let mut replays = JoinSet::new();
    for first in reports.iter().take(REPLAYED).cloned() {
        replays.spawn(async move { (run_seed(first.seed).await, first) });
    }
    let mut diverged = Vec::new();
    while let Some(done) = replays.join_next().await {
        let (again, first) = done?;
        let again = again.map_err(|e| anyhow::anyhow!("seed {} again: {e:#}", first.seed))?;
        if let Some((line, a, b)) = first.first_difference(&again) {
            eprintln!(
                "[sim] seed {} did not replay exactly: its traces ({} and {} lines) differ at line {line}:\n  first:  {}\n  again:  {}",
                first.seed,
                first.trace.len(),
                again.trace.len(),
                a.unwrap_or("(ended)"),
                b.unwrap_or("(ended)")
            );
            diverged.push(first.seed);
        }
    }
    println!(
        "[sim] {} seeds run twice: {} replayed exactly",
        reports.len().min(REPLAYED),
        reports.len().min(REPLAYED) - diverged.len()
    );

    let mut faults: BTreeMap<&str, u64> = BTreeMap::new();
    for r in &reports {
        for (kind, n) in &r.faults {
            *faults.entry(kind).or_default() += n;
        }
    }
    println!(
        "[sim] {} seeds in {:.0?}: {} TCCs, {} messages, {} sagas, {} faults, {} duplicates absorbed, slowest settle {} ms after the faults stopped",
        reports.len(),
        started.elapsed(),
        reports.iter().map(|r| r.tccs).sum::<usize>(),
        reports.iter().map(|r| r.msgs).sum::<usize>(),
        reports.iter().map(|r| r.sagas).sum::<usize>(),
        faults.values().sum::<u64>(),
        reports.iter().map(|r| r.duplicates).sum::<u64>(),
        reports.iter().map(|r| r.settle_ms).max().unwrap_or(0),
    );
    for (kind, n) in &faults {
        println!("[sim]   {n:>6}  {kind}");
    }
    let failed: Vec<&SeedReport> = reports
        .iter()
        .filter(|r| !r.violations.is_empty())
        .collect();
    for r in &failed {
        eprintln!(
            "[sim] seed {} broke invariants (replay: SETTLE_SIM_SEED={} cargo test -p settle-tests --test simulation -- --nocapture):",
            r.seed, r.seed
        );
        for v in &r.violations {
            eprintln!("[sim]   {v}");
        }
    }
    assert!(
        failed.is_empty(),
        "{} of {} seeds broke invariants: {:?}",
        failed.len(),
        reports.len(),
        failed.iter().map(|r| r.seed).collect::<Vec<_>>()
    );
    assert!(
        faults.values().sum::<u64>() > 0,
        "the simulation injected faults"
    );
    assert!(
        diverged.is_empty(),
        "seeds {diverged:?} made other calls, in another order or with other outcomes, when run again"
    );
    assert!(
        reports.iter().all(|r| !r.trace.is_empty()),
        "every seed traced its calls"
    );
    Ok(())
}
