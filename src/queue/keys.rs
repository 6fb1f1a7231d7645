//! Key and channel names (contract sections 1, 3 and 4). Keys that one atomic step
//! touches together carry the queue as a hash tag `{<q>}`, so they share a Redis
//! Cluster slot.

/// Builds every key name from the configured prefix.
#[derive(Debug, Clone)]
pub struct Keys {
    prefix: String,
}

impl Keys {
    pub fn new(prefix: &str) -> Keys {
        Keys {
            prefix: prefix.to_string(),
        }
    }

    /// The stream producers `XADD` jobs to.
    pub fn jobs(&self, queue: &str) -> String {
        format!("{}:{{{queue}}}:jobs", self.prefix)
    }

    /// The list producers `LPUSH` jobs to.
    pub fn inbox(&self, queue: &str) -> String {
        format!("{}:{{{queue}}}:inbox", self.prefix)
    }

    /// The stream of `queue`'s jobs of priority `p`: the queue's stream itself
    /// for 0 (see `lanes`).
    pub fn lane(&self, queue: &str, p: i64) -> String {
        if p == 0 {
            self.jobs(queue)
        } else {
            format!("{}:{{{queue}}}:jobs:p{p}", self.prefix)
        }
    }

    /// Raw entries that could not be run, with why.
    pub fn dead(&self, queue: &str) -> String {
        format!("{}:{{{queue}}}:dead", self.prefix)
    }

    /// Jobs waiting for a later time (a delay or a retry): a sorted set by due time.
    pub fn scheduled(&self, queue: &str) -> String {
        format!("{}:{{{queue}}}:scheduled", self.prefix)
    }

    /// A worker process's liveness key; it expires when the worker stops renewing it.
    pub fn alive(&self, consumer: &str) -> String {
        format!("{}:worker:{consumer}", self.prefix)
    }

    /// Live worker processes: consumer name → JSON description.
    pub fn workers(&self) -> String {
        format!("{}:workers", self.prefix)
    }

    /// Registered profiles (job templates): name → JSON spec.
    pub fn profiles(&self) -> String {
        format!("{}:profiles", self.prefix)
    }

    /// The stream every worker process reads through a consumer group of its own,
    /// so each sees every entry (`profile build`).
    pub fn broadcast(&self) -> String {
        format!("{}:broadcast", self.prefix)
    }

    /// The stream the workers' answers to one broadcast go to.
    pub fn broadcast_reply(&self, id: &str) -> String {
        format!("{}:broadcast:{id}:replies", self.prefix)
    }

    /// This deployment's identity, made once by the first worker and never expiring.
    /// Every container carries it as a label, so a worker's sweep may judge the
    /// containers of other worker ids that share this Redis, and never those of
    /// another deployment that shares the Docker host.
    pub fn deployment(&self) -> String {
        format!("{}:deployment", self.prefix)
    }

    /// The pub/sub channel that announces cancel requests (`<queue>/<id>`; the
    /// request itself is in the job hash).
    pub fn cancel_channel(&self) -> String {
        format!("{}:cancel", self.prefix)
    }

    /// Registered webhook subscribers: name → JSON.
    pub fn subscribers(&self) -> String {
        format!("{}:subscribers", self.prefix)
    }

    /// The pub/sub channel on which a change to the subscriber registry made
    /// through Dockhand is announced (a worker forgets its copy of it). Not the
    /// registry hash itself, though of the same name: Redis keeps them apart.
    pub fn subscribers_channel(&self) -> String {
        format!("{}:subscribers", self.prefix)
    }

    /// One webhook delivery: its target, body and state. Every key of the
    /// outbox carries the tag `{outbox}`: one step makes a delivery, its due
    /// entry and its job's list together, and one step moves it to the dead
    /// set. (No queue key is ever named `<prefix>:webhooks:...`, so the tag
    /// shares a slot with a queue called `outbox` and nothing else.)
    pub fn delivery(&self, id: &str) -> String {
        format!("{}:webhooks:{{outbox}}:{id}", self.prefix)
    }

    /// Every attempt of one delivery, oldest first (JSON per attempt).
    pub fn delivery_attempts(&self, id: &str) -> String {
        format!("{}:webhooks:{{outbox}}:{id}:attempts", self.prefix)
    }

