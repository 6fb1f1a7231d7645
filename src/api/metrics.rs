//! `GET /metrics`: the whole fleet in the Prometheus text format. Queue numbers
//! and workers are read as `GET /queues` and `GET /workers` read them; counters and
//! histograms are the hashes the workers add to (see [`crate::metrics`]).
//!
//! Invariants:
//! - Nothing is kept between scrapes: any `serve` answers the same, and a restart
//!   of `serve` loses nothing (the counts live in Redis).
//! - Every series is bounded: per queue, per status and reason, per verdict, and
//!   one per live worker (a worker whose lease key expired is no longer shown).
//! - A histogram's buckets are written cumulative, ending with `+Inf`, with
//!   `_sum` and `_count`, as the format asks, for every label set that has one.

use super::error::ApiResult;
use super::state::AppState;
use crate::admin;
use crate::metrics::{self, Histogram, Text, COUNTERS, HISTOGRAMS};
use axum::extract::State;
use axum::http::header;
use axum::response::{IntoResponse, Response};
use deadpool_redis::redis;
use std::collections::{BTreeMap, HashMap};

/// `GET /metrics`.
pub async fn get(State(app): State<AppState>) -> ApiResult<Response> {
    let mut conn = app.conn().await?;
    let queues = admin::queues::stats(&mut conn, &app.keys, &app.settings).await?;
    let workers = admin::workers::list(&mut conn, &app.keys).await?;
    let mut pipe = redis::pipe();
    for name in COUNTERS
        .iter()
        .map(|c| c.name)
        .chain(HISTOGRAMS.iter().map(|h| h.name))
    {
        pipe.hgetall(app.keys.metric(name));
    }
    let stored: Vec<HashMap<String, i64>> = pipe.query_async(&mut *conn).await?;

    let mut t = Text::default();
    queue_gauges(&mut t, &queues);
    worker_gauges(&mut t, &workers);
    let (counters, histograms) = stored.split_at(COUNTERS.len());
    for (c, fields) in COUNTERS.iter().zip(counters) {
        t.family(c.name, "counter", c.help);
        for (field, value) in sorted(fields) {
            let (labels, _) = metrics::parse_field(field);
            t.sample(c.name, &labels, *value as f64);
        }
    }
    for (h, fields) in HISTOGRAMS.iter().zip(histograms) {
        histogram(&mut t, h, fields);
    }
    Ok(([(header::CONTENT_TYPE, metrics::CONTENT_TYPE)], t.finish()).into_response())
}

fn sorted(fields: &HashMap<String, i64>) -> BTreeMap<&String, &i64> {
    fields.iter().collect()
}

fn queue_gauges(t: &mut Text, queues: &[admin::queues::QueueStats]) {
    type Get = fn(&admin::queues::QueueStats) -> f64;
    let gauges: [(&str, &str, Get); 7] = [
        (
            "queue_waiting",
            "Jobs in the queue's stream that no worker has claimed yet.",
            |q| q.waiting as f64,
        ),
        (
            "queue_inbox",
            "Jobs pushed to the queue's inbox list, not yet moved into its stream.",
            |q| q.inbox as f64,
        ),
        (
            "queue_running",
            "Jobs claimed from the queue and not yet finished.",
            |q| q.running as f64,
        ),
        (
            "queue_scheduled",
            "Jobs of the queue waiting for a later time (a delay or a retry).",
            |q| q.scheduled as f64,
        ),
        ("queue_dead", "Entries in the queue's dead stream.", |q| {
            q.dead as f64
        }),
        (
            "queue_paused",
            "1 while the queue is paused (workers claim nothing from it).",
            |q| if q.paused { 1.0 } else { 0.0 },
        ),
        ("queue_workers", "Live workers that serve the queue.", |q| {
            q.workers as f64
        }),
    ];
    for (name, help, get) in gauges {
        t.family(name, "gauge", help);
        for q in queues {
            t.sample(name, &[("queue", &q.queue)], get(q));
        }
    }
    t.family(
        "queue_oldest_waiting_seconds",
        "gauge",
        "Age of the oldest job no worker has claimed yet (absent when none waits).",
    );
    for q in queues {
        if let Some(age) = q.oldest_waiting_seconds {
            t.sample("queue_oldest_waiting_seconds", &[("queue", &q.queue)], age);
        }
    }
}

fn worker_gauges(t: &mut Text, workers: &[serde_json::Value]) {
    let alive: Vec<&serde_json::Value> = workers.iter().filter(|w| w["alive"] == true).collect();
    t.gauge(
        "workers_alive",
        "Worker processes whose lease key is alive.",
        alive.len() as f64,
    );
    t.family(
        "worker_docker_reachable",
        "gauge",
        "1 while a live worker's last heartbeat said the Docker engine answers.",
    );
    for w in &alive {
        let labels = [
            ("worker", w["worker"].as_str().unwrap_or_default()),
            ("consumer", w["consumer"].as_str().unwrap_or_default()),
        ];
        let ok = if w["docker"] == "ok" { 1.0 } else { 0.0 };
        t.sample("worker_docker_reachable", &labels, ok);
    }
    t.family(
        "worker_running_jobs",
        "gauge",
        "Jobs a live worker ran at its last heartbeat.",
    );
    for w in &alive {
        let labels = [
            ("worker", w["worker"].as_str().unwrap_or_default()),
            ("consumer", w["consumer"].as_str().unwrap_or_default()),
        ];
        let running = w["running"].as_array().map_or(0, Vec::len);
        t.sample("worker_running_jobs", &labels, running as f64);
    }
}

/// One histogram family from its stored fields: per label set, its buckets made
/// cumulative in bound order, `+Inf`, `_sum` (seconds) and `_count`.
fn histogram(t: &mut Text, h: &Histogram, fields: &HashMap<String, i64>) {
    #[derive(Default)]
    struct Series {
        buckets: HashMap<String, i64>,
        sum_ms: i64,
    }
    let mut series: BTreeMap<String, Series> = BTreeMap::new();
    for (field, value) in fields {
        let Some((labels, bucket)) = field.split_once('|') else {
            continue;
        };
        let s = series.entry(labels.to_string()).or_default();
        if bucket == "sum_ms" {
            s.sum_ms = *value;
        } else {
            s.buckets.insert(bucket.to_string(), *value);
        }
    }
    t.family(h.name, "histogram", h.help);
    let (bucket, sum, count) = (
        format!("{}_bucket", h.name),
        format!("{}_sum", h.name),
        format!("{}_count", h.name),
    );
    for (labels, s) in &series {
        let (pairs, _) = metrics::parse_field(labels);
        let mut total = 0;
        let bounds = h.bounds.iter().map(|b| b.to_string());
        for le in bounds.chain(std::iter::once("+Inf".to_string())) {
            total += s.buckets.get(&le).copied().unwrap_or(0);
            let mut with_le = pairs.clone();
            with_le.push(("le", &le));
            t.sample(&bucket, &with_le, total as f64);
        }
        t.sample(&sum, &pairs, s.sum_ms as f64 / 1000.0);
        t.sample(&count, &pairs, total as f64);
    }
}
