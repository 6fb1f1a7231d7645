//! Jobs from git: refs resolved and commits checked out, with submodules, from
//! real repositories the tests make with the git CLI. No Redis, no network.

pub mod http;

use crate::common::git;
use base64::{engine::general_purpose::STANDARD as BASE64, Engine};
use dockhand::source::{Credentials, GitCache, GitError, GitSource, Reference, SourcePolicy};
use std::io::{BufRead, BufReader, Write};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::time::timeout;

fn commit_file(dir: &Path, file: &str, content: &str, message: &str) -> String {
    std::fs::write(dir.join(file), content).unwrap();
    git(dir, &["add", "--", file]);
    git(dir, &["commit", "-q", "-m", message]);
    git(dir, &["rev-parse", "HEAD"])
}

fn new_repo(root: &Path, name: &str) -> PathBuf {
    let dir = root.join(name);
    std::fs::create_dir_all(&dir).unwrap();
    git(&dir, &["init", "-q"]);
    dir
}

/// Repositories made for one test:
///
/// - `deep`: D1 (`deep.txt`).
/// - `lib`: L1 (`lib.txt` = "lib v1", submodule `vendor/deep` by its `file://`
///   URL), then L2 (`lib.txt` = "lib v2") on top, so L1 is no branch tip.
/// - `super`: A (`app.txt` = "A"), then B (`app.txt` = "B", submodule `lib` by
///   the relative URL `../lib`, recorded at L1) on `main`; branch `feature` with
///   F from A; annotated tag `v1` at A, lightweight tag `light` at B.
struct Fixture {
    _tmp: tempfile::TempDir,
    root: PathBuf,
    url: String,
    a: String,
    b: String,
    f: String,
    l1: String,
}

fn fixture() -> Fixture {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().canonicalize().unwrap();

    let deep = new_repo(&root, "deep");
    commit_file(&deep, "deep.txt", "deep", "D1");

    let lib = new_repo(&root, "lib");
    std::fs::write(lib.join("lib.txt"), "lib v1").unwrap();
    git(&lib, &["add", "lib.txt"]);
    let deep_url = format!("file://{}", deep.display());
    git(&lib, &["submodule", "add", "-q", &deep_url, "vendor/deep"]);
    git(&lib, &["commit", "-q", "-m", "L1"]);
    let l1 = git(&lib, &["rev-parse", "HEAD"]);

    let sup = new_repo(&root, "super");
    let a = commit_file(&sup, "app.txt", "A", "A");
    git(&sup, &["tag", "-a", "v1", "-m", "version 1"]);
    git(&sup, &["submodule", "add", "-q", "../lib", "lib"]);
    let b = commit_file(&sup, "app.txt", "B", "B");
    git(&sup, &["tag", "light"]);
    git(&sup, &["checkout", "-q", "-b", "feature", &a]);
    let f = commit_file(&sup, "app.txt", "F", "F");
    git(&sup, &["checkout", "-q", "main"]);

    // Moves lib's branch past the commit `super` records.
    commit_file(&lib, "lib.txt", "lib v2", "L2");

    Fixture {
        url: sup.display().to_string(),
        _tmp: tmp,
        root,
        a,
        b,
        f,
        l1,
    }
}

/// A cache that allows what these tests use: repositories on this host, and git
/// servers on 127.0.0.1.
fn loopback_cache(root: &Path, credentials: Credentials) -> GitCache {
    let policy = SourcePolicy {
        file_urls: true,
        guard: SourcePolicy::guard(&["127.0.0.1/32".parse().unwrap()]),
        ..SourcePolicy::default()
    };
    GitCache::open_with(root, credentials, policy, Duration::from_secs(60)).unwrap()
}

impl Fixture {
    fn cache(&self) -> GitCache {
        loopback_cache(&self.root.join("cache"), Credentials::new())
    }

