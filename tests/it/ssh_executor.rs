//! The SSH executor (`"executor": "ssh"`) against a real OpenSSH server
//! (Debian's `openssh-server`), started here on a free loopback port with a host
//! key and a login key this test makes, running as the current user: a Python
//! script streams its lines live, its output files come back, a timeout kills
//! the remote process, a cancel kills its whole process group, a wrong host key
//! is refused, a server stopped mid-job is a lost worker, what a killed worker
//! left running on the host is swept by the next one, a host that does not
//! answer defers the job (no attempt used) until it does, and an unknown host or
//! interpreter is refused.

use crate::common::{free_port, wait_until, Env, Worker};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

/// An sshd of this test's own, killed when dropped.
struct Sshd {
    child: Child,
    port: u16,
    dir: tempfile::TempDir,
}

fn keygen(path: &Path) {
    let ok = Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-f"])
        .arg(path)
        .status()
        .expect("ssh-keygen (openssh-client) is installed")
        .success();
    assert!(ok, "ssh-keygen failed");
}

impl Sshd {
    fn start() -> Sshd {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        keygen(&d.join("host_key"));
        keygen(&d.join("client_key"));
        std::fs::copy(d.join("client_key.pub"), d.join("authorized_keys")).unwrap();
        let port = free_port();
        let config = format!(
            "Port {port}\nListenAddress 127.0.0.1\nHostKey {d}/host_key\nPidFile {d}/sshd.pid\n\
             AuthorizedKeysFile {d}/authorized_keys\nStrictModes no\nUsePAM no\n\
             PasswordAuthentication no\nKbdInteractiveAuthentication no\nPermitRootLogin prohibit-password\n\
             Subsystem sftp internal-sftp\n",
            d = d.display()
        );
        std::fs::write(d.join("sshd_config"), config).unwrap();
        let host_pub = std::fs::read_to_string(d.join("host_key.pub")).unwrap();
        std::fs::write(
            d.join("known_hosts"),
            format!("[127.0.0.1]:{port} {host_pub}"),
        )
        .unwrap();
        // sshd refuses to start without its privilege separation directory,
        // which Debian's package makes only through its service unit.
        let _ = std::fs::create_dir_all("/run/sshd");
        let child = Self::spawn(d);
        Sshd { child, port, dir }
    }

