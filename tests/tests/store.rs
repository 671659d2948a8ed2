//! The store on both databases: every operation, each test in its own fresh MySQL database
//! and its own SQLite file.

// The shared test bodies are plain async functions, not `#[test]`s, so clippy's test
// allowance does not reach them.
#![allow(clippy::unwrap_used)]

use std::time::Duration;

use settle_coordinator::store::{
    ConnectOptions, LeaseWrite, ListFilter, RetrySchedule, StatusChange, Store, StoreError, NEVER,
};
use settle_coordinator::txn::{
    BranchStatus, GlobalStatus, GlobalTxn, NewBranch, Op, TransOptions, TransType, TxnError,
};
use settle_tests::{TestDb, TestSqlite};

async fn connect(url: &str) -> Store {
    Store::connect(&ConnectOptions {
        url: url.to_owned(),
        max_connections: 4,
        acquire_timeout: Duration::from_secs(10),
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
    GlobalTxn {
        gid: gid.to_owned(),
        trans_type: TransType::Tcc,
        status,
        custom_data: "{\"k\":\"v\"}".to_owned(),
        steps: vec![],
        payloads: vec![],
        query_prepared: String::new(),
        protocol: "http".to_owned(),
        options: TransOptions {
            timeout_to_fail: 35,
            request_timeout: 3,
            retry_interval: 10,
            branch_headers: [("x-tenant".to_owned(), "7".to_owned())].into(),
            concurrent: false,
            wait_result: false,
            retry_limit: 0,
        },
        rollback_reason: String::new(),
        create_time: now,
        update_time: now,
        finish_time: None,
        rollback_time: None,
        next_cron_time: now,
        next_cron_interval: 10,
        owner: String::new(),
        lease_token: String::new(),
        lease_expire: 0,
        retry_count: 0,
        last_error: String::new(),
    }
}

fn branch(id: &str, op: Op) -> NewBranch {
    NewBranch {
        branch_id: id.to_owned(),
        op,
        url: format!("http://127.0.0.1:1/{op}"),
        data: "{\"amount\":30}".to_owned(),
    }
}

on_both!(
    a_transaction_round_trips_and_a_duplicate_insert_writes_nothing,
    |store| {
        let t = txn("Round-Trip", GlobalStatus::Prepared, 1_000);
        assert!(store
            .insert_global(&t, &[branch("01", Op::Cancel), branch("01", Op::Confirm)])
            .await
            .unwrap());
        assert_eq!(store.find("Round-Trip").await.unwrap(), Some(t.clone()));
        // gids are case-sensitive.
        assert_eq!(store.find("round-trip").await.unwrap(), None);
        let mut other = txn("Round-Trip", GlobalStatus::Submitted, 2_000);
        other.custom_data = "changed".into();
        assert!(!store
            .insert_global(&other, &[branch("02", Op::Confirm)])
            .await
            .unwrap());
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

on_both!(
    a_status_change_applies_only_from_the_expected_status_and_lease,
    |store| {
        store
            .insert_global(&txn("g", GlobalStatus::Prepared, 1_000), &[])
            .await
            .unwrap();
        let to_submitted = StatusChange {
            to: GlobalStatus::Submitted,
            now: 2_000,
            rollback_reason: None,
            next_cron_time: 2_000,
            lease: LeaseWrite::Acquire {
                owner: "a".into(),
                token: "t1".into(),
                expire: 9_000,
            },
            fence: None,
            new_branches: Vec::new(),
            enqueue_steps: None,
        };
        assert!(!store
            .change_status("g", GlobalStatus::Aborting, &to_submitted)
            .await
            .unwrap());
        assert!(store
            .change_status("g", GlobalStatus::Prepared, &to_submitted)
            .await
            .unwrap());
        let t = store.find("g").await.unwrap().unwrap();
        assert_eq!(
            (
                t.status,
                t.owner.as_str(),
                t.lease_token.as_str(),
                t.lease_expire
            ),
            (GlobalStatus::Submitted, "a", "t1", 9_000)
        );
        let finish = |fence: &str| StatusChange {
            to: GlobalStatus::Succeeded,
            now: 3_000,
            rollback_reason: None,
            next_cron_time: NEVER,
            lease: LeaseWrite::Release,
            fence: Some(fence.to_owned()),
            new_branches: Vec::new(),
            enqueue_steps: None,
        };
        assert!(!store
            .change_status("g", GlobalStatus::Submitted, &finish("stale"))
            .await
            .unwrap());
        assert!(store
            .change_status("g", GlobalStatus::Submitted, &finish("t1"))
            .await
            .unwrap());
        let t = store.find("g").await.unwrap().unwrap();
        assert_eq!(
            (t.status, t.finish_time, t.owner.as_str(), t.lease_expire),
            (GlobalStatus::Succeeded, Some(3_000), "", 0)
        );
        let abort = StatusChange {
            to: GlobalStatus::Aborting,
            now: 4_000,
            rollback_reason: Some("why".into()),
            next_cron_time: 4_000,
            lease: LeaseWrite::Keep,
            fence: None,
            new_branches: Vec::new(),
            enqueue_steps: None,
        };
        store
            .insert_global(&txn("h", GlobalStatus::Prepared, 1_000), &[])
            .await
            .unwrap();
        assert!(store
            .change_status("h", GlobalStatus::Prepared, &abort)
            .await
            .unwrap());
        let h = store.find("h").await.unwrap().unwrap();
        assert_eq!(
            (h.rollback_reason.as_str(), h.rollback_time),
            ("why", Some(4_000))
        );
    }
);

on_both!(branches_register_only_while_prepared, |store| {
    store
        .insert_global(&txn("g", GlobalStatus::Prepared, 1_000), &[])
        .await
        .unwrap();
    let ops = [branch("01", Op::Cancel), branch("01", Op::Confirm)];
    store
        .register_branches("g", TransType::Tcc, &ops, 1_100)
        .await
        .unwrap();
    store
        .register_branches("g", TransType::Tcc, &ops, 1_200)
        .await
        .unwrap();
    assert_eq!(
        store.find_branches("g").await.unwrap().len(),
        2,
        "a repeated registration is ignored"
    );
    store
        .insert_global(&txn("s", GlobalStatus::Submitted, 1_000), &[])
        .await
        .unwrap();
    let err = store
        .register_branches("s", TransType::Tcc, &ops, 1_300)
        .await
        .unwrap_err();
    assert!(
        matches!(err, StoreError::Txn(TxnError::Conflict { .. })),
        "{err}"
    );
    assert!(store.find_branches("s").await.unwrap().is_empty());
    let err = store
        .register_branches("missing", TransType::Tcc, &ops, 1_300)
        .await
        .unwrap_err();
    assert!(
        matches!(err, StoreError::Txn(TxnError::NotFound { .. })),
        "{err}"
    );
    assert!(store.find_branches("missing").await.unwrap().is_empty());
});

on_both!(claims_take_due_unleased_work_in_batches, |store| {
    for i in 0..5 {
        store
            .insert_global(
                &txn(&format!("due{i}"), GlobalStatus::Submitted, 1_000 + i),
                &[],
            )
            .await
            .unwrap();
    }
    let mut later = txn("later", GlobalStatus::Submitted, 1_000);
    later.next_cron_time = 50_000;
    store.insert_global(&later, &[]).await.unwrap();
    let mut leased = txn("leased", GlobalStatus::Aborting, 1_000);
    leased.owner = "other".into();
    leased.lease_token = "their-token".into();
    leased.lease_expire = 20_000;
    store.insert_global(&leased, &[]).await.unwrap();
    let mut done = txn("done", GlobalStatus::Succeeded, 1_000);
    done.next_cron_time = 0;
    store.insert_global(&done, &[]).await.unwrap();

    let first = store
        .claim_due("me", "tok1", 10_000, 15_000, 3)
        .await
        .unwrap();
    assert_eq!(first.len(), 3);
    assert!(first
        .iter()
        .all(|t| t.owner == "me" && t.lease_token == "tok1" && t.lease_expire == 15_000));
    let second = store
        .claim_due("me", "tok2", 10_000, 15_000, 10)
        .await
        .unwrap();
    let mut gids: Vec<_> = second.iter().map(|t| t.gid.as_str()).collect();
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
    let gids: Vec<_> = takeover.iter().map(|t| t.gid.as_str()).collect();
    assert!(gids.contains(&"leased"), "{gids:?}");
    assert!(!gids.contains(&"done"));
});

on_both!(lease_fenced_writes_fail_once_the_lease_is_lost, |store| {
    let mut t = txn("g", GlobalStatus::Submitted, 1_000);
    t.owner = "a".into();
    t.lease_token = "mine".into();
    t.lease_expire = 5_000;
    store
        .insert_global(&t, &[branch("01", Op::Confirm)])
        .await
        .unwrap();
    let err = store
        .complete_branch("g", "stale", "01", Op::Confirm, 2_000)
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::LeaseLost { .. }));
    assert_eq!(
        store.find_branches("g").await.unwrap()[0].status,
        BranchStatus::Prepared,
        "nothing written"
    );
    store
        .complete_branch("g", "mine", "01", Op::Confirm, 2_000)
        .await
        .unwrap();
    let b = &store.find_branches("g").await.unwrap()[0];
    assert_eq!(
        (b.status, b.finish_time),
        (BranchStatus::Succeeded, Some(2_000))
    );
    // Recording it again is refused: it is already done.
    assert!(matches!(
        store
            .complete_branch("g", "mine", "01", Op::Confirm, 2_500)
            .await,
        Err(StoreError::LeaseLost { .. })
    ));
    store.renew_lease("g", "mine", 12_000).await.unwrap();
    let t = store.find("g").await.unwrap().unwrap();
    assert_eq!(
        (t.lease_expire, t.next_cron_time),
        (12_000, 12_000),
        "renewed, and due again only when the lease runs out"
    );
    assert!(matches!(
        store.renew_lease("g", "stale", 12_000).await,
        Err(StoreError::LeaseLost { .. })
    ));

    let schedule = RetrySchedule {
        next_cron_time: 30_000,
        next_cron_interval: 20,
        retry_count: 2,
        last_error: "HTTP 500".into(),
        now: 3_000,
    };
    assert!(matches!(
        store.schedule_retry("g", "stale", &schedule).await,
        Err(StoreError::LeaseLost { .. })
    ));
    store.schedule_retry("g", "mine", &schedule).await.unwrap();
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
    // An operator makes it due now.
    assert_eq!(store.reset_cron(Some("g"), 4_000).await.unwrap(), 1);
    let t = store.find("g").await.unwrap().unwrap();
    assert_eq!((t.next_cron_time, t.retry_count), (4_000, 0));
});

on_both!(listing_pages_newest_first_with_filters, |store| {
    for i in 0..5 {
        let status = if i % 2 == 0 {
            GlobalStatus::Prepared
        } else {
            GlobalStatus::Failed
        };
        store
            .insert_global(&txn(&format!("g{i}"), status, 1_000 + i), &[])
            .await
            .unwrap();
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

#[tokio::test]
async fn an_unsupported_database_url_is_named() {
    let err = Store::connect(&ConnectOptions {
        url: "postgres://u:secret@h/db".into(),
        max_connections: 1,
        acquire_timeout: Duration::from_secs(1),
    })
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
        use settle_coordinator::store::OutboxState;
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
            assert!(store
                .insert_global_enqueue(&t, &steps, Some(OutboxState::Pending))
                .await
                .unwrap());
        }
        // A TCC's message for k2 waits for its confirms and holds k2 back... behind t1's.
        let mut t3 = txn("t3", GlobalStatus::Submitted, 1_000);
        t3.steps = vec![];
        assert!(store
            .insert_global_enqueue(
                &t3,
                &[rocketmq_step("m01", "k2", 2)],
                Some(OutboxState::Held)
            )
            .await
            .unwrap());

        let first = store
            .claim_outbox_heads("me/1", 2_000, 60_000, 10)
            .await
            .unwrap();
        let mut heads: Vec<_> = first
            .iter()
            .map(|r| (r.sharding_key.clone(), r.message_id.clone()))
            .collect();
        heads.sort();
        assert_eq!(
            heads,
            [
                ("".to_owned(), "t2-02".to_owned()),
                ("k1".to_owned(), "t1-01".to_owned()),
                ("k2".to_owned(), "t1-02".to_owned())
            ],
            "one head per key, plus keyless messages"
        );
        // Nothing more while the heads are out.
        assert!(store
            .claim_outbox_heads("me/2", 2_000, 60_000, 10)
            .await
            .unwrap()
            .is_empty());
        let k1 = first.iter().find(|r| r.sharding_key == "k1").unwrap();
        store.outbox_sent(k1, 2_100).await.unwrap();
        let next = store
            .claim_next_for_key("k1", "me/1", 2_200, 60_000)
            .await
            .unwrap()
            .expect("k1's second message");
        assert_eq!((next.message_id.as_str(), next.seq), ("t2-01", Some(2)));
        // k2's next is held by its TCC until released.
        let k2 = first.iter().find(|r| r.sharding_key == "k2").unwrap();
        store.outbox_sent(k2, 2_300).await.unwrap();
        assert!(
            store
                .claim_next_for_key("k2", "me/1", 2_400, 60_000)
                .await
                .unwrap()
                .is_none(),
            "held"
        );
        assert_eq!(store.release_held("t3", 2_500).await.unwrap(), 1);
        let released = store
            .claim_next_for_key("k2", "me/1", 2_600, 60_000)
            .await
            .unwrap()
            .expect("released");
        assert_eq!(released.message_id, "t3-m01");
        // A failed delivery goes back, due later, and keeps its place.
        store
            .outbox_retry(&released, 9_000, "broker down")
            .await
            .unwrap();
        assert!(
            store
                .claim_next_for_key("k2", "me/1", 3_000, 60_000)
                .await
                .unwrap()
                .is_none(),
            "not due yet"
        );
        let again = store
            .claim_outbox_heads("me/3", 9_000, 60_000, 10)
            .await
            .unwrap();
        assert!(again
            .iter()
            .any(|r| r.message_id == "t3-m01" && r.attempts == 1));
        let (backlog, _) = store.outbox_backlog().await.unwrap();
        assert_eq!(backlog, 3, "t2-01, t2-02 (claimed, not sent) and t3-m01");
        // A sent message marks its step done.
        let steps = store.find_branches("t1").await.unwrap();
        assert!(
            steps.iter().all(|b| b.status == BranchStatus::Succeeded),
            "{steps:?}"
        );
    }
);
