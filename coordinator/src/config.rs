//! Configuration of the coordinator.
//!
//! Layers, each overriding the one before: defaults in code → a TOML file (`--config`) →
//! `SETTLE_*` environment variables → command-line flags. The file uses the field names below;
//! unknown keys are an error. The database URL's password is never logged.

use std::fmt;
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use serde::Deserialize;

use crate::access::{Allowlist, Secret, Tokens};

/// Everything the coordinator can be told.
#[derive(Clone, Deserialize, PartialEq)]
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
    /// Time an HTTP connection has to send a request's headers, from when it opened or got
    /// its last answer, in ms: slow and idle connections are closed after it.
    pub http_header_timeout_ms: u64,
    /// Most HTTP connections open at once; more are closed as soon as they are accepted.
    pub max_http_connections: usize,
    /// On stop (SIGTERM), how long running rounds and open requests get to finish, in ms,
    /// before the leases still held are handed back.
    pub shutdown_grace_ms: u64,
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
    /// Times the broker may refuse a message itself (empty, too large, malformed) before it
    /// is dead-lettered: set aside, visible, redrivable, and out of its key's way.
    pub dead_letter_after: i64,
    /// Largest message body accepted for a `rocketmq://` step, in bytes: the broker's and
    /// client's `maxMessageSize` (4 MiB unless the broker is configured otherwise).
    pub max_message_bytes: usize,
    /// Destinations branch calls, check-backs and HTTP steps may go to: host names
    /// (`pay.example.com`, `*.svc.internal`), addresses and CIDR ranges (`10.0.0.0/8`), URL
    /// prefixes (`https://pay.example.com/api/`). Empty: loopback only, which is allowed only
    /// while `listen` is a loopback address.
    pub allow_destinations: Vec<String>,
    /// Lets every destination through (link-local and metadata addresses still need a rule
    /// by address). Logged as a warning on start.
    pub allow_all_destinations: bool,
    /// Bearer tokens granting the `client` scope; none: client routes are open.
    pub client_tokens: Vec<Secret>,
    /// Bearer tokens granting the `operator` scope; none: operator routes are open to whoever
    /// may use client routes.
    pub operator_tokens: Vec<Secret>,
    /// A file with more client tokens, one per line (`#` starts a comment).
    pub client_tokens_file: String,
    /// A file with more operator tokens, one per line.
    pub operator_tokens_file: String,
    /// Webhook (http or https URL) told when a transaction needs attention and when it
    /// settles; empty: no alerts.
    pub alert_url: String,
    /// Alert when a transaction has failed more rounds in a row than this; 0: never for
    /// this reason.
    pub alert_after_retries: i64,
    /// Alert when a transaction is still unfinished this many seconds after its creation;
    /// 0: never for this reason.
    pub alert_after_s: u64,
    /// How often alerts are looked for and delivered, in ms.
    pub alert_interval_ms: u64,
    /// OpenTelemetry collector (OTLP over HTTP, e.g. `http://127.0.0.1:4318`) spans are
    /// sent to; empty: no spans.
    pub otlp_endpoint: String,
}

