//! Emptied run folders kept for the next run of the same worker process.
//!
//! Making a run's directory and its three folders, and removing them after, cost
//! each job four new inodes and four freed ones; on ext4 an inode's allocation
//! scans for recently freed ones, and each freed directory block is a discard
//! request the removal waits for (the `discard` mount option). A finished run's
//! directory is instead emptied and renamed into this process's pool
//! (`<base>/<worker id>/.spares-<consumer>/<n>`, its record file beside it as
//! `<n>.json`), and the next run renames both into place: renames allocate and
//! free nothing.
//!
//! Invariants:
//! - A spare is taken only after it is checked to be what a fresh one is: a real
//!   directory (not a symlink), owned by the worker's user, mode 0700, holding
//!   exactly `input/`, `work/` and `output/`, each a real directory owned by the
//!   worker's user, of the mode a fresh folder gets (0777 less the umask), and
//!   empty. Anything else is removed (`remove_dir_all`, which follows no
//!   symlink) and the run gets a fresh directory.
//! - A folder is not read again for that check when its [`Stamp`] (inode, mode,
//!   owner, link count, ctime) is what it was when the spare went back, found
//!   empty: adding or removing an entry, or a change of mode or owner, sets the
//!   ctime to the current time, which no process can set otherwise. A stamp is
//!   kept only when the folder's ctime was at least [`STAMP_AGE`] older than
//!   the clock before it was read, so that a later change gets a later ctime
//!   even on a filesystem whose timestamps are whole seconds.
//! - A run's directory goes back only when all of it is as expected but the
//!   folders' contents (removed then) and modes (reset); anything unexpected
//!   (another entry, a folder that is a symlink or a file or someone else's) and
//!   it is removed as before.
//! - The pool is this process's only: its directory is held locked (`flock`)
//!   while the process lives, so the sweep of any worker removes a pool whose
//!   lock it can take (its process is gone, however it died) and no other. A
//!   pool's spares are not runs: they have no `*.json` record in the worker's
//!   folder, so the sweep of runs never sees them.
//! - At most `cap` spares are kept (the worker's concurrency): more runs finishing
//!   at once are removed as before.

use std::fs::{self, File};
use std::io::{self, Write};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Duration;

/// The folders of a run, as inside a container.
pub(super) const FOLDERS: [&str; 3] = ["input", "work", "output"];
/// What a pool's directory name starts with, in a worker's folder.
const POOL_PREFIX: &str = ".spares-";
/// A run's directory's mode.
const DIR_MODE: u32 = 0o700;
/// How much older than the clock a folder's ctime must be for its [`Stamp`] to
/// vouch for it later: more than a timestamp's coarsest step (a second).
const STAMP_AGE: Duration = Duration::from_secs(2);

/// What a folder of a spare was when it was found empty (see the invariants).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(super) struct Stamp {
    ino: u64,
    mode: u32,
    uid: u32,
    nlink: u64,
    ctime: (i64, i64),
}

impl Stamp {
    fn of(meta: &fs::Metadata) -> Stamp {
        Stamp {
            ino: meta.ino(),
            mode: meta.mode(),
            uid: meta.uid(),
            nlink: meta.nlink(),
            ctime: (meta.ctime(), meta.ctime_nsec()),
        }
    }
}

/// The stamps of a spare's folders, in [`FOLDERS`]' order.
pub(super) type Stamps = [Stamp; 3];

/// The time file timestamps are taken from (the coarse real-time clock), less
/// `age`: a ctime at or before it may go in a [`Stamp`].
fn stamp_horizon(age: Duration) -> (i64, i64) {
    let mut now = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes the given timespec.
    if unsafe { libc::clock_gettime(libc::CLOCK_REALTIME_COARSE, &mut now) } != 0 {
        return (i64::MIN, 0); // no clock: no stamp vouches
    }
    let (secs, nanos) = (age.as_secs() as i64, i64::from(age.subsec_nanos()));
    match now.tv_nsec - nanos {
        n if n < 0 => (now.tv_sec - secs - 1, n + 1_000_000_000),
        n => (now.tv_sec - secs, n),
    }
}