    fn source(&self, reference: Reference) -> GitSource {
        GitSource {
            url: self.url.clone(),
            reference,
            submodules: true,
        }
    }

    fn dest(&self, name: &str) -> PathBuf {
        self.root.join("checkouts").join(name)
    }
}

fn read(path: impl AsRef<Path>) -> String {
    std::fs::read_to_string(path.as_ref())
        .unwrap_or_else(|e| panic!("{}: {e}", path.as_ref().display()))
}

#[tokio::test]
async fn resolves_branches_tags_and_head_without_fetching() {
    let fx = fixture();
    let cache = fx.cache();
    let resolve = |r| {
        let cache = cache.clone();
        let source = fx.source(r);
        async move { cache.resolve(&source).await.unwrap() }
    };
    assert_eq!(resolve(Reference::Default).await, fx.b);
    assert_eq!(resolve(Reference::Branch("main".into())).await, fx.b);
    assert_eq!(resolve(Reference::Branch("feature".into())).await, fx.f);
    assert_eq!(
        resolve(Reference::Tag("v1".into())).await,
        fx.a,
        "annotated tag peeled"
    );
    assert_eq!(resolve(Reference::Tag("light".into())).await, fx.b);
    assert_eq!(resolve(Reference::Commit(fx.a.to_uppercase())).await, fx.a);
    // ls-remote only: nothing was fetched into the cache.
    assert!(!cache.mirror_path(&fx.url).exists());
}

#[tokio::test]
async fn checks_out_each_commit_with_its_files_and_submodules() {
    let fx = fixture();
    let cache = fx.cache();
    let source = fx.source(Reference::Branch("main".into()));

    let at_b = cache.checkout(&source, &fx.b, &fx.dest("b")).await.unwrap();
    assert_eq!(at_b.commit, fx.b);
    assert_eq!(at_b.submodules, vec!["lib", "lib/vendor/deep"]);
    let b = fx.dest("b");
    assert_eq!(read(b.join("app.txt")), "B");
    assert_eq!(
        read(b.join("lib/lib.txt")),
        "lib v1",
        "the recorded commit, not lib's tip"
    );
    assert_eq!(read(b.join("lib/vendor/deep/deep.txt")), "deep");
    let lib_head = git(&b.join("lib"), &["rev-parse", "HEAD"]);
    assert_eq!(lib_head, fx.l1);
    assert_eq!(git(&b, &["rev-parse", "HEAD"]), fx.b);
    assert_eq!(
        git(&b, &["status", "--porcelain", "--ignore-submodules=none"]),
        ""
    );

    // A is no branch tip any more (B is on top of it), and has no submodule.
    let at_a = cache.checkout(&source, &fx.a, &fx.dest("a")).await.unwrap();
    assert_eq!(at_a.commit, fx.a);
    assert!(at_a.submodules.is_empty());
    assert_eq!(read(fx.dest("a").join("app.txt")), "A");
    assert!(!fx.dest("a").join("lib").exists());

    let at_f = cache.checkout(&source, &fx.f, &fx.dest("f")).await.unwrap();
    assert_eq!(read(fx.dest("f").join("app.txt")), "F");
    assert_eq!(at_f.commit, fx.f);
}

#[tokio::test]
async fn a_fresh_cache_fetches_a_commit_that_is_no_branch_tip() {
    let fx = fixture();
    let checkout = fx
        .cache()
        .checkout(&fx.source(Reference::Default), &fx.a, &fx.dest("a"))
        .await
        .unwrap();
    assert_eq!(checkout.commit, fx.a);
    assert_eq!(read(fx.dest("a").join("app.txt")), "A");
}

