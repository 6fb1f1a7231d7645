//! Image builds from a folder, against the real Docker engine: the context and its
//! `.dockerignore`, build args and labels, the builder's lines, and its failures.
//! No Redis; the base image is the local test image, so no registry either.

use crate::common::image;
use bollard::Docker;
use dockhand::executor::build::{build, cached_image, image_tag, BuildError, BuildRequest};
use dockhand::logs::{LogLine, LogStream};
use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;

async fn docker() -> Docker {
    Docker::connect_with_local_defaults()
        .expect("the Docker socket")
        .negotiate_version()
        .await
        .expect("the Docker engine must be running")
}

/// Removes the tagged image when the test ends, passed or not.
struct Cleanup(String);

impl Drop for Cleanup {
    fn drop(&mut self) {
        let _ = Command::new("docker").args(["rmi", "-f", &self.0]).output();
    }
}

/// A tag no other test (or earlier run) uses.
fn unique_tag(name: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    let url = format!(
        "file:///dockhand-tests/{name}-{}-{nanos}",
        std::process::id()
    );
    image_tag(
        &url,
        "0123456789abcdef0123456789abcdef01234567",
        "Dockerfile",
        ".",
        &BTreeMap::new(),
    )
}

fn write(dir: &Path, rel: &str, content: &str) {
    let path = dir.join(rel);
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, content).unwrap();
}

