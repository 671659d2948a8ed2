//! A real headless Chromium, driven through ChromeDriver's W3C WebDriver API: enough to open
//! a page, find elements by CSS selector, click, read text, run a line of script and take a
//! screenshot.
//!
//! The browser is Debian's `chromium` with its `chromedriver` (`deploy/browser.sh` installs
//! both and exports `SETTLE_CHROMIUM` and `SETTLE_CHROMEDRIVER`). It runs with a fresh
//! profile and without background networking, so it only ever talks to the pages it opens.

use std::process::Stdio;
use std::time::Duration;

use anyhow::{anyhow, bail, Context};
use serde_json::{json, Value};
use tokio::process::{Child, Command};

/// The key WebDriver answers an element reference under.
const ELEMENT: &str = "element-6066-11e4-a52e-4f735466cecf";

fn path_of(var: &str, default: &str) -> String {
    std::env::var(var).unwrap_or_else(|_| default.to_owned())
}

/// A browser session.
pub struct Browser {
    http: reqwest::Client,
    session: String,
    driver: Child,
    _profile: Profile,
}

/// A directory removed when dropped: the browser's profile.
struct Profile(std::path::PathBuf);

impl Drop for Profile {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

impl Browser {
    /// Starts ChromeDriver on a free port and opens a headless Chromium session
    /// (`width` x `height` window).
    ///
    /// # Errors
    /// ChromeDriver or Chromium is missing or does not start.
    pub async fn start(width: u32, height: u32) -> anyhow::Result<Self> {
        let chromium = path_of("SETTLE_CHROMIUM", "/usr/bin/chromium");
        let chromedriver = path_of("SETTLE_CHROMEDRIVER", "/usr/bin/chromedriver");
        for (what, path) in [("chromium", &chromium), ("chromedriver", &chromedriver)] {
            if !std::path::Path::new(path).exists() {
                bail!("{what} is not at {path}: run deploy/browser.sh (it installs Debian's chromium and chromium-driver)");
            }
        }
        let port = crate::free_port()?;
        let driver = Command::new(&chromedriver)
            .arg(format!("--port={port}"))
            .arg("--allowed-ips=127.0.0.1")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("starting {chromedriver}"))?;
        let base = format!("http://127.0.0.1:{port}");
        let http = reqwest::Client::new();
        crate::eventually("chromedriver answers", Duration::from_secs(20), || {
            let request = http.get(format!("{base}/status"));
            async move {
                match request.send().await {
                    Ok(r) => r
                        .json::<Value>()
                        .await
                        .is_ok_and(|status| status["value"]["ready"] == json!(true)),
                    Err(_) => false,
                }
            }
        })
        .await?;
        let profile =
            std::env::temp_dir().join(format!("settle-chromium-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&profile)?;
        let args = vec![
            "--headless=new".to_owned(),
            "--no-sandbox".to_owned(),
            "--disable-gpu".to_owned(),
            "--disable-dev-shm-usage".to_owned(),
            "--disable-quic".to_owned(),
            "--no-first-run".to_owned(),
            "--disable-background-networking".to_owned(),
            "--disable-component-update".to_owned(),
            "--disable-sync".to_owned(),
            "--disable-extensions".to_owned(),
            format!("--window-size={width},{height}"),
            format!("--user-data-dir={}", profile.display()),
        ];
        let caps = json!({"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": {"binary": chromium, "args": args},
        }}});
        let answer: Value = http
            .post(format!("{base}/session"))
            .json(&caps)
            .send()
            .await?
            .json()
            .await?;
        let session = answer["value"]["sessionId"]
            .as_str()
            .ok_or_else(|| anyhow!("chromedriver opened no session: {answer}"))?;
        Ok(Self {
            http,
            session: format!("{base}/session/{session}"),
            driver,
            _profile: Profile(profile),
        })
    }

