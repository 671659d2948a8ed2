//! Reads a whole topic with a fresh consumer group and reports what the broker holds: how
//! many messages, how many distinct ids, per queue, and every id stored more than once.
//! A diagnostic for delivery problems: `cargo run -p settle-tests --example count_topic --
//! TOPIC [SECONDS]`.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let topic = args
        .next()
        .ok_or_else(|| anyhow::anyhow!("usage: count_topic TOPIC [SECONDS]"))?;
    let seconds: u64 = args.next().map(|s| s.parse()).transpose()?.unwrap_or(15);
    let rmq = settle_rocketmq::Client::new("count")?;
    let collector = settle_tests::Collector::start(&rmq, &topic).await?;
    tokio::time::sleep(Duration::from_secs(seconds)).await;
    let got = collector.received();
    println!(
        "messages: {}, distinct ids: {}",
        got.len(),
        collector.distinct_ids().len()
    );
    let mut per_queue: BTreeMap<i32, usize> = BTreeMap::new();
    let mut copies: HashMap<&str, Vec<&settle_rocketmq::Delivery>> = HashMap::new();
    for (d, _) in &got {
        *per_queue.entry(d.queue_id).or_default() += 1;
        copies.entry(d.message_id.as_str()).or_default().push(d);
    }
    println!("per queue: {per_queue:?}");
    for (id, ds) in copies.iter().filter(|(_, ds)| ds.len() > 1) {
        for d in ds {
            println!(
                "stored more than once: {id} queue {} offset {} born {} stored {} commit log {}",
                d.queue_id,
                d.queue_offset,
                d.born_timestamp,
                d.store_timestamp,
                d.commit_log_offset
            );
        }
    }
    collector.shutdown().await;
    rmq.shutdown().await;
    Ok(())
}
