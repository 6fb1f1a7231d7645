//! `dockhand cancel <id>`: asks for a job to be cancelled ([`admin::jobs::cancel`]
//! says how the request reaches its worker, and why an unknown id is refused).

use super::{connect, CliResult};
use crate::admin;
use crate::config::Settings;
use crate::queue::Keys;

pub async fn run(settings: &Settings, id: &str) -> CliResult {
    admin::job_ref(id)?;
    let keys = Keys::new(&settings.redis.prefix);
    let (_store, mut conn) = connect(settings).await?;
    let c = admin::jobs::cancel(&mut conn, &keys, settings, id).await?;
    match (c.status, c.waiting_in) {
        (Some(s), _) => outln!("cancel requested for job {id} ({s})"),
        (None, queue) => outln!(
            "cancel requested for job {id} (waiting{}, not read by a worker yet: it will not run)",
            queue.map(|q| format!(" in queue {q}")).unwrap_or_default()
        ),
    }
    Ok(())
}
