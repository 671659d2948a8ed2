//! The `settle` command line.
//!
//! `settle serve` runs the coordinator; `settle bench` drives a running DTM-compatible server
//! with TCC transactions and measures it. Options come from defaults, then the TOML file named
//! by `--config`, then `SETTLE_*` environment variables, then flags.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};

use crate::access::Secret;
use crate::bench::{self, BenchArgs};
use crate::config::Config;
use crate::ops::{self, OutboxCommand, Remote, TopicCommand, TxnCommand};
use crate::telemetry::init_logging;
use crate::Application;

/// Settle: a distributed transaction coordinator speaking DTM's protocol.
#[derive(Parser)]
#[command(name = "settle", version, about, long_about = None)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// The subcommands.
#[derive(Subcommand)]
pub enum Command {
    /// Run the coordinator (HTTP API, scheduler and driver).
    Serve(Box<ServeArgs>),
    /// Measure a running DTM-compatible server with concurrent TCC transactions, sagas or
    /// messages.
    Bench(Box<BenchArgs>),
    /// Inspect and steer transactions of a running coordinator.
    Txn {
        /// Where the coordinator is.
        #[command(flatten)]
        remote: Remote,
        /// What to do.
        #[command(subcommand)]
        command: TxnCommand,
    },
    /// Inspect the outbox of a running coordinator and send dead letters again.
    Outbox {
        /// Where the coordinator is.
        #[command(flatten)]
        remote: Remote,
        /// What to do.
        #[command(subcommand)]
        command: OutboxCommand,
    },
    /// List and change the topics a msg fans out to (`topic://NAME` steps).
    Topic {
        /// Where the coordinator is.
        #[command(flatten)]
        remote: Remote,
        /// What to do.
        #[command(subcommand)]
        command: TopicCommand,
    },
}

