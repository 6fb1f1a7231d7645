//! Profiles: templates a job overrides field by field, profile files loaded at
//! start, the `profile` commands, and a broadcast build answered by two worker
//! processes.

use crate::common::{image, signal, Env, Worker};
use crate::git_jobs::Repo;
use deadpool_redis::redis::{self, AsyncCommands};
use std::process::{Output, Stdio};
use std::time::Duration;
use tokio::process::Command;

async fn dockhand(env: &Env, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_dockhand"))
        .arg("--redis-url")
        .arg(&env.url)
        .args(args)
        .env("DOCKHAND__REDIS__PREFIX", &env.prefix)
        .env_remove("REDIS_URL")
        .stdin(Stdio::null())
        .output()
        .await
        .expect("the dockhand binary runs")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_overrides_its_profile_field_by_field() {
    let env = Env::new();
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("from-file.toml"),
        format!(
            "image = \"{}\"\ncommand = \"echo file $WHO\"\n[env]\nWHO = \"toml\"\n",
            image()
        ),
    )
    .unwrap();
    let profiles_dir = dir.path().display().to_string();
    let worker = Worker::start(env.settings(
        &["default"],
        2,
        &[("DOCKHAND__WORKER__PROFILES_DIR", profiles_dir.as_str())],
    ));
    let mut c = env.conn().await;
    let template = serde_json::json!({
        "image": image(), "command": "echo $A $B $C",
        "env": {"A": "profile-a", "B": "profile-b"}, "metadata": {"from": "profile"},
    });
    let _: i64 = c
        .hset(env.keys.profiles(), "greet", template.to_string())
        .await
        .unwrap();

    let ids: Vec<String> = ["plain", "override", "command", "unknown", "file"]
        .iter()
        .map(|n| format!("{}-{n}", env.prefix))
        .collect();
    let specs = [
        serde_json::json!({"id": ids[0], "profile": "greet"}),
        serde_json::json!({"id": ids[1], "profile": "greet", "env": {"B": "job-b", "C": "job-c"}}),
        serde_json::json!({"id": ids[2], "profile": "greet", "command": ["echo", "mine"]}),
        serde_json::json!({"id": ids[3], "profile": "nope"}),
        serde_json::json!({"id": ids[4], "profile": "from-file"}),
    ];
    for spec in &specs {
        env.xadd("default", &spec.to_string()).await;
    }
    let expect = [
        Some("profile-a profile-b"),
        Some("profile-a job-b job-c"),
        Some("mine"),
        None,
        Some("file toml"),
    ];
    for (id, want) in ids.iter().zip(expect) {
        let done = env.finished(id).await;
        match want {
            Some(line) => {
                assert_eq!(done["status"], "completed", "{id}: {done:?}");
                assert_eq!(
                    env.lines(id, "stdout").await,
                    vec![line.to_string()],
                    "{id}"
                );
            }
            None => {
                assert_eq!(done["reason"], "invalid_spec", "{done:?}");
                assert!(done["error"].starts_with("`profile`"), "{}", done["error"]);
                assert!(done["error"].contains("\"nope\""), "{}", done["error"]);
            }
        }
    }
    assert_eq!(
        env.finished(&ids[0]).await["metadata"],
        r#"{"from":"profile"}"#
    );
    let shipped: Option<String> = c.hget(env.keys.profiles(), "from-file").await.unwrap();
    assert!(
        shipped.unwrap().contains("echo file"),
        "files are registered at start"
    );
    worker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn profile_commands_add_list_show_and_remove() {
    let env = Env::new();
    let dir = tempfile::tempdir().unwrap();
    let json = dir.path().join("p.json");
    std::fs::write(
        &json,
        r#"{"image":"busybox","env":{"A":"1"},"secret_env":{"TOKEN":"t0p-s3cret"}}"#,
    )
    .unwrap();
    let toml = dir.path().join("q.toml");
    std::fs::write(
        &toml,
        "[git]\nurl = \"https://h.example/x.git\"\ntag = \"v1\"\n",
    )
    .unwrap();
    let bad = dir.path().join("bad.json");
    std::fs::write(&bad, r#"{"imgae":"x"}"#).unwrap();

    let json = json.display().to_string();
    let toml = toml.display().to_string();
    let bad = bad.display().to_string();
    assert!(dockhand(&env, &["profile", "add", "p", &json])
        .await
        .status
        .success());
    assert!(dockhand(&env, &["profile", "add", "q", &toml])
        .await
        .status
        .success());
    let refused = dockhand(&env, &["profile", "add", "b", &bad]).await;
    assert_eq!(refused.status.code(), Some(2));
    assert!(
        text(&refused.stderr).contains("imgae"),
        "{}",
        text(&refused.stderr)
    );

    let list = text(&dockhand(&env, &["profile", "list"]).await.stdout);
    assert!(list.contains("image busybox"), "{list}");
    assert!(
        list.contains("git https://h.example/x.git (tag v1)"),
        "{list}"
    );
    assert!(!list.contains("\nb "), "{list}");
    let show = dockhand(&env, &["profile", "show", "p"]).await;
    let shown: serde_json::Value = serde_json::from_slice(&show.stdout).unwrap();
    assert_eq!(shown["env"]["A"], "1");
    assert_eq!(
        shown["secret_env"]["TOKEN"], "***",
        "secrets are not printed"
    );
    assert!(dockhand(&env, &["profile", "rm", "p"])
        .await
        .status
        .success());
    assert_eq!(
        dockhand(&env, &["profile", "rm", "p"]).await.status.code(),
        Some(1)
    );
    assert_eq!(
        dockhand(&env, &["profile", "show", "p"])
            .await
            .status
            .code(),
        Some(1)
    );
    // Without live workers, a build has nobody to ask.
    let nobody = dockhand(&env, &["profile", "build", "q", "--timeout", "1"]).await;
    assert_eq!(nobody.status.code(), Some(1));
    assert!(
        text(&nobody.stderr).contains("no live worker"),
        "{}",
        text(&nobody.stderr)
    );
}

/// The live worker processes of this test (alive keys present).
async fn live_workers(env: &Env) -> usize {
    let mut c = env.conn().await;
    let consumers: Vec<String> = c.hkeys(env.keys.workers()).await.unwrap();
    let mut n = 0;
    for consumer in consumers {
        if c.exists(env.keys.alive(&consumer)).await.unwrap() {
            n += 1;
        }
    }
    n
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broadcast_build_is_answered_by_every_worker_process() {
    let env = Env::new();
    let repo = Repo::new();
    let cache = repo.cache_dir();
    let mut workers: Vec<std::process::Child> = ["w1", "w2"]
        .iter()
        .map(|w| {
            env.spawn_worker(
                &format!("{}-{w}", env.prefix),
                &[
                    ("DOCKHAND__WORKER__CACHE_DIR", cache.as_str()),
                    ("DOCKHAND__POLICY__GIT_FILE_URLS", "true"),
                ],
            )
        })
        .collect();
    for _ in 0..600 {
        if live_workers(&env).await == 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(live_workers(&env).await, 2, "both workers started");

    let mut c = env.conn().await;
    let good = serde_json::json!({"git": {"url": repo.url, "branch": "main"}, "command": "cat /app/app.txt"});
    let broken = serde_json::json!({"git": {"url": repo.url, "branch": "broken"}});
    let _: i64 = c
        .hset(env.keys.profiles(), "good", good.to_string())
        .await
        .unwrap();
    let _: i64 = c
        .hset(env.keys.profiles(), "broken", broken.to_string())
        .await
        .unwrap();

    let out = dockhand(&env, &["profile", "build", "good", "--timeout", "240"]).await;
    let shown = text(&out.stdout);
    assert!(out.status.success(), "{shown}\n{}", text(&out.stderr));
    for w in ["w1", "w2"] {
        let line = shown
            .lines()
            .find(|l| l.starts_with(&format!("{}-{w} ", env.prefix)))
            .unwrap_or_else(|| panic!("no answer from {w}: {shown}"));
        assert!(
            line.contains(" built ") || line.contains(" cached "),
            "{line}"
        );
        assert!(line.contains("dockhand-git/"), "{line}");
    }
    // Built: a job for that commit now starts from the cached image.
    let again = dockhand(&env, &["profile", "build", "good", "--timeout", "240"]).await;
    let again_text = text(&again.stdout);
    assert!(again.status.success(), "{again_text}");
    assert_eq!(again_text.matches(" cached ").count(), 2, "{again_text}");

    let out = dockhand(&env, &["profile", "build", "broken", "--timeout", "240"]).await;
    let shown = text(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{shown}");
    assert_eq!(shown.matches(" failed ").count(), 2, "{shown}");
    assert!(shown.contains("non-zero code: 7"), "{shown}");
    assert!(
        text(&out.stderr).contains("2 worker(s) failed"),
        "{}",
        text(&out.stderr)
    );

    for w in &workers {
        signal(w, "TERM");
    }
    for w in workers.iter_mut() {
        assert!(w.wait().unwrap().success());
    }
    // A clean exit removes each worker's broadcast group.
    let groups: redis::streams::StreamInfoGroupsReply =
        c.xinfo_groups(env.keys.broadcast()).await.unwrap();
    assert!(groups.groups.is_empty(), "{:?}", groups.groups.len());
}
