//! One stream entry claimed by a worker: which queue and lane it is in, its id,
//! and what the producer sent.
//!
//! Invariant: an entry is read as it was written; nothing here fails on bad
//! input (a missing or non-string `job` field is kept for the refusal to name).

use super::Keys;
use deadpool_redis::redis;

/// One stream entry claimed by this worker.
#[derive(Debug, Clone)]
pub struct Entry {
    pub queue: String,
    /// Its priority: which of the queue's streams it is in (see [`super::lanes`]).
    pub lane: i64,
    pub id: String,
    /// The `job` field, raw; `None` when the producer left it out.
    pub job: Option<Vec<u8>>,
    /// Set on entries Dockhand itself adds to run a job again (see [`super::requeue`]).
    pub token: String,
    /// When there is no `job` field: every field the producer sent, as a JSON
    /// object, so that the refused entry keeps what was sent.
    pub fields: Option<Vec<u8>>,
}

impl Entry {
    /// The stream this entry is in.
    pub fn stream(&self, keys: &Keys) -> String {
        keys.lane(&self.queue, self.lane)
    }

    /// Builds an entry from a stream reply's id and fields.
    pub(crate) fn from_stream(queue: &str, lane: i64, id: redis::streams::StreamId) -> Entry {
        // A `job` field that is not a string reads as empty, and so as invalid JSON.
        let job = id
            .map
            .get("job")
            .map(|v| redis::from_redis_value::<Vec<u8>>(v.clone()).unwrap_or_default());
        let token = id.get::<String>("token").unwrap_or_default();
        let fields = job.is_none().then(|| {
            let all: serde_json::Map<String, serde_json::Value> = id
                .map
                .iter()
                .map(|(k, v)| {
                    let bytes = redis::from_redis_value::<Vec<u8>>(v.clone()).unwrap_or_default();
                    (
                        k.clone(),
                        String::from_utf8_lossy(&bytes).into_owned().into(),
                    )
                })
                .collect();
            serde_json::Value::Object(all).to_string().into_bytes()
        });
        Entry {
            queue: queue.to_string(),
            lane,
            id: id.id,
            job,
            token,
            fields,
        }
    }
}
