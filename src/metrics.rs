//! Fleet-wide counters and histograms, kept in Redis: what workers add as jobs
//! finish, images are made ready and webhooks are sent, and what `dockhand serve`
//! reads back and renders in the Prometheus text format (see `api::metrics`).
//! Also the small text writer that both `serve` and a worker's own endpoint use.
//!
//! Invariants:
//! - One Redis hash per metric, `<prefix>:metrics:<name>`, that never expires:
//!   the numbers outlive any process, and any number of `serve` processes show
//!   the same ones.
//! - A field is the metric's label values, then for a histogram a `|` and a bucket
//!   bound (`0.5`, `+Inf`) or `sum_ms`: `queue=default,status=aborted,reason=timeout`,
//!   `queue=default|2.5`. Bucket fields count the observations that fell in that
//!   bucket alone (not cumulative: one `HINCRBY` per observation); the renderer
//!   adds them up. Sums are integer milliseconds, so increments never drift.
//! - Label values come from bounded sets only: queue names a worker serves, job
//!   statuses and reasons, image cache results, webhook verdicts. So every hash
//!   has a bounded number of fields. Label values here never contain `,` `=` or
//!   `|` (queue names are `[A-Za-z0-9_.-]`).
//! - A worker adds a job's counts (finished, duration, queue wait, and its queue's
//!   throughput bucket) up in memory, in a [`Tally`], once the state write that
//!   moved them has returned: never for a write that was refused, never twice for
//!   one write. The tally goes to Redis in one pipeline every
//!   `worker.metrics_flush_ms` and when the worker stops, so these cost a job no
//!   command of its own; a worker killed outright loses at most one interval.
//! - Other writers hand their [`Inc`]s to a write that goes to Redis anyway (a
//!   webhook attempt's record). Losing a metric never fails a job.

use crate::queue::Keys;
use deadpool_redis::redis;
use std::fmt::Write as _;

/// Every exposed name starts with this.
pub const NAMESPACE: &str = "dockhand";

/// A counter: its stored name (the exposed one is `dockhand_<name>`), help and label names.
#[derive(Debug, Clone, Copy)]
pub struct Counter {
    pub name: &'static str,
    pub help: &'static str,
    pub labels: &'static [&'static str],
}

/// A histogram: its stored name, help, label names and bucket upper bounds (seconds).
#[derive(Debug, Clone, Copy)]
pub struct Histogram {
    pub name: &'static str,
    pub help: &'static str,
    pub labels: &'static [&'static str],
    pub bounds: &'static [f64],
}

/// Jobs that reached a terminal state.
pub const JOBS_FINISHED: Counter = Counter {
    name: "jobs_finished_total",
    help: "Jobs that reached a terminal state, by queue, status and reason (empty for completed).",
    labels: &["queue", "status", "reason"],
};

/// Images of jobs from git made ready: found cached (`hit`) or built (`miss`).
pub const BUILD_CACHE: Counter = Counter {
    name: "build_cache_total",
    help: "Images of jobs from git made ready: found cached (hit) or built (miss).",
    labels: &["result"],
};

/// Webhook attempts by what came of them.
pub const WEBHOOK_ATTEMPTS: Counter = Counter {
    name: "webhook_attempts_total",
    help: "Webhook attempts by verdict: delivered, failed (to be tried again) or dead (no more tries).",
    labels: &["verdict"],
};

/// Seconds to minutes: containers that print a line, up to builds and long jobs.
const SECONDS: &[f64] = &[
    0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0, 3600.0,
];

pub const JOB_DURATION: Histogram = Histogram {
    name: "job_duration_seconds",
    help: "Time from a job's last start to its end (image build included), by queue.",
    labels: &["queue"],
    bounds: SECONDS,
};

pub const QUEUE_WAIT: Histogram = Histogram {
    name: "job_queue_wait_seconds",
    help: "Time from a job's submission to its first start, by queue.",
    labels: &["queue"],
    bounds: SECONDS,
};

