//! Requests addressed to every worker process at once (`dockhand profile build`),
//! and registering the profiles shipped as files.
//!
//! The stream `dockhand:broadcast` holds requests `{kind: build, profile, reply,
//! id}`. Each worker process answers each request on the request's `reply` stream:
//! `{worker, consumer, id, status: built|cached|failed, image, error}`.
//!
//! Invariants:
//! - Each worker process reads the stream through a consumer group of its own
//!   (named after its consumer), so every process sees every entry. The group is
//!   created at `$` before the process's first heartbeat: a worker that the CLI
//!   sees alive already reads what the CLI adds next.
//! - A clean exit deletes the group. A group whose worker is gone (no liveness
//!   key, and its reader idle past the lease) is deleted by the next worker that
//!   starts, so killed workers do not leave groups behind for ever.
//! - Every request is answered, also when its build fails or its profile is unknown.

use super::context::Ctx;
use crate::job;
use crate::profile;
use crate::store::{Conn, StoreError};
use crate::telemetry::error_chain;
use deadpool_redis::redis::{
    self,
    streams::{StreamReadOptions, StreamReadReply},
    AsyncCommands,
};
use serde_json::Value;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// How long an answer stream is kept when its reader has gone.
const REPLY_TTL_SECONDS: i64 = 3600;

/// Registers the profile files and creates this process's group. False when
/// Redis could not be reached; [`listen`] tries again.
pub(super) async fn setup(ctx: &Ctx, profiles: &[(String, Value)]) -> bool {
    let result: Result<(), StoreError> = async {
        let mut conn = ctx.store.conn().await?;
        for (name, spec) in profiles {
            profile::put(&mut conn, &ctx.keys, name, spec).await?;
        }
        create_group(ctx, &mut conn).await?;
        if let Err(e) = remove_stale_groups(ctx, &mut conn).await {
            tracing::debug!(error = %error_chain(&e), "could not look for stale broadcast groups");
        }
        Ok(())
    }
    .await;
    match result {
        Ok(()) => {
            if !profiles.is_empty() {
                tracing::info!(
                    profiles = profiles.len(),
                    dir = %ctx.settings.worker.profiles_dir.display(),
                    "profiles registered from files"
                );
            }
            true
        }
        Err(e) => {
            tracing::warn!(error = %error_chain(&e), "cannot register profiles or read broadcasts yet; retrying");
            false
        }
    }
}

async fn create_group(ctx: &Ctx, conn: &mut Conn) -> Result<(), StoreError> {
    let created: Result<(), redis::RedisError> = conn
        .xgroup_create_mkstream(ctx.keys.broadcast(), &ctx.consumer, "$")
        .await;
    match created {
        Ok(()) => Ok(()),
        Err(e) if e.code() == Some("BUSYGROUP") => Ok(()),
        Err(e) => Err(e.into()),
    }
}

async fn remove_stale_groups(ctx: &Ctx, conn: &mut Conn) -> Result<(), StoreError> {
    let key = ctx.keys.broadcast();
    let lease_ms = ctx.settings.worker.lease_seconds * 1000;
    let groups: redis::streams::StreamInfoGroupsReply = conn.xinfo_groups(&key).await?;
    for group in groups.groups {
        if group.name == ctx.consumer {
            continue;
        }
        let alive: bool = conn.exists(ctx.keys.alive(&group.name)).await?;
        if alive {
            continue;
        }
        // A group with no reader yet may belong to a worker that is starting.
        let readers: redis::streams::StreamInfoConsumersReply =
            conn.xinfo_consumers(&key, &group.name).await?;
        let idle = !readers.consumers.is_empty()
            && readers.consumers.iter().all(|c| c.idle as u64 > lease_ms);
        if idle {
            let _: i64 = conn.xgroup_destroy(&key, &group.name).await?;
            tracing::info!(group = %group.name, "removed the broadcast group of a worker that is gone");
        }
    }
    Ok(())
}

/// Deletes this process's group (a clean exit).
pub(super) async fn leave(ctx: &Ctx, conn: &mut Conn) {
    let removed: Result<i64, redis::RedisError> = conn
        .xgroup_destroy(ctx.keys.broadcast(), &ctx.consumer)
        .await;
    if let Err(e) = removed {
        tracing::debug!(error = %e, "could not remove the broadcast group");
    }
}

