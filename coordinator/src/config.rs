//! Configuration of the coordinator.
//!
//! Layers, each overriding the one before: defaults in code → a TOML file (`--config`) →
//! `SETTLE_*` environment variables → command-line flags. The file uses the field names below;
//! unknown keys are an error. The database URL's password is never logged.

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use serde::Deserialize;

/// Everything the coordinator can be told.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Address the HTTP API listens on.
    pub listen: SocketAddr,
    /// The store: `sqlite:PATH` (embedded, created on start) or
    /// `mysql://USER:PASSWORD@HOST:PORT/DATABASE`.
    pub database_url: String,
    /// Most pooled database connections (reads, claims and the outbox; the batched writers
    /// have their own).
    pub max_connections: u32,
    /// Batched writers, each with a database connection of its own (MySQL; SQLite always
    /// has one). Every state change goes through them, many per database transaction.
    pub store_writers: usize,
    /// Most commands written in one database transaction.
    pub max_batch: usize,
    /// How long finished transactions (with their branches and sent messages) are kept, in
    /// seconds; 0 keeps everything.
    pub retention_s: u64,
    /// Id of this instance in leases; random when empty. Must differ between instances
    /// sharing a database.
    pub instance_id: String,
    /// Largest request body accepted, in bytes.
    pub body_limit_bytes: usize,
    /// How long a lease on a transaction lasts after it is taken or renewed, in ms. An
    /// instance that dies holding leases delays its transactions by at most this much.
    pub lease_ms: u64,
    /// How often the scheduler looks for due transactions, in ms.
    pub poll_interval_ms: u64,
    /// Most transactions claimed in one scheduler pass.
    pub claim_batch: u32,
    /// Most rounds of work running at once on this instance.
    pub max_inflight: usize,
    /// Longest interval between retries of a branch call, in seconds.
    pub retry_cap_s: i64,
    /// Most branch calls a `concurrent` transaction makes at once.
    pub max_concurrent_calls: usize,
    /// Most branches one transaction may register.
    pub max_branches: usize,
    /// Most bytes of a participant's answer (to a branch call or a check-back) that are
    /// read; the rest is not read, and the answer is judged on what was.
    pub max_answer_bytes: usize,
    /// `timeout_to_fail` of transactions that do not set it, in seconds.
    pub default_timeout_to_fail_s: i64,
    /// `request_timeout` of transactions that do not set it, in seconds.
    pub default_request_timeout_s: i64,
    /// `retry_interval` of transactions that do not set it, in seconds.
    pub default_retry_interval_s: i64,
    /// RocketMQ name server (`host:port`) for `rocketmq://` steps; empty: RocketMQ steps are
    /// refused.
    pub rocketmq_namesrv: String,
    /// Producer group the coordinator publishes in.
    pub rocketmq_producer_group: String,
    /// How long one publish may take before it counts as failed, in ms.
    pub rocketmq_send_timeout_ms: u64,
    /// How often the dispatcher looks for messages to deliver, in ms (it also wakes at once
    /// when this instance commits one).
    pub delivery_poll_interval_ms: u64,
    /// Most sharding keys delivered at once.
    pub delivery_max_inflight: usize,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 36789)),
            database_url: "sqlite:settle.db".to_owned(),
            max_connections: 16,
            store_writers: 1,
            max_batch: 256,
            retention_s: 7 * 24 * 3600,
            instance_id: String::new(),
            body_limit_bytes: 1024 * 1024,
            lease_ms: 15_000,
            poll_interval_ms: 500,
            claim_batch: 64,
            max_inflight: 1024,
            max_answer_bytes: 64 * 1024,
            max_branches: 256,
            max_concurrent_calls: 16,
            retry_cap_s: 60,
            default_timeout_to_fail_s: 35,
            default_request_timeout_s: 3,
            default_retry_interval_s: 10,
            rocketmq_namesrv: String::new(),
            rocketmq_producer_group: "settle-coordinator".to_owned(),
            rocketmq_send_timeout_ms: 3_000,
            delivery_poll_interval_ms: 200,
            delivery_max_inflight: 256,
        }
    }
}

