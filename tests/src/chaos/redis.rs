//! A Redis server of the chaos runner's own, so that it can be killed and restarted without
//! touching the machine's: a temporary folder, a free port of 127.0.0.1, and an append-only
//! file synced on every write (`appendfsync always`), so that what it acknowledged survives
//! a crash, as a cache that must never go back to an older version needs. It needs Debian's
//! `redis-server` (`deploy/services.sh start` installs it).

use std::path::PathBuf;
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use tokio::process::{Child, Command};

/// A private Redis server; killed and its folder removed when dropped.
pub struct Redis {
    dir: PathBuf,
    port: u16,
    child: Option<Child>,
}

impl Redis {
    /// Starts it in a new folder.
    ///
    /// # Errors
    /// `redis-server` is not installed or does not answer within 10 s.
    pub async fn start() -> anyhow::Result<Self> {
        let dir = std::env::temp_dir().join(format!(
            "settle-chaos-redis-{}",
            &uuid::Uuid::new_v4().simple().to_string()[..8]
        ));
        std::fs::create_dir_all(&dir)?;
        let mut redis = Self {
            dir,
            port: crate::free_port()?,
            child: None,
        };
        redis.launch().await?;
        Ok(redis)
    }

    /// `redis://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    async fn launch(&mut self) -> anyhow::Result<()> {
        let child = Command::new("redis-server")
            .args(["--bind", "127.0.0.1", "--port", &self.port.to_string()])
            .args([
                "--save",
                "",
                "--appendonly",
                "yes",
                "--appendfsync",
                "always",
            ])
            .arg("--dir")
            .arg(&self.dir)
            .arg("--logfile")
            .arg(self.dir.join("redis.log"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .context("cannot start redis-server: install it (deploy/services.sh start)")?;
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if tokio::net::TcpStream::connect(("127.0.0.1", self.port))
                .await
                .is_ok()
            {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!(
                    "redis-server did not answer on port {} within 10s; see {}",
                    self.port,
                    self.dir.join("redis.log").display()
                );
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Crashes it (SIGKILL) and waits for it to be gone.
    ///
    /// # Errors
    /// It cannot be waited for.
    pub async fn kill(&mut self) -> anyhow::Result<()> {
        if let Some(mut child) = self.child.take() {
            child.start_kill()?;
            child.wait().await?;
        }
        Ok(())
    }

    /// Starts it again on its append-only file, unless it runs.
    ///
    /// # Errors
    /// It does not come back within 10 s.
    pub async fn ensure_running(&mut self) -> anyhow::Result<()> {
        if self.child.is_none() {
            self.launch().await?;
        }
        Ok(())
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        if let Some(child) = self.child.as_mut() {
            let _ = child.start_kill();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
