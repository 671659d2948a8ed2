//! The versioned Redis cache on a real Redis: old and duplicate updates never roll an entry
//! back, one reader reloads a missing key, and a dead lock holder blocks its key only until
//! the lock expires.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use settle_sdk::cache::{Applied, CacheSettings, Entry, ReadSource, VersionedCache};
use settle_tests::redis_url;

fn key(name: &str) -> String {
    format!(
        "settle-test:{}:{name}",
        &uuid::Uuid::new_v4().simple().to_string()[..12]
    )
}

async fn cache(settings: CacheSettings) -> anyhow::Result<VersionedCache> {
    Ok(VersionedCache::connect(&redis_url(), settings).await?)
}

#[tokio::test]
async fn replaying_old_and_duplicate_updates_never_rolls_an_entry_back() -> anyhow::Result<()> {
    let c = cache(CacheSettings {
        dedupe_prefix: key("seen:"),
        ..CacheSettings::default()
    })
    .await?;
    let k = key("order:1");
    assert_eq!(
        c.apply_message("m1", &k, 1, "created").await?,
        Applied::Written
    );
    assert_eq!(
        c.apply_message("m3", &k, 3, "shipped").await?,
        Applied::Written
    );
    // A late message with an older version, then redeliveries of both.
    assert_eq!(c.apply_message("m2", &k, 2, "paid").await?, Applied::Stale);
    assert_eq!(
        c.apply_message("m3", &k, 3, "shipped").await?,
        Applied::Duplicate
    );
    assert_eq!(
        c.apply_message("m1", &k, 1, "created").await?,
        Applied::Duplicate
    );
    assert_eq!(
        c.apply(&k, 3, "something else").await?,
        Applied::Stale,
        "an equal version is not newer"
    );
    assert_eq!(
        c.get(&k).await?,
        Some(Entry {
            version: 3,
            value: "shipped".into()
        })
    );
    c.purge(&k).await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_writers_in_any_order_leave_the_newest_version() -> anyhow::Result<()> {
    let c = cache(CacheSettings::default()).await?;
    let k = key("account:7");
    let mut tasks = tokio::task::JoinSet::new();
    for v in (1..=200_i64).rev().chain(1..=200) {
        let (c, k) = (c.clone(), k.clone());
        tasks.spawn(async move { c.apply(&k, v, &format!("balance-{v}")).await });
    }
    let mut written = 0;
    while let Some(r) = tasks.join_next().await {
        if r?? == Applied::Written {
            written += 1;
        }
    }
    assert!(written >= 1);
    assert_eq!(
        c.get(&k).await?,
        Some(Entry {
            version: 200,
            value: "balance-200".into()
        })
    );
    c.purge(&k).await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn on_a_miss_one_reader_loads_and_the_others_wait() -> anyhow::Result<()> {
    let c = cache(CacheSettings {
        lock_wait: Duration::from_secs(2),
        ..CacheSettings::default()
    })
    .await?;
    let k = key("hot");
    let loads = Arc::new(AtomicUsize::new(0));
    let mut readers = tokio::task::JoinSet::new();
    for _ in 0..20 {
        let (c, k, loads) = (c.clone(), k.clone(), loads.clone());
        readers.spawn(async move {
            c.get_or_load(&k, || {
                let loads = loads.clone();
                async move {
                    loads.fetch_add(1, Ordering::SeqCst);
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    Ok::<_, String>(Entry {
                        version: 5,
                        value: "from the database".into(),
                    })
                }
            })
            .await
        });
    }
    let mut sources = Vec::new();
    while let Some(r) = readers.join_next().await {
        let (entry, source) = r??;
        assert_eq!(entry.value, "from the database");
        sources.push(source);
    }
    assert_eq!(
        loads.load(Ordering::SeqCst),
        1,
        "one reader went to the database"
    );
    assert_eq!(
        sources.iter().filter(|s| **s == ReadSource::Loaded).count(),
        1
    );
    assert!(
        sources.iter().all(|s| matches!(
            s,
            ReadSource::Loaded | ReadSource::Waited | ReadSource::Cache
        )),
        "{sources:?}"
    );
    c.purge(&k).await?;
    Ok(())
}

#[tokio::test]
async fn a_lock_holder_that_dies_blocks_the_key_only_until_the_lock_expires() -> anyhow::Result<()>
{
    let c = cache(CacheSettings {
        lock_ttl: Duration::from_millis(400),
        lock_wait: Duration::from_millis(100),
        ..CacheSettings::default()
    })
    .await?;
    let k = key("orphan");
    // A reader takes the lock and dies without releasing it.
    let token = c
        .try_lock(&k, Duration::from_millis(400))
        .await?
        .expect("lock free");
    assert!(
        c.try_lock(&k, Duration::from_millis(400)).await?.is_none(),
        "held"
    );
    // Another reader does not wait forever: it reads through.
    let load = || async {
        Ok::<_, String>(Entry {
            version: 1,
            value: "db".into(),
        })
    };
    let (_, source) = c.get_or_load(&k, load).await?;
    assert_eq!(source, ReadSource::ReadThrough);
    // Only the holder's token releases it.
    assert!(!c.unlock(&k, "someone else").await?);
    tokio::time::sleep(Duration::from_millis(450)).await;
    let (entry, source) = c.get_or_load(&k, load).await?;
    assert_eq!(
        (entry.value.as_str(), source),
        ("db", ReadSource::Loaded),
        "the expired lock was taken again"
    );
    assert!(
        !c.unlock(&k, &token).await?,
        "the dead holder's token no longer holds it"
    );
    c.purge(&k).await?;
    Ok(())
}

#[tokio::test]
async fn versions_compare_exactly_beyond_what_a_double_holds() -> anyhow::Result<()> {
    let c = cache(CacheSettings::default()).await?;
    let k = key("big");
    let big = 1_i64 << 53;
    assert_eq!(c.apply(&k, big, "a").await?, Applied::Written);
    assert_eq!(
        c.apply(&k, big + 1, "b").await?,
        Applied::Written,
        "2^53 + 1 is newer than 2^53"
    );
    assert_eq!(c.apply(&k, big, "a again").await?, Applied::Stale);
    assert_eq!(c.apply(&k, i64::MAX, "max").await?, Applied::Written);
    let n = key("negative");
    assert_eq!(c.apply(&n, -10, "x").await?, Applied::Written);
    assert_eq!(c.apply(&n, -2, "y").await?, Applied::Written);
    assert_eq!(c.apply(&n, -3, "z").await?, Applied::Stale);
    assert_eq!(c.apply(&n, 0, "zero").await?, Applied::Written);
    for key in [k, n] {
        c.purge(&key).await?;
    }
    Ok(())
}

#[tokio::test]
async fn an_entry_that_expired_or_was_removed_keeps_its_version_floor() -> anyhow::Result<()> {
    let c = cache(CacheSettings {
        entry_ttl: Some(Duration::from_secs(1)),
        ..CacheSettings::default()
    })
    .await?;
    let k = key("expiring");
    assert_eq!(c.apply(&k, 5, "five").await?, Applied::Written);
    tokio::time::sleep(Duration::from_millis(2_100)).await;
    assert_eq!(c.get(&k).await?, None, "the value expired");
    assert_eq!(
        c.apply(&k, 3, "three").await?,
        Applied::Stale,
        "an older version after the value expired is still older"
    );
    assert_eq!(c.apply(&k, 6, "six").await?, Applied::Written);
    let r = key("removed");
    let plain = cache(CacheSettings::default()).await?;
    assert_eq!(plain.apply(&r, 9, "nine").await?, Applied::Written);
    plain.remove(&r).await?;
    assert_eq!(plain.get(&r).await?, None);
    assert_eq!(
        plain.apply(&r, 8, "eight").await?,
        Applied::Stale,
        "a removed entry's late update does not come back"
    );
    for (cache, key) in [(&c, k), (&plain, r)] {
        cache.purge(&key).await?;
    }
    Ok(())
}
