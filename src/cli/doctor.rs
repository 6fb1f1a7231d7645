//! `dockhand doctor`: checks what a worker needs, with this configuration, and
//! says what to do about each thing it finds missing.
//!
//! Each check prints one line, `ok`, `warn` or `fail`, then what was checked and,
//! when it is not ok, what to do. Exit 1 when any check failed (a worker could not
//! run jobs), else 0: a warning is something a worker runs with, at a cost.

use super::{CliResult, Failure};
use crate::config::{PullPolicy, Settings};
use crate::executor::network::RESULTS_NETWORK;
use crate::executor::placement::Placement;
use crate::executor::Executor;
use crate::queue::Keys;
use crate::store::Store;
use crate::telemetry::error_chain;
use std::sync::Arc;
use std::time::Duration;

#[derive(Default)]
struct Report {
    failed: usize,
}

impl Report {
    fn ok(&mut self, what: impl AsRef<str>) {
        println!("ok    {}", what.as_ref());
    }

    fn warn(&mut self, what: impl AsRef<str>, todo: impl AsRef<str>) {
        println!("warn  {}\n      -> {}", what.as_ref(), todo.as_ref());
    }

    fn fail(&mut self, what: impl AsRef<str>, todo: impl AsRef<str>) {
        self.failed += 1;
        println!("fail  {}\n      -> {}", what.as_ref(), todo.as_ref());
    }
}

pub async fn run(settings: Arc<Settings>) -> CliResult {
    let mut report = Report::default();
    let profiles = redis(&settings, &mut report).await;
    docker(&settings, &profiles, &mut report).await;
    guards(&settings, &mut report);
    if report.failed > 0 {
        return Err(Failure::failed(format!(
            "{} check(s) failed: a worker with this configuration cannot run jobs",
            report.failed
        )));
    }
    Ok(())
}

/// Sentinel mode: what each sentinel says, one line each. Returns how the
/// master is named in the lines that follow.
async fn sentinel_survey(
    sentinels: &crate::store::sentinel::Sentinels,
    report: &mut Report,
) -> String {
    use crate::store::sentinel::Answer;
    let name = sentinels.master_name();
    report.ok(format!("redis.mode = sentinel, master {name:?}"));
    let mut masters = std::collections::BTreeSet::new();
    for (sentinel, answer) in sentinels.survey().await {
        match answer {
            Answer::Master(host, port) => {
                report.ok(format!("sentinel {sentinel} answers: master {name:?} is at {host}:{port}"));
                masters.insert(format!("{host}:{port}"));
            }
            Answer::Unknown => report.warn(
                format!("sentinel {sentinel} answers but monitors no master named {name:?}"),
                "check redis.master_name against `sentinel monitor <name> ...` in that sentinel's configuration",
            ),
            Answer::Unreachable(e) => report.warn(
                format!("sentinel {sentinel} did not answer ({e})"),
                "start it, or take it out of redis.nodes: the others still serve, but fewer sentinels may not agree on a failover",
            ),
        }
    }
    if masters.len() > 1 {
        let all: Vec<String> = masters.iter().cloned().collect();
        report.warn(
            format!("the sentinels name different masters: {}", all.join(", ")),
            "a failover may be under way; run doctor again in a moment",
        );
    }
    format!("the master {name:?} (sentinel mode)")
}

/// The master's replicas, against what the settings rely on: in sentinel mode a
/// master with no replica in sync has nothing to fail over to, and
/// `redis.wait_replicas` above the replicas in sync makes every WAIT time out.
async fn replication(settings: &Settings, conn: &mut crate::store::Conn, report: &mut Report) {
    let sentinel = settings.redis.mode == crate::config::RedisMode::Sentinel;
    let wanted = settings.redis.wait_replicas as usize;
    if !sentinel && wanted == 0 {
        return;
    }
    let info: String = match redis::cmd("INFO")
        .arg("replication")
        .query_async(conn)
        .await
    {
        Ok(info) => info,
        Err(_) => return,
    };
    let online = info
        .lines()
        .filter(|l| l.starts_with("slave") && l.contains("state=online"))
        .count();
    if online == 0 && sentinel {
        report.warn(
            "the master has no replica in sync: a failover has nothing to promote, and what it holds is on one machine",
            "start the replicas (replicaof <master> <port>) and check `INFO replication` on the master",
        );
    } else if sentinel {
        report.ok(format!("the master has {online} replica(s) in sync"));
    }
    if wanted > online {
        report.warn(
            format!("redis.wait_replicas is {wanted} but {online} replica(s) are in sync: every WAIT will wait redis.wait_timeout_ms and fall short"),
            "lower redis.wait_replicas, or bring the replicas back",
        );
    }
}

