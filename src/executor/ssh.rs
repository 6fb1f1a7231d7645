//! The SSH executor (`"executor": "ssh"`, `"host": "<name>"`): a job runs as a
//! process of a host named in the worker's `[executors.ssh.hosts.<name>]`, as
//! that host's configured user, in a fresh directory
//! `$HOME/.dockhand/<worker id>/<job id>-<attempt>` holding `input/`, `work/`
//! and `output/` (passed as `DOCKHAND_INPUT`, `DOCKHAND_WORK`, `DOCKHAND_OUTPUT`).
//! See docs/executors.md for what it isolates (little).
//!
//! Invariants:
//! - The host's key is checked against the host's `known_hosts` file before
//!   anything is sent: a key not listed, or a different one, is refused; nothing
//!   is ever trusted on first use.
//! - The login key comes only from the worker's config (`key_file`), and the job's
//!   variables (`env`, `secret_env`) travel only on the command's stdin, read
//!   into the shell's memory: they are never written to a file on the host, nor
//!   put on a command line (where `ps` would show them).
//! - The job's process leads a session (and so a process group) of its own
//!   (`setsid`); its id is written to `<dir>/pgid`, and every signal goes to the
//!   whole group, by a second channel: SIGTERM, then SIGKILL after
//!   `worker.stop_grace_seconds`. When the leader exits the rest of its group is
//!   killed, as a container's processes end with it.
//! - A connection lost (or never made) is [`SshFailure::Unreachable`]: the
//!   worker retries a run that never started without using up an attempt, and
//!   ends one that had started `worker_lost` (it may have done part of its work),
//!   which the job's `retry.on` may retry. A refusal (host key, login) is not.
//! - Beside the directory a record (`<dir>.json`) names the job and the worker,
//!   so that the sweep of a later worker can stop and remove what a killed one
//!   left; the directory and the record are removed after the run.

use super::files::read_outputs;
use super::progress::FileReport;
use super::runner::{Ended, JobExecutor};
use super::sweep::{Labelled, RunOwner};
use super::{ExecError, JobOutput, RunContext, RunOutcome, SshFailure};
use crate::config::{Settings, SshHost};
use crate::job::{Job, DOCKHAND_DIR};
use crate::logs::{LineSplitter, LogStream};
use crate::result_server::PROGRESS_MAX_BYTES;
use russh::client::{self, Handle, Msg};
use russh::{Channel, ChannelMsg};
use russh_sftp::client::SftpSession;
use serde::{Deserialize, Serialize};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

/// Where runs go, under the remote user's home.
const BASE: &str = ".dockhand";
/// The longest a connection and login may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(30);
/// The most a helper command's output (a path, a record list) may hold.
const HELPER_MAX: usize = 4 << 20;

/// Runs jobs on the configured SSH hosts. Cheap to clone.
#[derive(Clone)]
pub struct SshExecutor {
    settings: Arc<Settings>,
    worker_id: String,
    consumer: String,
}

/// Who made a run, written beside its directory for the sweep.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Record {
    #[serde(flatten)]
    owner: RunOwner,
    /// The run's directory (absolute on the host).
    dir: String,
}

/// How the job's command ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Exit {
    Code(i64),
    /// The channel closed without an exit status: the connection was lost.
    Lost,
}

/// One run: its connection, its directory and, once started, its channel.
pub struct SshRun {
    host: String,
    session: Arc<Handle<Client>>,
    sftp: SftpSession,
    /// Absolute on the host.
    dir: String,
    channel: Mutex<Option<Channel<Msg>>>,
    exit: watch::Sender<Option<Exit>>,
}

/// Checks the server's key against the host's `known_hosts` file.
struct Client {
    address: String,
    port: u16,
    known_hosts: String,
    /// Why the key was refused, for the error (russh only says "unknown key").
    refused: Arc<Mutex<Option<String>>>,
}

impl client::Handler for Client {
    type Error = russh::Error;

