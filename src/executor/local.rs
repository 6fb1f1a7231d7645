//! The local executor (`"executor": "local"`, `executors.local.enabled`): a job
//! runs as a process of the worker's host, as the worker's user, in a fresh
//! working directory `<base_dir>/<worker id>/<job id>-<attempt>` laid out like a
//! container's `/dockhand` (`input/`, `work/`, `output/`, passed to the job as
//! `DOCKHAND_INPUT`, `DOCKHAND_WORK`, `DOCKHAND_OUTPUT`). It isolates nothing;
//! see docs/executors.md.
//!
//! The process is started by [`spawn`] (no fork of the worker), which sets its
//! process group, stdio, working directory and limits before the exec.
//!
//! Invariants:
//! - The job's process leads a process group of its own, and every signal goes
//!   to the whole group: a timeout or cancel sends SIGTERM, then SIGKILL after
//!   `worker.stop_grace_seconds`; when the leader exits, what is left of its
//!   group is killed, as a container's processes end with it.
//! - The job gets a clean environment (`PATH`, `HOME`/`TMPDIR` in its work dir,
//!   its own variables): the worker's variables hold its credentials.
//! - Limits that cannot be applied on this host are said in the job's log, never
//!   silently skipped.
//! - Beside each working directory a record (`<name>.json`) names the job and the
//!   worker process, so that the sweep of a later worker can stop and remove what
//!   a killed one left. It is written once, before the directory is made: the
//!   sweep finds the run's processes in `/proc` by their `DOCKHAND_WORK`, so the
//!   record needs no process group written after the start.
//! - After the run the directory is emptied and kept, with its record file, as a
//!   spare for this process's next run ([`spares`]: renamed, not made anew), or
//!   removed with the record when it cannot be: by the step that reads the
//!   outputs once the leader is reaped (one blocking step for both), else by the
//!   clean-up. A spare is checked to be as a fresh directory before it is used.
//! - Only a spare's take and return that remove nothing (the run stages no file;
//!   it left its folders empty) run on the runtime's threads; every removal and
//!   anything that reads or writes a job's files is a blocking step.

mod spares;
mod spawn;

use super::progress::FileReport;
use super::runner::{Ended, JobExecutor};
use super::sweep::{Labelled, RunOwner};
use super::{ExecError, JobOutput, RunContext, RunOutcome};
use crate::config::Settings;
use crate::job::{Job, DOCKHAND_DIR};
use crate::logs::{LineSplitter, LogSender, LogStream};
use serde::{Deserialize, Serialize};
use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::ExitStatus;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::AsyncReadExt;
use tokio::net::unix::pipe::Receiver;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use spares::{remove_files, Spares, FOLDERS};

/// What a run's record file ends with.
const RECORD: &str = ".json";

/// Runs jobs as host processes. Cheap to clone.
#[derive(Clone)]
pub struct LocalExecutor {
    settings: Arc<Settings>,
    /// `executors.local.base_dir`: the sweep looks at every worker's folder here.
    base: PathBuf,
    /// This worker's folder in it.
    root: PathBuf,
    worker_id: String,
    consumer: String,
    /// The worker's effective uid: root is not bound by RLIMIT_NPROC.
    uid: u32,
    /// Emptied run directories for the next runs of this process.
    spares: Arc<Spares>,
}

/// Who made a run, written beside its directory for the sweep. (A record of an
/// older worker also holds `pgid`, which is not read: the sweep finds the groups
/// in `/proc`.)
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Record {
    #[serde(flatten)]
    owner: RunOwner,
}

/// One run: its directory and, once started, its process group.
pub struct LocalRun {
    dir: PathBuf,
    record_path: PathBuf,
    /// The directory and record are gone already (removed with the outputs' read).
    removed: AtomicBool,
    /// The process group (the leader's pid), from the start until the leader
    /// is reaped; signals go to it only through [`LocalRun::signal`].
    pgid: Arc<spawn::Group>,
    /// The leader was started (its group may be gone since).
    started: AtomicBool,
    /// The leader's output pipes, until the log streamer takes them.
    pipes: Mutex<Option<(Receiver, Receiver)>>,
    /// The leader's exit, once reaped.
    exit: watch::Sender<Option<ExitStatus>>,
    /// The stamps of a spare's folders when the run took it, if they could
    /// vouch for them: the folders the run left as they were are not read again.
    stamps: Option<spares::Stamps>,
}

