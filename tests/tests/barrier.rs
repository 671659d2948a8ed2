//! The participant barrier on a real MySQL: each operation runs at most once, a Cancel (or a
//! saga's compensation) before its Try (action) is an empty rollback, a Try (action) after
//! it is refused, and a failed business step leaves no barrier row behind.

use settle_protocol::BranchParams;
use settle_sdk::{BarrierError, BarrierOutcome, BarrierTable, BranchBarrier};
use settle_tests::TestDb;
use sqlx::MySqlPool;

struct Fixture {
    _db: TestDb,
    pool: MySqlPool,
    table: BarrierTable,
}

async fn fixture() -> anyhow::Result<Fixture> {
    let db = TestDb::mysql().await?;
    let pool = db.pool().await?;
    let table = BarrierTable::named("barrier")?;
    table.create(&pool).await?;
    sqlx::query("CREATE TABLE effects (gid VARCHAR(128), op VARCHAR(16))")
        .execute(&pool)
        .await?;
    Ok(Fixture {
        _db: db,
        pool,
        table,
    })
}

fn barrier(f: &Fixture, gid: &str, op: &str) -> BranchBarrier {
    let params = BranchParams {
        gid: gid.to_owned(),
        trans_type: if matches!(op, "action" | "compensate") {
            "saga"
        } else {
            "tcc"
        }
        .to_owned(),
        branch_id: "01".to_owned(),
        op: op.to_owned(),
    };
    BranchBarrier::new(params, f.table.clone()).expect("complete params")
}

/// Runs a barrier call whose business step records `(gid, op)` in `effects`.
async fn run(f: &Fixture, gid: &str, op: &str) -> BarrierOutcome<()> {
    let (g, o) = (gid.to_owned(), op.to_owned());
    barrier(f, gid, op)
        .call(&f.pool, move |tx| {
            Box::pin(async move {
                sqlx::query("INSERT INTO effects VALUES (?, ?)")
                    .bind(g)
                    .bind(o)
                    .execute(&mut *tx)
                    .await?;
                Ok::<_, sqlx::Error>(())
            })
        })
        .await
        .expect("barrier call")
}

async fn effects(f: &Fixture, gid: &str) -> Vec<String> {
    sqlx::query_scalar("SELECT op FROM effects WHERE gid = ? ORDER BY op")
        .bind(gid)
        .fetch_all(&f.pool)
        .await
        .expect("effects")
}

#[tokio::test]
async fn a_duplicate_confirm_runs_the_business_step_once() -> anyhow::Result<()> {
    let f = fixture().await?;
    assert_eq!(run(&f, "g1", "try").await, BarrierOutcome::Done(()));
    assert_eq!(run(&f, "g1", "confirm").await, BarrierOutcome::Done(()));
    assert_eq!(run(&f, "g1", "confirm").await, BarrierOutcome::Duplicate);
    assert_eq!(effects(&f, "g1").await, ["confirm", "try"]);
    Ok(())
}

#[tokio::test]
async fn cancel_before_try_is_an_empty_rollback_and_the_late_try_is_rejected() -> anyhow::Result<()>
{
    let f = fixture().await?;
    assert_eq!(run(&f, "g2", "cancel").await, BarrierOutcome::EmptyRollback);
    assert_eq!(
        run(&f, "g2", "try").await,
        BarrierOutcome::RejectedAfterCancel
    );
    assert_eq!(run(&f, "g2", "cancel").await, BarrierOutcome::Duplicate);
    assert!(effects(&f, "g2").await.is_empty(), "no business step ran");
    Ok(())
}

#[tokio::test]
async fn a_saga_compensation_is_a_cancel_an_empty_one_and_one_that_undoes_once(
) -> anyhow::Result<()> {
    let f = fixture().await?;
    // The compensation arrives first (its action was in flight): nothing to undo, and the
    // late action does nothing.
    assert_eq!(
        run(&f, "s1", "compensate").await,
        BarrierOutcome::EmptyRollback
    );
    assert_eq!(
        run(&f, "s1", "action").await,
        BarrierOutcome::RejectedAfterCancel
    );
    assert!(effects(&f, "s1").await.is_empty(), "no business step ran");
    // After its action, it undoes it once.
    assert_eq!(run(&f, "s2", "action").await, BarrierOutcome::Done(()));
    assert_eq!(run(&f, "s2", "compensate").await, BarrierOutcome::Done(()));
    assert_eq!(run(&f, "s2", "compensate").await, BarrierOutcome::Duplicate);
    assert_eq!(effects(&f, "s2").await, ["action", "compensate"]);
    Ok(())
}

#[tokio::test]
async fn a_cancel_after_a_try_undoes_it_once() -> anyhow::Result<()> {
    let f = fixture().await?;
    assert_eq!(run(&f, "g3", "try").await, BarrierOutcome::Done(()));
    assert_eq!(run(&f, "g3", "try").await, BarrierOutcome::Duplicate);
    assert_eq!(run(&f, "g3", "cancel").await, BarrierOutcome::Done(()));
    assert_eq!(run(&f, "g3", "cancel").await, BarrierOutcome::Duplicate);
    assert_eq!(effects(&f, "g3").await, ["cancel", "try"]);
    Ok(())
}

