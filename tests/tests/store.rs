//! The store on both databases: every operation, each test in its own fresh MySQL database
//! and its own SQLite file. Changes go through the batched writer ([`Store::write`]) with
//! the state machine's transitions, as the coordinator makes them.

// The shared test bodies are plain async functions, not `#[test]`s, so clippy's test
// allowance does not reach them.
#![allow(clippy::unwrap_used)]

use std::collections::BTreeSet;

use settle_coordinator::store::{
    ConnectOptions, Failed, KeyRelease, ListFilter, OutboxRow, Store, StoreError,
};
use settle_coordinator::txn::change::RetryNote;
use settle_coordinator::txn::lease::RoundLeft;
use settle_coordinator::txn::tcc::branch_ops;
use settle_coordinator::txn::{
    self, BranchStatus, Change, Decision, GlobalStatus, GlobalTxn, Lease, NewBranch, Op,
    OutboxState, TransOptions, TransType, TxnError, NEVER,
};
use settle_tests::{TestDb, TestSqlite};

async fn connect(url: &str) -> Store {
    Store::connect(&ConnectOptions {
        max_connections: 4,
        ..ConnectOptions::new(url)
    })
    .await
    .expect("store connects and migrates")
}

/// Runs the test body once on a fresh MySQL database and once on a fresh SQLite file.
macro_rules! on_both {
    ($name:ident, |$store:ident| $body:block) => {
        mod $name {
            use super::*;

            async fn body($store: Store) $body

            #[tokio::test]
            async fn on_mysql() {
                let db = TestDb::mysql().await.expect("MySQL is running");
                body(connect(&db.url).await).await;
            }

            #[tokio::test]
            async fn on_sqlite() {
                let db = TestSqlite::new();
                body(connect(&db.url).await).await;
            }
        }
    };
}

fn txn(gid: &str, status: GlobalStatus, now: i64) -> GlobalTxn {
    let options = TransOptions {
        timeout_to_fail: 35,
        request_timeout: 3,
        retry_interval: 10,
        branch_headers: [("x-tenant".to_owned(), "7".to_owned())].into(),
        concurrent: false,
        wait_result: false,
        retry_limit: 0,
        traceparent: "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01".to_owned(),
        callback_url: String::new(),
    };
    let mut t = GlobalTxn::new(gid, TransType::Tcc, status, options, now);
    t.custom_data = "{\"k\":\"v\"}".to_owned();
    t.next_cron_time = now;
    t
}

fn branch(id: &str, op: Op) -> NewBranch {
    NewBranch {
        branch_id: id.to_owned(),
        op,
        url: format!("http://127.0.0.1:1/{op}"),
        data: "{\"amount\":30}".to_owned(),
    }
}

/// Stores `t` as it is, with `branches` (a fixture: no transition decides it).
async fn insert(store: &Store, t: GlobalTxn, branches: Vec<NewBranch>) {
    let gid = t.gid.clone();
    let now = t.create_time;
    store
        .write(&gid, move |_, _| {
            let mut c = Change::at(now);
            c.create = Some(t.clone());
            c.add_branches = branches.clone();
            Ok(Decision::Apply(c))
        })
        .await
        .unwrap();
}

/// Stores `t` with `steps` committed to the outbox in `state`.
async fn enqueue(store: &Store, t: GlobalTxn, steps: Vec<NewBranch>, state: OutboxState) {
    let gid = t.gid.clone();
    let now = t.create_time;
    store
        .write(&gid, move |_, _| {
            let mut c = Change::at(now);
            c.create = Some(t.clone());
            c.add_branches = steps.clone();
            c.enqueue = Some(state);
            Ok(Decision::Apply(c))
        })
        .await
        .unwrap();
}

fn lease(owner: &str, token: &str, expire: i64) -> Lease {
    Lease {
        owner: owner.into(),
        token: token.into(),
        expire,
    }
}

on_both!(
    a_transaction_round_trips_and_a_second_prepare_writes_nothing,
    |store| {
        let t = txn("Round-Trip", GlobalStatus::Prepared, 1_000);
        let steps = vec![branch("01", Op::Cancel), branch("01", Op::Confirm)];
        let (t2, s2) = (t.clone(), steps.clone());
        let first = store
            .write("Round-Trip", move |c, _| txn::prepare::prepare(c, &t2, &s2))
            .await
            .unwrap();
        assert!(!first.duplicate);
        assert_eq!(store.find("Round-Trip").await.unwrap(), Some(t.clone()));
        // gids are case-sensitive.
        assert_eq!(store.find("round-trip").await.unwrap(), None);
        let mut other = txn("Round-Trip", GlobalStatus::Prepared, 2_000);
        other.custom_data = "changed".into();
        let again = store
            .write("Round-Trip", move |c, _| {
                txn::prepare::prepare(c, &other, &[branch("02", Op::Confirm)])
            })
            .await
            .unwrap();
        assert!(again.duplicate);
        assert_eq!(store.find("Round-Trip").await.unwrap(), Some(t));
        let branches = store.find_branches("Round-Trip").await.unwrap();
        let ops: Vec<_> = branches
            .iter()
            .map(|b| (b.branch_id.as_str(), b.op, b.status))
            .collect();
        assert_eq!(
            ops,
            [
                ("01", Op::Cancel, BranchStatus::Prepared),
                ("01", Op::Confirm, BranchStatus::Prepared)
            ]
        );
        assert_eq!(branches[0].data, "{\"amount\":30}");
    }
);

/// Text that a database could read as something other than a value if it were quoted
/// carelessly.
const HOSTILE: &str = "it's \\' \"q\" \0 nul; DROP TABLE trans_global; -- \u{1F600} \\";