pub const BUILD_TIME: Histogram = Histogram {
    name: "image_build_seconds",
    help: "Time to check out and build the image of a job from git (builds only, not cache hits).",
    labels: &[],
    bounds: SECONDS,
};

pub const WEBHOOK_LATENCY: Histogram = Histogram {
    name: "webhook_delivery_latency_seconds",
    help:
        "Time from a webhook delivery's creation (the job's end) to its delivery, retries included.",
    labels: &[],
    bounds: &[
        0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 1800.0, 3600.0, 86400.0,
    ],
};

/// Every counter, in the order they are rendered.
pub const COUNTERS: [Counter; 3] = [JOBS_FINISHED, BUILD_CACHE, WEBHOOK_ATTEMPTS];
/// Every histogram, in the order they are rendered.
pub const HISTOGRAMS: [Histogram; 4] = [JOB_DURATION, QUEUE_WAIT, BUILD_TIME, WEBHOOK_LATENCY];

/// One `HINCRBY` of one metric's field.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Inc {
    pub metric: &'static str,
    pub field: String,
    pub by: i64,
}

/// `a=x,b=y`. A value is cut to its first `,`, `=` or `|` in case one slips in,
/// so a field always parses back.
fn label_field(names: &[&str], values: &[&str]) -> String {
    names
        .iter()
        .zip(values)
        .map(|(n, v)| {
            let v = v.split([',', '=', '|']).next().unwrap_or_default();
            format!("{n}={v}")
        })
        .collect::<Vec<_>>()
        .join(",")
}

impl Counter {
    /// One more, for these label values (in the order of `labels`).
    pub fn inc(&self, values: &[&str]) -> Inc {
        Inc {
            metric: self.name,
            field: label_field(self.labels, values),
            by: 1,
        }
    }
}

impl Histogram {
    /// One observation of `seconds` (negative ones, from clocks apart, count as 0).
    pub fn observe(&self, values: &[&str], seconds: f64) -> [Inc; 2] {
        let seconds = seconds.max(0.0);
        let labels = label_field(self.labels, values);
        let bucket = self
            .bounds
            .iter()
            .find(|b| seconds <= **b)
            .map(|b| b.to_string())
            .unwrap_or_else(|| "+Inf".to_string());
        [
            Inc {
                metric: self.name,
                field: format!("{labels}|{bucket}"),
                by: 1,
            },
            Inc {
                metric: self.name,
                field: format!("{labels}|sum_ms"),
                by: (seconds * 1000.0).round() as i64,
            },
        ]
    }
}

/// Seconds from one time Dockhand wrote (RFC 3339) to another; `None` if either
/// does not parse.
pub fn seconds_between(from: &str, to: &str) -> Option<f64> {
    let a = chrono::DateTime::parse_from_rfc3339(from).ok()?;
    let b = chrono::DateTime::parse_from_rfc3339(to).ok()?;
    Some((b - a).num_milliseconds() as f64 / 1000.0)
}

/// Adds the increments to a pipeline that is about to go to Redis anyway.
pub fn add_to(pipe: &mut redis::Pipeline, keys: &Keys, incs: &[Inc]) {
    for inc in incs {
        pipe.hincr(keys.metric(inc.metric), &inc.field, inc.by)
            .ignore();
    }
}

/// The increments as a step of their own, for a writer that has no write to join
/// (see `worker::prepare`). A failure is logged, never returned: a metric is not
/// worth failing a job for.
pub async fn add(conn: &mut crate::store::Conn, keys: &Keys, incs: &[Inc]) {
    if incs.is_empty() {
        return;
    }
    let mut pipe = redis::pipe();
    add_to(&mut pipe, keys, incs);
    if let Err(e) = pipe.query_async::<()>(&mut **conn).await {
        tracing::debug!(error = %crate::telemetry::error_chain(&e), "could not count a metric");
    }
}