#[tokio::test]
async fn file_urls_work_for_the_superproject_too() {
    let fx = fixture();
    let mut source = fx.source(Reference::Tag("v1".into()));
    source.url = format!("file://{}", fx.url);
    let cache = fx.cache();
    let commit = cache.resolve(&source).await.unwrap();
    assert_eq!(commit, fx.a);
    let got = cache.checkout(&source, &fx.b, &fx.dest("b")).await.unwrap();
    assert_eq!(got.submodules, vec!["lib", "lib/vendor/deep"]);
    assert_eq!(read(fx.dest("b").join("lib/lib.txt")), "lib v1");
}

#[tokio::test]
async fn submodules_can_be_left_out() {
    let fx = fixture();
    let mut source = fx.source(Reference::Default);
    source.submodules = false;
    let got = fx
        .cache()
        .checkout(&source, &fx.b, &fx.dest("b"))
        .await
        .unwrap();
    assert!(got.submodules.is_empty());
    assert_eq!(read(fx.dest("b").join("app.txt")), "B");
    assert!(!fx.dest("b").join("lib/lib.txt").exists());
}

#[tokio::test]
async fn the_cache_serves_a_commit_it_has_without_the_remote() {
    let fx = fixture();
    let cache = fx.cache();
    let source = fx.source(Reference::Default);
    cache
        .checkout(&source, &fx.b, &fx.dest("first"))
        .await
        .unwrap();
    for name in ["super", "lib", "deep"] {
        std::fs::rename(fx.root.join(name), fx.root.join(format!("{name}.gone"))).unwrap();
    }
    let again = cache
        .checkout(&source, &fx.b, &fx.dest("second"))
        .await
        .unwrap();
    assert_eq!(again.submodules, vec!["lib", "lib/vendor/deep"]);
    assert_eq!(
        read(fx.dest("second").join("lib/vendor/deep/deep.txt")),
        "deep"
    );
}

#[tokio::test]
async fn unknown_refs_are_named_in_the_error() {
    let fx = fixture();
    let cache = fx.cache();

    let err = cache
        .resolve(&fx.source(Reference::Branch("nope".into())))
        .await
        .unwrap_err();
    assert!(matches!(err, GitError::RefNotFound { .. }), "{err:?}");
    assert_eq!(
        err.to_string(),
        format!("branch `nope` not found in {}", fx.url)
    );

    let err = cache
        .resolve(&fx.source(Reference::Tag("v9".into())))
        .await
        .unwrap_err();
    assert_eq!(err.to_string(), format!("tag `v9` not found in {}", fx.url));

    let missing = "1234567890abcdef1234567890abcdef12345678";
    let err = cache
        .checkout(
            &fx.source(Reference::Commit(missing.into())),
            missing,
            &fx.dest("x"),
        )
        .await
        .unwrap_err();
    assert!(matches!(err, GitError::CommitNotFound { .. }), "{err:?}");
    assert_eq!(
        err.to_string(),
        format!("commit {missing} not found in {}", fx.url)
    );

    let err = cache
        .checkout(&fx.source(Reference::Default), "abc123", &fx.dest("y"))
        .await
        .unwrap_err();
    assert!(matches!(err, GitError::InvalidRef { .. }), "{err:?}");
    assert!(err.to_string().contains("abc123"), "{err}");
}

