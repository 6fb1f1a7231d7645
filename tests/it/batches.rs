//! Batches: 50 jobs (some failing, retried, failing again) across three worker
//! processes SIGKILLed and restarted mid-run fire exactly one `batch.completed`,
//! with the right counts, on the events channel, in the events stream and as a
//! webhook.

use crate::common::receiver::Receiver;
use crate::common::{cli, image, signal, Env, GUARD};
use deadpool_redis::redis::{self, AsyncCommands};
use futures_util::StreamExt;
use std::time::Duration;

const JOBS: usize = 50;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_of_50_fires_one_batch_completed_under_worker_kills() {
    let env = Env::new();
    let batch = format!("{}-batch", env.prefix);
    let receiver = Receiver::start(&[]).await;
    let mut c = env.conn().await;
    let subscriber = serde_json::json!({
        "url": receiver.url(), "secret": "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
        "events": ["batch.completed"],
    });
    let _: i64 = c
        .hset(env.keys.subscribers(), "batches", subscriber.to_string())
        .await
        .unwrap();

    // Subscribed before anything runs: every batch.completed is seen.
    let mut pubsub = env.client.get_async_pubsub().await.unwrap();
    pubsub.subscribe(env.keys.events_channel()).await.unwrap();
    let (seen_tx, mut seen_rx) = tokio::sync::mpsc::unbounded_channel::<serde_json::Value>();
    let listener = tokio::spawn(async move {
        let mut messages = pubsub.on_message();
        while let Some(m) = messages.next().await {
            let text: String = m.get_payload().unwrap_or_default();
            if let Ok(v) = serde_json::from_str::<serde_json::Value>(&text) {
                if v["type"] == "batch.completed" {
                    let _ = seen_tx.send(v);
                }
            }
        }
    });

    let ids: Vec<String> = (0..3).map(|i| format!("{}-w{i}", env.prefix)).collect();
    let mut workers: Vec<std::process::Child> =
        ids.iter().map(|id| env.spawn_worker(id, &[])).collect();
    let jobs: Vec<String> = (0..JOBS).map(|i| format!("{}-j{i}", env.prefix)).collect();
    let mut pipe = redis::pipe();
    for (i, id) in jobs.iter().enumerate() {
        // Every fifth fails, is retried once, and fails again: 10 aborted.
        let mut spec = serde_json::json!({
            "id": id, "image": image(), "batch": batch,
            "command": if i % 5 == 0 { "sleep 0.2; exit 1" } else { "sleep 0.2" },
        });
        if i % 5 == 0 {
            spec["retry"] = serde_json::json!({"max_attempts": 2, "backoff_seconds": 0.1});
        }
        if i == JOBS - 1 {
            spec["batch_size"] = JOBS.into();
        }
        pipe.xadd(env.keys.jobs("default"), "*", &[("job", spec.to_string())])
            .ignore();
    }
    let _: () = pipe.query_async(&mut c).await.unwrap();
    for (id, w) in ids.iter().zip(&workers) {
        env.wait_until_worker_ready(id, Some(w.id())).await;
    }

    // Kill a busy worker each time ten more jobs have ended, four times at most
    // (paced by progress, not by the clock).
    let mut kills = 0;
    let mut rng = 0x2545_f491_4f6c_dd1du64;
    loop {
        let ended = ended_count(&env, &batch).await;
        if ended >= JOBS as u64 {
            break;
        }
        let target = (ended + 10).min(JOBS as u64);
        crate::common::wait_until("more jobs of the batch to end", || async {
            (ended_count(&env, &batch).await >= target).then_some(())
        })
        .await;
        if kills < 4 && target < JOBS as u64 {
            let beats = env.beats().await;
            let busy: Vec<usize> = (0..workers.len())
                .filter(|&i| {
                    beats.iter().any(|b| {
                        b["pid"].as_u64() == Some(workers[i].id().into())
                            && b["running"].as_array().is_some_and(|r| !r.is_empty())
                    })
                })
                .collect();
            if !busy.is_empty() {
                rng ^= rng << 13;
                rng ^= rng >> 7;
                rng ^= rng << 17;
                let victim = busy[(rng % busy.len() as u64) as usize];
                workers[victim].kill().unwrap();
                workers[victim].wait().unwrap();
                workers[victim] = env.spawn_worker(&ids[victim], &[]);
                kills += 1;
            }
        }
    }

    let event = tokio::time::timeout(GUARD, seen_rx.recv())
        .await
        .expect("batch.completed is published")
        .unwrap();
    let data = &event["data"];
    assert_eq!(data["id"], batch.as_str(), "{event}");
    assert_eq!(data["size"], 50, "{event}");
    assert_eq!(data["ended"], 50, "{event}");
    assert_eq!(data["counts"]["completed"], 40, "{event}");
    assert_eq!(data["counts"]["aborted"], 10, "{event}");
    assert_eq!(data["reasons"]["exit_code"], 10, "{event}");
    let hooks = receiver.wait_for(1).await;
    assert_eq!(hooks[0].json()["type"], "batch.completed");
    assert_eq!(hooks[0].json()["data"]["counts"], data["counts"]);

    // Every job ended, each once; then the workers stop, so nothing can fire any more.
    for id in &jobs {
        env.finished(id).await;
    }
    for w in &workers {
        signal(w, "TERM");
    }
    for w in &mut workers {
        w.wait().unwrap();
    }
    let stream: redis::streams::StreamRangeReply =
        c.xrange_all(env.keys.events("default")).await.unwrap();
    let fired = stream
        .ids
        .iter()
        .filter(|e| e.get::<String>("type").as_deref() == Some("batch.completed"))
        .count();
    assert_eq!(fired, 1, "one batch.completed in the events stream");
    tokio::time::sleep(Duration::from_millis(200)).await; // let the channel drain
    assert!(seen_rx.try_recv().is_err(), "one batch.completed published");
    assert_eq!(receiver.seen().len(), 1, "one webhook");
    listener.abort();

    let status = cli(&env, &["batch", "status", &batch, "--json"]).await;
    assert!(status.status.success(), "{status:?}");
    let v: serde_json::Value = serde_json::from_slice(&status.stdout).unwrap();
    assert_eq!(v["ended"], 50, "{v}");
    assert_eq!(v["counts"]["aborted"], 10, "{v}");
    let ttl: i64 = c.ttl(env.keys.batch(&batch)).await.unwrap();
    assert!(
        ttl > 0,
        "the batch expires with jobs.retention_seconds: {ttl}"
    );
    eprintln!("batch: {JOBS} jobs, {kills} worker SIGKILLs; {data}");
}

async fn ended_count(env: &Env, batch: &str) -> u64 {
    let Ok(mut c) = env.client.get_multiplexed_async_connection().await else {
        return 0;
    };
    let n: Option<u64> = c.hget(env.keys.batch(batch), "ended").await.unwrap_or(None);
    n.unwrap_or(0)
}
