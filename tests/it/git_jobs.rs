//! Jobs from git through a running worker: a repository the test makes with the git
//! CLI (two commits, a branch, tags, a submodule, a broken Dockerfile), built with
//! the real Docker engine `FROM` the local test image, and run.

use crate::common::{git, image, Env, Worker};
use futures_util::StreamExt;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;

fn commit_files(dir: &Path, files: &[(&str, &str)], message: &str) -> String {
    for (name, content) in files {
        std::fs::write(dir.join(name), content).unwrap();
        git(dir, &["add", "--", name]);
    }
    git(dir, &["commit", "-q", "-m", message]);
    git(dir, &["rev-parse", "HEAD"])
}

/// Repositories made for one test, in a folder that goes away with it, and the
/// images built from them removed at the end.
///
/// - `lib`: `lib.txt` = "lib file".
/// - `app`: A (`app.txt` = "A", a Dockerfile copying the checkout to /app; tag
///   `v1`), then B on `main` (`app.txt` = "B", submodule `lib` by `../lib`);
///   branch `broken` from A whose Dockerfile fails at `RUN`; branch `elsewhere`
///   from B whose `.gitmodules` points `lib` at https://git.example.com; branch
///   `slow` from A whose build takes two minutes.
pub struct Repo {
    _tmp: tempfile::TempDir,
    pub root: PathBuf,
    pub url: String,
    pub a: String,
    pub b: String,
}

impl Repo {
    pub fn new() -> Repo {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().canonicalize().unwrap();
        let lib = root.join("lib");
        std::fs::create_dir_all(&lib).unwrap();
        git(&lib, &["init", "-q"]);
        commit_files(&lib, &[("lib.txt", "lib file\n")], "lib");

        let app = root.join("app");
        std::fs::create_dir_all(&app).unwrap();
        git(&app, &["init", "-q"]);
        let dockerfile = format!("FROM {}\nCOPY . /app/\n", image());
        let a = commit_files(
            &app,
            &[("Dockerfile", &dockerfile), ("app.txt", "A\n")],
            "A",
        );
        git(&app, &["tag", "-a", "v1", "-m", "version 1"]);
        git(&app, &["submodule", "add", "-q", "../lib", "lib"]);
        let b = commit_files(&app, &[("app.txt", "B\n")], "B");
        // Branch `elsewhere`: B with its submodule moved to a host of its own.
        git(&app, &["checkout", "-q", "-b", "elsewhere"]);
        git(
            &app,
            &[
                "config",
                "-f",
                ".gitmodules",
                "submodule.lib.url",
                "https://git.example.com/org/lib.git",
            ],
        );
        git(&app, &["commit", "-q", "-am", "lib moved"]);
        git(&app, &["checkout", "-q", "main"]);
        git(&app, &["checkout", "-q", "-b", "broken", &a]);
        let broken = format!("FROM {}\nRUN echo before-failing && exit 7\n", image());
        commit_files(&app, &[("Dockerfile", &broken)], "broken");
        git(&app, &["checkout", "-q", "-b", "slow", &a]);
        let slow = format!(
            "FROM {}\nRUN echo slow-build-started && sleep 120\n",
            image()
        );
        commit_files(&app, &[("Dockerfile", &slow)], "slow");
        git(&app, &["checkout", "-q", "main"]);
        Repo {
            url: app.display().to_string(),
            _tmp: tmp,
            root,
            a,
            b,
        }
    }

    /// A worker cache folder of this test's own.
    pub fn cache_dir(&self) -> String {
        self.root.join("cache").display().to_string()
    }
}

impl Drop for Repo {
    fn drop(&mut self) {
        let out = Command::new("docker")
            .args(["images", "-q", "--filter"])
            .arg(format!("label=dockhand.repo={}", self.url))
            .output();
        if let Ok(out) = out {
            let ids = String::from_utf8_lossy(&out.stdout).to_string();
            let ids: Vec<&str> = ids.lines().collect();
            if !ids.is_empty() {
                let _ = Command::new("docker")
                    .args(["rmi", "-f"])
                    .args(ids)
                    .output();
            }
        }
    }
}

