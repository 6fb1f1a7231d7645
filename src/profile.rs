//! Profiles (contract section 6): named job templates in the hash
//! `dockhand:profiles` (name → JSON spec), registered with `dockhand profile add`,
//! a plain `HSET`, or shipped as `<worker.profiles_dir>/<name>.toml`.
//!
//! Invariants:
//! - A profile is a job spec without `id` and `profile`. It is checked field by
//!   field when registered through Dockhand ([`check`]); the job made from it is
//!   validated in full when it runs, so a profile written with a bare `HSET` cannot
//!   run anything a job could not.
//! - A job overrides only the fields it gives ([`merge`]): `env` and `limits` key by
//!   key; the source (`image` or `git`) and what to run (`command` or `script`) each
//!   as one, so a job giving `image` never ends up with the profile's `git` too;
//!   every other field whole.

use crate::job::{self, JobSpec, Rejection};
use crate::queue::Keys;
use crate::store::{Conn, StoreError};
use deadpool_redis::redis::AsyncCommands;
use serde_json::{Map, Value};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// A profile file that cannot be used; the worker refuses to start with one.
#[derive(Debug, thiserror::Error)]
#[error("profile file {}: {message}", path.display())]
pub struct ProfileFileError {
    pub path: PathBuf,
    pub message: String,
}

/// A profile name: `[A-Za-z0-9_.-]{1,64}`, like a queue name.
pub fn is_valid_name(name: &str) -> bool {
    job::is_valid_queue_name(name)
}

/// Checks that `value` can be a profile: a JSON object of job-spec fields, with
/// the right types and no `id` or `profile`. The message names the field.
pub fn check(value: &Value) -> Result<(), String> {
    let Some(obj) = value.as_object() else {
        return Err("a profile must be a JSON object of job spec fields".into());
    };
    for field in ["id", "profile"] {
        if obj.contains_key(field) {
            return Err(format!("`{field}`: a profile may not set it"));
        }
    }
    job::parse(value.to_string().as_bytes())
        .map(|_| ())
        .map_err(|r| r.message)
}

/// The job `job` asks for, with the profile's fields as defaults.
pub fn merge(profile: &Value, job: &Value) -> Value {
    let mut out = profile.as_object().cloned().unwrap_or_default();
    let Some(job) = job.as_object() else {
        return Value::Object(out);
    };
    for (key, value) in job {
        match key.as_str() {
            "env" | "limits" => match (out.get_mut(key), value) {
                (Some(Value::Object(base)), Value::Object(over)) => {
                    base.extend(over.iter().map(|(k, v)| (k.clone(), v.clone())));
                }
                _ => {
                    out.insert(key.clone(), value.clone());
                }
            },
            "image" | "git" => replace_group(&mut out, &["image", "git"], key, value),
            "command" | "script" => replace_group(&mut out, &["command", "script"], key, value),
            _ => {
                out.insert(key.clone(), value.clone());
            }
        }
    }
    Value::Object(out)
}

fn replace_group(out: &mut Map<String, Value>, group: &[&str], key: &str, value: &Value) {
    for k in group {
        out.remove(*k);
    }
    out.insert(key.to_string(), value.clone());
}

/// The spec of a job that names profile `name`, given the profile's registered
/// JSON (`None`: no such profile). `raw` is the job's own entry.
pub fn apply(raw: &[u8], name: &str, profile: Option<&[u8]>) -> Result<JobSpec, Rejection> {
    let Some(text) = profile else {
        return Err(Rejection::invalid(
            "profile",
            format!("no profile named {name:?} is registered"),
        ));
    };
    let template: Value = serde_json::from_slice(text)
        .map_err(|e| Rejection::invalid("profile", format!("profile {name:?} is not JSON: {e}")))?;
    check(&template)
        .map_err(|e| Rejection::invalid("profile", format!("profile {name:?}: {e}")))?;
    let own: Value = serde_json::from_slice(raw)
        .map_err(|e| Rejection::invalid("job", format!("the job is not valid JSON: {e}")))?;
    job::parse(merge(&template, &own).to_string().as_bytes())
}

/// A profile written in TOML (the files in `worker.profiles_dir`), as JSON.
pub fn from_toml(text: &str) -> Result<Value, String> {
    toml::from_str::<Value>(text).map_err(|e| e.to_string())
}

/// The profiles in `dir`: each `<name>.toml`, checked. A missing folder has none.
pub fn load_dir(dir: &Path) -> Result<Vec<(String, Value)>, ProfileFileError> {
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => {
            return Err(ProfileFileError {
                path: dir.to_path_buf(),
                message: format!("cannot read the folder: {e}"),
            })
        }
    };
    let mut paths: Vec<PathBuf> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "toml"))
        .collect();
    paths.sort();
    let mut profiles = Vec::new();
    for path in paths {
        let fail = |message: String| ProfileFileError {
            path: path.clone(),
            message,
        };
        let name = path
            .file_stem()
            .and_then(|s| s.to_str())
            .filter(|n| is_valid_name(n))
            .ok_or_else(|| fail("the file name is not a profile name ([A-Za-z0-9_.-])".into()))?
            .to_string();
        let text = std::fs::read_to_string(&path).map_err(|e| fail(e.to_string()))?;
        let value = from_toml(&text).map_err(&fail)?;
        check(&value).map_err(&fail)?;
        profiles.push((name, value));
    }
    Ok(profiles)
}

/// The registered JSON of profile `name`.
/// Profile `name` as stored: bytes, because anyone may `HSET` one that is not
/// UTF-8 ([`apply`] refuses it, naming the profile).
pub async fn get(conn: &mut Conn, keys: &Keys, name: &str) -> Result<Option<Vec<u8>>, StoreError> {
    Ok(conn.hget(keys.profiles(), name).await?)
}