    async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Value,
    ) -> anyhow::Result<Value> {
        let url = format!("{}{path}", self.session);
        let mut request = self.http.request(method.clone(), &url);
        if method != reqwest::Method::GET {
            request = request.json(&body);
        }
        let response = request.send().await?;
        let ok = response.status().is_success();
        let answer: Value = response.json().await?;
        if !ok {
            bail!(
                "webdriver {method} {path}: {} {}",
                answer["value"]["error"],
                answer["value"]["message"]
            );
        }
        Ok(answer["value"].clone())
    }

    /// Opens `url`.
    ///
    /// # Errors
    /// The browser cannot.
    pub async fn goto(&self, url: &str) -> anyhow::Result<()> {
        self.call(reqwest::Method::POST, "/url", json!({ "url": url }))
            .await
            .map(drop)
    }

    /// The elements `css` selects now.
    ///
    /// # Errors
    /// The browser cannot be asked.
    pub async fn find_all(&self, css: &str) -> anyhow::Result<Vec<String>> {
        let found = self
            .call(
                reqwest::Method::POST,
                "/elements",
                json!({"using": "css selector", "value": css}),
            )
            .await?;
        Ok(found
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|e| e[ELEMENT].as_str().map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default())
    }

    /// The first element `css` selects, waiting up to 10 s for one to appear.
    ///
    /// # Errors
    /// None appears.
    pub async fn find(&self, css: &str) -> anyhow::Result<String> {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(e) = self.find_all(css).await?.into_iter().next() {
                return Ok(e);
            }
            if tokio::time::Instant::now() > deadline {
                bail!("no element matches '{css}' after 10 s");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Clicks the first element `css` selects.
    ///
    /// # Errors
    /// None appears, or it cannot be clicked.
    pub async fn click(&self, css: &str) -> anyhow::Result<()> {
        let e = self.find(css).await?;
        self.call(
            reqwest::Method::POST,
            &format!("/element/{e}/click"),
            json!({}),
        )
        .await
        .map(drop)
    }

    /// The visible text of the first element `css` selects.
    ///
    /// # Errors
    /// None appears.
    pub async fn text(&self, css: &str) -> anyhow::Result<String> {
        let e = self.find(css).await?;
        let t = self
            .call(
                reqwest::Method::GET,
                &format!("/element/{e}/text"),
                json!(null),
            )
            .await?;
        Ok(t.as_str().unwrap_or_default().to_owned())
    }

    /// The visible texts of every element `css` selects.
    ///
    /// # Errors
    /// The browser cannot be asked.
    pub async fn texts(&self, css: &str) -> anyhow::Result<Vec<String>> {
        let mut out = Vec::new();
        for e in self.find_all(css).await? {
            let t = self
                .call(
                    reqwest::Method::GET,
                    &format!("/element/{e}/text"),
                    json!(null),
                )
                .await?;
            out.push(t.as_str().unwrap_or_default().to_owned());
        }
        Ok(out)
    }

    /// Waits up to `within` until the text of `css` contains `wanted`, clicking `refresh`
    /// (a selector) between looks when given.
    ///
    /// # Errors
    /// It never does; the error says what was there.
    pub async fn wait_for_text(
        &self,
        css: &str,
        wanted: &str,
        refresh: Option<&str>,
        within: Duration,
    ) -> anyhow::Result<()> {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let seen = self.text(css).await.unwrap_or_default();
            if seen.contains(wanted) {
                return Ok(());
            }
            if tokio::time::Instant::now() > deadline {
                bail!("'{css}' shows '{seen}', not '{wanted}', after {within:?}");
            }
            tokio::time::sleep(Duration::from_millis(300)).await;
            if let Some(r) = refresh {
                self.click(r).await?;
            }
        }
    }

    /// Runs `script` (a function body) in the page and answers what it returns.
    ///
    /// # Errors
    /// The script throws.
    pub async fn run(&self, script: &str) -> anyhow::Result<Value> {
        self.call(
            reqwest::Method::POST,
            "/execute/sync",
            json!({"script": script, "args": []}),
        )
        .await
    }

    /// A PNG of the window.
    ///
    /// # Errors
    /// The browser cannot take one.
    pub async fn screenshot(&self) -> anyhow::Result<Vec<u8>> {
        use base64::Engine as _;
        let b64 = self
            .call(reqwest::Method::GET, "/screenshot", json!(null))
            .await?;
        Ok(base64::engine::general_purpose::STANDARD.decode(b64.as_str().unwrap_or_default())?)
    }

    /// Ends the session (closing Chromium) and stops ChromeDriver.
    pub async fn quit(mut self) {
        let _ = self
            .http
            .delete(&self.session)
            .timeout(Duration::from_secs(10))
            .send()
            .await;
        let _ = self.driver.kill().await;
    }
}