/// One worker process's spare run directories.
pub(super) struct Spares {
    /// `<root>/.spares-<consumer>`.
    dir: PathBuf,
    /// The pool's directory, locked while this process lives (see the invariants).
    _lock: File,
    /// The worker's effective uid: every spare must be its.
    uid: u32,
    /// The mode a fresh folder gets: 0777 less the umask.
    folder_mode: u32,
    /// At most this many spares are kept.
    cap: usize,
    /// [`STAMP_AGE`], but in the unit tests.
    stamp_age: Duration,
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    /// Names of the spares in the pool, ready to take, with their folders'
    /// stamps when they can vouch for them.
    free: Vec<(u32, Option<Stamps>)>,
    /// Names not in use (their spare was taken or removed).
    vacant: Vec<u32>,
    /// Names of spares found unfit by [`Spares::take_quick`], for
    /// [`Spares::take`] to remove.
    unfit: Vec<u32>,
    /// The next new name.
    next: u32,
    /// The pool is removed: nothing goes back.
    closed: bool,
}

impl Spares {
    /// Makes and locks this process's pool under `root` (the worker's folder).
    pub(super) fn open(root: &Path, consumer: &str, uid: u32, cap: usize) -> io::Result<Spares> {
        let name: String = consumer
            .chars()
            .map(|c| if c == '/' || c == '\0' { '_' } else { c })
            .collect();
        let dir = root.join(format!("{POOL_PREFIX}{name}"));
        // A consumer's name is new for each process, so the folder is too.
        fs::create_dir(&dir)?;
        // Made with mode 0777 as a run's folders are: what the umask leaves is
        // the mode every spare folder must have.
        let folder_mode = fs::symlink_metadata(&dir)?.mode() & 0o7777;
        fs::set_permissions(&dir, fs::Permissions::from_mode(DIR_MODE))?;
        let lock = File::open(&dir)?;
        lock.try_lock().map_err(|e| match e {
            fs::TryLockError::Error(e) => e,
            fs::TryLockError::WouldBlock => io::Error::other("the new pool is locked already"),
        })?;
        // A sweep that saw the folder before it was locked removed it: it must
        // still be the one locked.
        let here = fs::symlink_metadata(&dir)?;
        let locked = lock.metadata()?;
        if (here.dev(), here.ino()) != (locked.dev(), locked.ino()) {
            return Err(io::Error::other(format!(
                "{} was removed while it was made",
                dir.display()
            )));
        }
        Ok(Spares {
            dir,
            _lock: lock,
            uid,
            folder_mode,
            cap,
            stamp_age: STAMP_AGE,
            state: Mutex::new(State::default()),
        })
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn spare(&self, n: u32) -> (PathBuf, PathBuf) {
        (
            self.dir.join(n.to_string()),
            self.dir.join(format!("{n}.json")),
        )
    }

    /// As [`Spares::take`], but it removes nothing (a spare found unfit is left
    /// for [`Spares::take`]): a few metadata calls on cached entries, a write of
    /// the record over its kept inode and two renames, which the runtime's own
    /// threads can make without a hop to a blocking thread and back. `None`
    /// when nothing was taken: the caller takes the blocking way. Else the
    /// folders' stamps, when they can vouch for them when the run ends.
    pub(super) fn take_quick(
        &self,
        dir: &Path,
        record_path: &Path,
        record: &[u8],
    ) -> Option<Option<Stamps>> {
        let (n, stamps) = self.state().free.pop()?;
        let (spare, spare_record) = self.spare(n);
        let checked = self.is_clean(&spare, stamps.as_ref());
        let taken = checked.is_some()
            && write_in_place(&spare_record, record).is_ok()
            && fs::rename(&spare_record, record_path).is_ok()
            && fs::rename(&spare, dir).is_ok();
        let mut s = self.state();
        match taken {
            true => s.vacant.push(n),
            false => s.unfit.push(n),
        }
        taken.then(|| checked.flatten())
    }

    /// As [`Spares::put`] for a run that left its directory as it got it (every
    /// folder empty, no mode changed, nothing added): two renames, no
    /// removal, so the runtime's own threads can make them. False when
    /// nothing was done: the caller takes the blocking way ([`Spares::put`]).
    /// `known`: the folders' stamps from when the run took the directory; a
    /// folder the run left as it was is not read again.
    pub(super) fn put_quick(&self, dir: &Path, record_path: &Path, known: Option<&Stamps>) -> bool {
        let Some(n) = self.reserve() else {
            return false;
        };
        let stamps = match self.is_clean(dir, known) {
            Some(stamps) if fs::rename(dir, self.spare(n).0).is_ok() => stamps,
            _ => {
                self.state().vacant.push(n);
                return false;
            }
        };
        self.keep(n, record_path, stamps);
        true
    }

    /// A name for a spare going back, unless the pool is closed or full.
    fn reserve(&self) -> Option<u32> {
        let mut s = self.state();
        if s.closed || s.free.len() >= self.cap {
            return None;
        }
        Some(s.vacant.pop().unwrap_or_else(|| {
            s.next += 1;
            s.next - 1
        }))
    }

    /// The spare `n` is in the pool (renamed there): its record goes beside it,
    /// and it is free to take, with its folders' `stamps`; unless the pool was
    /// closed meanwhile.
    fn keep(&self, n: u32, record_path: &Path, stamps: Option<Stamps>) {
        let spare_record = self.spare(n).1;
        // Its inode is written over by the next record; a failure here only
        // costs the next run a new file.
        if fs::rename(record_path, spare_record).is_err() {
            if let Err(e) = remove_file(record_path) {
                tracing::warn!(record = %record_path.display(), error = %e, "could not remove a local run's record");
            }
        }
        let mut s = self.state();
        if s.closed {
            drop(s);
            self.discard(n);
        } else {
            s.free.push((n, stamps));
        }
    }

    /// Removes the spare `n`, its directory and its record (either gone already
    /// is fine); its name is free again.
    fn discard(&self, n: u32) {
        let (spare, spare_record) = self.spare(n);
        let _ = fs::remove_dir_all(&spare);
        let _ = fs::remove_file(&spare_record);
        self.state().vacant.push(n);
    }

    /// Puts a spare in place as the run's directory `dir`, its record file
    /// first, as `record_path` holding `record` (blocking). False when there is
    /// no spare fit to take: the caller makes both afresh.
    pub(super) fn take(&self, dir: &Path, record_path: &Path, record: &[u8]) -> io::Result<bool> {
        // What the quick way found unfit goes first.
        let unfit = std::mem::take(&mut self.state().unfit);
        for n in unfit {
            self.discard(n);
        }
        let Some((n, stamps)) = self.state().free.pop() else {
            return Ok(false);
        };
        let (spare, spare_record) = self.spare(n);
        let taken = if self.is_clean(&spare, stamps.as_ref()).is_some() {
            write_in_place(&spare_record, record)
                .and_then(|()| fs::rename(&spare_record, record_path))
                .and_then(|()| fs::rename(&spare, dir))
        } else {
            Err(io::Error::other("not as a fresh one"))
        };
        if let Err(e) = taken {
            tracing::debug!(spare = %spare.display(), error = %e, "a spare run directory is not used: removed");
            self.discard(n);
            // The record may be in place already: write it whole, as for a fresh run.
            return Ok(false);
        }
        self.state().vacant.push(n);
        Ok(true)
    }

    /// Empties the ended run's directory `dir` and puts it, with its record
    /// file, in the pool; removes both when that cannot be done (blocking).
    /// Either gone already is fine.
    pub(super) fn put(&self, dir: &Path, record_path: &Path) -> io::Result<()> {
        let Some(n) = self.reserve() else {
            return remove_files(dir, record_path);
        };
        let kept = self
            .empty(dir)
            .and_then(|()| fs::rename(dir, self.spare(n).0))
            .inspect_err(|e| {
                if e.kind() != io::ErrorKind::NotFound {
                    tracing::debug!(dir = %dir.display(), error = %e, "a run directory is not kept as a spare: removed");
                }
            });
        if kept.is_err() {
            self.state().vacant.push(n);
            return remove_files(dir, record_path);
        }
        // Emptied just now: its folders' ctimes are too recent to vouch.
        self.keep(n, record_path, None);
        Ok(())
    }

    /// Removes the pool and everything in it; nothing goes back after (blocking).
    pub(super) fn close(&self) {
        self.state().closed = true;
        if let Err(e) = fs::remove_dir_all(&self.dir) {
            tracing::warn!(dir = %self.dir.display(), error = %e, "could not remove the spare run directories");
        }
    }

    /// Whether `spare` is as a fresh run directory is (see the invariants):
    /// `None` when it is not; else the stamps of its folders, when they can
    /// vouch for them next time. A folder whose stamp in `known` still holds
    /// is not read.
    fn is_clean(&self, spare: &Path, known: Option<&Stamps>) -> Option<Option<Stamps>> {
        let horizon = stamp_horizon(self.stamp_age);
        let ours = |path: &Path, mode: u32| {
            fs::symlink_metadata(path).ok().filter(|m| {
                m.file_type().is_dir() && m.uid() == self.uid && m.mode() & 0o7777 == mode
            })
        };
        let entries = |path: &Path| fs::read_dir(path).map(|d| d.count()).ok();
        ours(spare, DIR_MODE)?;
        if entries(spare) != Some(FOLDERS.len()) {
            return None;
        }
        let mut stamps = Stamps::default();
        let mut vouch = true;
        for (i, f) in FOLDERS.iter().enumerate() {
            let folder = spare.join(f);
            let stamp = Stamp::of(&ours(&folder, self.folder_mode)?);
            if known.is_none_or(|k| k[i] != stamp) && entries(&folder) != Some(0) {
                return None;
            }
            vouch &= stamp.ctime <= horizon;
            stamps[i] = stamp;
        }
        Some(vouch.then_some(stamps))
    }

    /// Empties an ended run's folders and resets their modes; an error for
    /// anything unexpected (see the invariants).
    fn empty(&self, dir: &Path) -> io::Result<()> {
        let unexpected = |what: String| Err(io::Error::other(what));
        let meta = fs::symlink_metadata(dir)?;
        if !meta.file_type().is_dir() || meta.uid() != self.uid {
            return unexpected(format!("{} is not our directory", dir.display()));
        }
        for entry in fs::read_dir(dir)? {
            let name = entry?.file_name();
            if !FOLDERS.iter().any(|f| name == *f) {
                return unexpected(format!("{name:?} beside the run's folders"));
            }
        }
        for f in FOLDERS {
            let folder = dir.join(f);
            let meta = match fs::symlink_metadata(&folder) {
                Ok(m) => m,
                Err(e) if e.kind() == io::ErrorKind::NotFound => {
                    return unexpected(format!("{f}/ is gone"))
                }
                Err(e) => return Err(e),
            };
            if !meta.file_type().is_dir() || meta.uid() != self.uid {
                return unexpected(format!("{f}/ is not our directory"));
            }
            // First the mode, so that a folder the job made unreadable can be emptied.
            if meta.mode() & 0o7777 != self.folder_mode {
                fs::set_permissions(&folder, fs::Permissions::from_mode(self.folder_mode))?;
            }
            for entry in fs::read_dir(&folder)? {
                let entry = entry?;
                // The entry's own type: a symlink is removed, never followed.
                if entry.file_type()?.is_dir() {
                    fs::remove_dir_all(entry.path())?;
                } else {
                    fs::remove_file(entry.path())?;
                }
            }
        }
        if meta.mode() & 0o7777 != DIR_MODE {
            fs::set_permissions(dir, fs::Permissions::from_mode(DIR_MODE))?;
        }
        Ok(())
    }
}

/// Writes `content` over the file at `path` (made if missing) without freeing
/// its blocks first: no truncation to zero, then a cut to the new length.
fn write_in_place(path: &Path, content: &[u8]) -> io::Result<()> {
    let mut file = fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(false)
        .open(path)?;
    file.write_all(content)?;
    file.set_len(content.len() as u64)
}

/// Removes a run's directory, then its record (blocking); either gone already is fine.
pub(super) fn remove_files(dir: &Path, record: &Path) -> io::Result<()> {
    match fs::remove_dir_all(dir) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
        _ => {}
    }
    remove_file(record)
}