/// Broadcast requests answered at once by one worker process; further ones wait
/// in the stream (a request may start a build).
const ANSWERS_AT_ONCE: usize = 2;

/// Reads broadcasts until `token` is cancelled, answering each in a task of its
/// own, at most [`ANSWERS_AT_ONCE`] at a time (each holds a permit); at the end,
/// waits up to `worker.drain_seconds` for the answers under way.
pub(super) async fn listen(
    ctx: Ctx,
    profiles: Vec<(String, Value)>,
    mut ready: bool,
    token: CancellationToken,
) {
    let answers = TaskTracker::new();
    let permits = Arc::new(Semaphore::new(ANSWERS_AT_ONCE));
    read_loop(&ctx, &profiles, &mut ready, &answers, &permits, &token).await;
    answers.close();
    let drain = Duration::from_secs(ctx.settings.worker.drain_seconds);
    if tokio::time::timeout(drain, answers.wait()).await.is_err() {
        tracing::warn!("broadcast answers still under way at shutdown were left");
    }
}

async fn read_loop(
    ctx: &Ctx,
    profiles: &[(String, Value)],
    ready: &mut bool,
    answers: &TaskTracker,
    permits: &Arc<Semaphore>,
    token: &CancellationToken,
) {
    let mut backoff = super::context::reconnect_backoff(&ctx.settings);
    while !token.is_cancelled() {
        if !*ready {
            *ready = setup(ctx, profiles).await;
            if !*ready {
                super::context::sleep_or_cancel(backoff.next_delay(), token).await;
                continue;
            }
        }
        // A permit before reading: while answers are under way, new requests
        // wait in the stream rather than in this process.
        let permit = tokio::select! {
            permit = permits.clone().acquire_owned() => permit.expect("the semaphore is never closed"),
            _ = token.cancelled() => return,
        };
        match read(ctx).await {
            Ok(request) => {
                backoff.reset();
                if let Some((id, fields)) = request {
                    let ctx = ctx.clone();
                    answers.spawn(async move {
                        answer(ctx, id, fields).await;
                        drop(permit);
                    });
                }
            }
            Err(e) if e.code() == Some("NOGROUP") => {
                tracing::warn!("the broadcast group is missing (Redis restarted or was flushed); re-creating it");
                let created = async {
                    let mut conn = ctx.store.conn().await?;
                    create_group(ctx, &mut conn).await
                }
                .await;
                if created.is_err() {
                    super::context::sleep_or_cancel(backoff.next_delay(), token).await;
                }
            }
            Err(e) => {
                let delay = backoff.next_delay();
                if backoff.failures() == 1 {
                    tracing::warn!(error = %error_chain(&e), "cannot read broadcasts; retrying");
                }
                super::context::sleep_or_cancel(delay, token).await;
            }
        }
    }
}

type Fields = std::collections::HashMap<String, String>;

/// The next request, acknowledged at once: an answer is best effort, and a
/// request is never answered twice by one process. One at a time, so that each
/// is read with the permit its answer holds.
async fn read(ctx: &Ctx) -> Result<Option<(String, Fields)>, StoreError> {
    let key = ctx.keys.broadcast();
    let mut conn = ctx.store.blocking_conn().await?;
    let opts = StreamReadOptions::default()
        .group(&ctx.consumer, &ctx.consumer)
        .count(1)
        .block(ctx.settings.worker.block_ms as usize);
    let reply: Option<StreamReadReply> = conn.xread_options(&[&key], &[">"], &opts).await?;
    drop(conn);
    let Some(entry) = reply
        .map(|r| r.keys)
        .unwrap_or_default()
        .into_iter()
        .flat_map(|stream| stream.ids)
        .next()
    else {
        return Ok(None);
    };
    let fields: Fields = entry
        .map
        .iter()
        .filter_map(|(k, v)| {
            redis::from_redis_value::<String>(v.clone())
                .ok()
                .map(|v| (k.clone(), v))
        })
        .collect();
    let mut conn = ctx.store.conn().await?;
    let _: i64 = conn.xack(&key, &ctx.consumer, &[&entry.id]).await?;
    Ok(Some((entry.id, fields)))
}

