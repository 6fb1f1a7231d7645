//! Docker things a test makes itself (worker containers, a network, an image),
//! and their removal when the test ends, passed or failed.

use std::process::Command;

/// Runs `docker args...`; its trimmed stdout, or a panic with its stderr.
pub fn docker(args: &[&str]) -> String {
    let out = Command::new("docker")
        .args(args)
        .output()
        .expect("the docker CLI runs");
    assert!(
        out.status.success(),
        "docker {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// What a test made in Docker; removed on drop, whatever happened.
#[derive(Debug)]
pub struct Made {
    /// A label on everything the test made itself (`key=value`).
    pub label: String,
    /// Worker containers: their logs are printed when the test fails.
    pub workers: Vec<String>,
    /// Worker ids: the job containers they made (labelled `dockhand.worker`) go too.
    pub worker_ids: Vec<String>,
    pub network: Option<String>,
    pub image: Option<String>,
}

impl Made {
    /// Nothing made yet; everything made later carries `label`.
    pub fn new(label: &str) -> Made {
        Made {
            label: label.to_string(),
            workers: Vec::new(),
            worker_ids: Vec::new(),
            network: None,
            image: None,
        }
    }
}

impl Drop for Made {
    fn drop(&mut self) {
        let quiet = |args: &[&str]| {
            let _ = Command::new("docker").args(args).output();
        };
        if std::thread::panicking() {
            for w in &self.workers {
                if let Ok(out) = Command::new("docker")
                    .args(["logs", "--tail", "200", w])
                    .output()
                {
                    eprintln!(
                        "log of {w}:\n{}{}",
                        String::from_utf8_lossy(&out.stdout),
                        String::from_utf8_lossy(&out.stderr)
                    );
                }
            }
        }
        // The test's own containers, then any job container a worker left.
        let mut filters = vec![format!("label={}", self.label)];
        filters.extend(
            self.worker_ids
                .iter()
                .map(|w| format!("label=dockhand.worker={w}")),
        );
        for filter in filters {
            let ids = Command::new("docker")
                .args(["ps", "-aq", "--filter", &filter])
                .output()
                .map(|o| String::from_utf8_lossy(&o.stdout).to_string())
                .unwrap_or_default();
            for id in ids.lines() {
                quiet(&["rm", "-f", id]);
            }
        }
        if let Some(network) = &self.network {
            quiet(&["network", "rm", network]);
        }
        if let Some(image) = &self.image {
            quiet(&["rmi", "-f", image]);
        }
    }
}