    /// The deliveries made for one job.
    pub fn job_deliveries(&self, job: &str) -> String {
        format!("{}:webhooks:{{outbox}}:job:{job}", self.prefix)
    }

    /// Deliveries waiting for their next attempt: a sorted set by due time (ms).
    pub fn deliveries_due(&self) -> String {
        format!("{}:webhooks:{{outbox}}:due", self.prefix)
    }

    /// Deliveries that failed their last attempt.
    pub fn deliveries_dead(&self) -> String {
        format!("{}:webhooks:{{outbox}}:dead", self.prefix)
    }

    /// The job hash. A job's own keys carry its queue's hash tag: its claim and
    /// its terminal write touch them together with the queue's stream, events
    /// and indexes in one step.
    pub fn job(&self, queue: &str, id: &str) -> String {
        format!("{}:{{{queue}}}:job:{id}", self.prefix)
    }

    /// Files the job returned: name → bytes.
    pub fn files(&self, queue: &str, id: &str) -> String {
        format!("{}:{{{queue}}}:job:{id}:files", self.prefix)
    }

    /// The replayable stream of the job's log lines.
    pub fn log(&self, queue: &str, id: &str) -> String {
        format!("{}:{{{queue}}}:job:{id}:log", self.prefix)
    }

    /// The pub/sub channel of the job's live log lines.
    pub fn log_channel(&self, id: &str) -> String {
        format!("{}:logs:{id}", self.prefix)
    }

    /// The pub/sub channel of every state change.
    pub fn events_channel(&self) -> String {
        format!("{}:events", self.prefix)
    }

    /// The replayable copy of a queue's events (what [`Keys::events_channel`]
    /// carries for its jobs): a capped stream (`jobs.events_max_len`), one per
    /// queue, so that a state change and its event are one step in the queue's
    /// slot.
    pub fn events(&self, queue: &str) -> String {
        format!("{}:{{{queue}}}:events", self.prefix)
    }

    /// A queue's listing index of job ids scored by creation time (ms): `all`,
    /// or a dimension and its value (`status`, `reason`). See `listing`.
    pub fn index(&self, queue: &str, dimension: &str, value: &str) -> String {
        if dimension == "all" {
            format!("{}:{{{queue}}}:index:all", self.prefix)
        } else {
            format!("{}:{{{queue}}}:index:{dimension}:{value}", self.prefix)
        }
    }

    /// The queues that workers do not claim from now: a set of queue names.
    pub fn paused(&self) -> String {
        format!("{}:paused", self.prefix)
    }

    /// Periodic job schedules: name → JSON definition (see `queue::cron`).
    pub fn schedules(&self) -> String {
        format!("{}:schedules", self.prefix)
    }

    /// One schedule's progress: its last handled tick and last enqueued job. It
    /// carries its queue's hash tag because one Lua step moves it and adds the
    /// tick's job to that queue's stream.
    pub fn schedule_state(&self, queue: &str, name: &str) -> String {
        format!("{}:{{{queue}}}:schedule:{name}", self.prefix)
    }

    /// Jobs of `queue` that ended in one 10-second window (`bucket` = epoch
    /// seconds / 10): a counter that expires after ten minutes.
    pub fn finished_bucket(&self, queue: &str, bucket: i64) -> String {
        format!("{}:{{{queue}}}:finished:{bucket}", self.prefix)
    }

    /// Fleet-wide limits: key name → JSON `{"concurrency": n, "rate": n, "per_seconds": s}`.
    pub fn limits(&self) -> String {
        format!("{}:limits", self.prefix)
    }

    /// The jobs holding a slot of limit `key`: a sorted set, job id → lease expiry (ms).
    pub fn limit_running(&self, key: &str) -> String {
        format!("{}:limit:{{{key}}}:running", self.prefix)
    }

    /// When jobs of limit `key` started, for its rate: a sorted set by start time (ms).
    pub fn limit_starts(&self, key: &str) -> String {
        format!("{}:limit:{{{key}}}:starts", self.prefix)
    }