/// Counts not yet in Redis: metric fields and throughput buckets, added up.
/// Cheap to clone (one shared inside); see the module's invariants.
#[derive(Debug, Clone, Default)]
pub struct Tally {
    pending: std::sync::Arc<std::sync::Mutex<Pending>>,
}

#[derive(Debug, Default)]
struct Pending {
    /// (metric, field) → amount.
    incs: std::collections::HashMap<(&'static str, String), i64>,
    /// Throughput bucket key (`Keys::finished_bucket`) → jobs.
    buckets: std::collections::HashMap<String, i64>,
}

/// How long a throughput bucket is kept (it covers 10 seconds; readers look at
/// the last minute).
pub const BUCKET_TTL_SECONDS: i64 = 600;

impl Tally {
    fn lock(&self) -> std::sync::MutexGuard<'_, Pending> {
        self.pending.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Adds increments.
    pub fn add(&self, incs: impl IntoIterator<Item = Inc>) {
        let mut p = self.lock();
        for inc in incs {
            *p.incs.entry((inc.metric, inc.field)).or_default() += inc.by;
        }
    }

    /// One more job finished in `queue`, now (its 10-second throughput bucket).
    pub fn finished(&self, keys: &Keys, queue: &str) {
        let bucket = keys.finished_bucket(queue, chrono::Utc::now().timestamp() / 10);
        *self.lock().buckets.entry(bucket).or_default() += 1;
    }

    /// True when nothing waits to be written.
    pub fn is_empty(&self) -> bool {
        let p = self.lock();
        p.incs.is_empty() && p.buckets.is_empty()
    }

    /// Writes what has been added up, in one pipeline. On failure the counts
    /// are kept, added to whatever comes meanwhile, for the next flush.
    pub async fn flush(&self, store: &crate::store::Store, keys: &Keys) {
        let taken = std::mem::take(&mut *self.lock());
        if taken.incs.is_empty() && taken.buckets.is_empty() {
            return;
        }
        let mut pipe = redis::pipe();
        for ((metric, field), by) in &taken.incs {
            pipe.hincr(keys.metric(metric), field, *by).ignore();
        }
        for (bucket, n) in &taken.buckets {
            pipe.incr(bucket, *n)
                .ignore()
                .expire(bucket, BUCKET_TTL_SECONDS)
                .ignore();
        }
        let sent = match store.conn().await {
            Ok(mut conn) => pipe
                .query_async::<()>(&mut *conn)
                .await
                .map_err(crate::store::StoreError::from),
            Err(e) => Err(e),
        };
        if let Err(e) = sent {
            tracing::debug!(error = %crate::telemetry::error_chain(&e), "could not write the metrics; kept for the next try");
            let mut p = self.lock();
            for (k, by) in taken.incs {
                *p.incs.entry(k).or_default() += by;
            }
            for (k, n) in taken.buckets {
                *p.buckets.entry(k).or_default() += n;
            }
        }
    }
}

/// A stored field split back into label pairs and, for a histogram, its bucket
/// (`0.5`, `+Inf`, `sum_ms`).
pub fn parse_field(field: &str) -> (Vec<(&str, &str)>, Option<&str>) {
    let (labels, bucket) = match field.split_once('|') {
        Some((l, b)) => (l, Some(b)),
        None => (field, None),
    };
    let pairs = labels
        .split(',')
        .filter(|p| !p.is_empty())
        .filter_map(|p| p.split_once('='))
        .collect();
    (pairs, bucket)
}

/// Writes the Prometheus text exposition format (version 0.0.4): a `# HELP` and
/// `# TYPE` line per family, then its samples. Label values are escaped as the
/// format asks (`\\`, `\"`, `\n`).
#[derive(Debug, Default)]
pub struct Text {
    out: String,
}

/// The `Content-Type` of [`Text`].
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

impl Text {
    /// Starts a family: `kind` is `counter`, `gauge` or `histogram`.
    pub fn family(&mut self, name: &str, kind: &str, help: &str) {
        let help = help.replace('\\', "\\\\").replace('\n', "\\n");
        let _ = writeln!(self.out, "# HELP {NAMESPACE}_{name} {help}");
        let _ = writeln!(self.out, "# TYPE {NAMESPACE}_{name} {kind}");
    }