on_both!(
    text_with_quotes_backslashes_and_nul_is_stored_byte_for_byte,
    |store| {
        let gid = "hostile-1";
        let mut t = txn(gid, GlobalStatus::Prepared, 1_000);
        t.custom_data = HOSTILE.to_owned();
        t.payloads = vec![HOSTILE.to_owned()];
        t.options.branch_headers = [(HOSTILE.to_owned(), HOSTILE.to_owned())].into();
        let mut step = branch("01", Op::Action);
        step.data = HOSTILE.to_owned();
        step.url = "rocketmq://Topic?key=k'1\\".to_owned();
        enqueue(&store, t.clone(), vec![step], OutboxState::Pending).await;
        assert_eq!(store.find(gid).await.unwrap(), Some(t));
        let branches = store.find_branches(gid).await.unwrap();
        assert_eq!(branches[0].data, HOSTILE);
        // Updates write their values the same way.
        let reason = HOSTILE.to_owned();
        store
            .write(gid, move |_, _| {
                Ok(Decision::Apply(
                    Change::at(2_000)
                        .to(GlobalStatus::Aborting)
                        .reason(reason.clone()),
                ))
            })
            .await
            .unwrap();
        let stored = store.find(gid).await.unwrap().unwrap();
        assert_eq!(stored.rollback_reason, HOSTILE);
        let out = store
            .claim_outbox("me/1", 3_000, 60_000, 10, 64)
            .await
            .unwrap()
            .rows;
        assert_eq!(out.len(), 1);
        assert_eq!(
            (out[0].body.as_str(), out[0].sharding_key.as_str()),
            (HOSTILE, "k'1\\")
        );
    }
);

on_both!(submit_takes_the_lease_and_finish_needs_it, |store| {
    insert(&store, txn("g", GlobalStatus::Prepared, 1_000), vec![]).await;
    let t = txn("g", GlobalStatus::Submitted, 2_000);
    let l = lease("a", "t1", 9_000);
    let submitted = store
        .write("g", move |c, _| txn::submit::submit(c, &t, &[], &l, 2_000))
        .await
        .unwrap();
    assert_eq!(
        submitted.current.txn.as_ref().map(|t| t.status),
        Some(GlobalStatus::Submitted),
        "the answer carries the state after the change"
    );
    let t = store.find("g").await.unwrap().unwrap();
    assert_eq!(
        (
            t.status,
            t.owner.as_str(),
            t.lease_token.as_str(),
            t.lease_expire,
            t.next_cron_time,
            t.submit_time
        ),
        (
            GlobalStatus::Submitted,
            "a",
            "t1",
            9_000,
            9_000,
            Some(2_000)
        )
    );
    let err = store
        .write("g", |c, _| txn::finish::finish(c, "stale", vec![], 3_000))
        .await
        .unwrap_err();
    assert!(err.is_lease_lost(), "{err}");
    store
        .write("g", |c, _| txn::finish::finish(c, "t1", vec![], 3_000))
        .await
        .unwrap();
    let t = store.find("g").await.unwrap().unwrap();
    assert_eq!(
        (
            t.status,
            t.finish_time,
            t.owner.as_str(),
            t.lease_expire,
            t.next_cron_time,
            t.submit_time
        ),
        (
            GlobalStatus::Succeeded,
            Some(3_000),
            "",
            0,
            NEVER,
            Some(2_000)
        )
    );
    insert(&store, txn("h", GlobalStatus::Prepared, 1_000), vec![]).await;
    let l = lease("a", "t2", 9_000);
    store
        .write("h", move |c, _| txn::abort::abort(c, "why", &l, 4_000))
        .await
        .unwrap();
    let h = store.find("h").await.unwrap().unwrap();
    assert_eq!(
        (
            h.status,
            h.rollback_reason.as_str(),
            h.rollback_time,
            h.submit_time
        ),
        (GlobalStatus::Aborting, "why", Some(4_000), None)
    );
});

on_both!(branches_register_only_while_prepared, |store| {
    insert(&store, txn("g", GlobalStatus::Prepared, 1_000), vec![]).await;
    let ops = branch_ops("01", "{}", "http://127.0.0.1:1/c", "http://127.0.0.1:1/x").to_vec();
    let register = |gid: &'static str| {
        let ops = ops.clone();
        let store = store.clone();
        async move {
            store
                .write(gid, move |c, _| {
                    txn::register::register(c, TransType::Tcc, &ops, 100, 1_100)
                })
                .await
        }
    };
    assert!(!register("g").await.unwrap().duplicate);
    assert!(register("g").await.unwrap().duplicate);
    assert_eq!(
        store.find_branches("g").await.unwrap().len(),
        2,
        "a repeated registration is ignored"
    );
    insert(&store, txn("s", GlobalStatus::Submitted, 1_000), vec![]).await;
    let err = register("s").await.unwrap_err();
    assert!(
        matches!(err, StoreError::Txn(TxnError::Conflict { .. })),
        "{err}"
    );
    assert!(store.find_branches("s").await.unwrap().is_empty());
    let err = register("missing").await.unwrap_err();
    assert!(
        matches!(err, StoreError::Txn(TxnError::NotFound { .. })),
        "{err}"
    );
    assert!(store.find_branches("missing").await.unwrap().is_empty());
});