/// Errors reading the configuration.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read config file {path}: {source}")]
    Read {
        /// The file.
        path: String,
        /// Why.
        source: std::io::Error,
    },
    /// The file is not valid TOML of this shape.
    #[error("invalid config file {path}: {source}")]
    Parse {
        /// The file.
        path: String,
        /// Why.
        source: toml::de::Error,
    },
    /// A value is out of range.
    #[error("invalid configuration: {0}")]
    Invalid(String),
}

impl Config {
    /// Reads a TOML file over the defaults.
    ///
    /// # Errors
    /// The file cannot be read or is not valid.
    pub fn from_file(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.display().to_string(),
            source,
        })?;
        toml::from_str(&text).map_err(|source| ConfigError::Parse {
            path: path.display().to_string(),
            source,
        })
    }

    /// Checks that values are in range.
    ///
    /// # Errors
    /// [`ConfigError::Invalid`] naming the first bad value.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let positive = [
            ("lease_ms", self.lease_ms as i64),
            ("poll_interval_ms", self.poll_interval_ms as i64),
            ("claim_batch", i64::from(self.claim_batch)),
            ("max_inflight", self.max_inflight as i64),
            ("max_answer_bytes", self.max_answer_bytes as i64),
            ("max_branches", self.max_branches as i64),
            ("max_concurrent_calls", self.max_concurrent_calls as i64),
            ("max_connections", i64::from(self.max_connections)),
            ("store_writers", self.store_writers as i64),
            ("max_batch", self.max_batch as i64),
            ("body_limit_bytes", self.body_limit_bytes as i64),
            ("retry_cap_s", self.retry_cap_s),
            ("default_timeout_to_fail_s", self.default_timeout_to_fail_s),
            ("default_request_timeout_s", self.default_request_timeout_s),
            ("default_retry_interval_s", self.default_retry_interval_s),
            (
                "rocketmq_send_timeout_ms",
                self.rocketmq_send_timeout_ms as i64,
            ),
            (
                "delivery_poll_interval_ms",
                self.delivery_poll_interval_ms as i64,
            ),
            ("delivery_max_inflight", self.delivery_max_inflight as i64),
        ];
        for (name, value) in positive {
            if value <= 0 {
                return Err(ConfigError::Invalid(format!(
                    "{name} must be positive, got {value}"
                )));
            }
        }
        if !(self.database_url.starts_with("sqlite:")
            || self.database_url.starts_with("mysql://")
            || self.database_url.starts_with("mariadb://"))
        {
            return Err(ConfigError::Invalid(format!(
                "database_url must start with sqlite: or mysql://, got '{}'",
                crate::store::redact_url(&self.database_url)
            )));
        }
        Ok(())
    }

    /// The lease duration.
    pub fn lease(&self) -> Duration {
        Duration::from_millis(self.lease_ms)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_is_sqlite_on_loopback() {
        let c = Config::default();
        assert_eq!(c.listen.to_string(), "127.0.0.1:36789");
        assert!(c.database_url.starts_with("sqlite:"));
        assert!(c.validate().is_ok());
    }

    #[test]
    fn the_example_config_in_deploy_is_valid() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/settle.example.toml");
        let c = Config::from_file(&path).expect("deploy/settle.example.toml parses");
        c.validate().expect("and is valid");
    }

    #[test]
    fn a_file_overrides_defaults_and_rejects_unknown_keys() {
        let c: Config = toml::from_str("listen = \"127.0.0.1:1\"\nlease_ms = 200").unwrap();
        assert_eq!(c.listen.port(), 1);
        assert_eq!(c.lease_ms, 200);
        assert_eq!(c.poll_interval_ms, Config::default().poll_interval_ms);
        let err = toml::from_str::<Config>("lease = 1").unwrap_err();
        assert!(err.to_string().contains("lease"), "{err}");
    }

    #[test]
    fn out_of_range_values_are_named() {
        let c = Config {
            lease_ms: 0,
            ..Config::default()
        };
        assert!(c.validate().unwrap_err().to_string().contains("lease_ms"));
        let c = Config {
            database_url: "postgres://x".into(),
            ..Config::default()
        };
        assert!(c
            .validate()
            .unwrap_err()
            .to_string()
            .contains("database_url"));
    }
}