fn remove_file(path: &Path) -> io::Result<()> {
    match fs::remove_file(path) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

/// Removes the pools under `base` (`<base>/<worker id>/.spares-*`) whose
/// process is gone, whichever worker's they are: those whose lock can be
/// taken. Returns how many (blocking).
pub(super) fn remove_dead_pools(base: &Path) -> usize {
    let mut removed = 0;
    let Ok(workers) = fs::read_dir(base) else {
        return 0;
    };
    for worker in workers.flatten() {
        let Ok(entries) = fs::read_dir(worker.path()) else {
            continue;
        };
        for entry in entries.flatten() {
            if !entry
                .file_name()
                .as_encoded_bytes()
                .starts_with(POOL_PREFIX.as_bytes())
                || !entry.file_type().is_ok_and(|t| t.is_dir())
            {
                continue;
            }
            let path = entry.path();
            let Ok(pool) = File::open(&path) else {
                continue;
            };
            // Held (until `pool` is dropped, after the removal) so that the
            // pool's process, were it alive after all, could not be using it.
            if pool.try_lock().is_err() {
                continue; // its process lives (this one's own included)
            }
            match fs::remove_dir_all(&path) {
                Ok(()) => removed += 1,
                Err(e) => {
                    tracing::warn!(dir = %path.display(), error = %e, "could not remove a dead worker's spare run directories")
                }
            }
        }
    }
    removed
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spare_dir(root: &Path) -> PathBuf {
        use std::os::unix::fs::DirBuilderExt;
        let dir = root.join("run");
        fs::DirBuilder::new().mode(DIR_MODE).create(&dir).unwrap();
        for f in FOLDERS {
            fs::create_dir(dir.join(f)).unwrap();
        }
        dir
    }

    fn pool(root: &Path) -> Spares {
        // SAFETY: geteuid has no preconditions.
        let uid = unsafe { libc::geteuid() };
        Spares::open(root, "test", uid, 4).unwrap()
    }

    /// Waits until the clock is past every folder's ctime: the event a stamp
    /// waits for (`stamp_age` is 0 here, so a coarse tick or two).
    fn wait_until_older_than_the_clock(dir: &Path, age: Duration) {
        for _ in 0..5000 {
            let newest = FOLDERS
                .iter()
                .map(|f| Stamp::of(&fs::symlink_metadata(dir.join(f)).unwrap()).ctime)
                .max()
                .unwrap();
            // Strictly: a change from now on gets a later ctime even where
            // timestamps come from the coarse clock (at age 0 the test's own).
            if newest < stamp_horizon(age) {
                return;
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        panic!("the clock never passed the folders' ctimes");
    }

    #[test]
    fn a_folder_just_changed_gets_no_stamp() {
        let root = tempfile::tempdir().unwrap();
        let spares = pool(root.path());
        let dir = spare_dir(root.path());
        // Made now: with the default age (2 s) no stamp can vouch for it yet.
        assert_eq!(spares.is_clean(&dir, None), Some(None));
    }

    /// A pool (stamps vouch at any age) and a spare whose folders' stamps vouch.
    fn vouched_spare() -> (tempfile::TempDir, Spares, PathBuf, Stamps) {
        let root = tempfile::tempdir().unwrap();
        let mut spares = pool(root.path());
        spares.stamp_age = Duration::ZERO;
        let dir = spare_dir(root.path());
        wait_until_older_than_the_clock(&dir, spares.stamp_age);
        let stamps = spares
            .is_clean(&dir, None)
            .unwrap()
            .expect("old enough to vouch");
        (root, spares, dir, stamps)
    }

    #[test]
    fn a_stamp_vouches_until_the_folder_changes() {
        let (_root, mut spares, dir, stamps) = vouched_spare();
        assert_eq!(spares.is_clean(&dir, Some(&stamps)), Some(Some(stamps)));

        // A file in a folder changes its ctime: the folder is read again, and
        // the spare is not clean.
        let before = fs::symlink_metadata(dir.join("work"))
            .unwrap()
            .modified()
            .unwrap();
        fs::write(dir.join("work/left"), b"x").unwrap();
        assert_eq!(spares.is_clean(&dir, Some(&stamps)), None);
        // Even with its mtime put back: the ctime cannot be.
        let work = fs::File::open(dir.join("work")).unwrap();
        work.set_modified(before).unwrap();
        assert_eq!(spares.is_clean(&dir, Some(&stamps)), None);

        // Emptied again, it is clean, read through, and (at the real age) too
        // fresh to vouch.
        fs::remove_file(dir.join("work/left")).unwrap();
        spares.stamp_age = STAMP_AGE;
        assert_eq!(spares.is_clean(&dir, Some(&stamps)), Some(None));
    }

    #[test]
    fn a_stamp_does_not_vouch_for_a_swapped_folder() {
        let (root, spares, dir, stamps) = vouched_spare();
        // Another folder in its place, with a file: another inode.
        fs::rename(dir.join("input"), root.path().join("input-away")).unwrap();
        fs::create_dir(dir.join("input")).unwrap();
        fs::write(dir.join("input/planted"), b"x").unwrap();
        assert_eq!(spares.is_clean(&dir, Some(&stamps)), None);
    }
}
