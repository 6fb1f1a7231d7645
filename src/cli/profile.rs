//! `dockhand profile add|list|show|rm|build`: the profiles in `dockhand:profiles`,
//! and building a profile's image on every live worker host.

use super::{connect, CliResult, Failure};
use crate::config::Settings;
use crate::profile;
use crate::queue::Keys;
use crate::store::StoreError;
use deadpool_redis::redis::{
    self,
    streams::{StreamMaxlen, StreamReadOptions, StreamReadReply},
    AsyncCommands,
};
use serde_json::Value;
use std::collections::BTreeMap;
use std::io::Read;
use std::time::{Duration, Instant};

/// Broadcast requests kept (approximately) for whoever looks at the stream.
const BROADCAST_MAX_LEN: usize = 1000;

#[derive(Debug, clap::Subcommand)]
pub enum Action {
    /// Register or replace a profile: a JSON spec file (TOML when it ends in .toml), or `-` for JSON on stdin.
    Add {
        /// The profile's name: [A-Za-z0-9_.-], 1 to 64 characters.
        name: String,
        /// The spec file (JSON, or TOML when it ends in .toml), or `-` for JSON on stdin.
        file: String,
    },
    /// List the registered profiles.
    List {
        /// One JSON object per profile and line: its name and spec (secrets masked).
        #[arg(long)]
        json: bool,
    },
    /// Print a profile's spec as JSON.
    Show {
        /// The profile's name.
        name: String,
    },
    /// Remove a profile.
    Rm {
        /// The profile's name.
        name: String,
    },
    /// Build the profile's image on every live worker host; prints each host's answer.
    Build {
        /// The profile's name.
        name: String,
        /// Seconds to wait for every worker's answer.
        #[arg(long, default_value_t = 300)]
        timeout: u64,
    },
}

pub async fn run(settings: &Settings, action: Action) -> CliResult {
    let keys = Keys::new(&settings.redis.prefix);
    match action {
        Action::Add { name, file } => {
            check_name(&name)?;
            let spec = read_spec(&file)?;
            profile::check(&spec)
                .map_err(|e| Failure::usage(format!("{file} is not a valid profile: {e}")))?;
            let (_store, mut conn) = connect(settings).await?;
            profile::put(&mut conn, &keys, &name, &spec).await?;
            outln!("profile {name} registered");
            Ok(())
        }
        Action::List { json } => {
            let (_store, mut conn) = connect(settings).await?;
            let all = profile::list(&mut conn, &keys).await?;
            if !json {
                outln!("{:<32} SOURCE", "NAME");
            }
            for (name, spec) in all {
                if json {
                    outln!(
                        "{}",
                        serde_json::json!({"name": name, "spec": crate::profile::shown(&spec)})
                    );
                } else {
                    outln!("{name:<32} {}", source_of(&spec));
                }
            }
            Ok(())
        }
        Action::Show { name } => {
            let (_store, mut conn) = connect(settings).await?;
            let spec = registered(&mut conn, &keys, &name).await?;
            let pretty = crate::profile::shown(&spec)
                .and_then(|v| serde_json::to_string_pretty(&v).ok())
                .unwrap_or_else(|| "(the stored profile is not valid JSON)".to_string());
            outln!("{pretty}");
            Ok(())
        }
        Action::Rm { name } => {
            let (_store, mut conn) = connect(settings).await?;
            if !profile::remove(&mut conn, &keys, &name).await? {
                return Err(Failure::failed(format!(
                    "no profile named {name:?} (`dockhand profile list` shows those registered)"
                )));
            }
            outln!("profile {name} removed");
            Ok(())
        }
        Action::Build { name, timeout } => build(settings, &keys, &name, timeout).await,
    }
}

fn check_name(name: &str) -> Result<(), Failure> {
    if profile::is_valid_name(name) {
        Ok(())
    } else {
        Err(Failure::usage(format!(
            "{name:?} is not a profile name ([A-Za-z0-9_.-], 1 to 64)"
        )))
    }
}

fn read_spec(file: &str) -> Result<Value, Failure> {
    let text = if file == "-" {
        let mut s = String::new();
        std::io::stdin()
            .read_to_string(&mut s)
            .map_err(|e| Failure::usage(format!("cannot read stdin: {e}")))?;
        s
    } else {
        std::fs::read_to_string(file)
            .map_err(|e| Failure::usage(format!("cannot read {file}: {e}")))?
    };
    if file.ends_with(".toml") {
        profile::from_toml(&text).map_err(|e| Failure::usage(format!("{file}: {e}")))
    } else {
        serde_json::from_str(&text)
            .map_err(|e| Failure::usage(format!("{file} is not valid JSON: {e}")))
    }
}

