//! `dockhand webhooks replay|attempts|deliver`.

use super::{connect, CliResult, Failure};
use crate::config::Settings;
use crate::queue::Keys;
use crate::webhook::outbox;
use std::sync::Arc;

#[derive(Debug, clap::Subcommand)]
pub enum Action {
    /// Send a delivery again (by its id, the webhook-id), or every dead-lettered one with --dead.
    Replay {
        /// The delivery id (the `webhook-id` header it was sent with).
        id: Option<String>,
        /// Every dead-lettered delivery instead of one.
        #[arg(long)]
        dead: bool,
    },
    /// List a job's deliveries and every attempt of each.
    Attempts {
        /// The job id.
        job: String,
        /// One JSON object per delivery and line, with its attempts as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Only deliver webhooks (no jobs), until SIGINT/SIGTERM.
    Deliver,
}

pub async fn run(
    settings: Arc<Settings>,
    action: Action,
    shutdown: impl std::future::Future<Output = ()>,
) -> CliResult {
    let keys = Keys::new(&settings.redis.prefix);
    let (store, mut conn) = connect(&settings).await?;
    match action {
        Action::Replay {
            id: Some(id),
            dead: false,
        } => {
            if !outbox::replay(&mut conn, &keys, &id).await? {
                return Err(Failure::failed(format!(
                    "no webhook delivery {id} (`dockhand webhooks attempts <job id>` lists a job's deliveries)"
                )));
            }
            outln!("delivery {id} will be sent again");
            Ok(())
        }
        Action::Replay {
            id: None,
            dead: true,
        } => {
            let n = outbox::replay_dead(&mut conn, &keys).await?;
            outln!("{n} dead-lettered deliveries will be sent again");
            Ok(())
        }
        Action::Replay { .. } => Err(Failure::usage("give a delivery id or --dead (not both)")),
        Action::Attempts { job, json } => {
            let deliveries = outbox::for_job(&mut conn, &keys, &job).await?;
            if deliveries.is_empty() {
                return Err(Failure::failed(format!(
                    "no webhook deliveries for job {job}: no subscriber (`dockhand subscriber list`) \
                     and none of its own webhooks took its events, or it has not finished"
                )));
            }
            for (d, attempts) in deliveries {
                if json {
                    let attempts: Vec<serde_json::Value> = attempts
                        .iter()
                        .map(|a| serde_json::from_str(a).unwrap_or_else(|_| a.clone().into()))
                        .collect();
                    outln!(
                        "{}",
                        serde_json::json!({"id": d.id, "event": d.event, "subscriber": d.subscriber,
                            "status": d.status, "attempts": attempts})
                    );
                    continue;
                }
                outln!(
                    "{} {} -> {} [{}] {} attempt(s)",
                    d.id,
                    d.event,
                    d.subscriber,
                    d.status,
                    d.attempts
                );
                for a in attempts {
                    outln!("  {a}");
                }
            }
            Ok(())
        }
        Action::Deliver => {
            let token = tokio_util::sync::CancellationToken::new();
            let loop_ = tokio::spawn(crate::webhook::deliver::run(
                settings.clone(),
                store,
                Default::default(), // nothing here makes deliveries: it polls
                token.clone(),
            ));
            shutdown.await;
            token.cancel();
            let _ = loop_.await;
            Ok(())
        }
    }
}