on_both!(
    one_illegal_operation_fails_only_itself_in_its_batch,
    |store| {
        insert(&store, txn("done", GlobalStatus::Submitted, 1_000), vec![]).await;
        let ops = branch_ops("01", "{}", "http://127.0.0.1:1/c", "http://127.0.0.1:1/x").to_vec();
        // Many commands at once land in the same batches: new transactions, registrations,
        // and one registration after submit.
        let mut writes = Vec::new();
        for i in 0..40 {
            let store = store.clone();
            let ops = ops.clone();
            writes.push(tokio::spawn(async move {
                let gid = format!("b{i}");
                let t = txn(&gid, GlobalStatus::Prepared, 1_000);
                store
                    .write(&gid, move |c, _| txn::prepare::prepare(c, &t, &[]))
                    .await?;
                store
                    .write(&gid, move |c, _| {
                        txn::register::register(c, TransType::Tcc, &ops, 100, 1_100)
                    })
                    .await
            }));
        }
        let late = {
            let store = store.clone();
            let ops = ops.clone();
            tokio::spawn(async move {
                store
                    .write("done", move |c, _| {
                        txn::register::register(c, TransType::Tcc, &ops, 100, 1_100)
                    })
                    .await
            })
        };
        for w in writes {
            w.await.unwrap().unwrap();
        }
        let err = late.await.unwrap().unwrap_err();
        assert!(
            matches!(err, StoreError::Txn(TxnError::Conflict { .. })),
            "{err}"
        );
        for i in 0..40 {
            assert_eq!(
                store.find_branches(&format!("b{i}")).await.unwrap().len(),
                2
            );
        }
        assert!(store.find_branches("done").await.unwrap().is_empty());
    }
);

on_both!(a_stale_lease_cannot_write_through_a_batch, |store| {
    let mut t = txn("g", GlobalStatus::Submitted, 1_000);
    t.owner = "b".into();
    t.lease_token = "new".into();
    t.lease_expire = 50_000;
    insert(&store, t, vec![branch("01", Op::Confirm)]).await;
    insert(&store, txn("other", GlobalStatus::Prepared, 1_000), vec![]).await;
    // The old owner's finish and an unrelated change go in together.
    let (stale, fine) = tokio::join!(
        store.write("g", |c, _| {
            txn::finish::finish(c, "old", vec![("01".into(), Op::Confirm)], 2_000)
        }),
        store.write("other", |c, _| txn::force_stop::force_stop(c, 2_000)),
    );
    assert!(stale.unwrap_err().is_lease_lost());
    fine.unwrap();
    let t = store.find("g").await.unwrap().unwrap();
    assert_eq!(
        (t.status, t.lease_token.as_str()),
        (GlobalStatus::Submitted, "new")
    );
    assert_eq!(
        store.find_branches("g").await.unwrap()[0].status,
        BranchStatus::Prepared,
        "nothing written"
    );
    assert_eq!(
        store.find("other").await.unwrap().unwrap().status,
        GlobalStatus::Failed
    );
});

on_both!(claims_take_due_unleased_work_in_batches, |store| {
    for i in 0..5 {
        insert(
            &store,
            txn(&format!("due{i}"), GlobalStatus::Submitted, 1_000 + i),
            vec![branch("01", Op::Confirm)],
        )
        .await;
    }
    let mut later = txn("later", GlobalStatus::Submitted, 1_000);
    later.next_cron_time = 50_000;
    insert(&store, later, vec![]).await;
    let mut leased = txn("leased", GlobalStatus::Aborting, 1_000);
    leased.owner = "other".into();
    leased.lease_token = "their-token".into();
    leased.lease_expire = 20_000;
    insert(&store, leased, vec![]).await;
    let mut done = txn("done", GlobalStatus::Succeeded, 1_000);
    done.next_cron_time = 0;
    insert(&store, done, vec![]).await;

    let first = store
        .claim_due("me", "tok1", 10_000, 15_000, 3)
        .await
        .unwrap();
    assert_eq!(first.len(), 3);
    assert!(first.iter().all(|c| c.txn.owner == "me"
        && c.txn.lease_token == "tok1"
        && c.txn.lease_expire == 15_000));
    assert!(
        first
            .iter()
            .all(|c| c.branches.len() == 1 && c.branches[0].gid == c.txn.gid),
        "a claim comes with its branches"
    );
    let second = store
        .claim_due("me", "tok2", 10_000, 15_000, 10)
        .await
        .unwrap();
    let mut gids: Vec<_> = second.iter().map(|c| c.txn.gid.as_str()).collect();
    gids.sort_unstable();
    assert_eq!(
        gids,
        ["due3", "due4"],
        "claimed, leased, later and finished ones are skipped"
    );
    // Once the other owner's lease has run out, its transaction is taken over.
    let takeover = store
        .claim_due("me", "tok3", 20_000, 25_000, 10)
        .await
        .unwrap();
    let gids: Vec<_> = takeover.iter().map(|c| c.txn.gid.as_str()).collect();
    assert!(gids.contains(&"leased"), "{gids:?}");
    assert!(!gids.contains(&"done"));
});