    fn spawn(d: &Path) -> Child {
        Command::new("/usr/sbin/sshd")
            .args(["-D", "-f"])
            .arg(d.join("sshd_config"))
            .arg("-E")
            .arg(d.join("sshd.log"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("/usr/sbin/sshd (openssh-server) is installed")
    }

    /// Starts the server again, on the same port with the same keys, after `stop`.
    fn restart(&mut self) {
        self.child = Self::spawn(self.dir.path());
    }

    fn path(&self, name: &str) -> String {
        self.dir.path().join(name).to_string_lossy().into_owned()
    }

    async fn ready(&mut self) {
        if let Ok(Some(status)) = self.child.try_wait() {
            panic!(
                "sshd ended ({status}): {}",
                std::fs::read_to_string(self.path("sshd.log")).unwrap_or_default()
            );
        }
        wait_until("sshd to listen", || async {
            std::net::TcpStream::connect(("127.0.0.1", self.port))
                .ok()
                .map(|_| ())
        })
        .await;
    }

    /// Kills the server and every sshd process it started (the sessions), as
    /// a host that goes away; the sessions' own children are left running.
    fn stop(&mut self) {
        let mut doomed = vec![self.child.id() as i32];
        let mut i = 0;
        while i < doomed.len() {
            let parent = doomed[i];
            for p in std::fs::read_dir("/proc").unwrap().flatten() {
                let Ok(pid) = p.file_name().to_string_lossy().parse::<i32>() else {
                    continue;
                };
                let Ok(stat) = std::fs::read_to_string(p.path().join("stat")) else {
                    continue;
                };
                let Some(rest) = stat.rfind(')').map(|i| &stat[i + 1..]) else {
                    continue;
                };
                let ppid = rest.split_whitespace().nth(1).and_then(|s| s.parse().ok());
                let comm = std::fs::read_to_string(p.path().join("comm")).unwrap_or_default();
                if ppid == Some(parent) && comm.starts_with("sshd") {
                    doomed.push(pid);
                }
            }
            i += 1;
        }
        for pid in doomed {
            // SAFETY: kill only sends a signal.
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
        let _ = self.child.wait();
    }
}

impl Drop for Sshd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The settings that make `sshd` the host `lab1`, checked against `known_hosts`.
fn ssh_settings(sshd: &Sshd, known_hosts: &str) -> Vec<(&'static str, String)> {
    let user = std::env::var("USER").unwrap_or_else(|_| "root".into());
    vec![
        (
            "DOCKHAND__EXECUTORS__SSH__HOSTS__LAB1__ADDRESS",
            "127.0.0.1".into(),
        ),
        (
            "DOCKHAND__EXECUTORS__SSH__HOSTS__LAB1__PORT",
            sshd.port.to_string(),
        ),
        ("DOCKHAND__EXECUTORS__SSH__HOSTS__LAB1__USER", user),
        (
            "DOCKHAND__EXECUTORS__SSH__HOSTS__LAB1__KEY_FILE",
            sshd.path("client_key"),
        ),
        (
            "DOCKHAND__EXECUTORS__SSH__HOSTS__LAB1__KNOWN_HOSTS",
            known_hosts.into(),
        ),
        (
            "DOCKHAND__EXECUTORS__SSH__HOSTS__LAB1__INTERPRETERS__PYTHON3",
            "/usr/bin/python3 -u".into(),
        ),
    ]
}

/// A worker whose host `lab1` is `sshd`, checked against `known_hosts`.
fn ssh_worker(env: &Env, sshd: &Sshd, known_hosts: &str) -> Worker {
    let vars = ssh_settings(sshd, known_hosts);
    let extra: Vec<(&str, &str)> = vars.iter().map(|(k, v)| (*k, v.as_str())).collect();
    Worker::start(env.settings(&["default"], 2, &extra))
}

fn ssh(id: &str, extra: serde_json::Value) -> String {
    let mut v = serde_json::json!({ "id": id, "executor": "ssh", "host": "lab1" });
    v.as_object_mut()
        .unwrap()
        .extend(extra.as_object().unwrap().clone());
    v.to_string()
}

/// A Python script that prints `early`, writes its pid to `pid_file`, waits
/// for `gate` to exist, then writes an output file and ends.
fn gated_script(pid_file: &Path, gate: &Path) -> String {
    format!(
        "import os, sys, time, pathlib\n\
         print('early'); open({pid:?}, 'w').write(str(os.getpid()))\n\
         print('to stderr', file=sys.stderr)\n\
         while not os.path.exists({gate:?}): time.sleep(0.05)\n\
         out = pathlib.Path(os.environ['DOCKHAND_OUTPUT'])\n\
         (out / 'made.txt').write_text(pathlib.Path(os.environ['DOCKHAND_INPUT'], 'data.txt').read_text().upper() + os.environ['TOKEN'])\n\
         print('late', os.environ['GREETING'])\n",
        pid = pid_file.to_string_lossy(),
        gate = gate.to_string_lossy()
    )
}

fn alive(pid: i32) -> bool {
    // A zombie has no cmdline; a process gone has no /proc entry.
    std::fs::read(format!("/proc/{pid}/cmdline")).is_ok_and(|c| !c.is_empty())
}

fn read_pid(path: &PathBuf) -> Option<i32> {
    std::fs::read_to_string(path).ok()?.trim().parse().ok()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_script_streams_live_and_its_outputs_come_back() {
    let env = Env::new();
    let mut sshd = Sshd::start();
    sshd.ready().await;
    let worker = ssh_worker(&env, &sshd, &sshd.path("known_hosts"));
    let scratch = tempfile::tempdir().unwrap();
    let (pid_file, gate) = (scratch.path().join("pid"), scratch.path().join("gate"));
    let id = format!("{}-stream", env.prefix);
    env.xadd(
        "default",
        &ssh(
            &id,
            serde_json::json!({
                "script": {"content": gated_script(&pid_file, &gate), "interpreter": "python3", "filename": "run.py"},
                "inputs": [{"path": "data.txt", "content": "abc"}],
                "env": {"GREETING": "hi"}, "secret_env": {"TOKEN": "s3cr3t"},
            }),
        ),
    )
    .await;
    // Live: the early line is in the log while the script still waits.
    env.wait_for_log_line(&id, "stdout", "early").await;
    assert!(!gate.exists());
    let job = env.job(&id).await;
    assert_eq!(job["status"], "running", "{job:?}");
    std::fs::write(&gate, b"").unwrap();
    let job = env.finished(&id).await;
    assert_eq!(
        (job["status"].as_str(), job["exit_code"].as_str()),
        ("completed", "0"),
        "{job:?}"
    );
    assert_eq!(env.lines(&id, "stdout").await, vec!["early", "late hi"]);
    assert_eq!(env.lines(&id, "stderr").await, vec!["to stderr"]);
    let files: serde_json::Value = serde_json::from_str(&job["files"]).unwrap();
    assert_eq!(files[0]["name"], "made.txt", "{files}");
    assert_eq!(
        files[0]["size"], 9,
        "ABC + the secret, from the remote output/"
    );
    // The remote directory is gone after the run.
    let home = std::env::var("HOME").unwrap();
    let runs = Path::new(&home).join(".dockhand").join(&env.prefix);
    let left: Vec<_> = std::fs::read_dir(&runs)
        .map(|d| d.flatten().map(|e| e.path()).collect())
        .unwrap_or_default();
    assert!(left.is_empty(), "left on the host: {left:?}");
    worker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_timeout_kills_the_remote_process() {
    let env = Env::new();
    let mut sshd = Sshd::start();
    sshd.ready().await;
    let worker = ssh_worker(&env, &sshd, &sshd.path("known_hosts"));
    let scratch = tempfile::tempdir().unwrap();
    let (pid_file, gate) = (scratch.path().join("pid"), scratch.path().join("never"));
    let id = format!("{}-timeout", env.prefix);
    env.xadd(
        "default",
        &ssh(
            &id,
            serde_json::json!({
                "script": {"content": gated_script(&pid_file, &gate), "interpreter": "python3"},
                "limits": {"timeout_seconds": 2},
            }),
        ),
    )
    .await;
    let job = env.finished(&id).await;
    assert_eq!(
        (job["status"].as_str(), job["reason"].as_str()),
        ("aborted", "timeout"),
        "{job:?}"
    );
    let pid = read_pid(&pid_file).expect("the script wrote its pid");
    wait_until("the remote process to be gone", || async {
        (!alive(pid)).then_some(())
    })
    .await;
    worker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_host_key_is_refused() {
    let env = Env::new();
    let mut sshd = Sshd::start();
    sshd.ready().await;
    let other = tempfile::tempdir().unwrap();
    keygen(&other.path().join("k"));
    let wrong = other.path().join("known_hosts");
    let key = std::fs::read_to_string(other.path().join("k.pub")).unwrap();
    std::fs::write(&wrong, format!("[127.0.0.1]:{} {key}", sshd.port)).unwrap();
    let worker = ssh_worker(&env, &sshd, &wrong.to_string_lossy());
    let id = format!("{}-wrongkey", env.prefix);
    env.xadd(
        "default",
        &ssh(&id, serde_json::json!({"command": "echo should-not-run"})),
    )
    .await;
    let job = env.finished(&id).await;
    assert_eq!(job["status"], "aborted", "{job:?}");
    assert!(
        job["error"].contains("does not match") && job["error"].contains("lab1"),
        "{job:?}"
    );
    assert!(env.lines(&id, "stdout").await.is_empty());
    worker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unknown_host_or_interpreter_is_refused() {
    let env = Env::new();
    let sshd = Sshd::start();
    let worker = ssh_worker(&env, &sshd, &sshd.path("known_hosts"));
    let host = format!("{}-host", env.prefix);
    let interp = format!("{}-interp", env.prefix);
    let mut spec: serde_json::Value =
        serde_json::from_str(&ssh(&host, serde_json::json!({"command": "true"}))).unwrap();
    spec["host"] = "lab9".into();
    env.xadd("default", &spec.to_string()).await;
    env.xadd(
        "default",
        &ssh(
            &interp,
            serde_json::json!({"script": {"content": "1", "interpreter": "ruby"}}),
        ),
    )
    .await;
    let job = env.finished(&host).await;
    assert_eq!(
        (job["reason"].as_str(), job["status"].as_str()),
        ("policy_denied", "aborted"),
        "{job:?}"
    );
    assert!(job["error"].starts_with("`host`"), "{job:?}");
    let job = env.finished(&interp).await;
    assert_eq!(job["reason"], "policy_denied", "{job:?}");
    assert!(job["error"].starts_with("`script.interpreter`"), "{job:?}");
    worker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_server_stopped_mid_job_is_a_lost_worker() {
    let env = Env::new();
    let mut sshd = Sshd::start();
    sshd.ready().await;
    let worker = ssh_worker(&env, &sshd, &sshd.path("known_hosts"));
    let scratch = tempfile::tempdir().unwrap();
    let (pid_file, gate) = (scratch.path().join("pid"), scratch.path().join("gate"));
    let id = format!("{}-lost", env.prefix);
    env.xadd(
        "default",
        &ssh(
            &id,
            serde_json::json!({
                "script": {"content": gated_script(&pid_file, &gate), "interpreter": "python3"},
            }),
        ),
    )
    .await;
    env.wait_for_log_line(&id, "stdout", "early").await;
    sshd.stop();
    // worker_lost: retried when the job's `retry.on` has it (it has not here).
    let job = env.finished(&id).await;
    let system = env.lines(&id, "system").await.join("\n");
    assert!(
        system.contains("connection was lost"),
        "the lost connection is said: {system}"
    );
    assert_eq!(
        (job["status"].as_str(), job["reason"].as_str()),
        ("aborted", "worker_lost"),
        "{job:?}"
    );
    // Unblock and end the orphaned script.
    std::fs::write(&gate, b"").unwrap();
    if let Some(pid) = read_pid(&pid_file) {
        // SAFETY: kill only sends a signal.
        unsafe { libc::kill(pid, libc::SIGKILL) };
    }
    worker.stop().await;
}

/// A Python script that starts a child, writes `<own pid> <child pid>` to
/// `pids`, prints `early`, and sleeps; unless `done` exists, then it prints
/// `again` and ends at once (so a second attempt finishes).
fn sleeper(pids: &Path, done: &Path) -> String {
    format!(
        "import os, subprocess, time\n\
         if os.path.exists({done:?}):\n    print('again'); raise SystemExit(0)\n\
         open({done:?}, 'w').close()\n\
         child = subprocess.Popen(['sleep', '1000'])\n\
         open({pids:?}, 'w').write(f'{{os.getpid()}} {{child.pid}}')\n\
         print('early')\n\
         time.sleep(1000)\n",
        pids = pids.to_string_lossy(),
        done = done.to_string_lossy()
    )
}

/// Submits [`sleeper`] as job `id` and waits until it runs: returns the pids
/// of the script and of its child.
async fn start_sleeper(env: &Env, id: &str, pids: &Path, done: &Path) -> Vec<i32> {
    env.xadd(
        "default",
        &ssh(
            id,
            serde_json::json!({"script": {"content": sleeper(pids, done), "interpreter": "python3"}}),
        ),
    )
    .await;
    env.wait_for_log_line(id, "stdout", "early").await;
    let running = read_pids(pids);
    assert_eq!(running.len(), 2, "the script and its child: {running:?}");
    running
}

fn read_pids(path: &Path) -> Vec<i32> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .split_whitespace()
        .filter_map(|p| p.parse().ok())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancel_kills_the_remote_process_group() {
    let env = Env::new();
    let mut sshd = Sshd::start();
    sshd.ready().await;
    let worker = ssh_worker(&env, &sshd, &sshd.path("known_hosts"));
    let scratch = tempfile::tempdir().unwrap();
    let (pids, done) = (scratch.path().join("pids"), scratch.path().join("done"));
    let id = format!("{}-cancel", env.prefix);
    let running = start_sleeper(&env, &id, &pids, &done).await;
    assert!(running.iter().all(|p| alive(*p)));
    let out = crate::common::cli(&env, &["cancel", &id]).await;
    assert!(out.status.success(), "{out:?}");
    let job = env.finished(&id).await;
    assert_eq!(
        (job["status"].as_str(), job["reason"].as_str()),
        ("aborted", "cancelled"),
        "{job:?}"
    );
    wait_until("the script and its child to be gone", || async {
        running.iter().all(|p| !alive(*p)).then_some(())
    })
    .await;
    worker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn what_a_killed_worker_left_on_the_host_is_swept_by_the_next() {
    let env = Env::new();
    let mut sshd = Sshd::start();
    sshd.ready().await;
    let vars = ssh_settings(&sshd, &sshd.path("known_hosts"));
    let extra: Vec<(&str, &str)> = vars.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let first_id = format!("{}-first", env.prefix);
    let mut first = env.spawn_worker(&first_id, &extra);
    let scratch = tempfile::tempdir().unwrap();
    let (pids, done) = (scratch.path().join("pids"), scratch.path().join("done"));
    let id = format!("{}-orphan", env.prefix);
    let orphaned = start_sleeper(&env, &id, &pids, &done).await;
    let home = std::env::var("HOME").unwrap();
    let runs = Path::new(&home).join(".dockhand").join(&first_id);
    let run_dirs = || -> Vec<PathBuf> {
        std::fs::read_dir(&runs)
            .map(|d| d.flatten().map(|e| e.path()).collect())
            .unwrap_or_default()
    };
    let dirs = run_dirs();
    assert_eq!(
        dirs.iter().filter(|p| p.is_dir()).count(),
        1,
        "the first worker's run directory (and its record beside it): {dirs:?}"
    );

    // The worker dies outright: its remote job runs on (its own session).
    first.kill().unwrap();
    first.wait().unwrap();
    assert!(orphaned.iter().all(|p| alive(*p)));
    // Once the dead worker's liveness key has expired, the next worker to start
    // sweeps what it left, and runs the job again.
    wait_until("the killed worker's liveness to expire", || async {
        let mut c = env.conn().await;
        let left: Vec<String> = deadpool_redis::redis::cmd("KEYS")
            .arg(format!("{}:worker:{}*", env.prefix, first_id))
            .query_async(&mut c)
            .await
            .unwrap();
        left.is_empty().then_some(())
    })
    .await;
    let second = ssh_worker(&env, &sshd, &sshd.path("known_hosts"));
    wait_until("the orphaned script and its child to be killed", || async {
        orphaned.iter().all(|p| !alive(*p)).then_some(())
    })
    .await;
    wait_until(
        "the orphaned run directory and its record to be removed",
        || async { run_dirs().is_empty().then_some(()) },
    )
    .await;
    let job = env.finished(&id).await;
    assert_eq!(
        (job["status"].as_str(), job["attempt"].as_str()),
        ("completed", "2"),
        "run again by the second worker: {job:?}"
    );
    assert!(env
        .lines(&id, "stdout")
        .await
        .contains(&"again".to_string()));
    second.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_host_that_does_not_answer_defers_the_job_until_it_does() {
    let env = Env::new();
    let mut sshd = Sshd::start();
    sshd.ready().await;
    sshd.stop();
    let worker = ssh_worker(&env, &sshd, &sshd.path("known_hosts"));
    let id = format!("{}-deferred", env.prefix);
    env.xadd(
        "default",
        &ssh(&id, serde_json::json!({"command": "echo ran"})),
    )
    .await;
    // Nothing of it ran: it is scheduled to run again, its attempt not used up.
    env.wait_for_log_line(&id, "system", "nothing of the job ran")
        .await;
    let job = env.status_becomes(&id, "scheduled").await;
    assert_eq!(job["attempt"], "0", "{job:?}");
    sshd.restart();
    sshd.ready().await;
    let job = env.finished(&id).await;
    assert_eq!(
        (job["status"].as_str(), job["attempt"].as_str()),
        ("completed", "1"),
        "{job:?}"
    );
    assert_eq!(env.lines(&id, "stdout").await, vec!["ran"]);
    worker.stop().await;
}