impl LocalExecutor {
    /// Makes this worker's folder under `executors.local.base_dir`, and this
    /// process's pool of spare run directories in it.
    pub fn new(settings: Arc<Settings>, consumer: &str) -> std::io::Result<LocalExecutor> {
        let base = PathBuf::from(&settings.executors.local.base_dir);
        let worker_id = settings.worker_id();
        let root = base.join(&worker_id);
        std::fs::create_dir_all(&root)?;
        // SAFETY: geteuid has no preconditions and cannot fail.
        let uid = unsafe { libc::geteuid() };
        let cap = settings.worker.concurrency.max(1);
        let spares = Arc::new(Spares::open(&root, consumer, uid, cap)?);
        Ok(LocalExecutor {
            spares,
            settings,
            base,
            root,
            worker_id,
            consumer: consumer.to_string(),
            uid,
        })
    }

    /// Removes the spare run directories of worker processes that are gone
    /// (any worker's under `base_dir`; see [`spares`]); returns how many pools.
    pub async fn remove_dead_spares(&self) -> usize {
        let base = self.base.clone();
        tokio::task::spawn_blocking(move || spares::remove_dead_pools(&base))
            .await
            .unwrap_or(0)
    }

    /// Removes this process's spare run directories, once no job runs: a
    /// stopped worker leaves nothing behind.
    pub async fn close(&self) {
        let spares = self.spares.clone();
        let _ = tokio::task::spawn_blocking(move || spares.close()).await;
    }

    /// Runs the job from prepare to clean up (see [`super::runner::drive`]).
    pub async fn run(&self, job: &Job, ctx: RunContext<'_>) -> Result<RunOutcome, ExecError> {
        super::runner::drive(self, job, &ctx).await
    }

    /// What the job's system log says at the start: which limits apply, and how.
    fn limit_lines(&self, job: &Job) -> Vec<String> {
        let l = &job.limits;
        let mut lines = vec![format!(
            "local executor: running on the worker's host as uid {}, without isolation",
            self.uid
        )];
        lines.push(format!(
            "limits.memory = {} applied as RLIMIT_AS (address space: virtual memory counts, \
             so it binds sooner than a container's limit)",
            crate::config::ByteSize(l.memory)
        ));
        if self.uid == 0 {
            lines.push(format!(
                "limits.pids = {} is not applied: RLIMIT_NPROC does not bind root",
                l.pids
            ));
        } else if l.pids > 0 {
            lines.push(format!(
                "limits.pids = {} applied as RLIMIT_NPROC, which counts every process of uid {}, not only this job's",
                l.pids, self.uid
            ));
        }
        if let Some(cpus) = l.cpus {
            lines.push(format!(
                "limits.cpus = {cpus} is not applied by the local executor"
            ));
        }
        lines
    }
}

/// `path` (absolute inside a container, under `/dockhand`) in the run's directory.
fn on_host(dir: &Path, path: &str) -> Option<PathBuf> {
    let rel = path.strip_prefix(DOCKHAND_DIR)?.strip_prefix('/')?;
    Some(dir.join(rel))
}

fn local(action: &'static str) -> impl FnOnce(std::io::Error) -> ExecError {
    move |source| ExecError::Local { action, source }
}

/// `env` with each name once, its last value kept (as `Command::env` does).
fn dedup_env(env: Vec<(OsString, OsString)>) -> Vec<(OsString, OsString)> {
    let mut kept: Vec<(OsString, OsString)> = Vec::with_capacity(env.len());
    for (name, value) in env {
        match kept.iter_mut().find(|(k, _)| *k == name) {
            Some(slot) => slot.1 = value,
            None => kept.push((name, value)),
        }
    }
    kept
}

/// Sends `signal` to the process group `pgid`; a group already gone is fine.
fn signal_group(pgid: i32, signal: libc::c_int) {
    if pgid <= 1 {
        return; // never the worker's own group, nor every process
    }
    // SAFETY: killpg only sends a signal; a wrong group is ESRCH, reported below.
    let sent = unsafe { libc::killpg(pgid, signal) };
    if sent != 0 {
        let e = std::io::Error::last_os_error();
        if e.raw_os_error() != Some(libc::ESRCH) {
            tracing::warn!(pgid, signal, error = %e, "cannot signal the job's process group");
        }
    }
}

impl LocalRun {
    /// Sends `signal` to the job's process group, unless its leader is not
    /// started or reaped already (then false). Under the group's lock, so the
    /// leader cannot be reaped meanwhile and its group's id cannot be reused.
    fn signal(&self, signal: libc::c_int) -> bool {
        let group = self.pgid.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(pgid) = *group {
            signal_group(pgid, signal);
        }
        group.is_some()
    }