on_both!(lease_fenced_writes_fail_once_the_lease_is_lost, |store| {
    let mut t = txn("g", GlobalStatus::Submitted, 1_000);
    t.owner = "a".into();
    t.lease_token = "mine".into();
    t.lease_expire = 5_000;
    insert(&store, t, vec![branch("01", Op::Confirm)]).await;
    let err = store
        .write("g", |c, _| txn::lease::renew(c, "stale", 12_000, 2_000))
        .await
        .unwrap_err();
    assert!(err.is_lease_lost());
    store
        .write("g", |c, _| txn::lease::renew(c, "mine", 12_000, 2_000))
        .await
        .unwrap();
    let t = store.find("g").await.unwrap().unwrap();
    assert_eq!(
        (t.lease_expire, t.next_cron_time),
        (12_000, 12_000),
        "renewed, and due again only when the lease runs out"
    );
    let left = RoundLeft {
        done: vec![("01".into(), Op::Confirm)],
        release_held: false,
        next_cron_time: 30_000,
        retry: RetryNote {
            interval_s: 20,
            count: 2,
            last_error: "HTTP 500".into(),
        },
        stopped: None,
    };
    let l2 = left.clone();
    assert!(store
        .write("g", move |c, _| txn::lease::schedule_retry(
            c,
            "stale",
            l2.clone(),
            3_000
        ))
        .await
        .unwrap_err()
        .is_lease_lost());
    store
        .write("g", move |c, _| {
            txn::lease::schedule_retry(c, "mine", left.clone(), 3_000)
        })
        .await
        .unwrap();
    let t = store.find("g").await.unwrap().unwrap();
    assert_eq!(
        (
            t.next_cron_time,
            t.retry_count,
            t.last_error.as_str(),
            t.owner.as_str(),
            t.lease_token.as_str()
        ),
        (30_000, 2, "HTTP 500", "", "")
    );
    let b = &store.find_branches("g").await.unwrap()[0];
    assert_eq!(
        (b.status, b.finish_time),
        (BranchStatus::Succeeded, Some(3_000)),
        "what succeeded in the round is recorded with its retry"
    );
    // An operator makes it due now.
    assert_eq!(store.reset_cron(Some("g"), 4_000).await.unwrap(), 1);
    let t = store.find("g").await.unwrap().unwrap();
    assert_eq!((t.next_cron_time, t.retry_count), (4_000, 0));
});

on_both!(
    force_stop_fails_pending_branches_and_drops_held_messages,
    |store| {
        let t = txn("g", GlobalStatus::Submitted, 1_000);
        enqueue(
            &store,
            t,
            vec![branch("01", Op::Confirm), rocketmq_step("m1", "hk", 1)],
            OutboxState::Held,
        )
        .await;
        enqueue(
            &store,
            txn("later", GlobalStatus::Submitted, 1_000),
            vec![rocketmq_step("m1", "hk", 2)],
            OutboxState::Pending,
        )
        .await;
        assert!(
            store
                .claim_outbox("me/1", 2_000, 60_000, 10, 64)
                .await
                .unwrap()
                .rows
                .is_empty(),
            "the held message holds its key back"
        );
        store
            .write("g", |c, _| txn::force_stop::force_stop(c, 3_000))
            .await
            .unwrap();
        let branches = store.find_branches("g").await.unwrap();
        assert!(
            branches.iter().all(|b| b.status == BranchStatus::Failed),
            "{branches:?}"
        );
        let heads = store
            .claim_outbox("me/2", 4_000, 60_000, 10, 64)
            .await
            .unwrap()
            .rows;
        assert_eq!(
            heads
                .iter()
                .map(|r| r.message_id.as_str())
                .collect::<Vec<_>>(),
            ["later-m1"],
            "the dropped message no longer holds the key back"
        );
    }
);

on_both!(
    a_transaction_that_ends_failed_withdraws_its_released_messages_not_on_their_way,
    |store| {
        // Another transaction's message on key "busy" is claimed: a dispatcher holds the key.
        enqueue(
            &store,
            txn("first", GlobalStatus::Submitted, 1_000),
            vec![rocketmq_step("m1", "busy", 1)],
            OutboxState::Pending,
        )
        .await;
        let claimed = store
            .claim_outbox("me/1", 2_000, 60_000, 10, 64)
            .await
            .unwrap();
        assert_eq!(claimed.rows.len(), 1);
        let mut t = txn("g", GlobalStatus::Submitted, 2_500);
        t.options.callback_url = "http://127.0.0.1:1/done".into();
        enqueue(
            &store,
            t,
            vec![
                rocketmq_step("m1", "free", 1),
                rocketmq_step("m2", "busy", 2),
            ],
            OutboxState::Pending,
        )
        .await;
        store
            .write("g", |c, _| txn::force_stop::force_stop(c, 3_000))
            .await
            .unwrap();
        let rows: Vec<_> = store
            .outbox_list(None, Some("g"), 100)
            .await
            .unwrap()
            .into_iter()
            .map(|r| (r.branch_id, r.status, r.last_error.contains("withdrawn")))
            .collect();
        assert_eq!(
            rows.iter().map(|r| (r.0.as_str(), r.1.as_str(), r.2)).collect::<BTreeSet<_>>(),
            [("m1", "dropped", true), ("m2", "pending", false)].into(),
            "the message nobody was sending is withdrawn; the one whose key a dispatcher holds may be on its way"
        );
        let callback = store
            .due_callbacks(i64::MAX, 10)
            .await
            .unwrap()
            .into_iter()
            .find(|c| c.gid == "g")
            .expect("the outcome is to be posted");
        assert_eq!(callback.status, "failed");
        assert_eq!(
            callback.messages,
            settle_coordinator::store::MessageCounts {
                sent: 0,
                pending: 1,
                dropped: 1,
                dead: 0
            },
            "the outcome says what was and was not sent"
        );
    }
);

on_both!(
    retention_keeps_a_transaction_until_its_messages_are_sent_or_ended,
    |store| {
        for (gid, state) in [
            ("sent", OutboxState::Sent),
            ("dropped", OutboxState::Dropped),
            ("pending", OutboxState::Pending),
            ("dead", OutboxState::Dead),
            ("held", OutboxState::Held),
        ] {
            let mut t = txn(gid, GlobalStatus::Failed, 500);
            t.finish_time = Some(1_000);
            enqueue(&store, t, vec![rocketmq_step("m1", gid, 1)], state).await;
        }
        let purged = store.purge_finished(5_000, 10).await.unwrap();
        assert_eq!((purged.transactions, purged.messages), (2, 2));
        for gid in ["sent", "dropped"] {
            assert_eq!(store.find(gid).await.unwrap(), None, "{gid}");
        }
        for gid in ["pending", "dead", "held"] {
            assert!(
                store.find(gid).await.unwrap().is_some(),
                "{gid}: nothing undelivered is deleted"
            );
        }
        // An operator who discards the dead letter lets its transaction go.
        assert_eq!(store.outbox_discard("dead", None, 6_000).await.unwrap(), 1);
        assert_eq!(
            store.purge_finished(5_000, 10).await.unwrap().transactions,
            1
        );
        assert_eq!(store.find("dead").await.unwrap(), None);
    }
);

