//! Safe by default: what jobs may not ask for, and secrets that stay secret.

use crate::common::{image, Env};
use deadpool_redis::redis::AsyncCommands;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secret_env_reaches_the_container_but_nothing_stored() {
    let env = Env::new();
    let worker = env.worker(&["default"], 1);
    let id = format!("{}-secret", env.prefix);
    let secret = "s3cr3t-Value-42";
    let command = r#"echo "token is $API_TOKEN"; echo "{\"result_text\":\"used $API_TOKEN\"}" > /dockhand/output/result.json; [ -n "$API_TOKEN" ]"#;
    let spec = serde_json::json!({"id": id, "image": image(), "command": command,
        "env": {"PLAIN": "visible"}, "secret_env": {"API_TOKEN": secret}});
    env.xadd("default", &spec.to_string()).await;
    let job = env.finished(&id).await;
    assert_eq!(
        job["status"], "completed",
        "the container had the value: {job:?}"
    );
    assert_eq!(env.lines(&id, "stdout").await, vec!["token is ***"]);
    assert_eq!(job["result_text"], "used ***");
    for (field, value) in &job {
        assert!(
            !value.contains(secret),
            "the secret is in the job hash field {field}"
        );
    }
    assert!(
        job["spec"].contains("visible"),
        "the rest of the spec is kept"
    );
    worker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dangerous_container_settings_are_refused_as_policy() {
    let env = Env::new();
    let worker = env.worker(&["default"], 1);
    for field in ["privileged", "pid", "devices", "cap_add"] {
        let id = format!("{}-{field}", env.prefix);
        env.xadd(
            "default",
            &serde_json::json!({"id": id, "image": image(), field: true}).to_string(),
        )
        .await;
        let job = env.finished(&id).await;
        assert_eq!(job["reason"], "policy_denied", "{field}");
        assert!(
            job["error"].starts_with(&format!("`{field}`")),
            "{}",
            job["error"]
        );
    }
    let id = format!("{}-notallowed", env.prefix);
    env.xadd(
        "default",
        &serde_json::json!({"id": id, "image": "registry.example/other:1"}).to_string(),
    )
    .await;
    // No image allow-list by default: an image that is not here is simply not found.
    assert_eq!(env.finished(&id).await["reason"], "image_not_found");
    worker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_image_allow_list_refuses_other_images() {
    let env = Env::new();
    let settings = env.settings(
        &["default"],
        1,
        &[("DOCKHAND__POLICY__IMAGES", "dockhand-busybox:*")],
    );
    let worker = crate::common::Worker::start(settings);
    let (ok, no) = (format!("{}-ok", env.prefix), format!("{}-no", env.prefix));
    env.xadd(
        "default",
        &serde_json::json!({"id": ok, "image": image(), "command": "true"}).to_string(),
    )
    .await;
    env.xadd(
        "default",
        &serde_json::json!({"id": no, "image": "other:1", "command": "true"}).to_string(),
    )
    .await;
    assert_eq!(env.finished(&ok).await["status"], "completed");
    let job = env.finished(&no).await;
    assert_eq!(job["reason"], "policy_denied");
    assert!(job["error"].contains("policy.images"), "{}", job["error"]);
    worker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_read_only_root_still_takes_inputs_and_gives_outputs() {
    let env = Env::new();
    let settings = env.settings(
        &["default"],
        1,
        &[("DOCKHAND__POLICY__READ_ONLY_ROOTFS", "true")],
    );
    let worker = crate::common::Worker::start(settings);
    let id = format!("{}-ro", env.prefix);
    // Runs as nobody, so the folders must be writable by any user, not only root.
    let script = r#"
if touch /rootfs-probe 2>/dev/null; then echo "root: writable"; else echo "root: read-only"; fi
echo scratch > /tmp/t && cat /tmp/t
echo work > /dockhand/work/w && cat /dockhand/work/w
cat /dockhand/input/params.txt
echo made > /dockhand/output/made.txt
echo '{"result_text":"ro ok"}' > /dockhand/output/result.json
"#;
    env.xadd(
        "default",
        &crate::common::spec(
            &id,
            serde_json::json!({
                "script": {"content": script, "interpreter": "sh -e"},
                "inputs": [{"path": "params.txt", "content": "input here\n"}],
                "user": "65534",
            }),
        ),
    )
    .await;
    let job = env.finished(&id).await;
    assert_eq!(job["status"], "completed", "{job:?}");
    assert_eq!(
        env.lines(&id, "stdout").await,
        vec!["root: read-only", "scratch", "work", "input here"]
    );
    assert_eq!(job["result_text"], "ro ok");
    let mut c = env.conn().await;
    let made: Vec<u8> = c.hget(env.files_key(&id), "made.txt").await.unwrap();
    assert_eq!(made, b"made\n");
    // The /dockhand volume went with its container (removed beside the
    // outcome's write, not before it: wait for it).
    let label = format!("dockhand.job={id}");
    crate::common::eventually("the container and its volume are removed", || {
        crate::common::containers_with_label(&label).is_empty()
            && crate::common::volumes_with_label(&label).is_empty()
    })
    .await;

    // Services run read-only too, with a /tmp of their own: this one serves what
    // it found.
    let svc = format!("{}-ro-svc", env.prefix);
    let web = "mkdir -p /tmp/www && if mkdir /www 2>/dev/null; then echo rw; else echo ro; fi > /tmp/www/index.html && exec httpd -f -p 8080 -h /tmp/www";
    let fetch =
        "for i in $(seq 1 100); do wget -qO- http://web:8080/ && exit 0; sleep 0.1; done; exit 1";
    env.xadd(
        "default",
        &serde_json::json!({
            "id": svc, "image": image(), "command": fetch,
            "services": [{"image": image(), "alias": "web", "command": web}],
        })
        .to_string(),
    )
    .await;
    let job = env.finished(&svc).await;
    assert_eq!(job["status"], "completed", "{job:?}");
    assert_eq!(env.lines(&svc, "stdout").await, vec!["ro"]);
    worker.stop().await;
}