    async fn check_server_key(
        &mut self,
        key: &russh::keys::PublicKeyOrCertificate,
    ) -> Result<bool, Self::Error> {
        let russh::keys::PublicKeyOrCertificate::PublicKey { key, .. } = key else {
            *self.refused.lock().unwrap_or_else(|e| e.into_inner()) =
                Some("the host offered a certificate; only known_hosts keys are accepted".into());
            return Ok(false);
        };
        let verdict =
            russh::keys::check_known_hosts_path(&self.address, self.port, key, &self.known_hosts);
        let why = match verdict {
            Ok(true) => return Ok(true),
            Ok(false) => format!(
                "its key ({}) is not in {} (add it there; keys are never trusted on first use)",
                key.algorithm(),
                self.known_hosts
            ),
            Err(russh::keys::Error::KeyChanged { line }) => format!(
                "its key does not match the one on line {line} of {}: refused (a changed host key may be an attack)",
                self.known_hosts
            ),
            Err(e) => format!("cannot read {}: {e}", self.known_hosts),
        };
        *self.refused.lock().unwrap_or_else(|e| e.into_inner()) = Some(why);
        Ok(false)
    }
}

fn failed(
    host: &str,
    kind: SshFailure,
    action: &'static str,
    source: impl std::error::Error + Send + Sync + 'static,
) -> ExecError {
    ExecError::Ssh {
        host: host.to_string(),
        action,
        kind,
        source: Box::new(source),
    }
}

/// Whether a russh error means the connection is gone rather than refused.
fn kind_of(e: &russh::Error) -> SshFailure {
    use russh::Error as E;
    match e {
        E::IO(_)
        | E::Disconnect
        | E::SendError
        | E::ConnectionTimeout
        | E::KeepaliveTimeout
        | E::InactivityTimeout
        | E::RecvError
        | E::HUP
        | E::ChannelOpenFailure(_) => SshFailure::Unreachable,
        _ => SshFailure::Refused,
    }
}

/// `s` quoted for a POSIX shell.
pub fn sh_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

/// The wrapper the job's command runs in, as `sh -c WRAPPER dockhand DIR ARGV…`:
/// it reads the job's variables from stdin (never from disk), starts the job in
/// a session of its own, records its process group, waits for it, and kills
/// what is left of the group.
const WRAPPER: &str = r#"d=$1; shift
cd "$d/work" || exit 127
eval "$(cat)" || exit 127
setsid "$@" </dev/null &
pid=$!
echo "$pid" > "$d/pgid"
wait "$pid"; st=$?
kill -KILL "-$pid" 2>/dev/null
exit "$st""#;

impl SshExecutor {
    pub fn new(settings: Arc<Settings>, worker_id: &str, consumer: &str) -> SshExecutor {
        SshExecutor {
            worker_id: worker_id.to_string(),
            consumer: consumer.to_string(),
            settings,
        }
    }

    /// Runs the job from prepare to clean up (see [`super::runner::drive`]).
    pub async fn run(&self, job: &Job, ctx: RunContext<'_>) -> Result<RunOutcome, ExecError> {
        super::runner::drive(self, job, &ctx).await
    }

    fn host(&self, name: &str) -> Result<&SshHost, ExecError> {
        self.settings.executors.ssh.hosts.get(name).ok_or_else(|| {
            ExecError::Unusable(format!(
                "SSH host {name:?} is not in this worker's executors.ssh.hosts"
            ))
        })
    }

    /// Connects to host `name`, checks its key and logs in.
    async fn connect(&self, name: &str) -> Result<Handle<Client>, ExecError> {
        let host = self.host(name)?;
        let refused = Arc::new(Mutex::new(None));
        let handler = Client {
            address: host.address.clone(),
            port: host.port,
            known_hosts: host.known_hosts.clone(),
            refused: refused.clone(),
        };
        let config = Arc::new(client::Config {
            // A host that vanished without closing (a cable, a VM paused) is
            // noticed within about a minute.
            keepalive_interval: Some(Duration::from_secs(15)),
            keepalive_max: 3,
            ..Default::default()
        });
        let key_file = host.key_file.clone();
        let key =
            tokio::task::spawn_blocking(move || russh::keys::load_secret_key(&key_file, None))
                .await
                .map_err(|e| failed(name, SshFailure::Refused, "read its key_file", e))?
                .map_err(|e| failed(name, SshFailure::Refused, "read its key_file", e))?;
        let login = async {
            let mut session =
                match client::connect(config, (host.address.as_str(), host.port), handler).await {
                    Ok(s) => s,
                    Err(e) => {
                        if let Some(why) = refused.lock().unwrap_or_else(|e| e.into_inner()).take()
                        {
                            return Err(ExecError::Ssh {
                                host: name.to_string(),
                                action: "trust the host's key",
                                kind: SshFailure::Refused,
                                source: why.into(),
                            });
                        }
                        let kind = kind_of(&e);
                        return Err(failed(name, kind, "connect", e));
                    }
                };
            let hash = session
                .best_supported_rsa_hash()
                .await
                .map_err(|e| failed(name, kind_of(&e), "log in", e))?
                .flatten();
            let auth = session
                .authenticate_publickey(
                    host.user.clone(),
                    russh::keys::PrivateKeyWithHashAlg::new(Arc::new(key), hash),
                )
                .await
                .map_err(|e| failed(name, kind_of(&e), "log in", e))?;
            if !auth.success() {
                return Err(ExecError::Ssh {
                    host: name.to_string(),
                    action: "log in",
                    kind: SshFailure::Refused,
                    source: format!("user {:?} was refused with key_file", host.user).into(),
                });
            }
            Ok(session)
        };
        match tokio::time::timeout(CONNECT_TIMEOUT, login).await {
            Ok(r) => r,
            Err(_) => Err(ExecError::Ssh {
                host: name.to_string(),
                action: "connect",
                kind: SshFailure::Unreachable,
                source: format!(
                    "no answer from {}:{} within {} s",
                    host.address,
                    host.port,
                    CONNECT_TIMEOUT.as_secs()
                )
                .into(),
            }),
        }
    }