on_both!(retention_deletes_only_what_finished_long_ago, |store| {
    for (gid, status, finished) in [
        ("old-ok", GlobalStatus::Succeeded, Some(1_000)),
        ("old-failed", GlobalStatus::Failed, Some(2_000)),
        ("recent", GlobalStatus::Succeeded, Some(9_000)),
        ("open", GlobalStatus::Submitted, None),
    ] {
        let mut t = txn(gid, status, 500);
        t.finish_time = finished;
        // Sent, or (for those not finished) still to go.
        let state = if finished.is_some() {
            OutboxState::Sent
        } else {
            OutboxState::Pending
        };
        enqueue(
            &store,
            t,
            vec![branch("01", Op::Confirm), rocketmq_step("m1", gid, 1)],
            state,
        )
        .await;
    }
    let purged = store.purge_finished(5_000, 10).await.unwrap();
    assert_eq!(
        (purged.transactions, purged.branches, purged.messages),
        (2, 4, 2)
    );
    for gid in ["old-ok", "old-failed"] {
        assert_eq!(store.find(gid).await.unwrap(), None);
        assert!(store.find_branches(gid).await.unwrap().is_empty());
    }
    for gid in ["recent", "open"] {
        assert!(store.find(gid).await.unwrap().is_some());
        assert_eq!(store.find_branches(gid).await.unwrap().len(), 2);
    }
    let (backlog, _) = store.outbox_backlog().await.unwrap();
    assert_eq!(backlog, 1);
    assert_eq!(
        store.purge_finished(5_000, 10).await.unwrap().transactions,
        0,
        "nothing more is due"
    );
});

#[tokio::test]
async fn a_value_the_database_refuses_fails_only_its_own_command() {
    let db = TestDb::mysql().await.expect("MySQL is running");
    let store = connect(&db.url).await;
    // gid is VARCHAR(128): strict mode refuses a longer one instead of cutting it.
    let long = "x".repeat(200);
    let writes: Vec<_> = ["a", long.as_str(), "b"]
        .iter()
        .map(|gid| {
            let store = store.clone();
            let t = txn(gid, GlobalStatus::Prepared, 1_000);
            tokio::spawn(async move {
                let gid = t.gid.clone();
                store
                    .write(&gid, move |c, _| txn::prepare::prepare(c, &t, &[]))
                    .await
            })
        })
        .collect();
    let mut results = Vec::new();
    for w in writes {
        results.push(w.await.unwrap());
    }
    assert!(results[0].is_ok() && results[2].is_ok(), "{results:?}");
    let err = results[1].as_ref().unwrap_err().to_string();
    assert!(
        err.contains("Data too long") || err.contains("1406"),
        "{err}"
    );
    assert!(store.find("a").await.unwrap().is_some());
    assert!(store.find("b").await.unwrap().is_some());
    assert_eq!(store.find(&long).await.unwrap(), None);
}

on_both!(listing_pages_newest_first_with_filters, |store| {
    for i in 0..5 {
        let status = if i % 2 == 0 {
            GlobalStatus::Prepared
        } else {
            GlobalStatus::Failed
        };
        insert(&store, txn(&format!("g{i}"), status, 1_000 + i), vec![]).await;
    }
    let (page, next) = store
        .list(&ListFilter {
            limit: 2,
            ..ListFilter::default()
        })
        .await
        .unwrap();
    assert_eq!(
        page.iter().map(|t| t.gid.as_str()).collect::<Vec<_>>(),
        ["g4", "g3"]
    );
    let (page2, _) = store
        .list(&ListFilter {
            limit: 2,
            position: next,
            ..ListFilter::default()
        })
        .await
        .unwrap();
    assert_eq!(
        page2.iter().map(|t| t.gid.as_str()).collect::<Vec<_>>(),
        ["g2", "g1"]
    );
    let (failed, next) = store
        .list(&ListFilter {
            limit: 10,
            status: Some(GlobalStatus::Failed),
            ..ListFilter::default()
        })
        .await
        .unwrap();
    assert_eq!(
        failed.iter().map(|t| t.gid.as_str()).collect::<Vec<_>>(),
        ["g3", "g1"]
    );
    assert_eq!(next, None);
    let (window, _) = store
        .list(&ListFilter {
            limit: 10,
            create_time_start: Some(1_001),
            create_time_end: Some(1_002),
            ..ListFilter::default()
        })
        .await
        .unwrap();
    assert_eq!(window.len(), 2);
    let counts = store.count_unfinished().await.unwrap();
    assert_eq!(counts, [("prepared".to_owned(), 3)]);
});

