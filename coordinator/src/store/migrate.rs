//! Schema migrations, embedded in the binary and run when the store connects.

use std::borrow::Cow;

use sqlx::migrate::{Migration, MigrationType, Migrator};

fn migrator(files: &[(i64, &'static str, &'static str)]) -> Migrator {
    let migrations = files
        .iter()
        .map(|(version, description, sql)| {
            Migration::new(
                *version,
                Cow::Borrowed(*description),
                MigrationType::Simple,
                Cow::Borrowed(*sql),
                false,
            )
        })
        .collect::<Vec<_>>();
    Migrator {
        migrations: Cow::Owned(migrations),
        ignore_missing: false,
        locking: true,
        no_tx: false,
    }
}

/// Migrations of the MySQL schema.
pub fn mysql() -> Migrator {
    migrator(&[
        (
            1,
            "init",
            include_str!("../../migrations/mysql/0001_init.sql"),
        ),
        (
            2,
            "outbox",
            include_str!("../../migrations/mysql/0002_outbox.sql"),
        ),
        (
            3,
            "batch",
            include_str!("../../migrations/mysql/0003_batch.sql"),
        ),
        (
            4,
            "key queue",
            include_str!("../../migrations/mysql/0004_key_queue.sql"),
        ),
        (
            5,
            "dead letters",
            include_str!("../../migrations/mysql/0005_dead_letters.sql"),
        ),
        (
            6,
            "operations",
            include_str!("../../migrations/mysql/0006_operations.sql"),
        ),
        (
            7,
            "alerts",
            include_str!("../../migrations/mysql/0007_alerts.sql"),
        ),
        (
            8,
            "outbox trace",
            include_str!("../../migrations/mysql/0008_outbox_trace.sql"),
        ),
        (
            9,
            "submit time",
            include_str!("../../migrations/mysql/0009_submit_time.sql"),
        ),
        (
            10,
            "completion callbacks",
            include_str!("../../migrations/mysql/0010_callbacks.sql"),
        ),
        (
            11,
            "key leases",
            include_str!("../../migrations/mysql/0011_key_leases.sql"),
        ),
        (
            12,
            "topics",
            include_str!("../../migrations/mysql/0012_kv.sql"),
        ),
    ])
}

/// Migrations of the SQLite schema.
pub fn sqlite() -> Migrator {
    migrator(&[
        (
            1,
            "init",
            include_str!("../../migrations/sqlite/0001_init.sql"),
        ),
        (
            2,
            "outbox",
            include_str!("../../migrations/sqlite/0002_outbox.sql"),
        ),
        (
            3,
            "batch",
            include_str!("../../migrations/sqlite/0003_batch.sql"),
        ),
        (
            4,
            "key queue",
            include_str!("../../migrations/sqlite/0004_key_queue.sql"),
        ),
        (
            5,
            "dead letters",
            include_str!("../../migrations/sqlite/0005_dead_letters.sql"),
        ),
        (
            6,
            "operations",
            include_str!("../../migrations/sqlite/0006_operations.sql"),
        ),
        (
            7,
            "alerts",
            include_str!("../../migrations/sqlite/0007_alerts.sql"),
        ),
        (
            8,
            "outbox trace",
            include_str!("../../migrations/sqlite/0008_outbox_trace.sql"),
        ),
        (
            9,
            "submit time",
            include_str!("../../migrations/sqlite/0009_submit_time.sql"),
        ),
        (
            10,
            "completion callbacks",
            include_str!("../../migrations/sqlite/0010_callbacks.sql"),
        ),
        (
            11,
            "key leases",
            include_str!("../../migrations/sqlite/0011_key_leases.sql"),
        ),
        (
            12,
            "topics",
            include_str!("../../migrations/sqlite/0012_kv.sql"),
        ),
    ])
}