/// Registers (or replaces) profile `name`.
pub async fn put(conn: &mut Conn, keys: &Keys, name: &str, spec: &Value) -> Result<(), StoreError> {
    let _: i64 = conn.hset(keys.profiles(), name, spec.to_string()).await?;
    Ok(())
}

/// Every registered profile, by name.
pub async fn list(conn: &mut Conn, keys: &Keys) -> Result<BTreeMap<String, String>, StoreError> {
    Ok(conn.hgetall(keys.profiles()).await?)
}

/// A stored profile as it may be shown: its `secret_env` values masked (what is
/// shown ends up in terminals, tickets and logs). `None` when it is not JSON.
pub fn shown(stored: &str) -> Option<Value> {
    let mut v: Value = serde_json::from_str(stored).ok()?;
    if let Some(secrets) = v.get_mut("secret_env").and_then(Value::as_object_mut) {
        secrets.values_mut().for_each(|s| *s = Value::from("***"));
    }
    Some(v)
}

/// Removes profile `name`; false when there was none.
pub async fn remove(conn: &mut Conn, keys: &Keys, name: &str) -> Result<bool, StoreError> {
    let removed: i64 = conn.hdel(keys.profiles(), name).await?;
    Ok(removed == 1)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_job_overrides_only_what_it_gives() {
        let profile = json!({
            "git": {"url": "https://h/x"}, "command": "run", "network": "bridge",
            "env": {"A": "1", "B": "2"}, "limits": {"memory": "1g", "timeout_seconds": 60},
        });
        let job = json!({"profile": "p", "env": {"B": "job", "C": "3"}, "limits": {"timeout_seconds": 5}});
        assert_eq!(
            merge(&profile, &job),
            json!({
                "profile": "p", "git": {"url": "https://h/x"}, "command": "run", "network": "bridge",
                "env": {"A": "1", "B": "job", "C": "3"},
                "limits": {"memory": "1g", "timeout_seconds": 5},
            })
        );
    }

    #[test]
    fn the_source_and_the_command_are_replaced_as_a_whole() {
        let profile = json!({"git": {"url": "https://h/x"}, "script": {"content": "x"}});
        let job = json!({"image": "busybox", "command": ["true"]});
        assert_eq!(
            merge(&profile, &job),
            json!({"image": "busybox", "command": ["true"]})
        );
    }

    #[test]
    fn an_unknown_profile_is_named() {
        let err = apply(br#"{"profile":"nope"}"#, "nope", None).unwrap_err();
        assert_eq!(err.reason, crate::job::Reason::InvalidSpec);
        assert!(err.message.starts_with("`profile`"), "{}", err.message);
        assert!(err.message.contains("\"nope\""), "{}", err.message);
        let err = apply(b"{}", "bytes", Some(b"{\"image\":\"\xff\"}")).unwrap_err();
        assert_eq!(err.reason, crate::job::Reason::InvalidSpec);
        assert!(
            err.message.contains("profile \"bytes\" is not JSON"),
            "{}",
            err.message
        );
    }

    #[test]
    fn applying_gives_a_spec_with_the_merged_fields() {
        let spec = apply(
            br#"{"profile":"p","env":{"B":"x"}}"#,
            "p",
            Some(br#"{"image":"i","env":{"A":"1"}}"#),
        )
        .unwrap();
        assert_eq!(spec.image.as_deref(), Some("i"));
        assert_eq!(spec.env.len(), 2);
    }

    #[test]
    fn profiles_are_checked_by_field() {
        assert!(check(&json!({"image": "i", "env": {"A": "1"}})).is_ok());
        assert!(
            check(&json!({"env": {"A": "1"}})).is_ok(),
            "a partial template is fine"
        );
        assert!(check(&json!({"id": "x"})).unwrap_err().contains("`id`"));
        assert!(check(&json!({"profile": "x"}))
            .unwrap_err()
            .contains("`profile`"));
        assert!(check(&json!({"limits": {"pids": "many"}}))
            .unwrap_err()
            .contains("`limits.pids`"));
        assert!(check(&json!([1])).is_err());
    }

    #[test]
    fn toml_profiles_become_json() {
        let v = from_toml(
            "command = [\"make\", \"test\"]\n[git]\nurl = \"https://h/x\"\nbranch = \"main\"\n[env]\nMY_VAR = \"1\"\n",
        )
        .unwrap();
        assert_eq!(
            v,
            json!({"command": ["make", "test"], "git": {"url": "https://h/x", "branch": "main"}, "env": {"MY_VAR": "1"}})
        );
    }

    #[test]
    fn a_folder_of_profiles_loads_and_a_missing_one_is_empty() {
        let dir = tempfile::tempdir().unwrap();
        assert!(load_dir(&dir.path().join("none")).unwrap().is_empty());
        std::fs::write(dir.path().join("b.toml"), "image = \"i\"\n").unwrap();
        std::fs::write(dir.path().join("a.toml"), "command = \"x\"\n").unwrap();
        std::fs::write(dir.path().join("notes.txt"), "ignored").unwrap();
        let names: Vec<String> = load_dir(dir.path())
            .unwrap()
            .into_iter()
            .map(|(n, _)| n)
            .collect();
        assert_eq!(names, vec!["a", "b"]);
        std::fs::write(dir.path().join("c.toml"), "imgae = \"i\"\n").unwrap();
        let err = load_dir(dir.path()).unwrap_err();
        assert!(
            err.to_string().contains("c.toml") && err.to_string().contains("imgae"),
            "{err}"
        );
    }
}