    fn exited(&self) -> bool {
        self.exit.borrow().is_some()
    }

    async fn wait_exit(&self) {
        let mut rx = self.exit.subscribe();
        // The sender lives in `self`, so the wait ends only with an exit.
        let _ = rx.wait_for(|s| s.is_some()).await;
    }
}

impl JobExecutor for LocalExecutor {
    type Run = LocalRun;

    fn what(&self) -> &'static str {
        "the process group"
    }

    async fn prepare(&self, job: &Job, ctx: &RunContext<'_>) -> Result<LocalRun, ExecError> {
        let name = format!("{}-{}", job.id, ctx.attempt);
        let dir = self.root.join(&name);
        let record_path = self.root.join(format!("{name}{RECORD}"));
        let record = Record {
            owner: RunOwner::of(job, &self.worker_id, &self.consumer, ctx),
        };
        let mut run = LocalRun {
            dir: dir.clone(),
            record_path: record_path.clone(),
            removed: AtomicBool::new(false),
            pgid: Arc::default(),
            started: AtomicBool::new(false),
            pipes: Mutex::new(None),
            exit: watch::Sender::new(None),
            stamps: None,
        };
        let record = match serde_json::to_vec(&record) {
            Ok(r) => r,
            Err(e) => return Err(local("write the run's record")(std::io::Error::other(e))),
        };
        // Nothing to stage, no directory a killed attempt left, a spare fit to
        // take: no blocking step (and its two thread hops).
        if job.files.is_empty() && !std::fs::exists(&dir).unwrap_or(true) {
            if let Some(stamps) = self.spares.take_quick(&dir, &record_path, &record) {
                run.stamps = stamps;
                return Ok(run);
            }
        }
        let files = job.files.clone();
        let spares = self.spares.clone();
        let made = tokio::task::spawn_blocking(move || -> std::io::Result<()> {
            use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
            // A directory of the same name is what a killed attempt left: start afresh.
            if dir.exists() {
                std::fs::remove_dir_all(&dir)?;
            }
            if !spares.take(&dir, &record_path, &record)? {
                write_record(&record_path, &record)?;
                std::fs::DirBuilder::new().mode(0o700).create(&dir)?;
                for folder in FOLDERS {
                    std::fs::create_dir(dir.join(folder))?;
                }
            }
            for f in &files {
                let path = on_host(&dir, &f.path).ok_or_else(|| {
                    std::io::Error::other(format!("{} is outside {DOCKHAND_DIR}", f.path))
                })?;
                if let Some(parent) = path.parent() {
                    std::fs::create_dir_all(parent)?;
                }
                std::fs::write(&path, &f.content)?;
                std::fs::set_permissions(&path, std::fs::Permissions::from_mode(f.mode))?;
            }
            Ok(())
        })
        .await
        .map_err(|e| std::io::Error::other(e.to_string()))
        .and_then(|r| r);
        if let Err(e) = made {
            self.clean_up(run).await;
            return Err(local("make the job's working directory")(e));
        }
        Ok(run)
    }

    async fn start(
        &self,
        run: &LocalRun,
        job: &Job,
        ctx: &RunContext<'_>,
    ) -> Result<(), ExecError> {
        // Validation gives a local job a command (or its script's).
        let argv: Vec<String> = job
            .command
            .iter()
            .flatten()
            .map(|arg| {
                // A script is staged under /dockhand/work and named by that path.
                match job.files.iter().find(|f| f.path == *arg) {
                    Some(f) => on_host(&run.dir, &f.path)
                        .map(|p| p.to_string_lossy().into_owned())
                        .unwrap_or_else(|| arg.clone()),
                    None => arg.clone(),
                }
            })
            .collect();
        let Some((program, args)) = argv.split_first() else {
            return Err(ExecError::Unusable(
                "a local job needs a `command` or a `script`".into(),
            ));
        };
        // One system line, its parts joined: each line is a write to Redis of
        // its own (an `XADD` and a `PUBLISH`, and a script call per batch), and
        // three or four lines were most of a `true` job's log writes.
        ctx.logs.system(self.limit_lines(job).join("; ")).await;
        let folder = |f: &str| OsString::from(run.dir.join(f));
        let work = folder("work");
        // The job's environment, in the order a later value wins (the child
        // gets every pair; a name given twice keeps its last value).
        let mut env: Vec<(OsString, OsString)> = vec![
            (
                "PATH".into(),
                std::env::var_os("PATH").unwrap_or_else(|| "/usr/local/bin:/usr/bin:/bin".into()),
            ),
            ("HOME".into(), work.clone()),
            ("TMPDIR".into(), work.clone()),
        ];
        env.extend(job.env.iter().map(|(k, v)| (k.into(), v.into())));
        env.extend(job.secret_env.iter().map(|(k, v)| (k.into(), v.into())));
        env.extend([
            ("DOCKHAND_JOB_ID".into(), OsString::from(&job.id)),
            ("DOCKHAND_ATTEMPT".into(), ctx.attempt.to_string().into()),
            ("DOCKHAND_INPUT".into(), folder("input")),
            ("DOCKHAND_WORK".into(), work),
            ("DOCKHAND_OUTPUT".into(), folder("output")),
        ]);
        let mut limits = Vec::new();
        if job.limits.memory > 0 {
            limits.push((spawn::Resource::AddressSpace, job.limits.memory));
        }
        if self.uid != 0 && job.limits.pids > 0 {
            limits.push((spawn::Resource::Processes, job.limits.pids as u64));
        }
        let child = spawn::spawn(spawn::Spec {
            program: program.as_ref(),
            args,
            env: dedup_env(env),
            cwd: &run.dir.join("work"),
            limits,
        })
        .map_err(|source| ExecError::Spawn {
            program: program.clone(),
            source,
        })?;
        let spawn::Child {
            exit: leader,
            stdout,
            stderr,
        } = child;
        *run.pgid.lock().unwrap_or_else(|e| e.into_inner()) = Some(leader.pid());
        run.started.store(true, Ordering::Relaxed);
        *run.pipes.lock().unwrap_or_else(|e| e.into_inner()) = Some((stdout, stderr));
        let exit = run.exit.clone();
        let group = run.pgid.clone();
        // Reaped on a task of its own at once, so that no later step can leave
        // it unreaped. The leader gone, so is the rest of its group, as in a
        // container: the wait kills it.
        tokio::spawn(async move {
            let status = leader.wait(&group).await;
            let status = status.unwrap_or_else(|e| {
                tracing::warn!(error = %e, "cannot wait for the job's process");
                std::os::unix::process::ExitStatusExt::from_raw(libc::SIGKILL)
            });
            exit.send_replace(Some(status));
        });
        Ok(())
    }

    fn stream_logs(&self, run: &LocalRun, ctx: &RunContext<'_>) -> JoinHandle<()> {
        let pipes = run.pipes.lock().unwrap_or_else(|e| e.into_inner()).take();
        let logs = ctx.logs.clone();
        let max = self.settings.jobs.max_line_bytes;
        tokio::spawn(async move {
            if let Some((out, err)) = pipes {
                stream(out, err, logs, max).await;
            }
        })
    }

    async fn wait(&self, run: &LocalRun) {
        run.wait_exit().await
    }

    async fn cancel(&self, run: &LocalRun) -> Result<(), ExecError> {
        if !run.signal(libc::SIGTERM) {
            return Ok(()); // not started, or reaped already
        }
        let grace = Duration::from_secs(self.settings.worker.stop_grace_seconds);
        if tokio::time::timeout(grace, run.wait_exit()).await.is_err() {
            run.signal(libc::SIGKILL);
            tokio::time::timeout(Duration::from_secs(30), run.wait_exit())
                .await
                .ok();
        }
        Ok(())
    }

    async fn read_progress(&self, run: &LocalRun) -> Option<FileReport> {
        super::progress::read_local(run.dir.join("output")).await
    }

    async fn collect(
        &self,
        run: &LocalRun,
        job: &Job,
        ended: Ended,
    ) -> Result<RunOutcome, ExecError> {
        use std::os::unix::process::ExitStatusExt;
        let status = *run.exit.borrow();
        // As a shell reports a death by signal: 128 + its number.
        let exit_code = match status {
            Some(s) => s
                .code()
                .map(i64::from)
                .or(s.signal().map(|n| 128 + i64::from(n)))
                .unwrap_or(-1),
            None => -1,
        };
        // A reaped leader's group was killed then: the run's directory and record
        // can go in the same blocking step as the outputs' read (else clean_up
        // removes them).
        let remove = run
            .exited()
            .then(|| (run.dir.clone(), run.record_path.clone()));
        // A run that left its directory as it got it (no outputs, nothing in
        // its folders): back to the pool without a blocking step.
        let output = if remove.is_some()
            && self
                .spares
                .put_quick(&run.dir, &run.record_path, run.stamps.as_ref())
        {
            run.removed.store(true, Ordering::Relaxed);
            JobOutput::default()
        } else {
            let spares = self.spares.clone();
            let (output, removed) = collect_dir(run.dir.join("output"), job, remove, spares).await;
            if removed {
                run.removed.store(true, Ordering::Relaxed);
            }
            output?
        };
        Ok(RunOutcome {
            exit_code,
            oom_killed: false,
            timed_out: ended.timed_out,
            stopped: ended.stopped,
            image_id: None,
            output,
        })
    }

    async fn clean_up(&self, run: LocalRun) {
        // A leader not reaped yet (a run that failed half-way) still leads its
        // group; once reaped, its group was killed then.
        if run.signal(libc::SIGKILL) {
            tokio::time::timeout(Duration::from_secs(30), run.wait_exit())
                .await
                .ok();
        }
        if !run.removed.load(Ordering::Relaxed) {
            // A leader never started, or reaped (its group killed then), leaves
            // a directory fit to keep; else it is removed.
            let keep = run.exit.borrow().is_some() || !run.started.load(Ordering::Relaxed);
            let spares = keep.then(|| self.spares.clone());
            remove_run(run.dir, run.record_path, spares).await;
        }
    }

    async fn leftovers(&self) -> Result<Vec<Labelled>, ExecError> {
        let base = self.base.clone();
        tokio::task::spawn_blocking(move || list_records(&base))
            .await
            .map_err(|e| std::io::Error::other(e.to_string()))
            .and_then(|r| r)
            .map_err(local("list the local executor's working directories"))
    }

    async fn remove_leftover(&self, leftover: &Labelled) {
        let record_path = PathBuf::from(&leftover.id);
        let Some(dir) = leftover.id.strip_suffix(RECORD).map(PathBuf::from) else {
            return;
        };
        let work = dir.join("work");
        let groups = tokio::task::spawn_blocking(move || run_groups(&work))
            .await
            .unwrap_or_default();
        for pgid in groups {
            signal_group(pgid, libc::SIGKILL);
        }
        remove_run(dir, record_path, None).await;
    }
}