    /// One fleet-wide metric: a hash of label values (and buckets) → count, kept
    /// for good (see `metrics`).
    pub fn metric(&self, name: &str) -> String {
        format!("{}:metrics:{name}", self.prefix)
    }

    /// What a job with `after` waits for (see `deps`): its state
    /// (`waiting` | `released`), policy, queue, deadline, `remaining`, and one
    /// field `parent:<id>` per parent (`waiting`, or how that parent ended).
    pub fn wait(&self, queue: &str, id: &str) -> String {
        format!("{}:{{{queue}}}:job:{id}:after", self.prefix)
    }

    /// The jobs waiting for job `id` to end: a set of job references
    /// (`<queue>/<id>`, see `job::JobRef`).
    pub fn dependents(&self, queue: &str, id: &str) -> String {
        format!("{}:{{{queue}}}:job:{id}:dependents", self.prefix)
    }

    /// A queue's waiting jobs by the time their wait runs out (ms): a sorted set
    /// of job ids.
    pub fn wait_deadlines(&self, queue: &str) -> String {
        format!("{}:{{{queue}}}:after:deadlines", self.prefix)
    }

    /// A batch: its size, and how many of its jobs ended, by status and reason.
    /// Its keys carry the batch id as their tag: its jobs may be in any queue.
    pub fn batch(&self, id: &str) -> String {
        format!("{}:batch:{{{id}}}", self.prefix)
    }

    /// The ids of a batch's jobs that ended, so each is counted once.
    pub fn batch_ended(&self, id: &str) -> String {
        format!("{}:batch:{{{id}}}:ended", self.prefix)
    }

    /// The webhook deliveries made for a batch's `batch.completed` (an outbox key).
    pub fn batch_deliveries(&self, id: &str) -> String {
        format!("{}:webhooks:{{outbox}}:batch:{id}", self.prefix)
    }

    /// The pattern matching every key that carries a queue's hash tag.
    pub fn queue_keys_pattern(&self) -> String {
        format!("{}:{{*}}:*", self.prefix)
    }

    /// The pattern matching every queue's job stream, for discovery with `SCAN`.
    pub fn jobs_pattern(&self) -> String {
        format!("{}:{{*}}:jobs", self.prefix)
    }

    /// The pattern matching every queue's inbox list.
    pub fn inbox_pattern(&self) -> String {
        format!("{}:{{*}}:inbox", self.prefix)
    }

    /// The pattern matching every queue's scheduled set.
    pub fn scheduled_pattern(&self) -> String {
        format!("{}:{{*}}:scheduled", self.prefix)
    }

    /// The queue name inside a key made by [`Keys::jobs`], [`Keys::inbox`],
    /// [`Keys::dead`] or [`Keys::scheduled`].
    pub fn queue_of<'a>(&self, key: &'a str) -> Option<&'a str> {
        let rest = key.strip_prefix(&self.prefix)?.strip_prefix(":{")?;
        Some(&rest[..rest.find('}')?])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_follow_the_contract() {
        let k = Keys::new("dockhand");
        assert_eq!(k.jobs("default"), "dockhand:{default}:jobs");
        assert_eq!(k.inbox("default"), "dockhand:{default}:inbox");
        assert_eq!(k.dead("q1"), "dockhand:{q1}:dead");
        assert_eq!(k.job("q1", "abc"), "dockhand:{q1}:job:abc");
        assert_eq!(k.files("q1", "abc"), "dockhand:{q1}:job:abc:files");
        assert_eq!(k.log("q1", "abc"), "dockhand:{q1}:job:abc:log");
        assert_eq!(k.events("q1"), "dockhand:{q1}:events");
        assert_eq!(k.deliveries_dead(), "dockhand:webhooks:{outbox}:dead");
        assert_eq!(k.log_channel("abc"), "dockhand:logs:abc");
        assert_eq!(k.events_channel(), "dockhand:events");
    }

    #[test]
    fn the_queue_is_read_back_from_a_key() {
        let k = Keys::new("t1");
        assert_eq!(k.queue_of(&k.jobs("a.b")), Some("a.b"));
        assert_eq!(k.queue_of("other:{x}:jobs"), None);
    }
}
