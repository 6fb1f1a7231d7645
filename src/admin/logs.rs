//! Following a job's log: its stored lines, then its live ones, until it ends.
//! `dockhand logs --follow` prints what [`Follower`] yields; `GET /jobs/{id}/logs`
//! sends it as Server-Sent Events.
//!
//! Invariants:
//! - A stored entry or a published message may hold several lines (`count`,
//!   their texts joined by `\n`); they are yielded one by one, each with its
//!   own `seq`, as if each had been its own entry.
//! - Every `seq` is yielded once, in increasing order, with no gap: the writer
//!   numbers a job's lines without gaps and stores each line (`XADD`) just before
//!   it publishes it, in the same Lua call (atomic), so whatever is published is
//!   already stored.
//! - Nothing is missed between the two paths: we subscribe before reading the
//!   stored stream, so every line is either stored before the read or published
//!   after the subscription. A live line past the next expected `seq` (lines stored
//!   before we subscribed, or a message lost) sends us back to the stored stream,
//!   which has it; a live line at or below the last `seq` yielded is dropped.
//! - The end comes after the last line: the worker stores and publishes every line
//!   before it writes the job's terminal state (and its event), so once that state
//!   is seen the stored stream is read to its end and only then is the end yielded.
//! - A lost connection is an error whose `is_connection` holds; the follower keeps
//!   its place, so calling [`Follower::next`] again resubscribes and goes on after
//!   the last line yielded.

use crate::queue::Keys;
use crate::store::{Store, StoreError};
use deadpool_redis::redis::{self, AsyncCommands};
use futures_util::StreamExt;
use serde::{Deserialize, Serialize};
use std::collections::VecDeque;

/// Stored lines read per round trip: bounds what one read holds in memory.
const PAGE: usize = 1000;

/// One log line, as published on `<prefix>:logs:<id>` (and rebuilt from the
/// stored stream's fields, so both paths give the same JSON).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogMessage {
    pub job: String,
    pub seq: u64,
    pub stream: String,
    pub ts: String,
    pub line: String,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub partial: bool,
}

/// A stored entry or a published message as written: `count` lines from
/// `seq` (absent: one), their texts joined by `\n`.
#[derive(Deserialize)]
struct Entry {
    #[serde(flatten)]
    first: LogMessage,
    #[serde(default)]
    count: Option<u64>,
}

impl Entry {
    /// Its lines, one message each. A line holds no `\n` when the entry has
    /// more than one (the writer keeps any other line alone).
    fn lines(self) -> Vec<LogMessage> {
        let Entry { first, count } = self;
        if count.unwrap_or(1) <= 1 {
            return vec![first];
        }
        first
            .line
            .split('\n')
            .zip(first.seq..)
            .map(|(text, seq)| LogMessage {
                job: first.job.clone(),
                seq,
                stream: first.stream.clone(),
                ts: first.ts.clone(),
                line: text.to_string(),
                partial: false,
            })
            .collect()
    }
}

/// What following yields.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Item {
    Line(LogMessage),
    /// The job has neither a state nor a line yet: no worker has picked it up, and
    /// the follower waits for one. Yielded at most once, before any line.
    Waiting,
    /// The job ended with this status (`completed` or `aborted`); nothing follows.
    End {
        status: String,
    },
}

/// A job's log, followed. See the module's invariants.
pub struct Follower {
    store: Store,
    keys: Keys,
    id: String,
    queue: String,
    /// The last `seq` yielded (or to be skipped up to, when resuming).
    last_seq: u64,
    /// The stored stream's entry id after which nothing has been read yet.
    last_entry: Option<String>,
    /// Lines read and not yielded yet, in `seq` order.
    pending: VecDeque<LogMessage>,
    /// The stored stream may hold lines not read yet.
    behind: bool,
    /// The job has ended with this status: yield it once `behind` is false.
    ending: Option<String>,
    done: bool,
    live: Option<redis::aio::PubSub>,
    /// [`Item::Waiting`] is to be yielded next.
    announce_waiting: bool,
    /// Whether the follower has subscribed before (then it is not waiting anew).
    subscribed_once: bool,
}