    /// The system log lines saying where the job runs and which limits apply.
    fn limit_lines(&self, name: &str, job: &Job) -> Vec<String> {
        let l = &job.limits;
        let mut lines = vec![format!(
            "ssh executor: running on host {name:?} without isolation beyond its user's"
        )];
        lines.push(format!(
            "limits.memory = {} and limits.pids = {} are not applied by the ssh executor",
            crate::config::ByteSize(l.memory),
            l.pids
        ));
        if let Some(cpus) = l.cpus {
            lines.push(format!(
                "limits.cpus = {cpus} is not applied by the ssh executor"
            ));
        }
        lines
    }
}

/// Runs `command` on a fresh channel; its exit status and stdout (at most
/// [`HELPER_MAX`] bytes). `stdin` is sent first, then EOF.
async fn exec(
    session: &Handle<Client>,
    host: &str,
    action: &'static str,
    command: &str,
) -> Result<(u32, Vec<u8>), ExecError> {
    let mut ch = session
        .channel_open_session()
        .await
        .map_err(|e| failed(host, kind_of(&e), action, e))?;
    ch.exec(true, command)
        .await
        .map_err(|e| failed(host, kind_of(&e), action, e))?;
    ch.eof()
        .await
        .map_err(|e| failed(host, kind_of(&e), action, e))?;
    let mut out = Vec::new();
    let mut err = Vec::new();
    let mut status = None;
    while let Some(msg) = ch.wait().await {
        match msg {
            ChannelMsg::Data { data } if out.len() < HELPER_MAX => out.extend_from_slice(&data),
            ChannelMsg::ExtendedData { data, .. } if err.len() < 4096 => {
                err.extend_from_slice(&data)
            }
            ChannelMsg::ExitStatus { exit_status } => status = Some(exit_status),
            _ => {}
        }
    }
    match status {
        Some(0) => Ok((0, out)),
        Some(code) => Err(ExecError::Ssh {
            host: host.to_string(),
            action,
            kind: SshFailure::Refused,
            source: format!(
                "exit status {code}: {}",
                String::from_utf8_lossy(&err).trim()
            )
            .into(),
        }),
        None => Err(ExecError::Ssh {
            host: host.to_string(),
            action,
            kind: SshFailure::Unreachable,
            source: "the connection closed before the command ended".into(),
        }),
    }
}

/// `path` (absolute inside a container, under `/dockhand`) in the run's directory.
fn on_host(dir: &str, path: &str) -> Option<String> {
    let rel = path.strip_prefix(DOCKHAND_DIR)?.strip_prefix('/')?;
    Some(format!("{dir}/{rel}"))
}

impl SshRun {
    fn exited(&self) -> bool {
        self.exit.borrow().is_some()
    }

    async fn wait_exit(&self) {
        let mut rx = self.exit.subscribe();
        // The sender lives in `self`, so the wait ends only with an exit.
        let _ = rx.wait_for(|s| s.is_some()).await;
    }

