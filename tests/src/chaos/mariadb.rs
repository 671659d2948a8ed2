//! A MariaDB server of the chaos runner's own, so that it can be killed, restarted and
//! paused without touching the machine's: a fresh data directory in a temporary folder, on a
//! free port of 127.0.0.1, durable as in production (`innodb_flush_log_at_trx_commit = 1`,
//! the default). It needs Debian's `mariadb-server` (`deploy/services.sh start` installs it).

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use tokio::process::Command;

/// A private MariaDB server; stopped (SIGKILL) and its data removed when dropped.
pub struct MariaDb {
    dir: PathBuf,
    port: u16,
    keep: bool,
}

fn find(name: &str, dirs: &[&str]) -> Option<PathBuf> {
    dirs.iter()
        .map(|d| Path::new(d).join(name))
        .find(|p| p.exists())
}

impl MariaDb {
    /// Creates a data directory and starts the server.
    ///
    /// # Errors
    /// MariaDB is not installed or does not start within 30 s.
    pub async fn start() -> anyhow::Result<Self> {
        let dir = std::env::temp_dir().join(format!(
            "settle-chaos-mariadb-{}",
            &uuid::Uuid::new_v4().simple().to_string()[..8]
        ));
        std::fs::create_dir_all(&dir)?;
        let install = find(
            "mariadb-install-db",
            &["/usr/bin", "/usr/local/bin", "/usr/scripts"],
        )
        .context(
            "mariadb-install-db not found: install mariadb-server (deploy/services.sh start)",
        )?;
        let out = Command::new(install)
            .arg("--no-defaults")
            .arg(format!("--datadir={}", dir.join("data").display()))
            .args(["--auth-root-authentication-method=normal", "--skip-test-db"])
            .args(user_args())
            .stdin(Stdio::null())
            .output()
            .await?;
        if !out.status.success() {
            bail!(
                "mariadb-install-db failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        let db = Self {
            dir,
            port: crate::free_port()?,
            keep: false,
        };
        db.launch().await?;
        Ok(db)
    }

    /// `mysql://root@127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("mysql://root@127.0.0.1:{}", self.port)
    }

    /// Keeps its data directory when it is dropped (the server is still stopped); returns
    /// the directory, so that a failed run can be looked into (`mariadbd --datadir=DIR`).
    pub fn keep(&mut self) -> PathBuf {
        self.keep = true;
        self.dir.join("data")
    }

    /// Its port.
    pub fn port(&self) -> u16 {
        self.port
    }

    async fn launch(&self) -> anyhow::Result<()> {
        let server = find("mariadbd", &["/usr/sbin", "/usr/bin", "/usr/local/bin"])
            .context("mariadbd not found: install mariadb-server (deploy/services.sh start)")?;
        let d = &self.dir;
        Command::new(server)
            .arg("--no-defaults")
            .arg(format!("--datadir={}", d.join("data").display()))
            .arg(format!("--socket={}", d.join("sock").display()))
            .arg(format!("--pid-file={}", d.join("pid").display()))
            .arg(format!("--log-error={}", d.join("error.log").display()))
            .arg(format!("--port={}", self.port))
            .args([
                "--bind-address=127.0.0.1",
                "--skip-grant-tables",
                "--skip-name-resolve",
                "--innodb-buffer-pool-size=128M",
                "--max-connections=500",
            ])
            .args(user_args())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("cannot start mariadbd")?;
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if tokio::net::TcpStream::connect(("127.0.0.1", self.port))
                .await
                .is_ok()
            {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!(
                    "mariadbd did not answer on port {} within 30s; see {}",
                    self.port,
                    d.join("error.log").display()
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    fn pid(&self) -> Option<String> {
        std::fs::read_to_string(self.dir.join("pid"))
            .ok()
            .map(|s| s.trim().to_owned())
    }

    async fn signal(&self, signal: &str) -> anyhow::Result<()> {
        if let Some(pid) = self.pid() {
            Command::new("kill")
                .args([signal, &pid])
                .stderr(Stdio::null())
                .status()
                .await?;
        }
        Ok(())
    }

    /// Crashes it (SIGKILL) and waits until its port is free.
    ///
    /// # Errors
    /// The signal cannot be sent.
    pub async fn kill(&self) -> anyhow::Result<()> {
        self.signal("-CONT").await?;
        self.signal("-KILL").await?;
        let deadline = Instant::now() + Duration::from_secs(10);
        while tokio::net::TcpStream::connect(("127.0.0.1", self.port))
            .await
            .is_ok()
            && Instant::now() < deadline
        {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let _ = std::fs::remove_file(self.dir.join("pid"));
        Ok(())
    }

    /// Starts it again on its data (crash recovery) and waits until it answers.
    ///
    /// # Errors
    /// It does not come back within 30 s.
    pub async fn restart(&self) -> anyhow::Result<()> {
        self.launch().await
    }

    /// Freezes it (SIGSTOP): connections stay open, nothing answers.
    ///
    /// # Errors
    /// The signal cannot be sent.
    pub async fn pause(&self) -> anyhow::Result<()> {
        self.signal("-STOP").await
    }

    /// Thaws it (SIGCONT).
    ///
    /// # Errors
    /// The signal cannot be sent.
    pub async fn resume(&self) -> anyhow::Result<()> {
        self.signal("-CONT").await
    }
}

/// mariadbd refuses to run as root unless told to.
fn user_args() -> Vec<String> {
    match std::env::var("USER")
        .ok()
        .or_else(|| std::env::var("LOGNAME").ok())
    {
        Some(u) if !u.is_empty() => vec![format!("--user={u}")],
        _ => vec!["--user=root".to_owned()],
    }
}

impl Drop for MariaDb {
    fn drop(&mut self) {
        if let Some(pid) = self.pid() {
            let _ = std::process::Command::new("kill")
                .args(["-CONT", &pid])
                .status();
            let _ = std::process::Command::new("kill")
                .args(["-KILL", &pid])
                .status();
        }
        if !self.keep {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}
