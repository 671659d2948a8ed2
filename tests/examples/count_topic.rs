//! Counts the distinct messages of a topic with a fresh consumer group (a diagnostic).
use std::time::Duration;
#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let topic = std::env::args().nth(1).expect("topic");
    let rmq = settle_rocketmq::Client::new("count")?;
    let c = settle_tests::Collector::start(&rmq, &topic).await?;
    tokio::time::sleep(Duration::from_secs(15)).await;
    let got = c.received();
    let ids = c.distinct_ids();
    println!("received {} distinct {}", got.len(), ids.len());
    let mut per_queue = std::collections::BTreeMap::new();
    for (d, _) in &got { *per_queue.entry(d.queue_id).or_insert(0) += 1; }
    println!("per queue {per_queue:?}");
    let mut seen = std::collections::HashMap::new();
    for (d, _) in &got {
        *seen.entry((d.message_id.clone(), String::from_utf8_lossy(&d.body).to_string())).or_insert(0) += 1;
    }
    for ((id, body), n) in &seen { if *n > 1 { println!("dup x{n}: {id} {body}"); } }
    let mut bodies: Vec<String> = got.iter().map(|(d, _)| String::from_utf8_lossy(&d.body).to_string()).collect();
    bodies.sort(); bodies.dedup();
    println!("distinct bodies {}", bodies.len());
    std::fs::write("/tmp/received_bodies.txt", bodies.join("\n") + "\n")?;
    for (d, _) in &got { if got.iter().filter(|(e, _)| e.message_id == d.message_id).count() > 1 { println!("q{} off{} born {} stored {} clog {} {} {}", d.queue_id, d.queue_offset, d.born_timestamp, d.store_timestamp, d.commit_log_offset, d.message_id, String::from_utf8_lossy(&d.body)); } }
    Ok(())
}