/// A worker whose cache is the repository's, allowing local repositories (the
/// test's repositories are folders on this host); `extra` comes after, so a test
/// may say otherwise.
fn worker(env: &Env, repo: &Repo, concurrency: usize, extra: &[(&str, &str)]) -> Worker {
    let cache = repo.cache_dir();
    let mut all = vec![
        ("DOCKHAND__WORKER__CACHE_DIR", cache.as_str()),
        ("DOCKHAND__POLICY__GIT_FILE_URLS", "true"),
    ];
    all.extend_from_slice(extra);
    Worker::start(env.settings(&["default"], concurrency, &all))
}

fn job(id: &str, git: serde_json::Value, command: &str) -> String {
    serde_json::json!({"id": id, "git": git, "command": command}).to_string()
}

async fn stdout(env: &Env, id: &str) -> Vec<String> {
    env.lines(id, "stdout").await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn each_commit_is_built_once_and_runs_its_own_files() {
    let env = Env::new();
    let repo = Repo::new();
    let worker = worker(&env, &repo, 2, &[]);

    // At commit A (no branch tip): A's file, built from scratch.
    let at_a = format!("{}-a", env.prefix);
    env.xadd(
        "default",
        &job(
            &at_a,
            serde_json::json!({"url": repo.url, "commit": repo.a}),
            "cat /app/app.txt",
        ),
    )
    .await;
    let a = env.finished(&at_a).await;
    assert_eq!(a["status"], "completed", "{a:?}");
    assert_eq!(a["commit"], repo.a);
    assert!(a["image"].starts_with("dockhand-git/"), "{a:?}");
    assert!(a["image_id"].starts_with("sha256:"), "{a:?}");
    assert_eq!(stdout(&env, &at_a).await, vec!["A"]);
    let log = env.log(&at_a).await;
    let seqs: Vec<u64> = log.iter().map(|(seq, _, _)| *seq).collect();
    assert_eq!(
        seqs,
        (1..=log.len() as u64).collect::<Vec<_>>(),
        "one seq, no gaps"
    );
    let first_stdout = log.iter().position(|(_, s, _)| s == "stdout").unwrap();
    assert!(
        log[..first_stdout]
            .iter()
            .any(|(_, s, l)| s == "build" && l.contains("FROM")),
        "the build's lines come first: {log:?}"
    );
    assert!(
        log[first_stdout..].iter().all(|(_, s, _)| s != "build"),
        "{log:?}"
    );

    // Two jobs on branch `main` (B, with the submodule) at once: one build between them.
    let on_main: Vec<String> = (1..=2).map(|n| format!("{}-main{n}", env.prefix)).collect();
    for id in &on_main {
        env.xadd(
            "default",
            &job(
                id,
                serde_json::json!({"url": repo.url, "branch": "main"}),
                "cat /app/app.txt /app/lib/lib.txt",
            ),
        )
        .await;
    }
    let mut builds = 0;
    let mut image_ids = Vec::new();
    for id in &on_main {
        let done = env.finished(id).await;
        assert_eq!(done["status"], "completed", "{done:?}");
        assert_eq!(done["commit"], repo.b);
        assert_eq!(
            stdout(&env, id).await,
            vec!["B", "lib file"],
            "the submodule's file is in the image"
        );
        if !env.lines(id, "build").await.is_empty() {
            builds += 1;
        }
        image_ids.push(done["image_id"].clone());
    }
    assert_eq!(builds, 1, "two jobs for one commit build it once");
    assert_eq!(image_ids[0], image_ids[1]);
    assert_ne!(image_ids[0], a["image_id"]);

    // Tag v1 is commit A: its image is cached, so no clone and no build.
    let at_v1 = format!("{}-v1", env.prefix);
    env.xadd(
        "default",
        &job(
            &at_v1,
            serde_json::json!({"url": repo.url, "tag": "v1"}),
            "cat /app/app.txt",
        ),
    )
    .await;
    let v1 = env.finished(&at_v1).await;
    assert_eq!(v1["status"], "completed", "{v1:?}");
    assert_eq!(v1["commit"], repo.a);
    assert_eq!(v1["image_id"], a["image_id"]);
    assert_eq!(v1["image"], a["image"]);
    assert!(env.lines(&at_v1, "build").await.is_empty());
    assert!(
        env.lines(&at_v1, "system")
            .await
            .iter()
            .any(|l| l.contains("is cached")),
        "{:?}",
        env.log(&at_v1).await
    );
    assert_eq!(stdout(&env, &at_v1).await, vec!["A"]);

    // The checkouts are gone; the mirrors stay.
    let work = Path::new(&repo.cache_dir()).join(&env.prefix).join("work");
    assert_eq!(std::fs::read_dir(&work).unwrap().count(), 0);
    worker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refs_repositories_and_submodules_that_cannot_be_had_are_build_errors() {
    let env = Env::new();
    let repo = Repo::new();
    let worker = worker(&env, &repo, 2, &[]);
    let missing = "1234567890abcdef1234567890abcdef12345678";
    let cases: Vec<(String, serde_json::Value, String)> = vec![
        (
            "branch".into(),
            serde_json::json!({"url": repo.url, "branch": "nope"}),
            format!("branch `nope` not found in {}", repo.url),
        ),
        (
            "commit".into(),
            serde_json::json!({"url": repo.url, "commit": missing}),
            format!("commit {missing} not found in {}", repo.url),
        ),
        (
            "repo".into(),
            serde_json::json!({"url": format!("{}/nothing-here", repo.root.display())}),
            format!("repository {}/nothing-here not found", repo.root.display()),
        ),
    ];
    for (name, git, _) in &cases {
        let id = format!("{}-{name}", env.prefix);
        env.xadd("default", &job(&id, git.clone(), "true")).await;
    }
    for (name, _, expected) in &cases {
        let id = format!("{}-{name}", env.prefix);
        let done = env.finished(&id).await;
        assert_eq!(done["status"], "aborted", "{done:?}");
        assert_eq!(done["reason"], "build_error", "{done:?}");
        assert!(
            done["error"].contains(expected.as_str()),
            "{name}: {}",
            done["error"]
        );
        assert!(
            env.lines(&id, "system")
                .await
                .iter()
                .any(|l| l.contains(expected.as_str())),
            "the log says why too"
        );
    }

    // lib's mirror is not in this worker's cache, and lib is gone: B cannot be had.
    std::fs::rename(repo.root.join("lib"), repo.root.join("lib.gone")).unwrap();
    let id = format!("{}-submodule", env.prefix);
    env.xadd(
        "default",
        &job(
            &id,
            serde_json::json!({"url": repo.url, "commit": repo.b}),
            "true",
        ),
    )
    .await;
    let done = env.finished(&id).await;
    assert_eq!(done["reason"], "build_error", "{done:?}");
    assert!(
        done["error"].contains("submodule `lib`"),
        "{}",
        done["error"]
    );
    assert!(
        done["error"].contains(&repo.root.join("lib").display().to_string()),
        "{}",
        done["error"]
    );
    worker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broken_dockerfile_is_a_build_error_with_the_builders_message() {
    let env = Env::new();
    let repo = Repo::new();
    let worker = worker(&env, &repo, 1, &[]);
    let id = format!("{}-broken", env.prefix);
    let mut pubsub = env.client.get_async_pubsub().await.unwrap();
    pubsub.subscribe(env.keys.events_channel()).await.unwrap();
    env.xadd(
        "default",
        &job(
            &id,
            serde_json::json!({"url": repo.url, "branch": "broken"}),
            "true",
        ),
    )
    .await;
    let done = env.finished(&id).await;
    // `building` is a state without an event of its own; the outcome carries the commit.
    let mut events = Vec::new();
    let mut messages = pubsub.on_message();
    while events
        .last()
        .map(|(t, _): &(String, serde_json::Value)| t.as_str())
        != Some("job.aborted")
    {
        let msg = tokio::time::timeout(std::time::Duration::from_secs(30), messages.next())
            .await
            .expect("the job's events arrive")
            .unwrap();
        let v: serde_json::Value =
            serde_json::from_str(&msg.get_payload::<String>().unwrap()).unwrap();
        if v["data"]["id"] == id.as_str() {
            events.push((v["type"].as_str().unwrap().to_string(), v["data"].clone()));
        }
    }
    let types: Vec<&str> = events.iter().map(|(t, _)| t.as_str()).collect();
    assert_eq!(types, vec!["job.queued", "job.aborted"]);
    assert_eq!(events[1].1["commit"], done["commit"].as_str());
    assert_eq!(events[1].1["reason"], "build_error");
    assert_eq!(done["status"], "aborted", "{done:?}");
    assert_eq!(done["reason"], "build_error");
    assert!(
        done["error"].contains("non-zero code: 7"),
        "{}",
        done["error"]
    );
    assert!(!done["commit"].is_empty());
    let build = env.lines(&id, "build").await;
    assert!(build.iter().any(|l| l == "before-failing"), "{build:?}");
    assert!(env.lines(&id, "stdout").await.is_empty());
    worker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_git_host_outside_the_allow_list_is_policy_denied() {
    let env = Env::new();
    let repo = Repo::new();
    let worker = worker(
        &env,
        &repo,
        1,
        &[("DOCKHAND__POLICY__GIT_HOSTS", "github.com")],
    );
    let cases: HashMap<&str, serde_json::Value> = HashMap::from([
        ("local", serde_json::json!({"url": repo.url})),
        (
            "remote",
            serde_json::json!({"url": "https://git.example.com/org/app.git"}),
        ),
    ]);
    for (name, git) in &cases {
        env.xadd(
            "default",
            &job(&format!("{}-{name}", env.prefix), git.clone(), "true"),
        )
        .await;
    }
    for name in cases.keys() {
        let done = env.finished(&format!("{}-{name}", env.prefix)).await;
        assert_eq!(done["status"], "aborted", "{done:?}");
        assert_eq!(done["reason"], "policy_denied", "{done:?}");
        assert!(done["error"].starts_with("`git.url`"), "{}", done["error"]);
        assert!(
            done["error"].contains("policy.git_hosts"),
            "{}",
            done["error"]
        );
    }
    worker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_submodule_on_a_host_outside_the_allow_list_is_policy_denied() {
    let env = Env::new();
    let repo = Repo::new();
    let worker = worker(&env, &repo, 1, &[("DOCKHAND__POLICY__GIT_HOSTS", "local")]);
    let ok = format!("{}-local", env.prefix);
    let moved = format!("{}-moved", env.prefix);
    env.xadd(
        "default",
        &job(
            &ok,
            serde_json::json!({"url": repo.url, "commit": repo.a}),
            "true",
        ),
    )
    .await;
    env.xadd(
        "default",
        &job(
            &moved,
            serde_json::json!({"url": repo.url, "branch": "elsewhere"}),
            "true",
        ),
    )
    .await;
    assert_eq!(
        env.finished(&ok).await["status"],
        "completed",
        "`local` allows local repositories"
    );
    let done = env.finished(&moved).await;
    assert_eq!(done["reason"], "policy_denied", "{done:?}");
    assert!(
        done["error"].contains("submodule `lib` (https://git.example.com/org/lib.git)"),
        "{}",
        done["error"]
    );
    assert!(
        done["error"].contains("policy.git_hosts"),
        "{}",
        done["error"]
    );
    worker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_build_ends_with_a_cancel_or_the_jobs_time_limit() {
    let env = Env::new();
    let repo = Repo::new();
    let worker = worker(&env, &repo, 2, &[]);
    let id = format!("{}-slow", env.prefix);
    env.xadd(
        "default",
        &job(
            &id,
            serde_json::json!({"url": repo.url, "branch": "slow"}),
            "true",
        ),
    )
    .await;
    env.status_becomes(&id, "building").await;
    env.wait_for_log_line(&id, "build", "slow-build-started")
        .await;
    // Meanwhile a job whose build outlasts its time limit ends `timeout`.
    let slow = format!("{}-too-slow", env.prefix);
    env.xadd(
        "default",
        &serde_json::json!({
            "id": slow, "git": {"url": repo.url, "branch": "slow"}, "command": "true",
            "limits": {"timeout_seconds": 2},
        })
        .to_string(),
    )
    .await;
    let mut c = env.conn().await;
    let _: i64 = deadpool_redis::redis::cmd("HSET")
        .arg(env.job_key(&id))
        .arg("cancel_requested")
        .arg("1")
        .query_async(&mut c)
        .await
        .unwrap();
    let _: i64 = deadpool_redis::redis::cmd("PUBLISH")
        .arg(env.keys.cancel_channel())
        .arg(&id)
        .query_async(&mut c)
        .await
        .unwrap();
    let done = env.finished(&id).await;
    assert_eq!(done["status"], "aborted", "{done:?}");
    assert_eq!(done["reason"], "cancelled", "{done:?}");
    assert!(
        done["error"].contains("while the image was being prepared"),
        "{}",
        done["error"]
    );
    let timed_out = env.finished(&slow).await;
    assert_eq!(timed_out["reason"], "timeout", "{timed_out:?}");
    assert!(
        timed_out["error"].contains("limits.timeout_seconds"),
        "{}",
        timed_out["error"]
    );
    worker.stop().await;
    let work = Path::new(&repo.cache_dir()).join(&env.prefix).join("work");
    for _ in 0..100 {
        if std::fs::read_dir(&work).map(|d| d.count()).unwrap_or(0) == 0 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert_eq!(
        std::fs::read_dir(&work).unwrap().count(),
        0,
        "the checkout is removed"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_git_server_that_stalls_fails_the_job_after_the_git_timeout() {
    // Accepts connections and never answers: a hung server, not a refused one.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        let mut held = Vec::new();
        for conn in listener.incoming().flatten() {
            held.push(conn);
        }
    });
    let env = Env::new();
    let repo = Repo::new();
    let worker = worker(
        &env,
        &repo,
        1,
        &[
            ("DOCKHAND__WORKER__GIT_TIMEOUT_SECONDS", "2"),
            // The stalled server listens on loopback, which the SSRF guard refuses.
            ("DOCKHAND__POLICY__GIT_ALLOW_NETWORKS", "127.0.0.1/32"),
        ],
    );
    let url = format!("http://127.0.0.1:{port}/org/app.git");
    let id = format!("{}-stalled", env.prefix);
    env.xadd(
        "default",
        &job(
            &id,
            serde_json::json!({"url": url, "branch": "main"}),
            "true",
        ),
    )
    .await;
    let done = env.finished(&id).await;
    assert_eq!(done["status"], "aborted", "{done:?}");
    assert_eq!(done["reason"], "build_error", "{done:?}");
    assert!(done["error"].contains(&url), "{}", done["error"]);
    assert!(done["error"].contains("timed out"), "{}", done["error"]);

    // The mirror is not left locked: the next job of the same repository fails the
    // same way instead of waiting behind the first.
    let again = format!("{}-stalled-again", env.prefix);
    env.xadd(
        "default",
        &job(
            &again,
            serde_json::json!({"url": url, "branch": "main"}),
            "true",
        ),
    )
    .await;
    assert_eq!(env.finished(&again).await["reason"], "build_error");
    worker.stop().await;
}

/// Removes the images built from `url` (a URL other than the repository's path,
/// which [`Repo`]'s drop does not know).
fn remove_images_of(url: &str) {
    let out = Command::new("docker")
        .args(["images", "-q", "--filter"])
        .arg(format!("label=dockhand.repo={url}"))
        .output()
        .unwrap();
    let ids = String::from_utf8_lossy(&out.stdout).to_string();
    let ids: Vec<&str> = ids.lines().collect();
    if !ids.is_empty() {
        let _ = Command::new("docker")
            .args(["rmi", "-f"])
            .args(ids)
            .output();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_local_repository_is_policy_denied_unless_git_file_urls_allows_it() {
    let env = Env::new();
    let repo = Repo::new();
    // The default: policy.git_file_urls = false.
    let worker = worker(
        &env,
        &repo,
        1,
        &[("DOCKHAND__POLICY__GIT_FILE_URLS", "false")],
    );
    let cases = [
        ("path", repo.url.clone()),
        ("file", format!("file://{}", repo.url)),
    ];
    for (name, url) in &cases {
        let git = serde_json::json!({"url": url, "branch": "main"});
        env.xadd(
            "default",
            &job(&format!("{}-{name}", env.prefix), git, "true"),
        )
        .await;
    }
    for (name, _) in &cases {
        let done = env.finished(&format!("{}-{name}", env.prefix)).await;
        assert_eq!(done["status"], "aborted", "{done:?}");
        assert_eq!(done["reason"], "policy_denied", "{done:?}");
        assert!(done["error"].starts_with("`git.url`"), "{}", done["error"]);
        assert!(
            done["error"].contains("policy.git_file_urls = true"),
            "{}",
            done["error"]
        );
        assert!(done.get("commit").is_none_or(|c| c.is_empty()), "{done:?}");
    }
    // Nothing was fetched: the worker never even made its cache.
    assert!(!Path::new(&repo.cache_dir())
        .join(&env.prefix)
        .join("repos")
        .exists());
    worker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_workers_cache_is_never_a_source_even_with_git_file_urls() {
    let env = Env::new();
    let repo = Repo::new();
    let worker = worker(&env, &repo, 1, &[]);
    // A job of the repository fills the cache with its mirror.
    let first = format!("{}-first", env.prefix);
    let git = serde_json::json!({"url": repo.url, "commit": repo.a});
    env.xadd("default", &job(&first, git, "true")).await;
    assert_eq!(env.finished(&first).await["status"], "completed");
    let repos = Path::new(&repo.cache_dir()).join(&env.prefix).join("repos");
    let mirror = std::fs::read_dir(&repos)
        .unwrap()
        .next()
        .expect("the mirror is in the cache")
        .unwrap()
        .path();
    let relative = mirror
        .strip_prefix(&repo.root)
        .unwrap()
        .display()
        .to_string();
    let link = repo.root.join("innocent");
    std::os::unix::fs::symlink(&mirror, &link).unwrap();

    let cases = [
        ("mirror", mirror.display().to_string()),
        ("file", format!("file://{}", mirror.display())),
        (
            "dotdot",
            format!("{}/../{relative}", repo.root.join("app").display()),
        ),
        ("symlink", link.display().to_string()),
    ];
    for (name, url) in &cases {
        let git = serde_json::json!({"url": url, "commit": repo.a});
        env.xadd(
            "default",
            &job(&format!("{}-{name}", env.prefix), git, "true"),
        )
        .await;
    }
    for (name, url) in &cases {
        let done = env.finished(&format!("{}-{name}", env.prefix)).await;
        assert_eq!(done["status"], "aborted", "{name}: {done:?}");
        assert_eq!(done["reason"], "policy_denied", "{name}: {done:?}");
        assert!(done["error"].contains(url.as_str()), "{}", done["error"]);
        assert!(
            done["error"].contains("worker.cache_dir"),
            "{name}: {}",
            done["error"]
        );
    }
    worker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_git_url_at_a_non_public_address_is_refused_before_connecting() {
    // 127.0.0.2: loopback, which the guard refuses, and not 127.0.0.1, which the
    // other tests' settings might allow.
    let listener = std::net::TcpListener::bind("127.0.0.2:0").unwrap();
    let url = format!("http://{}/app", listener.local_addr().unwrap());
    let env = Env::new();
    let repo = Repo::new();
    let worker = worker(&env, &repo, 1, &[]);
    let refused = format!("{}-refused", env.prefix);
    let git = serde_json::json!({"url": url, "branch": "main"});
    env.xadd("default", &job(&refused, git.clone(), "true"))
        .await;
    let done = env.finished(&refused).await;
    assert_eq!(done["status"], "aborted", "{done:?}");
    assert_eq!(done["reason"], "policy_denied", "{done:?}");
    assert!(
        done["error"].contains(&format!("the host 127.0.0.2 of {url} is refused")),
        "{}",
        done["error"]
    );
    assert!(
        done["error"]
            .contains("127.0.0.2 is a loopback address; allow it with policy.git_allow_networks"),
        "{}",
        done["error"]
    );
    // The job is over, and nobody knocked.
    listener.set_nonblocking(true).unwrap();
    match listener.accept() {
        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
        other => panic!("the worker connected to a refused address: {other:?}"),
    }
    worker.stop().await;

    // Allowed, the same URL is fetched (the submodule `../lib` too, over http).
    crate::git_source::http::serve_on(listener, &repo.root, None);
    let worker = crate::git_jobs::worker(
        &env,
        &repo,
        1,
        &[("DOCKHAND__POLICY__GIT_ALLOW_NETWORKS", "127.0.0.2/32")],
    );
    let fetched = format!("{}-fetched", env.prefix);
    env.xadd(
        "default",
        &job(&fetched, git, "cat /app/app.txt /app/lib/lib.txt"),
    )
    .await;
    let done = env.finished(&fetched).await;
    remove_images_of(&url);
    assert_eq!(done["status"], "completed", "{done:?}");
    assert_eq!(done["commit"], repo.b);
    assert_eq!(stdout(&env, &fetched).await, vec!["B", "lib file"]);
    worker.stop().await;
}

/// A git server on loopback that serves the repositories under `root`, except
/// that its first `drips` connections get an answer of one byte a second, for
/// ever: a read timeout never fires. The counter says how many of those the
/// client has cut off (the next byte could not be written).
fn dripping_server(
    root: &Path,
    drips: usize,
) -> (String, std::sync::Arc<std::sync::atomic::AtomicUsize>) {
    use std::io::{BufRead, BufReader, Write};
    use std::sync::atomic::{AtomicUsize, Ordering};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let cut = std::sync::Arc::new(AtomicUsize::new(0));
    let (root, counter) = (root.to_path_buf(), cut.clone());
    std::thread::spawn(move || {
        for (n, conn) in listener.incoming().enumerate() {
            let Ok(mut conn) = conn else { return };
            let (root, cut) = (root.clone(), counter.clone());
            std::thread::spawn(move || {
                if n >= drips {
                    let _ = crate::git_source::http::handle(conn, &root, None);
                    return;
                }
                let mut reader = BufReader::new(conn.try_clone().unwrap());
                let mut line = String::new();
                while reader.read_line(&mut line).is_ok_and(|n| n > 2) {
                    line.clear();
                }
                let head = "HTTP/1.1 200 OK\r\nContent-Type: application/x-git-upload-pack-advertisement\r\nContent-Length: 100000\r\n\r\n";
                let body = b"001e# service=git-upload-pack\n0000"
                    .iter()
                    .chain(std::iter::repeat(&b'0'));
                if conn.write_all(head.as_bytes()).is_err() {
                    return;
                }
                for byte in body {
                    std::thread::sleep(std::time::Duration::from_secs(1));
                    let r = conn.write_all(&[*byte]).and_then(|()| conn.flush());
                    if r.is_err() {
                        cut.fetch_add(1, Ordering::SeqCst);
                        return;
                    }
                }
            });
        }
    });
    (base, cut)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dripping_git_server_is_cut_off_at_the_jobs_deadline() {
    let env = Env::new();
    let repo = Repo::new();
    let (base, cut) = dripping_server(&repo.root, 2);
    let url = format!("{base}/app");
    let worker = worker(
        &env,
        &repo,
        1,
        &[("DOCKHAND__POLICY__GIT_ALLOW_NETWORKS", "127.0.0.1/32")],
    );
    let submit = |id: String, git: serde_json::Value, timeout: u64| {
        let spec = serde_json::json!({
            "id": id, "git": git, "command": "cat /app/app.txt",
            "limits": {"timeout_seconds": timeout},
        });
        let env = &env;
        async move { env.xadd("default", &spec.to_string()).await }
    };

    // Resolving the branch meets the drip: the deadline covers it.
    let resolving = format!("{}-drip-resolve", env.prefix);
    submit(
        resolving.clone(),
        serde_json::json!({"url": url, "branch": "main"}),
        3,
    )
    .await;
    let done = env.finished(&resolving).await;
    assert_eq!(done["reason"], "timeout", "{done:?}");
    assert!(done["error"].contains("limits.timeout_seconds"), "{done:?}");

    // Fetching the commit meets the drip, holding the repository's mirror lock.
    let fetching = format!("{}-drip-fetch", env.prefix);
    let git = serde_json::json!({"url": url, "commit": repo.a});
    submit(fetching.clone(), git.clone(), 3).await;
    let done = env.finished(&fetching).await;
    assert_eq!(done["reason"], "timeout", "{done:?}");

    // Both dripping connections were cut by the worker, not left to drip on.
    for _ in 0..200 {
        if cut.load(std::sync::atomic::Ordering::SeqCst) == 2 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert_eq!(cut.load(std::sync::atomic::Ordering::SeqCst), 2);

    // The lock was released with them: the same repository is fetched and built
    // now, well before the drip could have ended.
    let after = format!("{}-drip-after", env.prefix);
    submit(after.clone(), git, 300).await;
    let done = env.finished(&after).await;
    assert_eq!(done["status"], "completed", "{done:?}");
    assert_eq!(stdout(&env, &after).await, vec!["A"]);
    worker.stop().await;
    remove_images_of(&url);
}

/// An https git server that drips its TLS handshake a byte a second (so libgit2's
/// read timeout, which restarts with each byte, never fires): the job ends
/// `timeout` at its own deadline, and the worker cuts the connection then rather
/// than leave its blocking thread (and the repository's mirror lock) to the drip.
/// libgit2 reaches an https server through a `CONNECT` tunnel on loopback that
/// the deadline closes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dripping_https_server_is_cut_off_at_the_jobs_deadline() {
    use std::io::{Read, Write};
    use std::sync::atomic::{AtomicUsize, Ordering};
    let env = Env::new();
    let repo = Repo::new();
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let (accepted, cut) = (
        std::sync::Arc::new(AtomicUsize::new(0)),
        std::sync::Arc::new(AtomicUsize::new(0)),
    );
    let (seen, counter) = (accepted.clone(), cut.clone());
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(mut conn) = conn else { return };
            seen.fetch_add(1, Ordering::SeqCst);
            let counter = counter.clone();
            std::thread::spawn(move || {
                // Read the client's hello, then answer one byte a second: the
                // header of a 16 KiB handshake record, then its body, slowly.
                let mut hello = [0u8; 1024];
                let _ = conn.read(&mut hello);
                let record = [0x16u8, 0x03, 0x03, 0x40, 0x00]
                    .into_iter()
                    .chain(std::iter::repeat(0));
                for byte in record {
                    std::thread::sleep(std::time::Duration::from_secs(1));
                    if conn.write_all(&[byte]).and_then(|()| conn.flush()).is_err() {
                        counter.fetch_add(1, Ordering::SeqCst);
                        return;
                    }
                }
            });
        }
    });
    let worker = worker(
        &env,
        &repo,
        1,
        &[("DOCKHAND__POLICY__GIT_ALLOW_NETWORKS", "127.0.0.1/32")],
    );
    let id = format!("{}-drip-tls", env.prefix);
    let spec = serde_json::json!({
        "id": id, "git": {"url": format!("https://127.0.0.1:{port}/app"), "branch": "main"},
        "command": "true", "limits": {"timeout_seconds": 3},
    });
    env.xadd("default", &spec.to_string()).await;
    let done = env.finished(&id).await;
    assert_eq!(done["reason"], "timeout", "{done:?}");
    assert_eq!(accepted.load(Ordering::SeqCst), 1, "the server was reached");
    // The worker cut the dripping connection (a write failed), not the drip ending.
    crate::common::wait_until("the dripping https connection to be cut", || {
        let cut = cut.clone();
        async move { (cut.load(Ordering::SeqCst) == 1).then_some(()) }
    })
    .await;
    worker.stop().await;
}