on_both!(
    operators_find_stuck_transactions_read_their_timeline_and_retry_them,
    |store| {
        // (gid, status, failed rounds, next due)
        for (gid, status, retries, due) in [
            ("shop_1", GlobalStatus::Submitted, 5, 1_000),
            ("shop-2", GlobalStatus::Submitted, 1, 90_000),
            ("shopX3", GlobalStatus::Aborting, 0, 95_000),
            ("bank-1", GlobalStatus::Submitted, 7, 99_000),
            ("shop-4", GlobalStatus::Succeeded, 9, 1_000),
        ] {
            let mut t = txn(gid, status, 500);
            t.retry_count = retries;
            t.next_cron_time = due;
            insert(&store, t, vec![]).await;
        }
        let gids = |f: ListFilter| {
            let store = store.clone();
            async move {
                let (page, _) = store.list(&ListFilter { limit: 10, ..f }).await.unwrap();
                let mut g: Vec<String> = page.into_iter().map(|t| t.gid).collect();
                g.sort();
                g
            }
        };
        // `_` in a prefix is itself, not any character.
        let prefixed = gids(ListFilter {
            gid_prefix: Some("shop_".into()),
            ..ListFilter::default()
        })
        .await;
        assert_eq!(prefixed, ["shop_1"]);
        let retried = gids(ListFilter {
            retried_more_than: Some(3),
            ..ListFilter::default()
        })
        .await;
        assert_eq!(
            retried,
            ["bank-1", "shop_1"],
            "finished ones are never stuck"
        );
        let overdue = gids(ListFilter {
            due_before: Some(50_000),
            ..ListFilter::default()
        })
        .await;
        assert_eq!(overdue, ["shop_1"]);

        // A round that did not settle is one line of the timeline.
        for (round, at) in [(6, 2_000), (7, 3_000)] {
            store
                .write("bank-1", move |_, _| {
                    let mut c = Change::at(at);
                    c.next_cron_time = Some(at + 60_000);
                    c.retry = Some(RetryNote {
                        interval_s: 60,
                        count: round,
                        last_error: format!("branch 01 confirm: HTTP 500 (round {round})"),
                    });
                    Ok(Decision::Apply(c))
                })
                .await
                .unwrap();
        }
        let timeline = store.attempts("bank-1", 10).await.unwrap();
        assert_eq!(
            timeline
                .iter()
                .map(|a| (a.at, a.round, a.next_retry))
                .collect::<Vec<_>>(),
            [(2_000, 6, 62_000), (3_000, 7, 63_000)]
        );
        assert!(timeline[1].error.contains("round 7"));

        // Bulk retry by filter touches only what waits and matches.
        let n = store
            .reset_cron_where(
                &ListFilter {
                    gid_prefix: Some("shop".into()),
                    ..ListFilter::default()
                },
                10_000,
            )
            .await
            .unwrap();
        assert_eq!(
            n, 2,
            "shop-2 and shopX3 wait; shop_1 is due already, shop-4 finished"
        );
        let t = store.find("shop-2").await.unwrap().unwrap();
        assert_eq!((t.next_cron_time, t.retry_count), (10_000, 0));
        assert_eq!(store.find("bank-1").await.unwrap().unwrap().retry_count, 7);

        // The timeline goes with its transaction.
        store
            .write("bank-1", |_, _| {
                let mut c = Change::at(4_000);
                c.to = Some(GlobalStatus::Succeeded);
                Ok(Decision::Apply(c))
            })
            .await
            .unwrap();
        store.purge_finished(i64::MAX, 10).await.unwrap();
        assert!(store.attempts("bank-1", 10).await.unwrap().is_empty());
    }
);

on_both!(instances_report_themselves_and_what_they_hold, |store| {
    use settle_coordinator::store::Heartbeat;
    for (id, now) in [("a", 1_000), ("b", 2_000), ("a", 3_000)] {
        let me = Heartbeat {
            id,
            address: "127.0.0.1:1",
            version: "1",
            started_time: 500,
        };
        store.heartbeat(&me, now).await.unwrap();
    }
    let mut t = txn("held", GlobalStatus::Submitted, 500);
    t.owner = "b".into();
    t.lease_token = "tok".into();
    t.lease_expire = 10_000;
    insert(&store, t, vec![]).await;
    let instances = store.instances(5_000).await.unwrap();
    assert_eq!(
        instances
            .iter()
            .map(|i| (i.id.as_str(), i.seen_time, i.transactions))
            .collect::<Vec<_>>(),
        [("a", 3_000, 0), ("b", 2_000, 1)]
    );
    // Once the lease ran out, b holds nothing.
    let later = store.instances(20_000).await.unwrap();
    assert!(later.iter().all(|i| i.transactions == 0), "{later:?}");
});

#[tokio::test]
async fn an_unsupported_database_url_is_named() {
    let err = Store::connect(&ConnectOptions::new("postgres://u:secret@h/db"))
        .await
        .unwrap_err();
    let message = err.to_string();
    assert!(message.contains("unsupported database URL"), "{message}");
    assert!(
        !message.contains("secret"),
        "the password is redacted: {message}"
    );
}

fn rocketmq_step(id: &str, key: &str, n: i64) -> NewBranch {
    NewBranch {
        branch_id: id.to_owned(),
        op: Op::Action,
        url: format!("rocketmq://Events?key={key}&tag=t"),
        data: format!("{{\"n\":{n}}}"),
    }
}