impl fmt::Debug for Config {
    /// Every field, with the database password and the tokens left out.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Config")
            .field("listen", &self.listen)
            .field(
                "database_url",
                &crate::store::redact_url(&self.database_url),
            )
            .field("max_connections", &self.max_connections)
            .field("store_writers", &self.store_writers)
            .field("max_batch", &self.max_batch)
            .field("retention_s", &self.retention_s)
            .field("instance_id", &self.instance_id)
            .field("body_limit_bytes", &self.body_limit_bytes)
            .field("http_header_timeout_ms", &self.http_header_timeout_ms)
            .field("max_http_connections", &self.max_http_connections)
            .field("shutdown_grace_ms", &self.shutdown_grace_ms)
            .field("lease_ms", &self.lease_ms)
            .field("poll_interval_ms", &self.poll_interval_ms)
            .field("claim_batch", &self.claim_batch)
            .field("max_inflight", &self.max_inflight)
            .field("retry_cap_s", &self.retry_cap_s)
            .field("max_concurrent_calls", &self.max_concurrent_calls)
            .field("max_branches", &self.max_branches)
            .field("max_answer_bytes", &self.max_answer_bytes)
            .field("default_timeout_to_fail_s", &self.default_timeout_to_fail_s)
            .field("default_request_timeout_s", &self.default_request_timeout_s)
            .field("default_retry_interval_s", &self.default_retry_interval_s)
            .field("rocketmq_namesrv", &self.rocketmq_namesrv)
            .field("rocketmq_producer_group", &self.rocketmq_producer_group)
            .field("rocketmq_send_timeout_ms", &self.rocketmq_send_timeout_ms)
            .field("delivery_poll_interval_ms", &self.delivery_poll_interval_ms)
            .field("delivery_max_inflight", &self.delivery_max_inflight)
            .field("dead_letter_after", &self.dead_letter_after)
            .field("max_message_bytes", &self.max_message_bytes)
            .field("allow_destinations", &self.allow_destinations)
            .field("allow_all_destinations", &self.allow_all_destinations)
            .field("client_tokens", &self.client_tokens)
            .field("operator_tokens", &self.operator_tokens)
            .field("client_tokens_file", &self.client_tokens_file)
            .field("operator_tokens_file", &self.operator_tokens_file)
            .field("alert_url", &self.alert_url)
            .field("alert_after_retries", &self.alert_after_retries)
            .field("alert_after_s", &self.alert_after_s)
            .field("alert_interval_ms", &self.alert_interval_ms)
            .field("otlp_endpoint", &self.otlp_endpoint)
            .finish()
    }
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
            http_header_timeout_ms: 30_000,
            max_http_connections: 4096,
            shutdown_grace_ms: 10_000,
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
            dead_letter_after: 3,
            max_message_bytes: 4 * 1024 * 1024,
            allow_destinations: Vec::new(),
            allow_all_destinations: false,
            client_tokens: Vec::new(),
            operator_tokens: Vec::new(),
            client_tokens_file: String::new(),
            operator_tokens_file: String::new(),
            alert_url: String::new(),
            alert_after_retries: 10,
            alert_after_s: 3600,
            alert_interval_ms: 5_000,
            otlp_endpoint: String::new(),
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
            ("http_header_timeout_ms", self.http_header_timeout_ms as i64),
            ("max_http_connections", self.max_http_connections as i64),
            ("shutdown_grace_ms", self.shutdown_grace_ms as i64),
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
            ("dead_letter_after", self.dead_letter_after),
            ("max_message_bytes", self.max_message_bytes as i64),
            ("alert_interval_ms", self.alert_interval_ms as i64),
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
        if self.alert_after_retries < 0 {
            return Err(ConfigError::Invalid(format!(
                "alert_after_retries must be 0 (off) or more, got {}",
                self.alert_after_retries
            )));
        }
        for (name, url) in [
            ("alert_url", &self.alert_url),
            ("otlp_endpoint", &self.otlp_endpoint),
        ] {
            if url.is_empty() {
                continue;
            }
            match reqwest::Url::parse(url) {
                Ok(u) if matches!(u.scheme(), "http" | "https") && u.host().is_some() => {}
                _ => {
                    return Err(ConfigError::Invalid(format!(
                        "{name} must be an http or https URL, got '{url}'"
                    )))
                }
            }
        }
        self.allowlist()?;
        Ok(())
    }

    /// The destinations the coordinator may call.
    ///
    /// # Errors
    /// A rule does not parse, or `listen` is not a loopback address and neither
    /// `allow_destinations` nor `allow_all_destinations` is set.
    pub fn allowlist(&self) -> Result<Allowlist, ConfigError> {
        if !self.allow_destinations.is_empty() || self.allow_all_destinations {
            return Allowlist::new(&self.allow_destinations, self.allow_all_destinations)
                .map_err(ConfigError::Invalid);
        }
        if self.listen.ip().is_loopback() {
            return Ok(Allowlist::loopback());
        }
        Err(ConfigError::Invalid(format!(
            "listen is {}, which other hosts can reach: set allow_destinations (hosts, CIDR ranges or URL prefixes the coordinator may call) or, to allow every destination, allow_all_destinations = true",
            self.listen
        )))
    }

    /// The bearer tokens: from the configuration and the token files.
    ///
    /// # Errors
    /// A token file cannot be read.
    pub fn tokens(&self) -> Result<Tokens, ConfigError> {
        let read = |path: &str, mut tokens: Vec<Secret>| -> Result<Vec<Secret>, ConfigError> {
            if path.is_empty() {
                return Ok(tokens);
            }
            let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
                path: path.to_owned(),
                source,
            })?;
            tokens.extend(
                text.lines()
                    .map(str::trim)
                    .filter(|l| !l.is_empty() && !l.starts_with('#'))
                    .map(Secret::new),
            );
            Ok(tokens)
        };
        Ok(Tokens::new(
            read(&self.client_tokens_file, self.client_tokens.clone())?,
            read(&self.operator_tokens_file, self.operator_tokens.clone())?,
        ))
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
    fn listening_beyond_loopback_needs_an_allowlist() {
        let open = Config {
            listen: SocketAddr::from(([0, 0, 0, 0], 36789)),
            ..Config::default()
        };
        let err = open.validate().unwrap_err().to_string();
        assert!(err.contains("allow_destinations"), "{err}");
        let listed = Config {
            allow_destinations: vec!["10.0.0.0/8".into()],
            ..open.clone()
        };
        assert!(listed.validate().is_ok());
        let all = Config {
            allow_all_destinations: true,
            ..open
        };
        assert!(all.validate().is_ok());
    }

    #[test]
    fn debug_output_hides_the_password_and_tokens() {
        let c = Config {
            database_url: "mysql://settle:s3cret-pw@db:3306/settle".into(),
            client_tokens: vec![Secret::new("tok-client-1")],
            operator_tokens: vec![Secret::new("tok-op-1")],
            ..Config::default()
        };
        let shown = format!("{c:?}");
        for secret in ["s3cret-pw", "tok-client-1", "tok-op-1"] {
            assert!(!shown.contains(secret), "{shown}");
        }
        assert!(shown.contains("max_branches"), "{shown}");
    }

    #[test]
    fn token_files_add_to_the_configured_tokens() {
        let dir = std::env::temp_dir().join(format!("settle-tokens-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("operator");
        std::fs::write(&file, "# rotated 2026-11\nop-new\n\nop-old\n").unwrap();
        let c = Config {
            operator_tokens: vec![Secret::new("op-config")],
            operator_tokens_file: file.display().to_string(),
            ..Config::default()
        };
        let tokens = c.tokens().unwrap();
        for t in ["op-new", "op-old", "op-config"] {
            let header = format!("Bearer {t}");
            assert!(tokens
                .check(Some(header.as_bytes()), crate::access::Scope::Operator)
                .is_ok());
        }
        std::fs::remove_dir_all(&dir).unwrap();
        let missing = Config {
            client_tokens_file: "/nonexistent/settle-tokens".into(),
            ..Config::default()
        };
        assert!(missing
            .tokens()
            .unwrap_err()
            .to_string()
            .contains("/nonexistent/settle-tokens"));
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
        for url in [
            "ftp://alerts.example/hook",
            "alerts.example/hook",
            "http://",
        ] {
            let c = Config {
                alert_url: url.into(),
                ..Config::default()
            };
            let err = c.validate().unwrap_err().to_string();
            assert!(err.contains("alert_url") && err.contains(url), "{err}");
            let c = Config {
                otlp_endpoint: url.into(),
                ..Config::default()
            };
            let err = c.validate().unwrap_err().to_string();
            assert!(err.contains("otlp_endpoint") && err.contains(url), "{err}");
        }
    }
}
