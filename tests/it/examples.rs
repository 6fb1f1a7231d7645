//! The producer examples in the README and `examples/` work as written.

use crate::common::{image, Env};
use tokio::process::Command;

async fn run_example(env: &Env, program: &str, script: &str, id: &str) -> (bool, String) {
    let root = env!("CARGO_MANIFEST_DIR");
    let out = Command::new(program)
        .arg(format!("{root}/examples/{script}"))
        .env("REDIS_URL", &env.url)
        .env("DOCKHAND_PREFIX", &env.prefix)
        .env("IMAGE", image())
        .env("JOB_ID", id)
        .output()
        .await
        .expect("the example runs");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_python_producer_submits_and_sees_the_result() {
    let env = Env::new();
    let worker = env.worker(&["default"], 1);
    let id = format!("{}-py", env.prefix);
    let (ok, out) = run_example(&env, "python3", "producer.py", &id).await;
    assert!(ok, "{out}");
    assert!(out.contains("status=completed"), "{out}");
    assert!(out.contains("[stdout] hello, python"), "{out}");
    assert!(out.contains("file answer.txt: b'42\\n'"), "{out}");
    assert_eq!(env.job(&id).await["status"], "completed");
    // Run again with the same id: the duplicate is said, and the program ends.
    let (ok, out) = run_example(&env, "python3", "producer.py", &id).await;
    assert!(ok, "{out}");
    assert!(
        out.contains("exists already (status completed)") && out.contains("status=completed"),
        "{out}"
    );
    worker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_shell_producer_submits_through_the_inbox() {
    let env = Env::new();
    let worker = env.worker(&["default"], 1);
    let id = format!("{}-sh", env.prefix);
    let (ok, out) = run_example(&env, "sh", "producer.sh", &id).await;
    assert!(ok, "{out}");
    assert!(
        out.contains("status=completed") && out.contains("hello from sh"),
        "{out}"
    );
    worker.stop().await;
}

/// The README's `dockhand submit examples/job.json --follow` works as written.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sample_spec_submits_and_completes() {
    let env = Env::new();
    let worker = env.worker(&["default"], 1);
    let root = env!("CARGO_MANIFEST_DIR");
    let out = Command::new(env!("CARGO_BIN_EXE_dockhand"))
        .args(["--redis-url", &env.url, "submit"])
        .arg(format!("{root}/examples/job.json"))
        .arg("--follow")
        .env("DOCKHAND__REDIS__PREFIX", &env.prefix)
        .env_remove("REDIS_URL")
        .output()
        .await
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.contains("hello from job.json"), "{text}");
    worker.stop().await;
}

/// docker-compose.yml is a valid Compose file (no registry is reachable here to
/// bring it up; `docker-compose config` checks its shape and references), and
/// its example job names the one image Compose is sure to have pulled.
#[tokio::test]
async fn the_compose_file_is_valid() {
    let root = env!("CARGO_MANIFEST_DIR");
    let file = format!("{root}/docker-compose.yml");
    let out = Command::new("docker-compose")
        .args(["-f", &file, "config"])
        .output()
        .await
        .expect("docker-compose is installed (scripts/lib.sh installs it)");
    let config = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(config.contains("condition: service_healthy"), "{config}");
    let text = std::fs::read_to_string(&file).unwrap();
    let example = text
        .lines()
        .find(|l| l.contains("XADD"))
        .expect("the file shows a producer");
    assert!(example.contains(r#""image":"redis:7""#), "{example}");
    assert!(config.contains("image: redis:7"), "{config}");
}