on_both!(
    the_outbox_hands_out_each_keys_messages_in_commit_order,
    |store| {
        // Three committed transactions: two for key k1, one for k2, one keyless step.
        for (gid, steps) in [
            (
                "t1",
                vec![rocketmq_step("01", "k1", 1), rocketmq_step("02", "k2", 1)],
            ),
            (
                "t2",
                vec![rocketmq_step("01", "k1", 2), rocketmq_step("02", "", 9)],
            ),
        ] {
            let mut t = txn(gid, GlobalStatus::Submitted, 1_000);
            t.trans_type = TransType::Msg;
            enqueue(&store, t, steps, OutboxState::Pending).await;
        }
        // A TCC's message for k2 waits for its confirms and holds k2 back... behind t1's.
        let t3 = txn("t3", GlobalStatus::Submitted, 1_000);
        enqueue(
            &store,
            t3,
            vec![rocketmq_step("m01", "k2", 2)],
            OutboxState::Held,
        )
        .await;

        let claim = store
            .claim_outbox("me/1", 2_000, 60_000, 10, 64)
            .await
            .unwrap();
        let first = claim.rows;
        let ids = |rows: &[OutboxRow]| -> Vec<String> {
            rows.iter().map(|r| r.message_id.clone()).collect()
        };
        assert_eq!(
            ids(&first),
            ["t2-02", "t1-01", "t2-01", "t1-02"],
            "each key's run in order (k1's two, k2's first: the held one ends its run), plus keyless messages"
        );
        // Nothing more while the runs are out.
        assert!(store
            .claim_outbox("me/2", 2_000, 60_000, 10, 64)
            .await
            .unwrap()
            .rows
            .is_empty());
        // The broker acknowledged t1's two messages: they are sent and t1, a msg, succeeds.
        let sent = |rows: &[OutboxRow], gid: &str| -> Vec<txn::SentMessage> {
            rows.iter()
                .filter(|r| r.gid == gid)
                .map(|r| txn::SentMessage {
                    id: r.id,
                    branch_id: r.branch_id.clone(),
                    sharding_key: r.sharding_key.clone(),
                    owner: r.owner.clone(),
                })
                .collect()
        };
        let t1 = sent(&first, "t1");
        store
            .write("t1", move |c, s| txn::delivered::delivered(c, &t1, s.now))
            .await
            .unwrap();
        assert_eq!(
            store.find("t1").await.unwrap().unwrap().status,
            GlobalStatus::Succeeded
        );
        // The dispatcher gives k2 back: its run went out, and more may follow.
        let k2 = claim
            .keys
            .iter()
            .find(|k| k.sharding_key == "k2")
            .expect("k2 was leased");
        assert!(!k2.complete, "the held message was left out of k2's run");
        store
            .outbox_release_keys(
                "me/1",
                &[KeyRelease {
                    sharding_key: "k2",
                    wake: k2.wake,
                    next_due: 0,
                }],
            )
            .await
            .unwrap();
        // k1's second message was not tried: given back, it is k1's head again.
        let t2_01 = first.iter().find(|r| r.message_id == "t2-01").unwrap();
        store.outbox_release("me/1", &[t2_01.id]).await.unwrap();
        let again = store
            .claim_outbox("me/3", 2_100, 60_000, 10, 64)
            .await
            .unwrap()
            .rows;
        assert_eq!(ids(&again), ["t2-01"], "k2's next is held by its TCC");
        // A claim that was taken over cannot record a delivery.
        let stale = sent(&first, "t2")
            .into_iter()
            .filter(|m| m.branch_id == "01")
            .collect::<Vec<_>>();
        let lost = store
            .write("t2", move |c, s| {
                txn::delivered::delivered(c, &stale, s.now)
            })
            .await
            .unwrap_err();
        assert!(lost.is_lease_lost(), "{lost}");
        store
            .write("t3", |_, _| {
                let mut c = Change::at(2_500);
                c.release_held = true;
                Ok(Decision::Apply(c))
            })
            .await
            .unwrap();
        let released = store
            .claim_outbox("me/4", 2_600, 60_000, 10, 64)
            .await
            .unwrap()
            .rows;
        assert_eq!(ids(&released), ["t3-m01"]);
        // A failed delivery goes back, due later, and keeps its place.
        let transient = Failed {
            next_attempt_time: 9_000,
            error: "broker down",
            refused: false,
            dead: false,
        };
        assert!(store.outbox_retry(&released[0], &transient).await.unwrap());
        assert!(
            store
                .claim_outbox("me/5", 3_000, 60_000, 10, 64)
                .await
                .unwrap()
                .rows
                .is_empty(),
            "not due yet"
        );
        let later = store
            .claim_outbox("me/6", 9_000, 60_000, 10, 64)
            .await
            .unwrap()
            .rows;
        assert!(later
            .iter()
            .any(|r| r.message_id == "t3-m01" && r.attempts == 1));
        let (backlog, _) = store.outbox_backlog().await.unwrap();
        assert_eq!(backlog, 3, "t2-01, t2-02 (claimed, not sent) and t3-m01");
        let by_topic = store.outbox_pending_by_topic().await.unwrap();
        assert_eq!(by_topic.len(), 1, "{by_topic:?}");
        assert_eq!((by_topic[0].0.as_str(), by_topic[0].1), ("Events", 3));
        // Refused for what it is: a dead letter, out of the backlog, until redriven.
        let t3 = later.iter().find(|r| r.message_id == "t3-m01").unwrap();
        let refused = Failed {
            next_attempt_time: 9_500,
            error: "rocketmq refused the message: too large",
            refused: true,
            dead: true,
        };
        assert!(store.outbox_retry(t3, &refused).await.unwrap());
        assert_eq!(store.outbox_dead().await.unwrap(), 1);
        assert_eq!(store.outbox_backlog().await.unwrap().0, 2);
        let shown = store.find("t3").await.unwrap().unwrap().last_error;
        assert!(shown.contains("dead-lettered after 1 refusals"), "{shown}");
        assert!(store
            .claim_outbox("me/7", 99_000, 160_000, 10, 64)
            .await
            .unwrap()
            .rows
            .iter()
            .all(|r| r.message_id != "t3-m01"));
        assert_eq!(
            store
                .outbox_redrive("t3", Some("m02"), 99_000)
                .await
                .unwrap(),
            0
        );
        assert_eq!(store.outbox_redrive("t3", None, 99_000).await.unwrap(), 1);
        assert_eq!(store.outbox_dead().await.unwrap(), 0);
        let again = store
            .claim_outbox("me/8", 99_000, 160_000, 10, 64)
            .await
            .unwrap()
            .rows;
        assert!(
            again
                .iter()
                .any(|r| r.message_id == "t3-m01" && r.refusals == 0 && r.attempts == 2),
            "{again:?}"
        );
        // A sent message marks its step done.
        let steps = store.find_branches("t1").await.unwrap();
        assert!(
            steps.iter().all(|b| b.status == BranchStatus::Succeeded),
            "{steps:?}"
        );
    }
);

