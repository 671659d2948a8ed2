//! Operator commands: `settle txn list|show|retry|stop`, `settle outbox list|redrive|discard` and
//! `settle topic list|subscribe|unsubscribe|delete`.
//!
//! They talk to a running coordinator's HTTP API (`--server`, `SETTLE_SERVER`) with the
//! operator token (`--token`, `SETTLE_TOKEN`) when one is configured, print aligned tables
//! for people or the API's JSON with `--json`, and show a progress line on stderr while a
//! bulk action runs.

use std::fmt::Write as _;
use std::io::Write as _;

use anyhow::{bail, Context};
use clap::{Args, Subcommand};
use serde_json::{json, Value};

/// Where the coordinator is, and how to answer.
#[derive(Args)]
pub struct Remote {
    /// The coordinator's base URL.
    #[arg(
        long,
        global = true,
        env = "SETTLE_SERVER",
        default_value = "http://127.0.0.1:36789"
    )]
    pub server: String,
    /// Bearer token (the operator scope's, when tokens are configured).
    #[arg(long, global = true, env = "SETTLE_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// Print the API's JSON instead of a table.
    #[arg(long, global = true)]
    pub json: bool,
}

/// `settle txn ...`.
#[derive(Subcommand)]
pub enum TxnCommand {
    /// Transactions, newest first.
    List {
        /// Only this status: prepared, submitted, aborting, succeed, failed.
        #[arg(long)]
        status: Option<String>,
        /// Only this type: tcc, msg, saga, xa.
        #[arg(long = "type")]
        trans_type: Option<String>,
        /// Most rows.
        #[arg(long, default_value_t = 50)]
        limit: i64,
    },
    /// A transaction, its branches and its last error.
    Show {
        /// Its gid.
        gid: String,
    },
    /// Makes waiting retries due now.
    Retry {
        /// The transactions; none with `--all`.
        gids: Vec<String>,
        /// Every unfinished transaction.
        #[arg(long, conflicts_with = "gids")]
        all: bool,
    },
    /// Ends unfinished transactions as failed (pending branches are not called again).
    Stop {
        /// The transactions.
        #[arg(required = true)]
        gids: Vec<String>,
        /// Do it without asking.
        #[arg(long)]
        yes: bool,
    },
}

/// `settle outbox ...`.
#[derive(Subcommand)]
pub enum OutboxCommand {
    /// Outbox messages, newest first.
    List {
        /// Only this status: held, pending, sent, dropped, dead.
        #[arg(long)]
        status: Option<String>,
        /// Most rows.
        #[arg(long, default_value_t = 50)]
        limit: i64,
    },
    /// Sends dead-lettered messages again.
    Redrive {
        /// The transactions whose dead letters to send again.
        #[arg(required = true)]
        gids: Vec<String>,
        /// Only this step.
        #[arg(long)]
        branch: Option<String>,
    },
    /// Gives up dead-lettered messages for good (they are never sent; retention may then
    /// delete their transactions).
    Discard {
        /// The transactions whose dead letters to give up.
        #[arg(required = true)]
        gids: Vec<String>,
        /// Only this step.
        #[arg(long)]
        branch: Option<String>,
    },
}

/// `settle topic ...`.
#[derive(Subcommand)]
pub enum TopicCommand {
    /// Topics and their subscribers.
    List,
    /// Subscribes a URL to a topic (creating the topic): a msg step to `topic://TOPIC` is
    /// posted there.
    Subscribe {
        /// The topic.
        topic: String,
        /// The subscriber's URL.
        url: String,
        /// What the subscriber is.
        #[arg(long, default_value = "")]
        remark: String,
    },
    /// Removes a subscriber from a topic.
    Unsubscribe {
        /// The topic.
        topic: String,
        /// The subscriber's URL.
        url: String,
    },
    /// Deletes a topic and its subscribers.
    Delete {
        /// The topic.
        topic: String,
    },
}

struct Api {
    base: String,
    token: Option<String>,
    http: reqwest::Client,
}

