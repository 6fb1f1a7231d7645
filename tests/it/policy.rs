//! Safe by default: what jobs may not ask for, and secrets that stay secret.

use crate::common::{image, Env};

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
