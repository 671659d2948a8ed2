//! A RocketMQ name server and broker of a test's own, reached through a fault proxy.
//!
//! RocketMQ clients do not dial the broker they are given: they ask the name server for the
//! address the broker registered, and dial that. So to put a [`FaultProxy`] between the
//! coordinator and a broker, the broker listens on 127.0.0.1 but registers 127.0.0.2 (another
//! loopback address), where the proxy listens and forwards to it. Every client of this broker
//! (the coordinator's producer, a test's consumer) then goes through the proxy, and its
//! toxics are faults on the network between them and the broker.
//!
//! The pair is started from the binaries `deploy/rocketmq.sh install` puts in cargo's bin
//! folder, with the configuration templates of `deploy/rocketmq/`, on free ports, in a
//! folder of its own that is removed, with the processes, when it is dropped.

use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use anyhow::{bail, Context};
use tokio::process::{Child, Command};

use crate::proxy::FaultProxy;

/// The address the broker registers, where its proxy listens.
const ADVERTISED: [u8; 4] = [127, 0, 0, 2];

/// A name server and a broker of one test; see the module docs.
pub struct OwnBroker {
    namesrv: String,
    proxy: FaultProxy,
    home: PathBuf,
    broker_bin: PathBuf,
    broker_port: u16,
    name_server: Option<Child>,
    broker: Option<Child>,
}

impl OwnBroker {
    /// Starts a name server and a broker on free ports, the broker behind a fault proxy.
    ///
    /// # Errors
    /// The binaries are missing (run `deploy/rocketmq.sh install`), or a process does not
    /// come up within a minute.
    pub async fn start() -> anyhow::Result<Self> {
        let bin = cargo_bin();
        let (namesrv_bin, broker_bin) = (
            bin.join("rocketmq-namesrv-rust"),
            bin.join("rocketmq-broker-rust"),
        );
        for b in [&namesrv_bin, &broker_bin] {
            anyhow::ensure!(
                b.exists(),
                "{} is missing: run deploy/rocketmq.sh install",
                b.display()
            );
        }
        let home = std::env::temp_dir().join(format!(
            "settle-broker-{}",
            &uuid::Uuid::new_v4().simple().to_string()[..10]
        ));
        std::fs::create_dir_all(home.join("store"))?;
        let namesrv_port = free_port()?;
        let broker_port = free_broker_port()?;
        let namesrv = format!("127.0.0.1:{namesrv_port}");
        let templates = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../deploy/rocketmq");
        let fill = |name: &str| -> anyhow::Result<String> {
            let text = std::fs::read_to_string(templates.join(name))
                .with_context(|| format!("reading deploy/rocketmq/{name}"))?;
            Ok(text.replace("@HOME@", &home.to_string_lossy()))
        };
        let namesrv_toml = fill("namesrv.toml")?
            .replace("listenPort = 9876", &format!("listenPort = {namesrv_port}"));
        let advertised = std::net::Ipv4Addr::from(ADVERTISED).to_string();
        let broker_toml = fill("broker.toml")?
            .replace("127.0.0.1:9876", &namesrv)
            .replace(
                "brokerIp1 = \"127.0.0.1\"",
                &format!("brokerIp1 = \"{advertised}\""),
            )
            .replace("listenPort = 10911", &format!("listenPort = {broker_port}"))
            .replace(
                "haListenPort = 10912",
                &format!("haListenPort = {}", broker_port + 1),
            )
            .replace("settle-broker", &format!("settle-broker-{broker_port}"));
        for (name, text) in [
            ("namesrv.toml", &namesrv_toml),
            ("broker.toml", &broker_toml),
        ] {
            std::fs::write(home.join(name), text)?;
        }
        let mut me = Self {
            proxy: FaultProxy::start_on(
                SocketAddr::from((ADVERTISED, broker_port)),
                &format!("127.0.0.1:{broker_port}"),
            )
            .await?,
            namesrv,
            home,
            broker_bin,
            broker_port,
            name_server: None,
            broker: None,
        };
        let namesrv_conf = me.home.join("namesrv.toml");
        me.name_server = Some(me.spawn(
            &namesrv_bin,
            &["-c", path(&namesrv_conf), "--bindAddress", "127.0.0.1"],
            "namesrv",
        )?);
        wait_port(namesrv_port).await?;
        me.start_broker().await?;
        Ok(me)
    }

    async fn start_broker(&mut self) -> anyhow::Result<()> {
        let conf = self.home.join("broker.toml");
        let ns = self.namesrv.clone();
        let bin = self.broker_bin.clone();
        self.broker = Some(self.spawn(&bin, &["-c", path(&conf), "-n", &ns], "broker")?);
        wait_port(self.broker_port).await
    }

    /// Kills the broker (SIGKILL: it recovers its queues from the commit log) and starts it
    /// again on its store.
    ///
    /// # Errors
    /// It does not come back within a minute.
    pub async fn restart_broker(&mut self) -> anyhow::Result<()> {
        if let Some(mut b) = self.broker.take() {
            let _ = b.kill().await;
        }
        self.start_broker().await
    }

    fn spawn(&self, binary: &Path, args: &[&str], log: &str) -> anyhow::Result<Child> {
        let out = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.home.join(format!("{log}.log")))?;
        let child = Command::new(binary)
            .args(args)
            .env("ROCKETMQ_HOME", &self.home)
            .env("ROCKETMQ_SECURITY_PROFILE", "development-insecure-loopback")
            .stdout(Stdio::from(out.try_clone()?))
            .stderr(Stdio::from(out))
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("starting {}", binary.display()))?;
        Ok(child)
    }

    /// The name server's address (`host:port`), for the coordinator and consumers.
    pub fn namesrv(&self) -> &str {
        &self.namesrv
    }

    /// The proxy every client's traffic to the broker goes through.
    pub fn proxy(&self) -> &FaultProxy {
        &self.proxy
    }
}

impl Drop for OwnBroker {
    fn drop(&mut self) {
        for p in [&mut self.broker, &mut self.name_server]
            .into_iter()
            .flatten()
        {
            let _ = p.start_kill();
        }
        let _ = std::fs::remove_dir_all(&self.home);
    }
}

fn path(p: &Path) -> &str {
    p.to_str().unwrap_or_default()
}

/// Where `cargo install` puts binaries.
fn cargo_bin() -> PathBuf {
    std::env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cargo")))
        .unwrap_or_default()
        .join("bin")
}

/// A port of 127.0.0.1 free now.
fn free_port() -> anyhow::Result<u16> {
    Ok(TcpListener::bind(("127.0.0.1", 0))?.local_addr()?.port())
}

/// A broker port P such that P - 2 (its fast port) and P + 1 (its HA port) are free on
/// 127.0.0.1 too, and P on the advertised address.
fn free_broker_port() -> anyhow::Result<u16> {
    for _ in 0..50 {
        let p = free_port()?;
        if !(1026..=65_000).contains(&p) {
            continue;
        }
        let all_free = [p - 2, p + 1]
            .iter()
            .all(|q| TcpListener::bind(("127.0.0.1", *q)).is_ok())
            && TcpListener::bind(SocketAddr::from((ADVERTISED, p))).is_ok();
        if all_free {
            return Ok(p);
        }
    }
    bail!("no free ports for a broker")
}

/// Waits until 127.0.0.1:`port` accepts connections.
async fn wait_port(port: u16) -> anyhow::Result<()> {
    for _ in 0..600 {
        if tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_ok()
        {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    bail!("nothing answers on 127.0.0.1:{port} after a minute")
}