impl Follower {
    /// Follows `job` from the line after `after` (0: from the first line).
    pub fn new(store: Store, keys: Keys, job: &crate::job::JobRef, after: u64) -> Follower {
        Follower {
            store,
            keys,
            id: job.id.clone(),
            queue: job.queue.clone(),
            last_seq: after,
            last_entry: None,
            pending: VecDeque::new(),
            behind: true,
            ending: None,
            done: false,
            live: None,
            announce_waiting: false,
            subscribed_once: false,
        }
    }

    /// The job followed.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// The `seq` of the last line yielded.
    pub fn last_seq(&self) -> u64 {
        self.last_seq
    }

    /// The next stored line, without subscribing: `None` once the stored stream
    /// has been read to its end (for a log printed once, not followed).
    pub async fn next_stored(&mut self) -> Result<Option<LogMessage>, StoreError> {
        loop {
            if let Some(line) = self.pending.pop_front() {
                return Ok(Some(line));
            }
            if !self.behind {
                return Ok(None);
            }
            self.read_stored_page().await?;
        }
    }

    /// The next line, or the job's end, or `None` after the end. On an error the
    /// follower keeps its place: calling again goes on from there.
    pub async fn next(&mut self) -> Result<Option<Item>, StoreError> {
        let result = self.step().await;
        if result.is_err() {
            // Resubscribe (and look at the stored stream again) on the next call.
            self.live = None;
            self.behind = true;
        }
        result
    }

    async fn step(&mut self) -> Result<Option<Item>, StoreError> {
        loop {
            if let Some(line) = self.pending.pop_front() {
                return Ok(Some(Item::Line(line)));
            }
            if self.done {
                return Ok(None);
            }
            if self.live.is_none() {
                self.subscribe().await?;
                continue;
            }
            if std::mem::take(&mut self.announce_waiting) {
                return Ok(Some(Item::Waiting));
            }
            if self.behind {
                self.read_stored_page().await?;
                continue;
            }
            if let Some(status) = self.ending.take() {
                self.done = true;
                return Ok(Some(Item::End { status }));
            }
            self.receive().await?;
        }
    }

    /// Subscribes (first), then looks at the job's state: an ended job is read to
    /// its end and not followed further.
    async fn subscribe(&mut self) -> Result<(), StoreError> {
        let mut pubsub = self.store.pubsub().await?;
        pubsub.subscribe(self.keys.log_channel(&self.id)).await?;
        pubsub.subscribe(self.keys.events_channel()).await?;
        let mut conn = self.store.conn().await?;
        let status: Option<String> = conn
            .hget(self.keys.job(&self.queue, &self.id), "status")
            .await?;
        if is_terminal(status.as_deref()) {
            self.ending = status.clone();
        }
        let stored: usize = conn.xlen(self.keys.log(&self.queue, &self.id)).await?;
        self.announce_waiting =
            !self.subscribed_once && status.is_none() && stored == 0 && self.last_seq == 0;
        self.subscribed_once = true;
        self.live = Some(pubsub);
        self.behind = true;
        Ok(())
    }

