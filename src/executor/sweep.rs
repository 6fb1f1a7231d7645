//! Finding and removing containers that Dockhand made and nobody runs any more
//! (their worker was killed). Only containers carrying the `dockhand.job` label are
//! ever listed, so nothing else on the host is touched; which of them are orphans is
//! the worker's decision (it knows its running jobs and can ask Redis about others).

use super::{
    ExecError, Executor, LABEL_CONSUMER, LABEL_DEPLOYMENT, LABEL_ENTRY, LABEL_JOB, LABEL_QUEUE,
    LABEL_WORKER,
};
use bollard::query_parameters::{ListContainersOptionsBuilder, ListNetworksOptionsBuilder};
use std::collections::HashMap;

/// Who made a run of a host executor (local, SSH): what a container carries as
/// labels, written as JSON beside the run's directory for the sweep.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct RunOwner {
    pub job: String,
    /// The job's queue (its keys carry the queue's tag). Empty in a record
    /// written before it was kept.
    #[serde(default)]
    pub queue: String,
    pub worker: String,
    pub consumer: String,
    pub entry: String,
    pub deployment: String,
}

impl RunOwner {
    /// The owner of one attempt of `job`, run by this worker process.
    pub fn of(
        job: &crate::job::Job,
        worker: &str,
        consumer: &str,
        ctx: &super::RunContext<'_>,
    ) -> RunOwner {
        RunOwner {
            job: job.id.clone(),
            queue: job.queue.clone(),
            worker: worker.to_string(),
            consumer: consumer.to_string(),
            entry: ctx.entry.to_string(),
            deployment: ctx.deployment.to_string(),
        }
    }
}

/// A Dockhand container and who made it.
#[derive(Debug, Clone)]
pub struct Labelled {
    pub id: String,
    pub job: String,
    /// Empty for runs recorded before the queue was kept.
    pub queue: String,
    pub worker: String,
    pub consumer: String,
    pub entry: String,
    /// Empty for containers made before the label existed.
    pub deployment: String,
}

impl Labelled {
    /// A host executor's run `id`, made by `owner`.
    pub fn of_run(id: String, owner: RunOwner) -> Labelled {
        Labelled {
            id,
            job: owner.job,
            queue: owner.queue,
            worker: owner.worker,
            consumer: owner.consumer,
            entry: owner.entry,
            deployment: owner.deployment,
        }
    }

    /// A container or network `id` and the Dockhand labels it carries (missing ones empty).
    fn new(id: String, labels: HashMap<String, String>) -> Labelled {
        let get = |k: &str| labels.get(k).cloned().unwrap_or_default();
        Labelled {
            job: get(LABEL_JOB),
            queue: get(LABEL_QUEUE),
            worker: get(LABEL_WORKER),
            consumer: get(LABEL_CONSUMER),
            entry: get(LABEL_ENTRY),
            deployment: get(LABEL_DEPLOYMENT),
            id,
        }
    }
}

impl Executor {
    /// Every container on this host with a `dockhand.job` label, running or not.
    pub async fn labelled_containers(&self) -> Result<Vec<Labelled>, ExecError> {
        let filters = HashMap::from([("label".to_string(), vec![LABEL_JOB.to_string()])]);
        let opts = ListContainersOptionsBuilder::default()
            .all(true)
            .filters(&filters)
            .build();
        let list = self
            .docker
            .list_containers(Some(opts))
            .await
            .map_err(|source| ExecError::Docker {
                action: "list containers",
                source,
            })?;
        Ok(list
            .into_iter()
            .filter_map(|c| Some(Labelled::new(c.id?, c.labels.unwrap_or_default())))
            .collect())
    }

    /// Removes one container (forcibly: it may still run).
    pub async fn remove_orphan(&self, id: &str) {
        self.remove(id).await;
    }

    /// Networks on this host carrying `label` (`key` or `key=value`).
    pub(super) async fn networks_labelled(
        &self,
        label: &str,
    ) -> Result<Vec<bollard::models::Network>, ExecError> {
        let filters = HashMap::from([("label".to_string(), vec![label.to_string()])]);
        let opts = ListNetworksOptionsBuilder::default()
            .filters(&filters)
            .build();
        self.docker
            .list_networks(Some(opts))
            .await
            .map_err(|source| ExecError::Docker {
                action: "list networks",
                source,
            })
    }

    /// Every network on this host with a `dockhand.job` label (a job's services).
    pub async fn job_networks(&self) -> Result<Vec<Labelled>, ExecError> {
        let list = self.networks_labelled(LABEL_JOB).await?;
        Ok(list
            .into_iter()
            .filter_map(|n| Some(Labelled::new(n.id?, n.labels.unwrap_or_default())))
            .collect())
    }

    /// Removes one network (its containers must be gone first).
    pub async fn remove_orphan_network(&self, id: &str) {
        self.remove_network(id).await;
    }
}