/// Options of `settle serve`. Each overrides the config file; unset ones keep it. Not
/// `Debug`: it holds the database password and tokens.
#[derive(Args)]
pub struct ServeArgs {
    /// TOML file with any of the options below (snake_case keys, e.g. `database_url`).
    #[arg(long, env = "SETTLE_CONFIG")]
    pub config: Option<PathBuf>,
    /// Address to listen on [default: 127.0.0.1:36789].
    #[arg(long, env = "SETTLE_LISTEN")]
    pub listen: Option<SocketAddr>,
    /// Store URL: `sqlite:PATH` (embedded, created if missing) or
    /// `mysql://USER:PASSWORD@HOST:PORT/DATABASE`; migrated on start [default: sqlite:settle.db].
    #[arg(long, env = "SETTLE_DATABASE_URL")]
    pub database_url: Option<String>,
    /// Most pooled database connections (reads, claims, the outbox) [default: 16].
    #[arg(long, env = "SETTLE_MAX_CONNECTIONS")]
    pub max_connections: Option<u32>,
    /// Batched writers, each with its own database connection (MySQL; SQLite has one)
    /// [default: 1].
    #[arg(long, env = "SETTLE_STORE_WRITERS")]
    pub store_writers: Option<usize>,
    /// Most commands written in one database transaction [default: 256].
    #[arg(long, env = "SETTLE_MAX_BATCH")]
    pub max_batch: Option<usize>,
    /// How long finished transactions are kept, in seconds; 0 keeps everything
    /// [default: 604800, 7 days].
    #[arg(long, env = "SETTLE_RETENTION_S")]
    pub retention_s: Option<u64>,
    /// Id of this instance in leases; must differ between instances on one database
    /// [default: random].
    #[arg(long, env = "SETTLE_INSTANCE_ID")]
    pub instance_id: Option<String>,
    /// Largest request body accepted, in bytes [default: 1048576].
    #[arg(long, env = "SETTLE_BODY_LIMIT_BYTES")]
    pub body_limit_bytes: Option<usize>,
    /// Time a connection has to send a request's headers (from opening or its last answer),
    /// in ms; idle and slow connections are closed after it [default: 30000].
    #[arg(long, env = "SETTLE_HTTP_HEADER_TIMEOUT_MS")]
    pub http_header_timeout_ms: Option<u64>,
    /// Most HTTP connections open at once [default: 4096].
    #[arg(long, env = "SETTLE_MAX_HTTP_CONNECTIONS")]
    pub max_http_connections: Option<usize>,
    /// On SIGTERM, how long running rounds and requests get to finish before leases are
    /// handed back, in ms [default: 10000].
    #[arg(long, env = "SETTLE_SHUTDOWN_GRACE_MS")]
    pub shutdown_grace_ms: Option<u64>,
    /// Lease on a transaction being driven, in ms; a dead instance's transactions are taken
    /// over this long after its last renewal [default: 15000].
    #[arg(long, env = "SETTLE_LEASE_MS")]
    pub lease_ms: Option<u64>,
    /// How often to look for due transactions, in ms [default: 500].
    #[arg(long, env = "SETTLE_POLL_INTERVAL_MS")]
    pub poll_interval_ms: Option<u64>,
    /// Most transactions claimed per scheduler pass [default: 64].
    #[arg(long, env = "SETTLE_CLAIM_BATCH")]
    pub claim_batch: Option<u32>,
    /// Most rounds of work running at once [default: 1024].
    #[arg(long, env = "SETTLE_MAX_INFLIGHT")]
    pub max_inflight: Option<usize>,
    /// Most branch calls a `concurrent` transaction makes at once [default: 16].
    #[arg(long, env = "SETTLE_MAX_CONCURRENT_CALLS")]
    pub max_concurrent_calls: Option<usize>,
    /// Most branches one transaction may register [default: 256].
    #[arg(long, env = "SETTLE_MAX_BRANCHES")]
    pub max_branches: Option<usize>,
    /// Most bytes of a participant's answer that are read, in bytes [default: 65536].
    #[arg(long, env = "SETTLE_MAX_ANSWER_BYTES")]
    pub max_answer_bytes: Option<usize>,
    /// Longest interval between retries of a branch call, in seconds [default: 60].
    #[arg(long, env = "SETTLE_RETRY_CAP_S")]
    pub retry_cap_s: Option<i64>,
    /// `timeout_to_fail` for transactions that leave it 0, in seconds [default: 35].
    #[arg(long, env = "SETTLE_DEFAULT_TIMEOUT_TO_FAIL_S")]
    pub default_timeout_to_fail_s: Option<i64>,
    /// `request_timeout` for transactions that leave it 0, in seconds [default: 3].
    #[arg(long, env = "SETTLE_DEFAULT_REQUEST_TIMEOUT_S")]
    pub default_request_timeout_s: Option<i64>,
    /// `retry_interval` for transactions that leave it 0, in seconds [default: 10].
    #[arg(long, env = "SETTLE_DEFAULT_RETRY_INTERVAL_S")]
    pub default_retry_interval_s: Option<i64>,
    /// RocketMQ name server (`host:port`) that `rocketmq://TOPIC?key=K&tag=T` steps are
    /// published through [default: none: such steps are refused].
    #[arg(long, env = "SETTLE_ROCKETMQ_NAMESRV")]
    pub rocketmq_namesrv: Option<String>,
    /// Producer group the coordinator publishes in [default: settle-coordinator].
    #[arg(long, env = "SETTLE_ROCKETMQ_PRODUCER_GROUP")]
    pub rocketmq_producer_group: Option<String>,
    /// How long one publish may take, in ms [default: 3000].
    #[arg(long, env = "SETTLE_ROCKETMQ_SEND_TIMEOUT_MS")]
    pub rocketmq_send_timeout_ms: Option<u64>,
    /// How often to look for messages to deliver, in ms [default: 200].
    #[arg(long, env = "SETTLE_DELIVERY_POLL_INTERVAL_MS")]
    pub delivery_poll_interval_ms: Option<u64>,
    /// Most sharding keys delivered at once [default: 256].
    #[arg(long, env = "SETTLE_DELIVERY_MAX_INFLIGHT")]
    pub delivery_max_inflight: Option<usize>,
    /// Permanent refusals by the broker after which a message is dead-lettered [default: 3].
    #[arg(long, env = "SETTLE_DEAD_LETTER_AFTER")]
    pub dead_letter_after: Option<i64>,
    /// Largest body of a `rocketmq://` step, in bytes: the broker's maxMessageSize
    /// [default: 4194304].
    #[arg(long, env = "SETTLE_MAX_MESSAGE_BYTES")]
    pub max_message_bytes: Option<usize>,
    /// Destinations the coordinator may call, comma-separated: host names, `*.domain`,
    /// addresses, CIDR ranges, http(s) URL prefixes [default: loopback only, allowed only
    /// when listening on loopback].
    #[arg(
        long = "allow-destination",
        env = "SETTLE_ALLOW_DESTINATIONS",
        value_delimiter = ','
    )]
    pub allow_destinations: Option<Vec<String>>,
    /// Allow every destination (link-local and metadata addresses still need a rule).
    #[arg(long, env = "SETTLE_ALLOW_ALL_DESTINATIONS", num_args = 0..=1, default_missing_value = "true")]
    pub allow_all_destinations: Option<bool>,
    /// Bearer tokens granting the client scope, comma-separated (prefer the environment or
    /// a file to the command line).
    #[arg(
        long,
        env = "SETTLE_CLIENT_TOKENS",
        value_delimiter = ',',
        hide_env_values = true
    )]
    pub client_tokens: Option<Vec<Secret>>,
    /// Bearer tokens granting the operator scope, comma-separated.
    #[arg(
        long,
        env = "SETTLE_OPERATOR_TOKENS",
        value_delimiter = ',',
        hide_env_values = true
    )]
    pub operator_tokens: Option<Vec<Secret>>,
    /// File of client tokens, one per line.
    #[arg(long, env = "SETTLE_CLIENT_TOKENS_FILE")]
    pub client_tokens_file: Option<String>,
    /// File of operator tokens, one per line.
    #[arg(long, env = "SETTLE_OPERATOR_TOKENS_FILE")]
    pub operator_tokens_file: Option<String>,
    /// Webhook told when a transaction needs attention and when it settles [default: none].
    #[arg(long, env = "SETTLE_ALERT_URL")]
    pub alert_url: Option<String>,
    /// Alert after more failed rounds in a row than this; 0: never [default: 10].
    #[arg(long, env = "SETTLE_ALERT_AFTER_RETRIES")]
    pub alert_after_retries: Option<i64>,
    /// Alert when unfinished this many seconds after creation; 0: never [default: 3600].
    #[arg(long, env = "SETTLE_ALERT_AFTER_S")]
    pub alert_after_s: Option<u64>,
    /// How often alerts are looked for and delivered, in ms [default: 5000].
    #[arg(long, env = "SETTLE_ALERT_INTERVAL_MS")]
    pub alert_interval_ms: Option<u64>,
    /// OpenTelemetry collector spans are sent to (OTLP/HTTP, e.g. http://127.0.0.1:4318)
    /// [default: none].
    #[arg(long, env = "SETTLE_OTLP_ENDPOINT")]
    pub otlp_endpoint: Option<String>,
    /// Runs as if this machine's clock were this many ms off the wall time (fault tests of
    /// clock skew: leases and due times follow the database's clock, so it must not matter).
    #[arg(long, hide = true, default_value_t = 0, allow_negative_numbers = true)]
    pub clock_off_by_ms: i64,
}