/// Redis reachable, and set so that it does not lose jobs. Returns the images the
/// registered profiles name (profile, image), for the Docker checks.
async fn redis(settings: &Settings, report: &mut Report) -> Vec<(String, String)> {
    let block = Duration::from_millis(settings.worker.block_ms);
    let store = Store::new(&settings.redis, block, 1);
    let url = match &store {
        Ok(store) => match store.sentinels() {
            Some(sentinels) => sentinel_survey(sentinels, report).await,
            None => settings.redis.url.clone(),
        },
        Err(_) => settings.redis.url.clone(),
    };
    let url = &url;
    let conn = match store {
        Ok(store) => store.conn().await,
        Err(e) => Err(e),
    };
    let mut conn = match conn {
        Ok(conn) => conn,
        Err(e) => {
            report.fail(
                format!("Redis at {url}: {}", error_chain(&e)),
                if settings.redis.mode == crate::config::RedisMode::Sentinel {
                    "check redis.nodes and redis.master_name, and that the master the sentinels name is up"
                } else {
                    "start redis-server (7 or later), or point --redis-url / REDIS_URL / redis.url at it"
                },
            );
            return Vec::new();
        }
    };
    let config = |key: &'static str| redis::cmd("CONFIG").arg("GET").arg(key).to_owned();
    let info: String = redis::cmd("INFO")
        .arg("server")
        .query_async(&mut conn)
        .await
        .unwrap_or_default();
    let version = info
        .lines()
        .find_map(|l| l.strip_prefix("redis_version:"))
        .unwrap_or("?")
        .trim()
        .to_string();
    report.ok(format!("Redis at {url} answers (version {version})"));
    let get = |v: Vec<String>| v.get(1).cloned().unwrap_or_default();
    let aof: Vec<String> = config("appendonly")
        .query_async(&mut conn)
        .await
        .unwrap_or_default();
    match get(aof).as_str() {
        "yes" => report.ok("Redis keeps an append-only file (appendonly yes)"),
        "" => report.warn(
            "cannot read Redis's appendonly setting (CONFIG GET refused)",
            "make sure Redis persists with AOF, or a restart loses queued and running jobs",
        ),
        _ => report.warn(
            "Redis runs without AOF (appendonly no): a restart loses queued and running jobs",
            "set appendonly yes (redis-cli CONFIG SET appendonly yes, and in redis.conf)",
        ),
    }
    let policy: Vec<String> = config("maxmemory-policy")
        .query_async(&mut conn)
        .await
        .unwrap_or_default();
    match get(policy).as_str() {
        "noeviction" => report.ok("Redis never evicts keys (maxmemory-policy noeviction)"),
        "" => report.warn(
            "cannot read Redis's maxmemory-policy",
            "make sure it is noeviction, or Redis may drop jobs when full",
        ),
        other => report.warn(
            format!("Redis may evict keys when full (maxmemory-policy {other}), and so lose jobs"),
            "set maxmemory-policy noeviction",
        ),
    }
    replication(settings, &mut conn, report).await;
    let keys = Keys::new(&settings.redis.prefix);
    let mut profiles = Vec::new();
    match crate::profile::list(&mut conn, &keys).await {
        Ok(all) => {
            for (name, spec) in all {
                let v: serde_json::Value = serde_json::from_str(&spec).unwrap_or_default();
                if let Some(image) = v["image"].as_str() {
                    profiles.push((name, image.to_string()));
                }
            }
        }
        Err(e) => report.warn(
            format!("cannot read the registered profiles: {}", error_chain(&e)),
            "check them with `dockhand profile list`",
        ),
    }
    if let Ok(files) = crate::profile::load_dir(&settings.worker.profiles_dir) {
        for (name, v) in files {
            if let Some(image) = v["image"].as_str() {
                profiles.push((name, image.to_string()));
            }
        }
    }
    profiles
}

