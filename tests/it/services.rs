//! Sidecar services on a per-job network, and volumes within the worker's policy.

use crate::common::{containers_with_label, image, networks_with_label, Env, Worker};
use std::process::Command;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_service_is_reachable_by_alias_and_removed_afterwards() {
    let env = Env::new();
    let worker = env.worker(&["default"], 2);
    let ok = format!("{}-svc", env.prefix);
    let web =
        "mkdir -p /www && echo hello-from-web > /www/index.html && exec httpd -f -p 8080 -h /www";
    let fetch =
        "for i in $(seq 1 100); do wget -qO- http://web:8080/ && exit 0; sleep 0.1; done; exit 1";
    env.xadd(
        "default",
        &serde_json::json!({
            "id": ok, "image": image(), "command": fetch,
            "services": [{"image": image(), "alias": "web", "command": web, "env": {"X": "1"}}],
        })
        .to_string(),
    )
    .await;
    // A service whose image is not on the host: nothing runs, nothing is left.
    let missing = format!("{}-svc-missing", env.prefix);
    env.xadd(
        "default",
        &serde_json::json!({
            "id": missing, "image": image(), "command": "true",
            "services": [{"image": "dockhand-no-such-image:latest", "alias": "db"}],
        })
        .to_string(),
    )
    .await;

    let done = env.finished(&ok).await;
    assert_eq!(
        done["status"],
        "completed",
        "{done:?} {:?}",
        env.log(&ok).await
    );
    assert_eq!(env.lines(&ok, "stdout").await, vec!["hello-from-web"]);
    assert!(
        env.lines(&ok, "system")
            .await
            .iter()
            .any(|l| l.contains("service web")),
        "{:?}",
        env.log(&ok).await
    );
    let failed = env.finished(&missing).await;
    assert_eq!(failed["status"], "aborted", "{failed:?}");
    assert_eq!(failed["reason"], "image_not_found", "{failed:?}");
    assert!(
        failed["error"].contains("dockhand-no-such-image"),
        "{}",
        failed["error"]
    );

    for id in [&ok, &missing] {
        let label = format!("dockhand.job={id}");
        assert!(
            containers_with_label(&label).is_empty(),
            "containers of {id} left"
        );
        assert!(
            networks_with_label(&label).is_empty(),
            "network of {id} left"
        );
    }
    worker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn volumes_mount_only_allowed_host_folders_and_allowed_named_volumes() {
    let env = Env::new();
    let dir = tempfile::tempdir().unwrap();
    let allowed = dir.path().canonicalize().unwrap();
    let allowed_s = allowed.display().to_string();
    let volume = format!("{}-vol", env.prefix);
    let worker = Worker::start(env.settings(
        &["default"],
        2,
        &[
            ("DOCKHAND__POLICY__BIND_ALLOW", allowed_s.as_str()),
            ("DOCKHAND__POLICY__VOLUMES_ALLOW", volume.as_str()),
        ],
    ));
    std::fs::create_dir_all(allowed.join("data")).unwrap();
    // Another application's volume, which the job names but the worker does not allow.
    let theirs = format!("{}-theirs", env.prefix);
    let made = Command::new("docker")
        .args(["volume", "create", &theirs])
        .output()
        .unwrap();
    assert!(made.status.success(), "{made:?}");

    let bind = format!("{}-bind", env.prefix);
    let denied = format!("{}-denied", env.prefix);
    env.xadd(
        "default",
        &serde_json::json!({
            "id": bind, "image": image(), "command": "echo from-job > /data/out.txt",
            "volumes": [format!("{allowed_s}/data:/data")],
        })
        .to_string(),
    )
    .await;
    env.xadd(
        "default",
        &serde_json::json!({
            "id": denied, "image": image(), "command": "true", "volumes": ["/etc:/host-etc:ro"],
        })
        .to_string(),
    )
    .await;
    let done = env.finished(&bind).await;
    assert_eq!(done["status"], "completed", "{done:?}");
    assert_eq!(
        std::fs::read_to_string(allowed.join("data/out.txt")).unwrap(),
        "from-job\n"
    );
    let done = env.finished(&denied).await;
    assert_eq!(done["reason"], "policy_denied", "{done:?}");
    assert!(
        done["error"].starts_with("`volumes[0]`"),
        "{}",
        done["error"]
    );
    assert!(
        done["error"].contains("policy.bind_allow"),
        "{}",
        done["error"]
    );

    let write = format!("{}-write", env.prefix);
    env.xadd(
        "default",
        &serde_json::json!({
            "id": write, "image": image(), "command": "echo kept > /v/file",
            "volumes": [format!("{volume}:/v")],
        })
        .to_string(),
    )
    .await;
    assert_eq!(env.finished(&write).await["status"], "completed");
    let read = format!("{}-read", env.prefix);
    env.xadd(
        "default",
        &serde_json::json!({
            "id": read, "image": image(), "command": "cat /v/file",
            "volumes": [format!("{volume}:/v:ro")],
        })
        .to_string(),
    )
    .await;
    assert_eq!(env.finished(&read).await["status"], "completed");
    assert_eq!(env.lines(&read, "stdout").await, vec!["kept"]);

    let intruder = format!("{}-intruder", env.prefix);
    env.xadd(
        "default",
        &serde_json::json!({
            "id": intruder, "image": image(), "command": "echo pwned > /v/file",
            "volumes": [format!("{theirs}:/v")],
        })
        .to_string(),
    )
    .await;
    let done = env.finished(&intruder).await;
    assert_eq!(done["reason"], "policy_denied", "{done:?}");
    assert!(
        done["error"].starts_with("`volumes[0]`") && done["error"].contains("policy.volumes_allow"),
        "{}",
        done["error"]
    );
    assert!(env.log(&intruder).await.is_empty(), "nothing of it ran");
    worker.stop().await;
    let _ = Command::new("docker")
        .args(["volume", "rm", "-f", &volume, &theirs])
        .output();
}