/// Writes a run's record, in one `write`. Not through a temporary file and a
/// rename: that cost each run a second entry change in the worker's folder,
/// whose lock all its runs share, and it is written once, before the run's
/// directory exists, so no reader depends on its replacement being atomic (one
/// that finds it empty or torn skips it, as a record of no run).
fn write_record(path: &Path, record: &[u8]) -> std::io::Result<()> {
    std::fs::write(path, record)
}

/// Removes a run's directory and its record, or gives them back to `spares`
/// (which removes what it cannot keep); failure is logged (the sweep retries).
async fn remove_run(dir: PathBuf, record: PathBuf, spares: Option<Arc<Spares>>) {
    let removed = tokio::task::spawn_blocking(move || match spares {
        Some(spares) => spares.put(&dir, &record),
        None => remove_files(&dir, &record),
    })
    .await;
    if let Ok(Err(e)) = removed {
        tracing::warn!(error = %e, "could not remove a local job's working directory");
    }
}

/// Every run record under `base` (`<base>/<worker id>/<name>.json`).
fn list_records(base: &Path) -> std::io::Result<Vec<Labelled>> {
    let mut found = Vec::new();
    let workers = match std::fs::read_dir(base) {
        Ok(w) => w,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(found),
        Err(e) => return Err(e),
    };
    for worker in workers.flatten() {
        let Ok(runs) = std::fs::read_dir(worker.path()) else {
            continue;
        };
        for run in runs.flatten() {
            let path = run.path();
            let name = path.to_string_lossy().into_owned();
            if !name.ends_with(RECORD) {
                continue;
            }
            let Some(r) = std::fs::read(&path)
                .ok()
                .and_then(|b| serde_json::from_slice::<Record>(&b).ok())
            else {
                continue;
            };
            found.push(Labelled::of_run(name, r.owner));
        }
    }
    Ok(found)
}