fn docker_run(tag: &str, command: &[&str]) -> String {
    let out = Command::new("docker")
        .args(["run", "--rm", "--network", "none", tag])
        .args(command)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "docker run {tag} {command:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

async fn run_build(req: &BuildRequest) -> (Result<String, BuildError>, Vec<LogLine>) {
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let result = build(&docker().await, req, &tx, 4096).await;
    drop(tx);
    let mut lines = Vec::new();
    while let Some(line) = rx.recv().await {
        lines.push(line);
    }
    (result, lines)
}

#[tokio::test]
async fn builds_a_context_honouring_dockerignore_with_args_and_labels() {
    let tmp = tempfile::tempdir().unwrap();
    let checkout = tmp.path();
    let dockerfile = format!(
        "FROM {}\nARG GREETING=none\nCOPY hello.txt /hello.txt\nCOPY . /ctx/\nRUN echo \"greeting=$GREETING\"\n",
        image()
    );
    write(checkout, "app/Dockerfile", &dockerfile);
    write(
        checkout,
        "app/.dockerignore",
        "# keep secrets out\nsecret.txt\n**/*.log\n.dockerignore\n",
    );
    write(checkout, "app/hello.txt", "hello\n");
    write(checkout, "app/secret.txt", "password\n");
    write(checkout, "app/sub/debug.log", "noise\n");
    write(checkout, "app/sub/keep.txt", "kept\n");
    write(checkout, "outside.txt", "not in the context\n");

    let tag = unique_tag("ok");
    let _cleanup = Cleanup(tag.clone());
    let mut req = BuildRequest::new(checkout, &tag);
    req.context = "app".into();
    req.build_args.insert("GREETING".into(), "hi there".into());
    req.labels.insert("dockhand.test".into(), "build".into());
    req.labels
        .insert("dockhand.commit".into(), "0123456789ab".into());

    let docker = docker().await;
    assert_eq!(cached_image(&docker, &tag).await.unwrap(), None);
    let (result, lines) = run_build(&req).await;
    let id = result.unwrap();
    assert!(id.starts_with("sha256:"), "{id}");

    assert!(lines.iter().all(|l| l.stream == LogStream::Build));
    let texts: Vec<&str> = lines.iter().map(|l| l.text.as_str()).collect();
    assert!(
        texts
            .iter()
            .any(|t| t.starts_with("Step 1/") && t.contains(" : FROM ")),
        "{texts:#?}"
    );
    assert!(texts.contains(&"greeting=hi there"), "{texts:#?}");
    let label_steps = texts
        .iter()
        .filter(|t| t.starts_with("Step ") && t.contains(" : LABEL "))
        .count();
    assert_eq!(label_steps, 1, "both labels in one step: {texts:#?}");
    assert!(texts.iter().all(|t| !t.contains('\n')), "{texts:#?}");

    assert_eq!(cached_image(&docker, &tag).await.unwrap(), Some(id.clone()));
    let inspect = docker.inspect_image(&tag).await.unwrap();
    let labels = inspect.config.and_then(|c| c.labels).unwrap_or_default();
    assert_eq!(
        labels.get("dockhand.test").map(String::as_str),
        Some("build")
    );
    assert_eq!(
        labels.get("dockhand.commit").map(String::as_str),
        Some("0123456789ab")
    );

    let root: Vec<String> = docker_run(&tag, &["ls", "/"])
        .lines()
        .map(String::from)
        .collect();
    assert!(root.contains(&"hello.txt".to_string()), "{root:?}");
    assert!(!root.contains(&"secret.txt".to_string()), "{root:?}");
    let copied = docker_run(&tag, &["find", "/ctx"]);
    let copied: Vec<&str> = copied.lines().collect();
    for present in ["/ctx/hello.txt", "/ctx/Dockerfile", "/ctx/sub/keep.txt"] {
        assert!(copied.contains(&present), "{present} missing: {copied:?}");
    }
    for absent in [
        "/ctx/secret.txt",
        "/ctx/sub/debug.log",
        "/ctx/.dockerignore",
        "/ctx/outside.txt",
    ] {
        assert!(
            !copied.iter().any(|f| f.contains(".dockhand-dockerfile")),
            "the generated Dockerfile stays out of COPY: {copied:?}"
        );
        assert!(!copied.contains(&absent), "{absent} present: {copied:?}");
    }
    assert_eq!(docker_run(&tag, &["cat", "/hello.txt"]), "hello\n");
}

#[tokio::test]
async fn a_failing_step_gives_the_builders_message() {
    let tmp = tempfile::tempdir().unwrap();
    write(
        tmp.path(),
        "Dockerfile",
        &format!("FROM {}\nRUN echo before-failing && exit 7\n", image()),
    );
    let tag = unique_tag("fails");
    let _cleanup = Cleanup(tag.clone());
    let (result, lines) = run_build(&BuildRequest::new(tmp.path(), &tag)).await;
    let texts: Vec<&str> = lines.iter().map(|l| l.text.as_str()).collect();
    match result {
        Err(BuildError::Failed { message }) => {
            assert!(message.contains("exit 7"), "{message}");
            assert!(message.contains("non-zero code: 7"), "{message}");
        }
        other => panic!("expected a failed build, got {other:?}"),
    }
    assert!(
        texts.contains(&"before-failing"),
        "lines before the failure arrive: {texts:#?}"
    );
    assert_eq!(cached_image(&docker().await, &tag).await.unwrap(), None);
}

#[tokio::test]
async fn an_unknown_instruction_gives_the_builders_message() {
    let tmp = tempfile::tempdir().unwrap();
    write(
        tmp.path(),
        "Dockerfile",
        &format!("FROM {}\nFROBNICATE all the things\n", image()),
    );
    let tag = unique_tag("unknown");
    let _cleanup = Cleanup(tag.clone());
    let (result, _) = run_build(&BuildRequest::new(tmp.path(), &tag)).await;
    let err = result.unwrap_err();
    assert!(matches!(err, BuildError::Failed { .. }), "{err:?}");
    assert!(
        err.to_string()
            .to_lowercase()
            .contains("unknown instruction"),
        "{err}"
    );
}

#[tokio::test]
async fn a_context_outside_the_checkout_is_refused_before_docker_is_asked() {
    let tmp = tempfile::tempdir().unwrap();
    write(
        tmp.path(),
        "repo/Dockerfile",
        &format!("FROM {}\n", image()),
    );
    let mut req = BuildRequest::new(tmp.path().join("repo"), unique_tag("escape"));
    req.context = "..".into();
    let (result, lines) = run_build(&req).await;
    assert!(
        matches!(
            result,
            Err(BuildError::Escapes {
                what: "context",
                ..
            })
        ),
        "{result:?}"
    );
    assert!(lines.is_empty());
}

#[tokio::test]
async fn a_dockerfile_outside_the_context_is_used_but_not_copied() {
    let tmp = tempfile::tempdir().unwrap();
    write(
        tmp.path(),
        "docker/app.Dockerfile",
        &format!("FROM {}\nCOPY . /ctx/\n", image()),
    );
    write(tmp.path(), "app/main.sh", "echo hi\n");
    let tag = unique_tag("outside");
    let _cleanup = Cleanup(tag.clone());
    let mut req = BuildRequest::new(tmp.path(), &tag);
    req.context = "app".into();
    req.dockerfile = "../docker/app.Dockerfile".into();
    let (result, _) = run_build(&req).await;
    result.unwrap();
    let copied = docker_run(&tag, &["ls", "-A", "/ctx"]);
    assert_eq!(copied.lines().collect::<Vec<_>>(), vec!["main.sh"]);
}

#[tokio::test]
async fn a_hostile_dockerignore_is_matched_quickly_and_honoured() {
    // Each pattern backtracks exponentially in a naive matcher against the long
    // names below; the build must still go through, honouring them.
    let tmp = tempfile::tempdir().unwrap();
    let stars = format!("{}b", "*a".repeat(24));
    let spans = format!("{}b", "**/a/".repeat(16));
    let mut rules = String::new();
    for _ in 0..20 {
        rules.push_str(&format!("{stars}\n{spans}\n"));
    }
    rules.push_str("*.secret\n");
    write(tmp.path(), ".dockerignore", &rules);
    write(
        tmp.path(),
        "Dockerfile",
        &format!("FROM {}\nCOPY . /ctx/\n", image()),
    );
    let long = "a".repeat(200);
    write(tmp.path(), &long, "kept\n");
    write(tmp.path(), &format!("{long}b"), "ignored\n");
    write(tmp.path(), &vec!["a"; 60].join("/"), "kept too\n");
    write(tmp.path(), "x.secret", "ignored\n");
    let tag = unique_tag("hostile-ignore");
    let _cleanup = Cleanup(tag.clone());
    let (result, _) = run_build(&BuildRequest::new(tmp.path(), &tag)).await;
    result.unwrap();
    let listed = docker_run(&tag, &["sh", "-c", "cd /ctx && find . -type f | sort"]);
    let files: Vec<&str> = listed.lines().collect();
    let deep = format!("./{}", vec!["a"; 60].join("/"));
    let kept = format!("./{long}");
    assert!(files.contains(&kept.as_str()), "{files:?}");
    assert!(files.contains(&deep.as_str()), "{files:?}");
    assert!(
        !files
            .iter()
            .any(|f| f.ends_with('b') || f.ends_with(".secret")),
        "{files:?}"
    );
}

#[tokio::test]
async fn a_context_over_the_cap_is_refused_naming_the_setting() {
    let tmp = tempfile::tempdir().unwrap();
    write(tmp.path(), "Dockerfile", &format!("FROM {}\n", image()));
    write(tmp.path(), "big.bin", &"x".repeat(300 * 1024));
    let mut req = BuildRequest::new(tmp.path(), unique_tag("too-big"));
    req.max_context_bytes = 256 * 1024;
    let (result, lines) = run_build(&req).await;
    let err = result.unwrap_err();
    assert!(
        matches!(err, BuildError::ContextTooLarge { limit: 262144 }),
        "{err:?}"
    );
    assert!(
        err.to_string().contains("worker.build_context_bytes"),
        "{err}"
    );
    assert!(lines.is_empty(), "the engine is never asked: {lines:?}");
}
