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

/// The README's Python snippet runs as written, but for where Redis is and the
/// key prefix (each test has its own): it sees its job complete, and run a second
/// time with the same id it ends on the duplicate instead of waiting for ever.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_readme_python_snippet_runs_as_written() {
    let env = Env::new();
    let worker = env.worker(&["default"], 1);
    let readme =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).unwrap();
    let from = readme
        .find("From Python")
        .expect("the README has the Python snippet");
    let start = readme[from..].find("```python\n").unwrap() + from + "```python\n".len();
    let end = readme[start..].find("```").unwrap() + start;
    let snippet = readme[start..end]
        .replace(
            "redis.Redis(decode_responses=True)",
            "redis.Redis.from_url(__import__('os').environ['REDIS_URL'], decode_responses=True)",
        )
        .replace("\"dockhand:", &format!("\"{}:", env.prefix))
        .replace("dockhand-busybox:latest", &image());
    assert!(
        snippet.contains("REDIS_URL") && snippet.contains(&env.prefix),
        "{snippet}"
    );
    for run in ["first", "again"] {
        // A guard, not a speed limit: a snippet that waits for ever must fail.
        let ran = Command::new("python3")
            .args(["-c", &snippet])
            .env("REDIS_URL", &env.url)
            .kill_on_drop(true)
            .output();
        let out = tokio::time::timeout(std::time::Duration::from_secs(120), ran)
            .await
            .unwrap_or_else(|_| panic!("{run}: the snippet never ended"))
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "{run}: {text}{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(text.contains("'status': 'completed'"), "{run}: {text}");
    }
    worker.stop().await;
}