impl Api {
    fn new(remote: &Remote) -> anyhow::Result<Self> {
        Ok(Self {
            base: remote.server.trim_end_matches('/').to_owned(),
            token: remote.token.clone().filter(|t| !t.is_empty()),
            http: reqwest::Client::builder()
                .timeout(std::time::Duration::from_secs(30))
                .build()?,
        })
    }

    async fn send(&self, request: reqwest::RequestBuilder, what: &str) -> anyhow::Result<Value> {
        let request = match &self.token {
            Some(t) => request.bearer_auth(t),
            None => request,
        };
        let response = request
            .send()
            .await
            .with_context(|| format!("cannot reach the coordinator at {} ({what})", self.base))?;
        let status = response.status();
        let text = response.text().await.unwrap_or_default();
        let body: Value = serde_json::from_str(&text).unwrap_or(Value::String(text));
        if !status.is_success() {
            let message = body["message"]
                .as_str()
                .map_or_else(|| body.to_string(), str::to_owned);
            bail!("{what}: HTTP {}: {message}", status.as_u16());
        }
        Ok(body)
    }

    async fn get(&self, path: &str, query: &[(&str, String)], what: &str) -> anyhow::Result<Value> {
        let request = self.http.get(format!("{}{path}", self.base)).query(query);
        self.send(request, what).await
    }

    async fn post(&self, path: &str, body: &Value, what: &str) -> anyhow::Result<Value> {
        let request = self.http.post(format!("{}{path}", self.base)).json(body);
        self.send(request, what).await
    }
}

const DTM: &str = settle_protocol::API_PREFIX;

/// Aligned columns, each as wide as its widest cell (cut at 60 characters).
pub fn table(headers: &[&str], rows: &[Vec<String>]) -> String {
    let cut = |s: &str| -> String {
        let one_line = s.replace(['\n', '\r', '\t'], " ");
        if one_line.chars().count() > 60 {
            format!("{}…", one_line.chars().take(59).collect::<String>())
        } else {
            one_line
        }
    };
    let rows: Vec<Vec<String>> = rows
        .iter()
        .map(|r| r.iter().map(|c| cut(c)).collect())
        .collect();
    let mut widths: Vec<usize> = headers.iter().map(|h| h.chars().count()).collect();
    for row in &rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    let mut line = |cells: &mut dyn Iterator<Item = &str>| {
        let mut l = String::new();
        for (cell, w) in cells.zip(&widths) {
            let _ = write!(l, "{cell:<w$}  ");
        }
        out.push_str(l.trim_end());
        out.push('\n');
    };
    line(&mut headers.iter().copied());
    for row in &rows {
        line(&mut row.iter().map(String::as_str));
    }
    out
}

/// One row per element of the array `items`, with the fields `keys`.
fn rows_of(items: &Value, keys: &[&str]) -> Vec<Vec<String>> {
    items
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or_default()
        .iter()
        .map(|item| keys.iter().map(|k| text(&item[*k])).collect())
        .collect()
}