/// What one worker says about one request.
struct Answer {
    status: &'static str,
    image: String,
    error: String,
}

impl Answer {
    fn failed(error: impl Into<String>) -> Answer {
        Answer {
            status: "failed",
            image: String::new(),
            error: error.into(),
        }
    }
}

async fn answer(ctx: Ctx, entry: String, fields: Fields) {
    let get = |k: &str| fields.get(k).cloned().unwrap_or_default();
    let (kind, name, reply) = (get("kind"), get("profile"), get("reply"));
    // Only a reply stream of this deployment: a request cannot make workers write elsewhere.
    let ours = format!("{}:", ctx.keys.broadcast());
    if !reply.starts_with(&ours) || !reply.ends_with(":replies") {
        tracing::warn!(entry = %entry, "a broadcast without a valid reply stream; ignored");
        return;
    }
    let answer = match kind.as_str() {
        "build" => build_profile(&ctx, &name).await,
        other => Answer::failed(format!("unknown broadcast kind {other:?}")),
    };
    tracing::info!(profile = %name, status = answer.status, image = %answer.image, error = %answer.error, "answered a profile build");
    let request_id = fields.get("id").cloned().unwrap_or(entry);
    let sent: Result<(), StoreError> = async {
        let mut conn = ctx.store.conn().await?;
        redis::pipe()
            .xadd(
                &reply,
                "*",
                &[
                    ("worker", ctx.worker_id.as_str()),
                    ("consumer", ctx.consumer.as_str()),
                    ("id", request_id.as_str()),
                    ("status", answer.status),
                    ("image", answer.image.as_str()),
                    ("error", answer.error.as_str()),
                ],
            )
            .ignore()
            .expire(&reply, REPLY_TTL_SECONDS)
            .ignore()
            .query_async::<()>(&mut conn)
            .await?;
        Ok(())
    }
    .await;
    if let Err(e) = sent {
        tracing::warn!(error = %error_chain(&e), "could not answer a broadcast");
    }
}

/// Builds (or finds) the image of profile `name` on this host.
async fn build_profile(ctx: &Ctx, name: &str) -> Answer {
    let registered = async {
        let mut conn = ctx.store.conn().await?;
        profile::get(&mut conn, &ctx.keys, name).await
    }
    .await;
    let registered = match registered {
        Ok(r) => r,
        Err(e) => return Answer::failed(error_chain(&e)),
    };
    let job = profile::apply(b"{}", name, registered.as_deref()).and_then(|spec| {
        let queue = ctx
            .settings
            .worker
            .queues
            .first()
            .cloned()
            .unwrap_or_default();
        job::validate(
            spec,
            format!("profile-build:{name}"),
            &queue,
            &ctx.settings.jobs.limits,
            &ctx.settings.policy,
        )
    });
    let job = match job {
        Ok(job) => job,
        Err(rejection) => return Answer::failed(rejection.message),
    };
    let Some(git) = &job.git else {
        // A profile of a prebuilt image: there is nothing to build, only to check.
        let docker = ctx.executor.docker();
        return match crate::executor::build::cached_image(docker, &job.image).await {
            Ok(Some(_)) => Answer {
                status: "cached",
                image: job.image.clone(),
                error: String::new(),
            },
            Ok(None) => Answer::failed(format!("image {:?} is not on this host", job.image)),
            Err(e) => Answer::failed(error_chain(&e)),
        };
    };
    let commit = match ctx.images.resolve(git).await {
        Ok(c) => c,
        Err(e) => return Answer::failed(error_chain(&e)),
    };
    // Nobody reads these lines: the answer carries the builder's error.
    let (lines, _) = tokio::sync::mpsc::unbounded_channel();
    match ctx.images.ensure(git, &commit, &lines).await {
        Ok(ready) => Answer {
            status: if ready.built { "built" } else { "cached" },
            image: ready.tag,
            error: String::new(),
        },
        Err(e) => Answer::failed(error_chain(&e)),
    }
}
