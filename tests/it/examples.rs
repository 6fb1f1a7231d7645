//! The producer examples in the README and `examples/` work as written.

use crate::common::{image, wait_until, Env};
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
        out.contains("status=completed")
            && out.contains("  hello from sh\n")
            && out.contains("  Linux\n"),
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
    // Redis, a worker and `dockhand serve`, each with a health check.
    for service in ["redis:", "worker:", "api:"] {
        assert!(
            config.lines().any(|l| l.trim() == service),
            "no service {service}\n{config}"
        );
    }
    assert_eq!(config.matches("healthcheck:").count(), 3, "{config}");
    assert!(config.contains("- serve"), "{config}");
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

/// README lines of ```sh blocks the suite does not run, each with why. Every one
/// must still be in the README (so this list cannot outlive its lines); any other
/// line is run, and a new one is run as soon as it is written.
const NOT_RUN: &[(&str, &str)] = &[
    (
        "scripts/demo",
        "the demo: Redis and a worker of its own, for a person to watch",
    ),
    ("scripts/test", "this suite"),
    (
        "cargo install --path .",
        "the suite runs the binary cargo built for it",
    ),
    (
        "redis-server --appendonly yes &",
        "the test's own Redis stands in (its address is what is substituted)",
    ),
    (
        "dockhand worker --queue default --queue other --concurrency 4",
        "a second worker; the one of \"Running it yourself\" serves these lines",
    ),
    (
        "dockhand profile add build-docs profile.json",
        "needs a profile file of your own (profiles: tests/it/profiles.rs)",
    ),
    (
        "dockhand profile build build-docs",
        "needs that profile, built from git",
    ),
    (
        "dockhand cancel <id>",
        "names a job of yours (cancel: tests/it/cli.rs)",
    ),
    (
        "dockhand subscriber add billing https://billing.example.com/hooks",
        "resolves a public name; the suite reaches nothing beyond loopback",
    ),
];

/// The ```sh blocks of the README, as lines (comments and blank lines left out).
fn readme_shell_lines() -> Vec<Vec<String>> {
    let readme =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).unwrap();
    let mut blocks = Vec::new();
    let mut rest = readme.as_str();
    while let Some(at) = rest.find("```sh\n") {
        let body = &rest[at + "```sh\n".len()..];
        let end = body.find("```").expect("a closed block");
        blocks.push(
            body[..end]
                .lines()
                .map(str::trim)
                .filter(|l| !l.is_empty() && !l.starts_with('#'))
                .map(str::to_string)
                .collect(),
        );
        rest = &body[end + 3..];
    }
    blocks
}

/// A README line running in the background: ending in `&`, or a subscriber,
/// which runs until stopped. Its stdout goes to a file.
struct Background {
    line: String,
    child: tokio::process::Child,
    out: std::path::PathBuf,
}

impl Background {
    fn output(&self) -> String {
        std::fs::read_to_string(&self.out).unwrap_or_default()
    }
}