impl ServeArgs {
    /// The configuration these arguments describe: defaults, file, then environment and
    /// flags.
    ///
    /// # Errors
    /// The config file cannot be read or parsed.
    pub fn resolve(&self) -> Result<Config, crate::config::ConfigError> {
        let mut c = match &self.config {
            Some(path) => Config::from_file(path)?,
            None => Config::default(),
        };
        macro_rules! overlay {
            ($($field:ident),+) => {
                $(if let Some(v) = &self.$field { c.$field = v.clone(); })+
            };
        }
        overlay!(
            listen,
            database_url,
            max_connections,
            store_writers,
            max_batch,
            retention_s,
            instance_id,
            body_limit_bytes,
            http_header_timeout_ms,
            max_http_connections,
            shutdown_grace_ms,
            lease_ms,
            poll_interval_ms,
            claim_batch,
            max_inflight,
            max_answer_bytes,
            max_branches,
            max_concurrent_calls,
            retry_cap_s,
            default_timeout_to_fail_s,
            default_request_timeout_s,
            default_retry_interval_s,
            rocketmq_namesrv,
            rocketmq_producer_group,
            rocketmq_send_timeout_ms,
            delivery_poll_interval_ms,
            delivery_max_inflight,
            dead_letter_after,
            max_message_bytes,
            allow_destinations,
            allow_all_destinations,
            client_tokens,
            operator_tokens,
            client_tokens_file,
            operator_tokens_file,
            alert_url,
            alert_after_retries,
            alert_after_s,
            alert_interval_ms,
            otlp_endpoint
        );
        Ok(c)
    }
}