    /// Reads one page of stored lines after `last_entry` into `pending`, keeping
    /// those past `last_seq`; an empty page means the stored stream is caught up.
    async fn read_stored_page(&mut self) -> Result<(), StoreError> {
        let mut conn = self.store.conn().await?;
        let start = match &self.last_entry {
            None => "-".to_string(),
            Some(entry) => format!("({entry}"),
        };
        let page: redis::streams::StreamRangeReply = conn
            .xrange_count(self.keys.log(&self.queue, &self.id), start, "+", PAGE)
            .await?;
        if page.ids.is_empty() {
            self.behind = false;
            return Ok(());
        }
        for entry in &page.ids {
            self.last_entry = Some(entry.id.clone());
            let field = |name: &str| entry.get::<String>(name).unwrap_or_default();
            let stored = Entry {
                first: LogMessage {
                    job: self.id.clone(),
                    seq: field("seq").parse().unwrap_or(0),
                    stream: field("stream"),
                    ts: field("ts"),
                    line: field("line"),
                    partial: entry.get::<String>("partial").is_some(),
                },
                count: field("count").parse().ok(),
            };
            // The stored stream is the record: what it has past `last_seq` is
            // taken, even past a gap.
            for line in stored.lines() {
                if line.seq > self.last_seq {
                    self.last_seq = line.seq;
                    self.pending.push_back(line);
                }
            }
        }
        Ok(())
    }

    /// Waits for one message: a live line (queued, or a gap that sends us back to
    /// the stored stream) or this job's terminal event.
    async fn receive(&mut self) -> Result<(), StoreError> {
        let log_channel = self.keys.log_channel(&self.id);
        let live = self.live.as_mut().expect("subscribed before receiving");
        let Some(msg) = live.on_message().next().await else {
            return Err(StoreError::Redis(redis::RedisError::from(
                std::io::Error::new(
                    std::io::ErrorKind::ConnectionAborted,
                    "the pub/sub connection was closed",
                ),
            )));
        };
        let payload: String = msg.get_payload().unwrap_or_default();
        if msg.get_channel_name() == log_channel {
            let Ok(published) = serde_json::from_str::<Entry>(&payload) else {
                return Ok(());
            };
            for line in published.lines() {
                if line.seq == self.last_seq + 1 {
                    self.last_seq = line.seq;
                    self.pending.push_back(line);
                } else if line.seq > self.last_seq {
                    // Lines between are stored already (stored before published).
                    self.behind = true;
                    break;
                }
            }
            return Ok(());
        }
        let Ok(event) = serde_json::from_str::<serde_json::Value>(&payload) else {
            return Ok(());
        };
        let ends = matches!(
            event["type"].as_str(),
            Some("job.completed" | "job.aborted")
        );
        if ends
            && event["data"]["id"].as_str() == Some(self.id.as_str())
            && event["data"]["queue"].as_str() == Some(self.queue.as_str())
        {
            let status = event["data"]["status"].as_str().unwrap_or_else(|| {
                if event["type"] == "job.completed" {
                    "completed"
                } else {
                    "aborted"
                }
            });
            self.ending = Some(status.to_string());
            // Every line was stored before this event: read to the end, then stop.
            self.behind = true;
        }
        Ok(())
    }
}

/// Whether a job status is final (`completed` or `aborted`).
pub fn is_terminal(status: Option<&str>) -> bool {
    matches!(status, Some("completed" | "aborted"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_entry_of_several_lines_is_yielded_line_by_line() {
        let published =
            r#"{"job":"j","seq":7,"count":3,"stream":"stdout","ts":"t","line":"a\n\nc"}"#;
        let lines = serde_json::from_str::<Entry>(published).unwrap().lines();
        let got: Vec<(u64, &str)> = lines.iter().map(|l| (l.seq, l.line.as_str())).collect();
        assert_eq!(got, vec![(7, "a"), (8, ""), (9, "c")]);
        assert!(lines
            .iter()
            .all(|l| l.job == "j" && l.stream == "stdout" && !l.partial));
        // One line (no count): as it is, a `\n` in it included (a `system` line).
        let one = r#"{"job":"j","seq":2,"stream":"system","ts":"t","line":"x\ny"}"#;
        let lines = serde_json::from_str::<Entry>(one).unwrap().lines();
        assert_eq!(lines.len(), 1);
        assert_eq!(lines[0].line, "x\ny");
        let partial = r#"{"job":"j","seq":3,"stream":"stdout","ts":"t","line":"p","partial":true}"#;
        assert!(serde_json::from_str::<Entry>(partial).unwrap().lines()[0].partial);
    }
}