/// The Docker engine reachable, the profiles' images present, and the network
/// the result URLs are served on usable.
async fn docker(settings: &Arc<Settings>, profiles: &[(String, String)], report: &mut Report) {
    let executor = match Executor::connect(settings.clone(), "doctor").await {
        Ok(e) => e,
        Err(e) => {
            report.fail(
                format!("the Docker engine: {}", error_chain(&e)),
                "start dockerd, or set worker.docker_host (DOCKHAND__WORKER__DOCKER_HOST) to where it listens",
            );
            return;
        }
    };
    match executor.docker().version().await {
        Ok(v) => report.ok(format!(
            "the Docker engine answers (version {}, API {})",
            v.version.unwrap_or_default(),
            v.api_version.unwrap_or_default()
        )),
        Err(e) => {
            report.fail(
                format!("the Docker engine does not answer: {e}"),
                "check that dockerd runs and that this user may use its socket",
            );
            return;
        }
    }
    for (profile, image) in profiles {
        match executor.docker().inspect_image(image).await {
            Ok(_) => report.ok(format!("image {image} (profile {profile}) is on this host")),
            Err(_) if settings.worker.pull != PullPolicy::Never => report.warn(
                format!("image {image} (profile {profile}) is not on this host"),
                "the first job pulls it (worker.pull), within its time limit",
            ),
            Err(_) => report.warn(
                format!("image {image} (profile {profile}) is not on this host, and worker.pull = \"never\""),
                format!("build or load it (docker build -t {image} ...), or `dockhand profile build {profile}` for a git profile; its jobs end image_not_found until then"),
            ),
        }
    }
    if settings.policy.networks.iter().all(|n| n == "none") {
        report.ok("no job may have a network (policy.networks), so no result URLs are served");
    } else if !settings.results.bind.is_empty() {
        report.ok(format!(
            "result URLs are served on {} (results.bind)",
            settings.results.bind
        ));
    } else {
        results_address(&executor, report).await;
    }
}

/// Where a worker here would serve result URLs, found as the worker finds it
/// (`executor::placement`), but without connecting any container to the network.
async fn results_address(executor: &Executor, report: &mut Report) {
    const STILL: &str = "jobs still run, but cannot POST to RESPONSE_URL (result.json still works)";
    let net = match executor.results_network().await {
        Ok(net) => net,
        Err(e) => {
            return report.warn(
                format!("no result URLs: {}", error_chain(&e)),
                format!("{STILL}; check that this user may manage Docker networks, or set results.bind to an address containers reach"),
            )
        }
    };
    match executor.place_on(&net, false).await {
        Ok(Placement::Host { ip }) => report.ok(format!(
            "result URLs can be served on {ip}, the gateway of {RESULTS_NETWORK}: this runs on the Docker host"
        )),
        Ok(Placement::OnNetwork { ip, .. }) => report.ok(format!(
            "result URLs can be served on {ip}: this runs in a container that is on {RESULTS_NETWORK}"
        )),
        Ok(Placement::WouldJoin(c)) => report.ok(format!(
            "result URLs can be served from this container ({}, found in {}): a worker connects it to {RESULTS_NETWORK} ({}) as it starts",
            c.short_id(),
            c.found_by,
            net.subnet
        )),
        Err(e) => report.warn(format!("no result URLs: {}", error_chain(&e)), format!("{STILL}; {}", e.advice())),
    }
}

/// What the SSRF guards let through besides public addresses.
fn guards(settings: &Settings, report: &mut Report) {
    for (setting, allowed) in [
        ("webhooks.allow_networks", &settings.webhooks.allow_networks),
        (
            "policy.git_allow_networks",
            &settings.policy.git_allow_networks,
        ),
    ] {
        let nets: Vec<String> = allowed.iter().map(|n| n.0.to_string()).collect();
        let wide = allowed.iter().any(|n| n.0.prefix_len() == 0);
        if nets.is_empty() {
            report.ok(format!("{setting}: only public addresses are reached"));
        } else if wide {
            report.warn(
                format!("{setting} allows every address ({})", nets.join(", ")),
                "list only the networks that receivers or git servers are on",
            );
        } else {
            report.ok(format!("{setting} also lets through {}", nets.join(", ")));
        }
    }
}