#[tokio::test]
async fn a_failed_business_step_leaves_no_barrier_row() -> anyhow::Result<()> {
    let f = fixture().await?;
    let failed = barrier(&f, "g4", "try")
        .call(&f.pool, |tx| {
            Box::pin(async move {
                sqlx::query("INSERT INTO effects VALUES ('g4', 'try')")
                    .execute(&mut *tx)
                    .await?;
                Err::<(), _>(sqlx::Error::Protocol("insufficient balance".into()))
            })
        })
        .await;
    assert!(matches!(failed, Err(BarrierError::Business(_))));
    assert!(
        effects(&f, "g4").await.is_empty(),
        "the business write was rolled back"
    );
    // The Try never happened, so its Cancel is an empty rollback.
    assert_eq!(run(&f, "g4", "cancel").await, BarrierOutcome::EmptyRollback);
    Ok(())
}

#[tokio::test]
async fn query_prepared_answers_from_the_barrier_table() -> anyhow::Result<()> {
    let f = fixture().await?;
    let msg = |gid: &str| {
        BranchBarrier::new(
            BranchParams {
                gid: gid.to_owned(),
                trans_type: "msg".to_owned(),
                branch_id: "00".to_owned(),
                op: "msg".to_owned(),
            },
            f.table.clone(),
        )
        .expect("complete params")
    };
    // Committed local transaction: its barrier row exists.
    assert!(matches!(
        msg("m1")
            .call(&f.pool, |_| Box::pin(async { Ok::<_, sqlx::Error>(()) }))
            .await?,
        BarrierOutcome::Done(())
    ));
    assert!(msg("m1").query_prepared(&f.pool).await?);
    // Never committed: the check-back answers false and blocks a late commit.
    assert!(!msg("m2").query_prepared(&f.pool).await?);
    assert!(!msg("m2").query_prepared(&f.pool).await?);
    assert!(matches!(
        msg("m2")
            .call(&f.pool, |_| Box::pin(async { Ok::<_, sqlx::Error>(()) }))
            .await?,
        BarrierOutcome::Duplicate
    ));
    Ok(())
}

#[test]
fn a_barrier_needs_every_branch_parameter() {
    let err = BranchBarrier::new(BranchParams::default(), BarrierTable::default())
        .expect_err("empty params");
    assert!(err.to_string().contains("gid is missing"), "{err}");
    assert!(BarrierTable::named("x; DROP TABLE y").is_err());
}

#[tokio::test]
async fn gids_that_differ_only_in_case_are_two_transactions_even_in_dtms_own_table(
) -> anyhow::Result<()> {
    let db = TestDb::mysql().await?;
    let pool = db.pool().await?;
    // The table as DTM's own SQL creates it: the server's default collation, which
    // ignores case.
    sqlx::query(
        "CREATE TABLE barrier (
           id BIGINT NOT NULL AUTO_INCREMENT PRIMARY KEY,
           trans_type VARCHAR(45) DEFAULT '',
           gid VARCHAR(128) DEFAULT '',
           branch_id VARCHAR(128) DEFAULT '',
           op VARCHAR(45) DEFAULT '',
           barrier_id VARCHAR(45) DEFAULT '',
           reason VARCHAR(45) DEFAULT '',
           create_time DATETIME DEFAULT NOW(),
           update_time DATETIME DEFAULT NOW(),
           KEY (create_time),
           KEY (update_time),
           UNIQUE KEY (gid, branch_id, op, barrier_id)
         ) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4 COLLATE = utf8mb4_general_ci",
    )
    .execute(&pool)
    .await?;
    sqlx::query("CREATE TABLE effects (gid VARCHAR(128), op VARCHAR(16))")
        .execute(&pool)
        .await?;
    // A row written before the upgrade is kept.
    sqlx::query("INSERT INTO barrier (trans_type, gid, branch_id, op, barrier_id, reason) VALUES ('tcc', 'old', '01', 'try', '01', 'try')")
        .execute(&pool)
        .await?;
    let table = BarrierTable::named("barrier")?;
    table.create(&pool).await?;
    let f = Fixture {
        _db: db,
        pool,
        table,
    };
    assert_eq!(run(&f, "Order-1", "try").await, BarrierOutcome::Done(()));
    assert_eq!(
        run(&f, "order-1", "try").await,
        BarrierOutcome::Done(()),
        "another transaction, not a duplicate"
    );
    assert_eq!(run(&f, "old", "try").await, BarrierOutcome::Duplicate);
    // Creating again changes nothing.
    f.table.create(&f.pool).await?;
    assert_eq!(run(&f, "order-1", "try").await, BarrierOutcome::Duplicate);
    Ok(())
}

#[test]
fn ids_longer_than_their_columns_are_refused_not_truncated() {
    let long = "g".repeat(129);
    for (gid, branch_id, op) in [
        (long.as_str(), "01", "try"),
        ("g", long.as_str(), "try"),
        ("g", "01", &"o".repeat(46)[..]),
    ] {
        let params = BranchParams {
            gid: gid.to_owned(),
            trans_type: "tcc".to_owned(),
            branch_id: branch_id.to_owned(),
            op: op.to_owned(),
        };
        let err = BranchBarrier::new(params, BarrierTable::default())
            .expect_err("refused before anything is written");
        assert!(
            matches!(&err, BarrierError::Invalid(m) if m.contains("at most")),
            "{err}"
        );
    }
}