on_both!(
    a_key_with_nothing_to_send_sleeps_until_a_change_wakes_it,
    |store| {
        let claim = |owner: &'static str, now: i64| {
            let store = store.clone();
            async move {
                store
                    .claim_outbox(owner, now, now + 60_000, 10, 64)
                    .await
                    .unwrap()
                    .rows
                    .into_iter()
                    .map(|r| r.message_id)
                    .collect::<Vec<_>>()
            }
        };
        // A TCC's held message heads key k: the key is looked at, then sleeps.
        enqueue(
            &store,
            txn("tcc", GlobalStatus::Submitted, 1_000),
            vec![rocketmq_step("m1", "k", 1)],
            OutboxState::Held,
        )
        .await;
        assert!(claim("me/1", 2_000).await.is_empty());
        // A msg committed behind it wakes the key, which still has nothing to send.
        let mut later = txn("msg", GlobalStatus::Submitted, 3_000);
        later.trans_type = TransType::Msg;
        enqueue(
            &store,
            later,
            vec![rocketmq_step("01", "k", 2)],
            OutboxState::Pending,
        )
        .await;
        assert!(claim("me/2", 4_000).await.is_empty());
        // The TCC's confirms succeed: its release wakes the key, and both go, in order.
        store
            .write("tcc", |_, _| {
                let mut c = Change::at(5_000);
                c.release_held = true;
                Ok(Decision::Apply(c))
            })
            .await
            .unwrap();
        let out = store
            .claim_outbox("me/3", 6_000, 66_000, 10, 64)
            .await
            .unwrap()
            .rows;
        let ids: Vec<&str> = out.iter().map(|r| r.message_id.as_str()).collect();
        assert_eq!(ids, ["tcc-m1", "msg-01"]);
        // While they are out the key is not looked at again.
        assert!(claim("me/4", 6_500).await.is_empty());
        // The broker took the first; the second is given back unsent: it goes out alone.
        let first = vec![txn::SentMessage {
            id: out[0].id,
            branch_id: out[0].branch_id.clone(),
            sharding_key: "k".into(),
            owner: out[0].owner.clone(),
        }];
        store
            .write("tcc", move |c, _| {
                txn::delivered::delivered(c, &first, 7_000)
            })
            .await
            .unwrap();
        store.outbox_release("me/3", &[out[1].id]).await.unwrap();
        assert_eq!(claim("me/5", 8_000).await, ["msg-01"]);
    }
);

/// Runs `sql` on the database at `url` directly, as something other than Settle would.
async fn tamper(url: &str, sql: &str) {
    use sqlx::Connection;
    if url.starts_with("mysql") {
        let mut c = sqlx::MySqlConnection::connect(url).await.unwrap();
        sqlx::query(sql).execute(&mut c).await.unwrap();
    } else {
        let mut c = sqlx::SqliteConnection::connect(url).await.unwrap();
        sqlx::query(sql).execute(&mut c).await.unwrap();
    }
}

async fn an_unreadable_transaction_is_set_aside(url: &str) {
    let store = connect(url).await;
    for gid in ["bad", "good"] {
        insert(&store, txn(gid, GlobalStatus::Prepared, 1_000), vec![]).await;
    }
    // Options cut short, as a store that truncates long values would leave them.
    tamper(
        url,
        "UPDATE trans_global SET options = '{\"timeout_to_fail\":35,\"request_' WHERE gid = 'bad'",
    )
    .await;
    let claimed = store
        .claim_due("me", "tok", 2_000, 60_000, 10)
        .await
        .unwrap();
    let gids: Vec<&str> = claimed.iter().map(|c| c.txn.gid.as_str()).collect();
    assert_eq!(gids, ["good"], "the readable one is claimed all the same");
    assert_eq!(store.set_aside_count(), 1);
    let bad = store.find("bad").await.unwrap().expect("still shown");
    assert!(
        bad.last_error
            .starts_with(settle_coordinator::store::UNREADABLE),
        "{}",
        bad.last_error
    );
    assert_eq!((bad.next_cron_time, bad.lease_token.as_str()), (NEVER, ""));
    let page = store
        .list(&ListFilter {
            limit: 10,
            ..ListFilter::default()
        })
        .await
        .unwrap()
        .0;
    assert_eq!(page.len(), 2, "all lists it too");
    // It is never claimed again; the other is, once its lease ran out.
    let later = store
        .claim_due("me", "tok2", 100_000, 160_000, 10)
        .await
        .unwrap();
    let gids: Vec<&str> = later.iter().map(|c| c.txn.gid.as_str()).collect();
    assert_eq!(gids, ["good"]);
}

#[tokio::test]
async fn an_unreadable_transaction_is_set_aside_and_never_holds_back_others_on_mysql() {
    let db = TestDb::mysql().await.expect("MySQL is running");
    an_unreadable_transaction_is_set_aside(&db.url).await;
}

#[tokio::test]
async fn an_unreadable_transaction_is_set_aside_and_never_holds_back_others_on_sqlite() {
    let db = TestSqlite::new();
    an_unreadable_transaction_is_set_aside(&db.url).await;
}