async fn registered(
    conn: &mut crate::store::Conn,
    keys: &Keys,
    name: &str,
) -> Result<String, Failure> {
    profile::get(conn, keys, name)
        .await?
        .map(|bytes| String::from_utf8_lossy(&bytes).into_owned())
        .ok_or_else(|| {
            Failure::failed(format!(
                "no profile named {name:?} (`dockhand profile list` shows those registered)"
            ))
        })
}

/// `image busybox`, `git https://h/x (branch main)`, for the list.
fn source_of(spec: &str) -> String {
    let v: Value = serde_json::from_str(spec).unwrap_or_default();
    if let Some(image) = v["image"].as_str() {
        return format!("image {image}");
    }
    let git = &v["git"];
    let Some(url) = git["url"].as_str() else {
        return "-".to_string();
    };
    let pinned = ["branch", "tag", "commit"]
        .iter()
        .find_map(|k| git[*k].as_str().map(|r| format!(" ({k} {r})")))
        .unwrap_or_default();
    format!("git {url}{pinned}")
}

/// Asks every worker process through the broadcast stream, then prints answers
/// as they come until every worker alive now has answered or `timeout` passes.
async fn build(settings: &Settings, keys: &Keys, name: &str, timeout: u64) -> CliResult {
    let (store, mut conn) = connect(settings).await?;
    registered(&mut conn, keys, name).await?;
    let mut waiting: BTreeMap<String, String> = BTreeMap::new();
    let workers: BTreeMap<String, String> = conn
        .hgetall(keys.workers())
        .await
        .map_err(StoreError::from)?;
    for (consumer, info) in workers {
        let alive: bool = conn
            .exists(keys.alive(&consumer))
            .await
            .map_err(StoreError::from)?;
        if alive {
            let v: Value = serde_json::from_str(&info).unwrap_or_default();
            let worker = v["worker"].as_str().unwrap_or(&consumer).to_string();
            waiting.insert(consumer, worker);
        }
    }
    if waiting.is_empty() {
        return Err(Failure::failed(
            "no live worker to build on: start one (`dockhand worker`), then build again",
        ));
    }
    let id = ulid::Ulid::new().to_string().to_ascii_lowercase();
    let reply = keys.broadcast_reply(&id);
    let _: String = conn
        .xadd_maxlen(
            keys.broadcast(),
            StreamMaxlen::Approx(BROADCAST_MAX_LEN),
            "*",
            &[
                ("kind", "build"),
                ("profile", name),
                ("reply", reply.as_str()),
                ("id", id.as_str()),
            ],
        )
        .await
        .map_err(StoreError::from)?;
    outln!(
        "building profile {name} on {} worker(s); waiting up to {timeout} s",
        waiting.len()
    );

    let deadline = Instant::now() + Duration::from_secs(timeout);
    let mut last = "0".to_string();
    let mut failed = 0;
    while !waiting.is_empty() {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            break;
        }
        let block = left.min(Duration::from_millis(settings.worker.block_ms.max(1)));
        let opts = StreamReadOptions::default()
            .count(100)
            .block(block.as_millis().max(1) as usize);
        let mut blocking = store.blocking_conn().await?;
        let read: Option<StreamReadReply> = blocking
            .xread_options(&[&reply], &[&last], &opts)
            .await
            .map_err(StoreError::from)?;
        for entry in read
            .map(|r| r.keys)
            .unwrap_or_default()
            .into_iter()
            .flat_map(|k| k.ids)
        {
            last = entry.id.clone();
            let field = |k: &str| entry.get::<String>(k).unwrap_or_default();
            let (consumer, worker, status) = (field("consumer"), field("worker"), field("status"));
            waiting.remove(&consumer);
            match status.as_str() {
                "failed" => {
                    failed += 1;
                    outln!("{worker:<24} failed  {}", field("error"));
                }
                _ => outln!("{worker:<24} {status:<7} {}", field("image")),
            }
        }
    }
    let _: Result<i64, redis::RedisError> = conn.del(&reply).await;
    for worker in waiting.values() {
        outln!("{worker:<24} no answer within {timeout} s");
    }
    match (failed, waiting.len()) {
        (0, 0) => Ok(()),
        (f, w) => Err(Failure::failed(format!(
            "profile {name}: {f} worker(s) failed, {w} did not answer"
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_list_shows_each_profiles_source() {
        assert_eq!(source_of(r#"{"image":"busybox"}"#), "image busybox");
        assert_eq!(
            source_of(r#"{"git":{"url":"https://h/x","tag":"v1"}}"#),
            "git https://h/x (tag v1)"
        );
        assert_eq!(source_of(r#"{"git":{"url":"/r"}}"#), "git /r");
        assert_eq!(source_of(r#"{"env":{}}"#), "-");
    }
}