fn text(v: &Value) -> String {
    match v {
        Value::Null => String::new(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

fn progress(verb: &str, done: usize, total: usize) {
    if total > 1 {
        eprint!("\r{verb} {done}/{total}");
        if done == total {
            eprintln!();
        }
        let _ = std::io::stderr().flush();
    }
}

/// Runs `settle txn ...`.
///
/// # Errors
/// The coordinator cannot be reached or refuses.
pub async fn txn(remote: &Remote, command: TxnCommand) -> anyhow::Result<()> {
    let api = Api::new(remote)?;
    match command {
        TxnCommand::List {
            status,
            trans_type,
            limit,
        } => {
            let mut query = vec![("limit", limit.to_string())];
            if let Some(s) = status {
                query.push(("status", s));
            }
            if let Some(t) = trans_type {
                query.push(("trans_type", t));
            }
            let page = api.get(&format!("{DTM}/all"), &query, "all").await?;
            if remote.json {
                println!("{page}");
                return Ok(());
            }
            let rows = rows_of(
                &page["transactions"],
                &[
                    "gid",
                    "trans_type",
                    "status",
                    "create_time",
                    "retry_count",
                    "next_cron_time",
                    "last_error",
                ],
            );
            print!(
                "{}",
                table(
                    &[
                        "GID",
                        "TYPE",
                        "STATUS",
                        "CREATED",
                        "RETRIES",
                        "NEXT",
                        "LAST ERROR"
                    ],
                    &rows
                )
            );
        }
        TxnCommand::Show { gid } => {
            let q = api
                .get(&format!("{DTM}/query"), &[("gid", gid.clone())], "query")
                .await?;
            if remote.json {
                println!("{q}");
                return Ok(());
            }
            let t = &q["transaction"];
            if t.is_null() {
                bail!("no transaction '{gid}'");
            }
            let fields = [
                "gid",
                "trans_type",
                "status",
                "create_time",
                "update_time",
                "finish_time",
                "rollback_time",
                "next_cron_time",
                "retry_count",
                "owner",
                "rollback_reason",
                "last_error",
            ];
            let rows: Vec<Vec<String>> = fields
                .iter()
                .filter(|k| !text(&t[**k]).is_empty())
                .map(|k| vec![(*k).to_owned(), text(&t[*k])])
                .collect();
            print!("{}", table(&["FIELD", "VALUE"], &rows));
            let branches = rows_of(
                &q["branches"],
                &["branch_id", "op", "status", "url", "update_time"],
            );
            println!();
            print!(
                "{}",
                table(&["BRANCH", "OP", "STATUS", "URL", "UPDATED"], &branches)
            );
        }
        TxnCommand::Retry { gids, all } => {
            if all {
                let r = api
                    .get(&format!("{DTM}/resetCronTime"), &[], "resetCronTime")
                    .await?;
                println!(
                    "{}",
                    if remote.json {
                        r.to_string()
                    } else {
                        "every unfinished transaction is due now".to_owned()
                    }
                );
                return Ok(());
            }
            if gids.is_empty() {
                bail!("name the transactions to retry, or use --all");
            }
            for (i, gid) in gids.iter().enumerate() {
                api.get(
                    &format!("{DTM}/resetCronTime"),
                    &[("gid", gid.clone())],
                    &format!("retry {gid}"),
                )
                .await?;
                progress("retried", i + 1, gids.len());
            }
            println!("{} transaction(s) due now", gids.len());
        }
        TxnCommand::Stop { gids, yes } => {
            if !yes {
                eprint!(
                    "force stop {} transaction(s)? They end as failed. [y/N] ",
                    gids.len()
                );
                let _ = std::io::stderr().flush();
                let mut answer = String::new();
                std::io::stdin().read_line(&mut answer)?;
                if !matches!(answer.trim(), "y" | "Y" | "yes") {
                    bail!("not stopped");
                }
            }
            for (i, gid) in gids.iter().enumerate() {
                api.post(
                    &format!("{DTM}/forceStop"),
                    &json!({"gid": gid}),
                    &format!("stop {gid}"),
                )
                .await?;
                progress("stopped", i + 1, gids.len());
            }
            println!("{} transaction(s) stopped", gids.len());
        }
    }
    Ok(())
}

/// Runs `settle outbox ...`.
///
/// # Errors
/// The coordinator cannot be reached or refuses.
pub async fn outbox(remote: &Remote, command: OutboxCommand) -> anyhow::Result<()> {
    let api = Api::new(remote)?;
    match command {
        OutboxCommand::List { status, limit } => {
            let mut query = vec![("limit", limit.to_string())];
            if let Some(s) = status {
                query.push(("status", s));
            }
            let page = api.get("/api/admin/outbox", &query, "outbox").await?;
            if remote.json {
                println!("{page}");
                return Ok(());
            }
            let rows = rows_of(
                &page["messages"],
                &[
                    "gid",
                    "branch_id",
                    "topic",
                    "sharding_key",
                    "seq",
                    "status",
                    "attempts",
                    "refusals",
                    "last_error",
                ],
            );
            print!(
                "{}",
                table(
                    &[
                        "GID",
                        "STEP",
                        "TOPIC",
                        "KEY",
                        "SEQ",
                        "STATUS",
                        "ATTEMPTS",
                        "REFUSALS",
                        "LAST ERROR"
                    ],
                    &rows
                )
            );
        }
        OutboxCommand::Redrive { gids, branch } => {
            let total =
                on_dead_letters(&api, &gids, branch.as_deref(), "redrive", "redriven").await?;
            println!("{total} message(s) sent again");
        }
        OutboxCommand::Discard { gids, branch } => {
            let total =
                on_dead_letters(&api, &gids, branch.as_deref(), "discard", "discarded").await?;
            println!("{total} message(s) given up for good");
        }
    }
    Ok(())
}

/// Posts `gids` to `/api/admin/{verb}`, one by one with progress; the messages `field` counts.
async fn on_dead_letters(
    api: &Api,
    gids: &[String],
    branch: Option<&str>,
    verb: &str,
    field: &str,
) -> anyhow::Result<u64> {
    let mut total = 0;
    for (i, gid) in gids.iter().enumerate() {
        let mut body = json!({"gid": gid});
        if let Some(b) = branch {
            body["branch_id"] = json!(b);
        }
        let r = api
            .post(
                &format!("/api/admin/{verb}"),
                &body,
                &format!("{verb} {gid}"),
            )
            .await?;
        total += r[field].as_u64().unwrap_or(0);
        progress(field, i + 1, gids.len());
    }
    Ok(total)
}

/// Runs `settle topic ...`.
///
/// # Errors
/// The coordinator cannot be reached or refuses (with DTM's text: `this url exists`, `no
/// such a topic`, ...).
pub async fn topic(remote: &Remote, command: TopicCommand) -> anyhow::Result<()> {
    let api = Api::new(remote)?;
    let done = |what: String| {
        if remote.json {
            println!("{}", json!({"dtm_result": "SUCCESS"}));
        } else {
            println!("{what}");
        }
    };
    match command {
        TopicCommand::List => {
            let page = api
                .get(
                    &format!("{DTM}/scanKV"),
                    &[("cat", "topics".to_owned()), ("limit", "1000".to_owned())],
                    "scanKV",
                )
                .await?;
            if remote.json {
                println!("{page}");
                return Ok(());
            }
            let mut rows = Vec::new();
            for kv in page["kv"].as_array().map(Vec::as_slice).unwrap_or_default() {
                let subscribers: Value =
                    serde_json::from_str(kv["v"].as_str().unwrap_or("[]")).unwrap_or_default();
                for s in subscribers
                    .as_array()
                    .map(Vec::as_slice)
                    .unwrap_or_default()
                {
                    rows.push(vec![text(&kv["k"]), text(&s["url"]), text(&s["remark"])]);
                }
            }
            rows.sort();
            print!("{}", table(&["TOPIC", "SUBSCRIBER", "REMARK"], &rows));
        }
        TopicCommand::Subscribe { topic, url, remark } => {
            let query = [
                ("topic", topic.clone()),
                ("url", url.clone()),
                ("remark", remark),
            ];
            api.get(&format!("{DTM}/subscribe"), &query, "subscribe")
                .await?;
            done(format!("{url} subscribes to {topic}"));
        }
        TopicCommand::Unsubscribe { topic, url } => {
            let query = [("topic", topic.clone()), ("url", url.clone())];
            api.get(&format!("{DTM}/unsubscribe"), &query, "unsubscribe")
                .await?;
            done(format!("{url} no longer subscribes to {topic}"));
        }
        TopicCommand::Delete { topic } => {
            let url = format!("{}{DTM}/topic/{topic}", api.base);
            api.send(api.http.delete(url), "delete topic").await?;
            done(format!("topic {topic} deleted"));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tables_align_and_cut_long_cells() {
        let rows = vec![
            vec!["g1".to_owned(), "succeed".to_owned()],
            vec!["a-longer-gid".to_owned(), "x".repeat(80)],
        ];
        let t = table(&["GID", "STATUS"], &rows);
        let lines: Vec<&str> = t.lines().collect();
        assert_eq!(lines[0], "GID           STATUS");
        assert_eq!(lines[1], "g1            succeed");
        assert!(
            lines[2].starts_with("a-longer-gid  xxx") && lines[2].ends_with('…'),
            "{t}"
        );
        assert_eq!(lines[2].chars().count(), 14 + 60);
    }
}