/// The process groups of the processes that still run in the run whose work
/// dir is `work` (their environment says so; a group id alone may be another
/// run's by now, or anyone's), the worker's own group left out.
fn run_groups(work: &Path) -> Vec<i32> {
    let needle = format!("DOCKHAND_WORK={}", work.to_string_lossy());
    // SAFETY: getpgrp has no preconditions and cannot fail.
    let own = unsafe { libc::getpgrp() };
    let mut groups = Vec::new();
    let Ok(procs) = std::fs::read_dir("/proc") else {
        return groups;
    };
    for p in procs.flatten() {
        if !p
            .file_name()
            .as_encoded_bytes()
            .iter()
            .all(u8::is_ascii_digit)
        {
            continue; // not a process (self, sys, …)
        }
        let path = p.path();
        let in_run = std::fs::read(path.join("environ"))
            .is_ok_and(|env| env.split(|b| *b == 0).any(|var| var == needle.as_bytes()));
        if !in_run {
            continue;
        }
        let pgid = std::fs::read_to_string(path.join("stat"))
            .ok()
            .and_then(|stat| {
                // pid (comm) state ppid pgrp …; comm may hold spaces and parentheses.
                let rest = &stat[stat.rfind(')')? + 1..];
                rest.split_whitespace().nth(2)?.parse::<i32>().ok()
            });
        if let Some(g) = pgid.filter(|g| *g > 1 && *g != own && !groups.contains(g)) {
            groups.push(g);
        }
    }
    groups
}