#[tokio::test]
async fn a_missing_repository_or_an_ssh_url_is_a_clear_error() {
    let fx = fixture();
    let cache = fx.cache();
    let missing = fx.root.join("no-such-repo").display().to_string();
    let source = GitSource {
        url: missing.clone(),
        reference: Reference::Default,
        submodules: true,
    };
    let err = cache.resolve(&source).await.unwrap_err();
    assert!(
        matches!(err, GitError::RepositoryNotFound { .. }),
        "{err:?}"
    );
    assert_eq!(err.to_string(), format!("repository {missing} not found"));
    let err = cache
        .checkout(&source, &fx.a, &fx.dest("m"))
        .await
        .unwrap_err();
    assert!(
        matches!(err, GitError::RepositoryNotFound { .. }),
        "{err:?}"
    );

    // A folder that is not a repository.
    let plain = fx.root.join("plain");
    std::fs::create_dir_all(&plain).unwrap();
    let source = GitSource {
        url: plain.display().to_string(),
        ..source
    };
    let err = cache.resolve(&source).await.unwrap_err();
    assert!(
        matches!(err, GitError::RepositoryNotFound { .. }),
        "{err:?}"
    );
    assert_eq!(
        err.to_string(),
        format!("repository {} not found", plain.display())
    );

    // Nothing listens there: a network error, worth a retry.
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let unreachable = format!("http://127.0.0.1:{port}/org/repo.git");
    let source = GitSource {
        url: unreachable.clone(),
        ..source
    };
    let err = cache.resolve(&source).await.unwrap_err();
    assert!(matches!(err, GitError::Network { .. }), "{err:?}");
    assert_eq!(err.to_string(), format!("cannot reach {unreachable}"));

    for url in [
        "git@github.com:org/repo.git",
        "ssh://git@github.com/org/repo.git",
    ] {
        let source = GitSource {
            url: url.into(),
            reference: Reference::Default,
            submodules: true,
        };
        let err = cache.resolve(&source).await.unwrap_err();
        assert!(matches!(err, GitError::SshUnsupported { .. }), "{err:?}");
        assert!(err.to_string().contains("ssh"), "{err}");
        assert!(err.to_string().contains(url), "{err}");
    }
}

#[tokio::test]
async fn a_submodule_that_cannot_be_fetched_is_named() {
    let fx = fixture();
    // lib's mirror is not in this cache yet; without lib, B's submodule cannot come.
    std::fs::rename(fx.root.join("lib"), fx.root.join("lib.gone")).unwrap();
    let err = fx
        .cache()
        .checkout(&fx.source(Reference::Default), &fx.b, &fx.dest("b"))
        .await
        .unwrap_err();
    let lib_url = fx.root.join("lib").display().to_string();
    match &err {
        GitError::Submodule { path, url, source } => {
            assert_eq!(path, "lib");
            assert_eq!(url, &lib_url);
            assert!(
                matches!(**source, GitError::RepositoryNotFound { .. }),
                "{source:?}"
            );
        }
        other => panic!("expected a submodule error, got {other:?}"),
    }
    assert_eq!(
        err.to_string(),
        format!("submodule `lib` ({lib_url}) could not be checked out")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_checkouts_of_one_repository_both_succeed() {
    let fx = fixture();
    let cache = fx.cache();
    let source = fx.source(Reference::Default);
    let dests = [fx.dest("one"), fx.dest("two"), fx.dest("three")];
    // Each checkout runs on its own blocking thread: these really overlap.
    let (one, two, three) = tokio::join!(
        cache.checkout(&source, &fx.b, &dests[0]),
        cache.checkout(&source, &fx.a, &dests[1]),
        cache.checkout(&source, &fx.b, &dests[2]),
    );
    assert_eq!(one.unwrap().submodules, vec!["lib", "lib/vendor/deep"]);
    assert_eq!(two.unwrap().commit, fx.a);
    assert_eq!(three.unwrap().commit, fx.b);
    assert_eq!(read(fx.dest("one").join("lib/lib.txt")), "lib v1");
    assert_eq!(read(fx.dest("two").join("app.txt")), "A");
    assert_eq!(
        read(fx.dest("three").join("lib/vendor/deep/deep.txt")),
        "deep"
    );
    // The shared mirror is still sound.
    let mirror = cache.mirror_path(&fx.url);
    git(&mirror, &["fsck", "--no-progress"]);
}

#[tokio::test]
async fn a_destination_with_files_in_it_is_refused() {
    let fx = fixture();
    let dest = fx.dest("busy");
    std::fs::create_dir_all(&dest).unwrap();
    std::fs::write(dest.join("keep.txt"), "mine").unwrap();
    let err = fx
        .cache()
        .checkout(&fx.source(Reference::Default), &fx.b, &dest)
        .await
        .unwrap_err();
    assert!(matches!(err, GitError::DestinationNotEmpty(_)), "{err:?}");
    assert_eq!(read(dest.join("keep.txt")), "mine");
}

/// A loopback HTTP server that answers every request `401` and records the
/// `Authorization` header of each (None when absent).
fn unauthorized_server() -> (String, Arc<Mutex<Vec<Option<String>>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/org/private.git", listener.local_addr().unwrap());
    let seen = Arc::new(Mutex::new(Vec::new()));
    let log = seen.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { return };
            let mut reader = BufReader::new(stream.try_clone().unwrap());
            let mut auth = None;
            let mut line = String::new();
            while reader.read_line(&mut line).unwrap_or(0) > 0 && line != "\r\n" {
                if let Some((name, value)) = line.split_once(':') {
                    if name.eq_ignore_ascii_case("authorization") {
                        auth = Some(value.trim().to_string());
                    }
                }
                line.clear();
            }
            log.lock().unwrap().push(auth);
            let _ = stream.write_all(
                b"HTTP/1.1 401 Unauthorized\r\nWWW-Authenticate: Basic realm=\"git\"\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
            );
        }
    });
    (url, seen)
}