/// Every shell line of the README runs as written, in order, against this test's
/// Redis: only Redis's address (`redis-cli -h H -p P`, the URL in `--redis-url`,
/// `REDIS_URL`) and the key prefix (`dockhand:` in keys, `DOCKHAND__REDIS__PREFIX`)
/// are changed. Between blocks the test waits for the jobs a block submitted, as a
/// reader would; then it checks what they did.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_readme_shell_snippets_run_as_written() {
    let env = Env::new();
    let root = env!("CARGO_MANIFEST_DIR");
    let tmp = tempfile::tempdir().unwrap();
    let bin = tmp.path().join("bin");
    std::fs::create_dir(&bin).unwrap();
    std::os::unix::fs::symlink(env!("CARGO_BIN_EXE_dockhand"), bin.join("dockhand")).unwrap();
    let path = format!(
        "{}:{}",
        bin.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let (host, port) = env
        .url
        .trim_start_matches("redis://")
        .trim_end_matches('/')
        .rsplit_once(':')
        .expect("REDIS_URL is redis://host:port/");
    let blocks = readme_shell_lines();
    let all: Vec<&String> = blocks.iter().flatten().collect();
    for (skipped, why) in NOT_RUN {
        assert_eq!(
            all.iter().filter(|l| l.starts_with(skipped)).count(),
            1,
            "{skipped:?} (not run: {why}) must be one line of the README"
        );
    }
    let worker_id = format!(
        "{}-1",
        std::fs::read_to_string("/etc/hostname").unwrap().trim()
    );
    let mut background: Vec<Background> = Vec::new();
    let mut ran: Vec<(String, String)> = Vec::new();
    for (n, block) in blocks.iter().enumerate() {
        for line in block {
            if NOT_RUN.iter().any(|(skipped, _)| line.starts_with(skipped)) {
                continue;
            }
            let command = if line.starts_with("redis-cli ") {
                line.replacen("redis-cli ", &format!("redis-cli -h {host} -p {port} "), 1)
                    .replace("dockhand:", &format!("{}:", env.prefix))
            } else {
                assert!(
                    line.starts_with("dockhand "),
                    "a README line the test does not know how to run: {line}"
                );
                line.replace("redis://127.0.0.1:6379/", &env.url)
            }
            .replace("dockhand-busybox:latest", &image());
            let code = command.split(" # ").next().unwrap().trim_end();
            let (code, behind) = match code.strip_suffix('&') {
                Some(code) => (code.trim_end(), true),
                None => (code, code.contains("SUBSCRIBE ")),
            };
            let mut cmd = Command::new("sh");
            cmd.current_dir(root)
                .env("PATH", &path)
                .env("REDIS_URL", &env.url)
                .env("DOCKHAND__REDIS__PREFIX", &env.prefix)
                .kill_on_drop(true);
            if behind {
                let out = tmp.path().join(format!("bg-{}.out", background.len()));
                cmd.args(["-c", &format!("exec {code}")])
                    .stdout(std::fs::File::create(&out).unwrap())
                    .stderr(std::process::Stdio::inherit());
                let child = cmd.spawn().unwrap();
                let bg = Background {
                    line: line.clone(),
                    child,
                    out,
                };
                // Running before the next line: a worker ready to claim, a
                // subscriber subscribed (else it could miss what follows).
                if code.contains(" worker ") {
                    env.wait_until_worker_ready(&worker_id, None).await;
                } else {
                    wait_until(&format!("{line} to subscribe"), || async {
                        bg.output().contains("subscribe").then_some(())
                    })
                    .await;
                }
                background.push(bg);
                continue;
            }
            // A guard, not a speed limit: a line that waits for ever must fail.
            let out = tokio::time::timeout(
                std::time::Duration::from_secs(120),
                cmd.args(["-c", code]).output(),
            )
            .await
            .unwrap_or_else(|_| panic!("block {n}: {line} never ended"))
            .unwrap();
            let stdout = String::from_utf8_lossy(&out.stdout).to_string();
            assert!(
                out.status.success(),
                "block {n}: {line}\nran as: {code}\n{stdout}{}",
                String::from_utf8_lossy(&out.stderr)
            );
            ran.push((line.clone(), stdout));
        }
        // What this block submitted has finished before the next block looks at it.
        for (line, stdout) in &ran {
            if line.starts_with("redis-cli XADD") {
                env.finished(stdout.trim()).await;
            }
            if line.starts_with("redis-cli LPUSH") {
                env.finished("report-42").await;
            }
        }
    }
    let said = |start: &str| -> &str {
        &ran.iter()
            .find(|(l, _)| l.starts_with(start))
            .unwrap_or_else(|| panic!("no README line starts with {start:?}"))
            .1
    };
    assert!(
        said("dockhand --redis-url").contains("hello from job.json"),
        "{ran:?}"
    );
    let xadd = said("redis-cli XADD").trim().to_string();
    let job = env.finished(&xadd).await;
    assert_eq!(job["status"], "completed", "{job:?}");
    assert_eq!(env.lines(&xadd, "stdout").await, vec!["hello"]);
    let report = env.finished("report-42").await;
    assert_eq!(
        (
            report["status"].as_str(),
            report["reason"].as_str(),
            report["exit_code"].as_str()
        ),
        ("aborted", "exit_code", "3")
    );
    let status: serde_json::Value =
        serde_json::from_str(said("dockhand status report-42 --json")).unwrap();
    assert_eq!(status["exit_code"], 3, "{status}");
    assert!(said("dockhand submit --image").contains("hi"), "{ran:?}");
    for bg in &mut background {
        // SIGTERM: the worker drains (it runs nothing now) and exits.
        if let Some(pid) = bg.child.id() {
            let _ = std::process::Command::new("kill")
                .arg(pid.to_string())
                .status();
        }
        let _ = bg.child.wait().await;
    }
    let events = background
        .iter()
        .find(|b| b.line.contains("PSUBSCRIBE"))
        .expect("the README subscribes to everything")
        .output();
    assert!(events.contains("job.completed"), "{events}");
}