/// The output folder by the same rules as a container's: it is written as a tar
/// stream into a pipe and read by the reader of container archives, so that
/// nothing more than `limits.output_bytes` is held, whatever the folder holds.
/// Then, in the same blocking step, `remove` (the run's directory and record),
/// if given, goes back to `spares` or is removed: whether they are gone is the
/// second value (on a failure the clean-up tries again, and says why).
async fn collect_dir(
    output: PathBuf,
    job: &Job,
    remove: Option<(PathBuf, PathBuf)>,
    spares: Arc<Spares>,
) -> (Result<JobOutput, ExecError>, bool) {
    let budget = job.limits.output_bytes;
    let keep_files = job.collect_outputs;
    let done = tokio::task::spawn_blocking(move || {
        let read = super::files::read_dir_outputs(&output, budget, keep_files);
        let removed = remove.is_some_and(|(dir, record)| spares.put(&dir, &record).is_ok());
        (read, removed)
    })
    .await;
    let (read, removed) = match done {
        Ok(done) => done,
        Err(e) => (Err(std::io::Error::other(e.to_string())), false),
    };
    (read.map_err(local("read the job's output files")), removed)
}

/// Reads stdout and stderr as they come, into the job's log, line by line.
async fn stream(mut out: Receiver, mut err: Receiver, logs: LogSender, max: usize) {
    let mut splitters = [
        LineSplitter::new(LogStream::Stdout, max),
        LineSplitter::new(LogStream::Stderr, max),
    ];
    let (mut out_open, mut err_open) = (true, true);
    let mut out_buf = vec![0u8; 16 << 10];
    let mut err_buf = vec![0u8; 16 << 10];
    let mut lines = Vec::new();
    while out_open || err_open {
        let (index, read) = tokio::select! {
            n = out.read(&mut out_buf), if out_open => (0, n),
            n = err.read(&mut err_buf), if err_open => (1, n),
        };
        match read {
            Ok(0) | Err(_) => {
                if index == 0 {
                    out_open = false
                } else {
                    err_open = false
                }
            }
            Ok(n) => {
                let buf = if index == 0 { &out_buf } else { &err_buf };
                splitters[index].push(&buf[..n], &mut lines);
            }
        }
        for line in lines.drain(..) {
            logs.send(line).await;
        }
    }
    for s in &mut splitters {
        s.finish(&mut lines);
    }
    for line in lines.drain(..) {
        logs.send(line).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::executor::progress::read_in_place;

    #[test]
    fn container_paths_map_into_the_run_directory() {
        let dir = Path::new("/base/w/j-1");
        assert_eq!(
            on_host(dir, "/dockhand/work/job"),
            Some(PathBuf::from("/base/w/j-1/work/job"))
        );
        assert_eq!(on_host(dir, "/etc/passwd"), None);
        assert_eq!(on_host(dir, "/dockhandx/a"), None);
    }

    #[test]
    fn progress_file_rules_match_the_container_copy() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("progress.json");
        assert_eq!(read_in_place(&p), None);
        std::fs::write(&p, b"{\"progress\":0.5}").unwrap();
        assert_eq!(
            read_in_place(&p),
            Some(FileReport::Content(b"{\"progress\":0.5}".to_vec()))
        );
        std::fs::remove_file(&p).unwrap();
        std::os::unix::fs::symlink("/etc/passwd", &p).unwrap();
        assert_eq!(read_in_place(&p), Some(FileReport::Odd("a symlink".into())));
    }
}