    /// Sends `signal` (a name kill(1) knows) to the job's process group.
    async fn signal(&self, signal: &str) -> Result<(), ExecError> {
        let pgid_file = sh_quote(&format!("{}/pgid", self.dir));
        let command = format!(
            "p=$(cat {pgid_file} 2>/dev/null); [ -n \"$p\" ] && [ \"$p\" -gt 1 ] && kill -{signal} \"-$p\" 2>/dev/null; true"
        );
        exec(
            &self.session,
            &self.host,
            "signal the job's process group",
            &command,
        )
        .await
        .map(drop)
    }
}

impl JobExecutor for SshExecutor {
    type Run = SshRun;

    fn what(&self) -> &'static str {
        "the remote process group"
    }

    async fn prepare(&self, job: &Job, ctx: &RunContext<'_>) -> Result<SshRun, ExecError> {
        let name = job.spec.host.clone().unwrap_or_default();
        let session = self.connect(&name).await?;
        let run_name = format!("{}-{}", job.id, ctx.attempt);
        let mut parents: Vec<String> = job
            .files
            .iter()
            .filter_map(|f| {
                let rel = f.path.strip_prefix(DOCKHAND_DIR)?.strip_prefix('/')?;
                Some(rel.rsplit_once('/').map_or("", |(p, _)| p).to_string())
            })
            .filter(|p| !p.is_empty())
            .collect();
        parents.sort();
        parents.dedup();
        let record = |dir: &str| Record {
            owner: RunOwner::of(job, &self.worker_id, &self.consumer, ctx),
            dir: dir.to_string(),
        };
        // The record holds the directory's absolute path, which only the host
        // knows ($HOME): the shell writes it with the path filled in.
        let template = serde_json::to_string(&record("@DIR@"))
            .map_err(|e| ExecError::Unusable(format!("cannot write the run's record: {e}")))?;
        let (before, after) = template.split_once("@DIR@").unwrap_or((&template, ""));
        let mkdirs: String = parents
            .iter()
            .map(|p| format!(" \"$d\"/{}", sh_quote(p)))
            .collect();
        let command = format!(
            "set -e; umask 077; d=\"$HOME\"/{BASE}/{worker}/{run}; mkdir -p \"$HOME\"/{BASE}/{worker}; \
             rm -rf \"$d\"; printf '%s%s%s\\n' {before} \"$d\" {after} > \"$d.json\"; \
             mkdir \"$d\" \"$d/input\" \"$d/work\" \"$d/output\"; mkdir -p \"$d/work\"{mkdirs}; printf '%s' \"$d\"",
            worker = sh_quote(&self.worker_id),
            run = sh_quote(&run_name),
            before = sh_quote(before),
            after = sh_quote(after),
        );
        let (_, dir) = exec(&session, &name, "make the job's directory", &command).await?;
        let dir = String::from_utf8_lossy(&dir).into_owned();
        let sftp = async {
            let ch = session.channel_open_session().await?;
            ch.request_subsystem(true, "sftp").await?;
            Ok::<_, russh::Error>(ch)
        }
        .await
        .map_err(|e| failed(&name, kind_of(&e), "open SFTP", e))?;
        let sftp = SftpSession::new(sftp.into_stream())
            .await
            .map_err(|e| failed(&name, SshFailure::Refused, "open SFTP", e))?;
        let run = SshRun {
            host: name.clone(),
            session: Arc::new(session),
            sftp,
            dir: dir.clone(),
            channel: Mutex::new(None),
            exit: watch::Sender::new(None),
        };
        for f in &job.files {
            let Some(path) = on_host(&dir, &f.path) else {
                continue; // validation keeps staged files under /dockhand
            };
            let written = async {
                use russh_sftp::protocol::OpenFlags;
                let mut file = run
                    .sftp
                    .open_with_flags(
                        path.clone(),
                        OpenFlags::CREATE | OpenFlags::TRUNCATE | OpenFlags::WRITE,
                    )
                    .await
                    .map_err(std::io::Error::other)?;
                tokio::io::AsyncWriteExt::write_all(&mut file, &f.content).await?;
                let attrs = russh_sftp::protocol::FileAttributes {
                    permissions: Some(f.mode),
                    ..Default::default()
                };
                file.set_metadata(attrs)
                    .await
                    .map_err(std::io::Error::other)?;
                tokio::io::AsyncWriteExt::shutdown(&mut file).await
            }
            .await;
            if let Err(e) = written {
                self.clean_up(run).await;
                let kind = if e.kind() == std::io::ErrorKind::Other {
                    SshFailure::Refused
                } else {
                    SshFailure::Unreachable
                };
                return Err(failed(&name, kind, "upload the job's files (SFTP)", e));
            }
        }
        Ok(run)
    }

    async fn start(&self, run: &SshRun, job: &Job, ctx: &RunContext<'_>) -> Result<(), ExecError> {
        let host = self.host(&run.host)?;
        let mapped = |arg: &String| match job.files.iter().find(|f| f.path == *arg) {
            Some(f) => on_host(&run.dir, &f.path).unwrap_or_else(|| arg.clone()),
            None => arg.clone(),
        };
        let argv: Vec<String> = match &job.spec.script {
            // The host's interpreter, by name (checked when the job was admitted).
            Some(script) => {
                let wanted = script.interpreter.clone().unwrap_or_default();
                let Some(line) = host.interpreters.get(&wanted) else {
                    return Err(ExecError::Unusable(format!(
                        "SSH host {:?} has no interpreter {wanted:?}",
                        run.host
                    )));
                };
                let path = job.command.iter().flatten().last().map(mapped);
                line.split_whitespace()
                    .map(str::to_string)
                    .chain(path)
                    .collect()
            }
            None => job.command.iter().flatten().map(mapped).collect(),
        };
        if argv.is_empty() {
            return Err(ExecError::Unusable(
                "an ssh job needs a `command` or a `script`".into(),
            ));
        }
        for line in self.limit_lines(&run.host, job) {
            ctx.logs.system(line).await;
        }
        let command = format!(
            "exec /bin/sh -c {} dockhand {} {}",
            sh_quote(WRAPPER),
            sh_quote(&run.dir),
            argv.iter()
                .map(|a| sh_quote(a))
                .collect::<Vec<_>>()
                .join(" ")
        );
        let folder = |f: &str| format!("{}/{f}", run.dir);
        let mut env = String::new();
        let vars = job
            .env
            .iter()
            .chain(job.secret_env.iter())
            .map(|(k, v)| (k.clone(), v.clone()))
            .chain([
                ("DOCKHAND_JOB_ID".to_string(), job.id.clone()),
                ("DOCKHAND_ATTEMPT".to_string(), ctx.attempt.to_string()),
                ("DOCKHAND_INPUT".to_string(), folder("input")),
                ("DOCKHAND_WORK".to_string(), folder("work")),
                ("DOCKHAND_OUTPUT".to_string(), folder("output")),
            ]);
        for (k, v) in vars {
            // Names are checked at validation; one that is not a shell name
            // would break the script, so it is left out rather than run.
            if k.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
                && !k.starts_with(|c: char| c.is_ascii_digit())
            {
                env.push_str(&format!("export {k}={}\n", sh_quote(&v)));
            }
        }
        let name = run.host.clone();
        let ch = async {
            let ch = run.session.channel_open_session().await?;
            ch.exec(true, command).await?;
            ch.data_bytes(env.into_bytes()).await?;
            ch.eof().await?;
            Ok::<_, russh::Error>(ch)
        }
        .await
        .map_err(|e| failed(&name, kind_of(&e), "start the job", e))?;
        *run.channel.lock().unwrap_or_else(|e| e.into_inner()) = Some(ch);
        Ok(())
    }

    fn stream_logs(&self, run: &SshRun, ctx: &RunContext<'_>) -> JoinHandle<()> {
        let channel = run.channel.lock().unwrap_or_else(|e| e.into_inner()).take();
        let logs = ctx.logs.clone();
        let max = self.settings.jobs.max_line_bytes;
        let exit = run.exit.clone();
        tokio::spawn(async move {
            let Some(mut ch) = channel else {
                exit.send_replace(Some(Exit::Lost));
                return;
            };
            let mut splitters = [
                LineSplitter::new(LogStream::Stdout, max),
                LineSplitter::new(LogStream::Stderr, max),
            ];
            let mut lines = Vec::new();
            let mut status = None;
            while let Some(msg) = ch.wait().await {
                match msg {
                    ChannelMsg::Data { data } => splitters[0].push(&data, &mut lines),
                    ChannelMsg::ExtendedData { data, ext: 1 } => {
                        splitters[1].push(&data, &mut lines)
                    }
                    ChannelMsg::ExitStatus { exit_status } => {
                        status = Some(Exit::Code(i64::from(exit_status)))
                    }
                    // The wrapper shell itself killed: as a shell reports it.
                    ChannelMsg::ExitSignal { .. } => status = Some(Exit::Code(128 + 9)),
                    _ => {}
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
            exit.send_replace(Some(status.unwrap_or(Exit::Lost)));
        })
    }

    async fn wait(&self, run: &SshRun) {
        run.wait_exit().await
    }

    async fn cancel(&self, run: &SshRun) -> Result<(), ExecError> {
        if run.exited() {
            return Ok(());
        }
        if let Err(e) = run.signal("TERM").await {
            // A lost connection shows in the run's exit; nothing more to do here.
            tracing::warn!(error = %crate::telemetry::error_chain(&e), "cannot stop the remote job");
            return Ok(());
        }
        let grace = Duration::from_secs(self.settings.worker.stop_grace_seconds);
        if tokio::time::timeout(grace, run.wait_exit()).await.is_err() {
            if let Err(e) = run.signal("KILL").await {
                tracing::warn!(error = %crate::telemetry::error_chain(&e), "cannot kill the remote job");
            }
            tokio::time::timeout(Duration::from_secs(30), run.wait_exit())
                .await
                .ok();
        }
        Ok(())
    }

    async fn read_progress(&self, run: &SshRun) -> Option<FileReport> {
        let path = format!("{}/output/{}", run.dir, super::progress::PROGRESS_FILE);
        let meta = run.sftp.symlink_metadata(path.clone()).await.ok()?;
        if let Some(odd) = super::progress::odd_file(
            meta.is_regular(),
            meta.is_symlink(),
            meta.is_dir(),
            meta.len(),
        ) {
            return Some(odd);
        }
        let mut content = run.sftp.read(path).await.ok()?;
        content.truncate(PROGRESS_MAX_BYTES as usize);
        Some(FileReport::Content(content))
    }

    async fn collect(
        &self,
        run: &SshRun,
        job: &Job,
        ended: Ended,
    ) -> Result<RunOutcome, ExecError> {
        let exit_code = match *run.exit.borrow() {
            Some(Exit::Code(c)) => c,
            Some(Exit::Lost) | None => return Err(ExecError::Ssh {
                host: run.host.clone(),
                action: "follow the job",
                kind: SshFailure::Unreachable,
                source:
                    "the connection was lost while the job ran; it may have done part of its work"
                        .into(),
            }),
        };
        let output = collect_output(run, job).await?;
        Ok(RunOutcome {
            exit_code,
            oom_killed: false,
            timed_out: ended.timed_out,
            stopped: ended.stopped,
            image_id: None,
            output,
        })
    }

    async fn clean_up(&self, run: SshRun) {
        if !run.exited() && run.channel.lock().is_ok_and(|c| c.is_none()) {
            // Started but not followed to its end (a failure half-way): stop it.
            let _ = run.signal("KILL").await;
        }
        let _ = run.sftp.close().await;
        let command = format!("rm -rf {dir} {dir}.json", dir = sh_quote(&run.dir));
        if let Err(e) = exec(
            &run.session,
            &run.host,
            "remove the job's directory",
            &command,
        )
        .await
        {
            tracing::warn!(host = %run.host, error = %crate::telemetry::error_chain(&e), "could not remove a remote job's directory; the sweep will");
        }
        let _ = run
            .session
            .disconnect(russh::Disconnect::ByApplication, "", "en")
            .await;
    }

    async fn leftovers(&self) -> Result<Vec<Labelled>, ExecError> {
        let mut found = Vec::new();
        for name in self.settings.executors.ssh.hosts.keys() {
            // A host that is away now is looked at on a later pass.
            let session = match self.connect(name).await {
                Ok(s) => s,
                Err(e) => {
                    tracing::warn!(host = %name, error = %crate::telemetry::error_chain(&e), "cannot sweep an SSH host");
                    continue;
                }
            };
            let command = format!(
                "for f in \"$HOME\"/{BASE}/*/*.json; do [ -f \"$f\" ] && cat \"$f\"; done; true"
            );
            let listed = exec(&session, name, "list the runs on the host", &command).await;
            let _ = session
                .disconnect(russh::Disconnect::ByApplication, "", "en")
                .await;
            let Ok((_, out)) = listed else { continue };
            for line in String::from_utf8_lossy(&out).lines() {
                let Ok(r) = serde_json::from_str::<Record>(line) else {
                    continue;
                };
                found.push(Labelled::of_run(format!("{name}\n{}", r.dir), r.owner));
            }
        }
        Ok(found)
    }

    async fn remove_leftover(&self, leftover: &Labelled) {
        let Some((name, dir)) = leftover.id.split_once('\n') else {
            return;
        };
        let Ok(session) = self.connect(name).await else {
            return;
        };
        // The recorded group is killed only while its leader still works in this
        // run's directory: a group id may have been reused since.
        let command = format!(
            "d={dir}; p=$(cat \"$d/pgid\" 2>/dev/null); \
             if [ -n \"$p\" ] && [ \"$p\" -gt 1 ] && [ \"$(readlink /proc/$p/cwd 2>/dev/null)\" = \"$d/work\" ]; then kill -KILL \"-$p\" 2>/dev/null; fi; \
             rm -rf \"$d\" \"$d.json\"",
            dir = sh_quote(dir)
        );
        if let Err(e) = exec(&session, name, "remove a leftover run", &command).await {
            tracing::warn!(host = %name, error = %crate::telemetry::error_chain(&e), "could not remove a leftover remote run");
        }
        let _ = session
            .disconnect(russh::Disconnect::ByApplication, "", "en")
            .await;
    }
}

/// The output folder, by the same rules as a container's: the host's `tar`
/// streams it over a channel into the reader of container archives, so nothing
/// beyond `limits.output_bytes` is held, whatever the folder holds.
async fn collect_output(run: &SshRun, job: &Job) -> Result<JobOutput, ExecError> {
    let host = run.host.clone();
    let command = format!("cd {} && exec tar -cf - output", sh_quote(&run.dir));
    let mut ch = async {
        let ch = run.session.channel_open_session().await?;
        ch.exec(true, command).await?;
        ch.eof().await?;
        Ok::<_, russh::Error>(ch)
    }
    .await
    .map_err(|e| failed(&host, kind_of(&e), "read the job's output files", e))?;
    let (tx, rx) = mpsc::channel::<bytes::Bytes>(16);
    let budget = job.limits.output_bytes;
    let keep = job.collect_outputs;
    let reading = tokio::task::spawn_blocking(move || {
        read_outputs(
            ChunkReader {
                rx,
                chunk: bytes::Bytes::new(),
            },
            budget,
            keep,
        )
    });
    let mut closed = false;
    while let Some(msg) = ch.wait().await {
        match msg {
            // A reader that stopped early (over budget) has dropped its end
            // (a clone of `Bytes` is a reference count, not a copy).
            ChannelMsg::Data { data } if tx.send(data.clone()).await.is_err() => break,
            ChannelMsg::Close => {
                closed = true;
                break;
            }
            _ => {}
        }
    }
    drop(tx);
    let _ = ch.close().await;
    let read = reading
        .await
        .map_err(|e| std::io::Error::other(e.to_string()))
        .and_then(|r| r);
    match read {
        Ok(out) => Ok(out),
        Err(e) if !closed && run.session.is_closed() => Err(failed(
            &host,
            SshFailure::Unreachable,
            "read the job's output files",
            e,
        )),
        Err(e) => Err(ExecError::Local {
            action: "read the job's output files",
            source: e,
        }),
    }
}

/// Reads the chunks a channel brought, in a blocking thread.
struct ChunkReader {
    rx: mpsc::Receiver<bytes::Bytes>,
    chunk: bytes::Bytes,
}

impl std::io::Read for ChunkReader {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        while self.chunk.is_empty() {
            match self.rx.blocking_recv() {
                Some(c) => self.chunk = c,
                None => return Ok(0),
            }
        }
        let n = buf.len().min(self.chunk.len());
        buf[..n].copy_from_slice(&self.chunk.split_to(n));
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quoting_survives_any_value() {
        assert_eq!(sh_quote("a b"), "'a b'");
        assert_eq!(sh_quote("it's"), r"'it'\''s'");
        let out = std::process::Command::new("sh")
            .arg("-c")
            .arg(format!("printf %s {}", sh_quote("x'$(id)\n`y`\"")))
            .output()
            .unwrap();
        assert_eq!(out.stdout, b"x'$(id)\n`y`\"");
    }

    #[test]
    fn container_paths_map_into_the_run_directory() {
        assert_eq!(
            on_host("/h/.dockhand/w/j-1", "/dockhand/work/job").as_deref(),
            Some("/h/.dockhand/w/j-1/work/job")
        );
        assert_eq!(on_host("/d", "/etc/passwd"), None);
    }
}