    /// One sample of the family last started (`name` may carry a suffix: `_bucket`).
    pub fn sample(&mut self, name: &str, labels: &[(&str, &str)], value: f64) {
        let _ = write!(self.out, "{NAMESPACE}_{name}");
        if !labels.is_empty() {
            self.out.push('{');
            for (i, (k, v)) in labels.iter().enumerate() {
                if i > 0 {
                    self.out.push(',');
                }
                let v = v
                    .replace('\\', "\\\\")
                    .replace('"', "\\\"")
                    .replace('\n', "\\n");
                let _ = write!(self.out, "{k}=\"{v}\"");
            }
            self.out.push('}');
        }
        let _ = writeln!(self.out, " {}", number(value));
    }

    /// A whole gauge family of one unlabelled sample.
    pub fn gauge(&mut self, name: &str, help: &str, value: f64) {
        self.family(name, "gauge", help);
        self.sample(name, &[], value);
    }

    pub fn finish(self) -> String {
        self.out
    }
}

/// A sample value: integers without a fraction, `+Inf`, `NaN`.
fn number(v: f64) -> String {
    if v.is_nan() {
        "NaN".into()
    } else if v.is_infinite() {
        if v > 0.0 { "+Inf" } else { "-Inf" }.into()
    } else if v.fract() == 0.0 && v.abs() < 1e15 {
        format!("{}", v as i64)
    } else {
        format!("{v}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_observation_lands_in_its_bucket_and_the_sum() {
        let [bucket, sum] = JOB_DURATION.observe(&["default"], 0.7);
        assert_eq!(bucket.field, "queue=default|1");
        assert_eq!(sum.field, "queue=default|sum_ms");
        assert_eq!(sum.by, 700);
        let [bucket, _] = BUILD_TIME.observe(&[], 1e9);
        assert_eq!(bucket.field, "|+Inf");
        let [bucket, sum] = QUEUE_WAIT.observe(&["q"], -3.0);
        assert_eq!((bucket.field.as_str(), sum.by), ("queue=q|0.1", 0));
    }

    #[test]
    fn fields_parse_back_into_labels_and_buckets() {
        let inc = JOBS_FINISHED.inc(&["q", "aborted", "timeout"]);
        assert_eq!(inc.field, "queue=q,status=aborted,reason=timeout");
        let (labels, bucket) = parse_field(&inc.field);
        assert_eq!(
            labels,
            [("queue", "q"), ("status", "aborted"), ("reason", "timeout")]
        );
        assert_eq!(bucket, None);
        assert_eq!(
            JOBS_FINISHED.inc(&["q", "completed", ""]).field,
            "queue=q,status=completed,reason="
        );
        assert_eq!(parse_field("|+Inf"), (vec![], Some("+Inf")));
        assert_eq!(BUILD_CACHE.inc(&["a|b=c"]).field, "result=a");
    }

    #[test]
    fn text_escapes_label_values_and_writes_numbers_plainly() {
        let mut t = Text::default();
        t.family("x", "gauge", "help");
        t.sample("x", &[("w", "a\"b\\c\nd")], 2.0);
        t.sample("x", &[], 0.25);
        assert_eq!(
            t.finish(),
            "# HELP dockhand_x help\n# TYPE dockhand_x gauge\n\
             dockhand_x{w=\"a\\\"b\\\\c\\nd\"} 2\ndockhand_x 0.25\n"
        );
    }
}