/// Installs the TLS crypto provider. The dependency graph can enable more than one, so one
/// is chosen explicitly before any TLS is used.
pub fn install_crypto_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// Makes a panic anywhere in a serving coordinator stop the process, after reporting it.
///
/// A panic is a bug whose damage is unknown: a task it ended (the writer, the scheduler)
/// would leave a process that answers probes but no longer works. Everything promised is in
/// the store, so stopping is safe: leases run out and this or another instance carries on
/// where the crash left off, as after a kill.
fn crash_on_panic() {
    let report = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        report(info);
        eprintln!("settle: stopping after a panic; a restart carries on from the store");
        std::process::abort();
    }));
}

/// Entry point of the `settle` binary.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    install_crypto_provider();
    init_logging();
    if matches!(cli.command, Command::Serve(_)) {
        crash_on_panic();
    }
    // Fail points named in FAILPOINTS (`name=action;...`), for fault-injection tests.
    #[cfg(feature = "failpoints")]
    let _fail_points = fail::FailScenario::setup();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result: anyhow::Result<()> = runtime.block_on(async {
        match cli.command {
            Command::Serve(args) => {
                let config = args.resolve()?;
                let clock = crate::clock::Clock::system_off_by(args.clock_off_by_ms);
                let app = Application::start_with_clock(config, clock).await?;
                app.run_until_stopped().await;
                Ok(())
            }
            Command::Bench(args) => bench::run(*args).await,
            Command::Txn { remote, command } => ops::txn(&remote, command).await,
            Command::Outbox { remote, command } => ops::outbox(&remote, command).await,
            Command::Topic { remote, command } => ops::topic(&remote, command).await,
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_override_the_file_which_overrides_defaults() {
        let dir = std::env::temp_dir().join(format!("settle-cli-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("settle.toml");
        std::fs::write(&file, "lease_ms = 1234\npoll_interval_ms = 77\n").unwrap();
        let cli = Cli::try_parse_from([
            "settle",
            "serve",
            "--config",
            file.to_str().unwrap(),
            "--lease-ms",
            "999",
        ])
        .unwrap();
        let Command::Serve(args) = cli.command else {
            panic!("serve expected")
        };
        let c = args.resolve().unwrap();
        assert_eq!(c.lease_ms, 999);
        assert_eq!(c.poll_interval_ms, 77);
        assert_eq!(c.claim_batch, Config::default().claim_batch);
    }

    #[test]
    fn the_command_line_is_well_formed() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
    }
}