#[tokio::test]
async fn a_rejected_token_fails_fast_instead_of_retrying_forever() {
    let (url, seen) = unauthorized_server();
    let tmp = tempfile::tempdir().unwrap();
    let credentials = Credentials::new().with("127.0.0.1", "wrong-token");
    let cache = loopback_cache(tmp.path(), credentials);
    let source = GitSource {
        url: url.clone(),
        reference: Reference::Branch("main".into()),
        submodules: true,
    };
    let err = timeout(Duration::from_secs(30), cache.resolve(&source))
        .await
        .expect("libgit2 kept asking for credentials")
        .unwrap_err();
    assert!(matches!(err, GitError::Auth { .. }), "{err:?}");
    assert_eq!(err.to_string(), format!("authentication to {url} failed"));
    let seen = std::mem::take(&mut *seen.lock().unwrap());
    let sent: Vec<&String> = seen.iter().flatten().collect();
    assert!(!sent.is_empty() && sent.len() <= 2, "{seen:?}");
    let expected = format!("Basic {}", BASE64.encode("x-access-token:wrong-token"));
    assert!(sent.iter().all(|h| **h == expected), "{seen:?}");
    assert!(!format!("{err:?} {cache:?}").contains("wrong-token"));

    // A checkout stops at the same point, without a second round of fetches.
    let commit = "1234567890abcdef1234567890abcdef12345678";
    let err = timeout(
        Duration::from_secs(30),
        cache.checkout(&source, commit, &tmp.path().join("dest")),
    )
    .await
    .unwrap()
    .unwrap_err();
    assert!(matches!(err, GitError::Auth { .. }), "{err:?}");
}

