//! A job's sidecar `services`: a private network made for one attempt of the job,
//! the service containers on it under their aliases, and their removal.
//!
//! Invariants:
//! - The network and every service container carry the same `dockhand.*` labels
//!   as the job's container, so the orphan sweep finds what a killed worker left.
//! - The network is `internal` (no way out) unless the job asked for a network
//!   itself: services add reachability between the job and its sidecars only.
//! - The job starts only once every service is running.
//! - [`Executor::remove_sidecars`] removes what [`Executor::start_services`] made,
//!   also when it failed half-way.

use super::container::{self, Labels};
use super::{ExecError, Executor, RunContext};
use crate::job::Job;
use bollard::models::NetworkCreateRequest;

/// What was made for a job's services, to remove afterwards.
#[derive(Debug, Default)]
pub(super) struct Sidecars {
    /// The job's own network, once made.
    pub network: Option<String>,
    containers: Vec<String>,
}

impl Sidecars {
    /// Whether the job had no services (nothing but its container to remove).
    pub fn is_empty(&self) -> bool {
        self.network.is_none() && self.containers.is_empty()
    }
}

impl Executor {
    /// Makes the job's network, then starts each service on it and waits until
    /// all of them run. What was made goes into `sidecars` as it is made.
    pub(super) async fn start_services(
        &self,
        job: &Job,
        ctx: &RunContext<'_>,
        sidecars: &mut Sidecars,
    ) -> Result<(), ExecError> {
        let who = Labels {
            worker: &self.worker_id,
            consumer: &self.consumer,
            entry: ctx.entry,
            deployment: ctx.deployment,
        };
        let base = container::name(&job.id, ctx.attempt);
        let network = format!("{base}-net");
        let request = NetworkCreateRequest {
            name: network.clone(),
            driver: Some("bridge".to_string()),
            internal: Some(job.network == "none"),
            labels: Some(container::labels(job, ctx.attempt, &who)),
            ..Default::default()
        };
        self.docker
            .create_network(request)
            .await
            .map_err(|source| ExecError::Docker {
                action: "create the job's network",
                source,
            })?;
        sidecars.network = Some(network.clone());

        for service in &job.services {
            self.ensure_image(&service.image, job.limits.timeout)
                .await?;
            let body = container::service_body(
                service,
                job,
                ctx.attempt,
                &who,
                &self.settings.policy,
                &network,
            );
            let name = format!("{base}-{}", service.alias);
            let id = self
                .create(&name, body, &service.image, "create a service container")
                .await?;
            sidecars.containers.push(id.clone());
            self.docker
                .start_container(&id, None)
                .await
                .map_err(|e| ExecError::Service {
                    alias: service.alias.clone(),
                    message: format!("could not start: {e}"),
                })?;
            ctx.logs
                .system(format!(
                    "service {} ({}) started",
                    service.alias, service.image
                ))
                .await;
        }

        for (service, id) in job.services.iter().zip(&sidecars.containers) {
            let inspect = self
                .docker
                .inspect_container(id, None)
                .await
                .map_err(|source| ExecError::Docker {
                    action: "inspect a service container",
                    source,
                })?;
            let state = inspect.state.unwrap_or_default();
            if state.running != Some(true) {
                return Err(ExecError::Service {
                    alias: service.alias.clone(),
                    message: format!(
                        "stopped (exit code {}) before the job started",
                        state.exit_code.unwrap_or(-1)
                    ),
                });
            }
        }
        Ok(())
    }

    /// Removes the service containers, then the network. Failures are logged:
    /// the job's outcome is known, and the orphan sweep tries again later.
    pub(super) async fn remove_sidecars(&self, sidecars: Sidecars) {
        for id in &sidecars.containers {
            self.remove(id).await;
        }
        if let Some(network) = &sidecars.network {
            self.remove_network(network).await;
        }
    }

    pub(super) async fn remove_network(&self, network: &str) {
        if let Err(e) = self.docker.remove_network(network).await {
            tracing::warn!(network = %network, error = %e, "could not remove the job's network");
        }
    }
}