#[tokio::test]
async fn a_host_without_a_token_fails_at_once() {
    let (url, seen) = unauthorized_server();
    let tmp = tempfile::tempdir().unwrap();
    let cache = loopback_cache(tmp.path(), Credentials::new());
    let source = GitSource {
        url,
        reference: Reference::Default,
        submodules: true,
    };
    let err = timeout(Duration::from_secs(30), cache.resolve(&source))
        .await
        .unwrap()
        .unwrap_err();
    assert!(matches!(err, GitError::Auth { .. }), "{err:?}");
    let cause = std::error::Error::source(&err).unwrap().to_string();
    assert!(cause.contains("no token is configured"), "{cause}");
    assert!(seen.lock().unwrap().iter().all(Option::is_none));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn over_http_with_a_token_and_a_commit_the_server_will_not_send_by_id() {
    let fx = fixture();
    let base = http::serve(&fx.root, Some("s3cret"));
    let credentials = Credentials::new().with("127.0.0.1", "s3cret");
    let cache = loopback_cache(&fx.root.join("cache"), credentials);
    let source = GitSource {
        url: format!("{base}/super"),
        reference: Reference::Tag("v1".into()),
        submodules: false,
    };
    assert_eq!(cache.resolve(&source).await.unwrap(), fx.a);

    // git's upload-pack refuses a want that is no ref tip by default, so A comes
    // with the fetch of all branches and tags.
    let got = cache.checkout(&source, &fx.a, &fx.dest("a")).await.unwrap();
    assert_eq!(got.commit, fx.a);
    assert_eq!(read(fx.dest("a").join("app.txt")), "A");
    let mirror = cache.mirror_path(&source.url);
    assert_eq!(git(&mirror, &["rev-parse", "refs/heads/main"]), fx.b);
    assert_eq!(git(&mirror, &["rev-parse", "refs/tags/v1^{commit}"]), fx.a);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_remote_repository_may_not_pull_in_a_local_submodule() {
    let fx = fixture();
    let base = http::serve(&fx.root, None);
    let cache = fx.cache();
    let source = GitSource {
        url: format!("{base}/super"),
        reference: Reference::Default,
        submodules: true,
    };
    // `lib` comes over http (its URL is relative), but lib's own submodule is a
    // file:// URL, which a repository from the network may not use.
    let err = cache
        .checkout(&source, &fx.b, &fx.dest("b"))
        .await
        .unwrap_err();
    let deep_url = format!("file://{}", fx.root.join("deep").display());
    match &err {
        GitError::Submodule { path, url, source } => {
            assert_eq!(path, "lib/vendor/deep");
            assert_eq!(url, &deep_url);
            assert!(
                source
                    .to_string()
                    .contains("may not point into this host's files"),
                "{source}"
            );
        }
        other => panic!("expected a submodule error, got {other:?}"),
    }
    assert_eq!(
        read(fx.dest("b").join("lib/lib.txt")),
        "lib v1",
        "lib itself came over http"
    );
}

#[tokio::test]
async fn more_submodules_than_the_limit_are_refused_naming_it() {
    let fx = fixture();
    let deep = fx.root.join("deep");
    let d1 = git(&deep, &["rev-parse", "HEAD"]);
    let deep_url = format!("file://{}", deep.display());
    let many = new_repo(&fx.root, "many");
    let count = dockhand::source::MAX_SUBMODULES + 1;
    let mut modules = String::new();
    let mut args = vec!["update-index".to_string(), "--add".to_string()];
    for i in 0..count {
        modules.push_str(&format!(
            "[submodule \"m{i:03}\"]\n\tpath = m{i:03}\n\turl = {deep_url}\n"
        ));
        args.push("--cacheinfo".into());
        args.push(format!("160000,{d1},m{i:03}"));
    }
    std::fs::write(many.join(".gitmodules"), modules).unwrap();
    git(&many, &["add", ".gitmodules"]);
    git(&many, &args.iter().map(String::as_str).collect::<Vec<_>>());
    git(&many, &["commit", "-q", "-m", "many submodules"]);
    let commit = git(&many, &["rev-parse", "HEAD"]);
    let source = GitSource {
        url: many.display().to_string(),
        reference: Reference::Default,
        submodules: true,
    };
    let err = fx
        .cache()
        .checkout(&source, &commit, &fx.dest("many"))
        .await
        .unwrap_err();
    match &err {
        GitError::Submodule { source, .. } => assert!(
            matches!(**source, GitError::TooManySubmodules(64)),
            "{source:?}"
        ),
        other => panic!("expected a submodule error, got {other:?}"),
    }
    let chain = format!("{err} / {}", std::error::Error::source(&err).unwrap());
    assert!(chain.contains("more than 64 submodules"), "{chain}");
    assert!(chain.contains("limit"), "{chain}");
}
