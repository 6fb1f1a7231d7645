//! Starting a local job's process without a fork of the worker.
//!
//! A fork copies the worker's page tables, and then every page the worker's
//! threads write faults once to be copied; with many jobs a second that cost
//! was most of a local job's CPU. `posix_spawn` avoids it, but it has no place
//! for resource limits, and a limit set after the start (`prlimit` on the new
//! pid) would leave the job's first instructions unbounded. So the child is
//! made as `posix_spawn` makes it, by `clone(CLONE_VM | CLONE_VFORK)`: it runs
//! in the worker's memory, on a stack of its own, while the calling thread
//! waits; it sets its process group, its stdio, its working directory and its
//! limits, then `execve`s the job's program. Nothing of the job runs before its
//! limits hold.
//!
//! Invariants:
//! - Between the clone and the exec the child only makes system calls, on data
//!   prepared before the clone: it allocates nothing, takes no lock, and writes
//!   nothing of the worker's memory but its own stack and the `failed` word the
//!   caller reads once the child is gone.
//! - Every signal is blocked in the calling thread around the clone, so no
//!   handler of the worker runs in the child; the child resets the handled
//!   signals (and `SIGPIPE`, which Rust ignores) to their default and unblocks
//!   all of them just before the exec, as `std::process::Command` does.
//! - Every descriptor made here is close-on-exec in the worker; the child's
//!   stdio are copies (`dup2`), which are not.
//! - The child is reaped only by [`Exit::wait`], and only while it holds the
//!   caller's [`Group`] lock, in the same step as the group's SIGKILL and the
//!   group id's removal. Until then its pid, and so the group's id, cannot be
//!   reused: a signal sent under that lock to the id it holds reaches this
//!   job's group and no other, however late it comes.

use std::cell::UnsafeCell;
use std::ffi::{c_char, c_int, c_void, CString, OsStr, OsString};
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::process::ExitStatus;
use std::sync::atomic::{AtomicI32, Ordering};
use tokio::net::unix::pipe;

/// The child's stack. It makes a few system calls and nothing else.
const STACK_BYTES: usize = 64 << 10;

/// What the child is made with.
pub struct Spec<'a> {
    /// The program: a path (with a `/`), or a name looked up in `PATH` as
    /// `execvp` does (the `PATH` given in `env`).
    pub program: &'a OsStr,
    /// Its arguments after the program's name.
    pub args: &'a [String],
    /// The whole environment.
    pub env: Vec<(OsString, OsString)>,
    /// Its working directory.
    pub cwd: &'a Path,
    /// `(resource, limit)`: soft and hard limit both, set before the exec.
    pub limits: Vec<(Resource, u64)>,
}

/// A limit of [`Spec::limits`].
#[derive(Debug, Clone, Copy)]
pub enum Resource {
    /// `RLIMIT_AS`: the address space, in bytes.
    AddressSpace,
    /// `RLIMIT_NPROC`: processes of the user.
    Processes,
}

impl Resource {
    fn raw(self) -> libc::__rlimit_resource_t {
        match self {
            Resource::AddressSpace => libc::RLIMIT_AS,
            Resource::Processes => libc::RLIMIT_NPROC,
        }
    }
}

/// A started child: the leader of its own process group.
pub struct Child {
    pub exit: Exit,
    pub stdout: pipe::Receiver,
    pub stderr: pipe::Receiver,
}

/// The child's exit, to wait for once.
pub struct Exit {
    pid: libc::pid_t,
}

/// The id of a child's process group while it may be signalled: `None`
/// before the start and once the leader is reaped. Signals to the group are
/// sent holding the lock (see the module's invariants).
pub type Group = std::sync::Mutex<Option<libc::pid_t>>;

/// The child's stdin, opened once (close-on-exec, by std).
static DEV_NULL: std::sync::LazyLock<Option<std::fs::File>> =
    std::sync::LazyLock::new(|| std::fs::File::open("/dev/null").ok());

/// The shell that runs a program with no executable format (as `execvp` does).
const SH: &std::ffi::CStr = c"/bin/sh";

/// Which of the child's steps failed (for the error's message).
const STEPS: [&str; 6] = ["", "setpgid", "dup2", "chdir", "setrlimit", "execve"];

/// Everything the child reads, made before the clone.
struct ChildArgs {
    /// `execve` candidates, in order (one, or one per `PATH` entry).
    candidates: Vec<CString>,
    argv: Vec<*const c_char>,
    envp: Vec<*const c_char>,
    cwd: CString,
    stdio: [RawFd; 3],
    limits: Vec<(libc::__rlimit_resource_t, libc::rlimit)>,
    /// `/bin/sh`, a slot for the candidate, then the arguments after the
    /// program's name: a candidate that is no executable format is run as a
    /// shell script, as `execvp` does (the child fills the slot).
    script_argv: UnsafeCell<Vec<*const c_char>>,
    /// Written by the child on failure: the step (index in [`STEPS`]) in the
    /// high byte, errno below.
    failed: AtomicI32,
}

impl Exit {
    pub fn pid(&self) -> i32 {
        self.pid
    }

    /// Waits for the child to exit; then, holding `group`'s lock, SIGKILLs
    /// what is left of its group (as a container's processes end with it),
    /// reaps it and sets `group` to `None`.
    pub async fn wait(self, group: &Group) -> io::Result<ExitStatus> {
        let pid = self.pid;
        // SAFETY: pidfd_open takes a pid and flags, and returns a new descriptor.
        let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
        if fd >= 0 {
            // SAFETY: a descriptor just returned by the kernel, owned by nobody else.
            let fd = unsafe { OwnedFd::from_raw_fd(fd as RawFd) };
            // SAFETY: the AsyncFd owns the OwnedFd, which stays open and the same
            // for as long as the AsyncFd lives.
            let fd = unsafe {
                tokio::io::unix::AsyncFd::register_with_interest(fd, tokio::io::Interest::READABLE)
            }
            .map_err(io::Error::from)?;
            loop {
                let mut ready = fd.readable().await?;
                if let Some(status) = end_group(pid, group)? {
                    return Ok(status);
                }
                ready.clear_ready();
            }
        }
        // A kernel without pidfds (before 5.3): a blocking wait on its own thread
        // that leaves the child a zombie, so that the group is still its own
        // when it is killed.
        tokio::task::spawn_blocking(move || exited(pid, 0))
            .await
            .map_err(io::Error::other)??;
        end_group(pid, group)?.ok_or_else(|| io::Error::other("waitpid returned no status"))
    }
}

/// Whether the child `pid` has exited (`options` as for waitid: `WNOHANG`, or
/// 0 to wait for it), leaving it unreaped (`WNOWAIT`).
fn exited(pid: libc::pid_t, options: c_int) -> io::Result<bool> {
    // SAFETY: waitid writes the given siginfo.
    let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
    let flags = libc::WEXITED | libc::WNOWAIT | options;
    // SAFETY: as above.
    while unsafe { libc::waitid(libc::P_PID, pid as libc::id_t, &mut info, flags) } != 0 {
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
    // SAFETY: si_pid is set by waitid (0 when no child has changed state).
    Ok(unsafe { info.si_pid() } != 0)
}

/// Holding `group`'s lock: kills the group, and reaps its leader `pid`; once
/// reaped, the group is `None`. `None` when the leader has not exited yet:
/// nothing is signalled then.
fn end_group(pid: libc::pid_t, group: &Group) -> io::Result<Option<ExitStatus>> {
    let mut group = group.lock().unwrap_or_else(|e| e.into_inner());
    if !exited(pid, libc::WNOHANG)? {
        return Ok(None);
    }
    // The leader is a zombie: its pid is still the group's, and no other.
    // SAFETY: killpg only sends a signal; a group already empty is ESRCH.
    unsafe { libc::killpg(pid, libc::SIGKILL) };
    let status = reap(pid, 0)?;
    *group = None;
    Ok(status)
}

/// `waitpid(pid, options)`; `None` when it has not exited yet (`WNOHANG`).
fn reap(pid: libc::pid_t, options: c_int) -> io::Result<Option<ExitStatus>> {
    let mut status: c_int = 0;
    loop {
        // SAFETY: waitpid writes the status into the given int.
        let r = unsafe { libc::waitpid(pid, &mut status, options) };
        match r {
            0 => return Ok(None),
            r if r == pid => return Ok(Some(ExitStatus::from_raw(status))),
            _ => {
                let e = io::Error::last_os_error();
                if e.kind() != io::ErrorKind::Interrupted {
                    return Err(e);
                }
            }
        }
    }
}

fn cstring(bytes: &[u8]) -> io::Result<CString> {
    CString::new(bytes).map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "a NUL byte"))
}

/// A pipe whose both ends are close-on-exec: (read, write).
fn pipe_pair() -> io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0 as c_int; 2];
    // SAFETY: pipe2 writes two descriptors into the array.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: both were just made, and are owned by nobody else.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

/// The read end of a pipe for tokio: non-blocking (the write end, the child's,
/// stays blocking: the flag belongs to each end's open file).
fn receiver(fd: OwnedFd) -> io::Result<pipe::Receiver> {
    // SAFETY: fcntl on a descriptor we own.
    let flags = unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_GETFL) };
    if flags < 0
        // SAFETY: as above.
        || unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_SETFL, flags | libc::O_NONBLOCK) } < 0
    {
        return Err(io::Error::last_os_error());
    }
    pipe::Receiver::from_owned_fd_unchecked(fd)
}

/// Starts the child (see the module's doc). Returns once it has exec'd its
/// program, or with the error of the step that failed (the child then reaped).
pub fn spawn(spec: Spec<'_>) -> io::Result<Child> {
    let program = spec.program.as_bytes();
    let path_var = spec
        .env
        .iter()
        .rev()
        .find(|(k, _)| k == "PATH")
        .map(|(_, v)| v.as_bytes().to_vec());
    let candidates = if program.contains(&b'/') {
        vec![cstring(program)?]
    } else {
        let path = path_var.unwrap_or_else(|| b"/usr/local/bin:/usr/bin:/bin".to_vec());
        let mut found = Vec::new();
        for dir in path.split(|b| *b == b':') {
            // An empty entry is the working directory, as for execvp.
            let dir: &[u8] = if dir.is_empty() { b"." } else { dir };
            let mut full = dir.to_vec();
            full.push(b'/');
            full.extend_from_slice(program);
            found.push(cstring(&full)?);
        }
        found
    };
    let argv_owned: Vec<CString> = std::iter::once(cstring(program))
        .chain(spec.args.iter().map(|a| cstring(a.as_bytes())))
        .collect::<io::Result<_>>()?;
    let env_owned: Vec<CString> = spec
        .env
        .iter()
        .map(|(k, v)| {
            let mut kv = k.as_bytes().to_vec();
            kv.push(b'=');
            kv.extend_from_slice(v.as_bytes());
            cstring(&kv)
        })
        .collect::<io::Result<_>>()?;
    let opened;
    let null = match &*DEV_NULL {
        Some(f) => f,
        None => {
            opened = std::fs::File::open("/dev/null")?;
            &opened
        }
    };
    let (out_read, out_write) = pipe_pair()?;
    let (err_read, err_write) = pipe_pair()?;
    let nul = std::ptr::null::<c_char>();
    let args = ChildArgs {
        candidates,
        argv: argv_owned.iter().map(|a| a.as_ptr()).chain([nul]).collect(),
        script_argv: UnsafeCell::new(
            [SH.as_ptr(), nul]
                .into_iter()
                .chain(argv_owned[1..].iter().map(|a| a.as_ptr()))
                .chain([nul])
                .collect(),
        ),
        envp: env_owned.iter().map(|e| e.as_ptr()).chain([nul]).collect(),
        cwd: cstring(spec.cwd.as_os_str().as_bytes())?,
        stdio: [
            null.as_raw_fd(),
            out_write.as_raw_fd(),
            err_write.as_raw_fd(),
        ],
        limits: spec
            .limits
            .iter()
            .map(|&(r, n)| {
                (
                    r.raw(),
                    libc::rlimit {
                        rlim_cur: n,
                        rlim_max: n,
                    },
                )
            })
            .collect(),
        failed: AtomicI32::new(0),
    };
    let mut stack = vec![0u8; STACK_BYTES];
    // The stack grows down: its top, aligned to 16 bytes.
    let top = (stack.as_mut_ptr() as usize + STACK_BYTES) & !15;

    // SAFETY: sigfillset and pthread_sigmask write the given sets; the old mask
    // is put back below whatever the clone did.
    let mut all: libc::sigset_t = unsafe { std::mem::zeroed() };
    let mut old: libc::sigset_t = unsafe { std::mem::zeroed() };
    unsafe {
        libc::sigfillset(&mut all);
        libc::pthread_sigmask(libc::SIG_SETMASK, &all, &mut old);
    }
    // SAFETY: the child runs `child_main` on `stack`, which outlives it (the
    // calling thread waits until the child has exec'd or exited: CLONE_VFORK),
    // and reads `args`, which lives as long; see the module's invariants.
    let pid = unsafe {
        libc::clone(
            child_main,
            top as *mut c_void,
            libc::CLONE_VM | libc::CLONE_VFORK | libc::SIGCHLD,
            &args as *const ChildArgs as *mut c_void,
        )
    };
    let clone_error = io::Error::last_os_error();
    // SAFETY: puts back the mask saved above.
    unsafe { libc::pthread_sigmask(libc::SIG_SETMASK, &old, std::ptr::null_mut()) };
    drop(stack);
    if pid < 0 {
        return Err(clone_error);
    }
    let failed = args.failed.load(Ordering::Acquire);
    if failed != 0 {
        let _ = reap(pid, 0);
        let (step, errno) = ((failed >> 24) as usize, failed & 0xff_ffff);
        let e = io::Error::from_raw_os_error(errno);
        return Err(match STEPS.get(step) {
            Some(name) if *name != "execve" && !name.is_empty() => {
                io::Error::new(e.kind(), format!("{name} in the new process: {e}"))
            }
            _ => e,
        });
    }
    // The child has its copies; the worker keeps only the read ends.
    drop((out_write, err_write));
    Ok(Child {
        exit: Exit { pid },
        stdout: receiver(out_read)?,
        stderr: receiver(err_read)?,
    })
}

/// The child, between the clone and the exec (see the module's invariants).
extern "C" fn child_main(arg: *mut c_void) -> c_int {
    // SAFETY: `arg` is the `ChildArgs` that `spawn` keeps alive until we are gone.
    let a = unsafe { &*(arg as *const ChildArgs) };
    let fail = |step: i32| -> c_int {
        // SAFETY: reads this thread's errno; _exit ends the child at once.
        let errno = unsafe { *libc::__errno_location() };
        a.failed
            .store((step << 24) | (errno & 0xff_ffff), Ordering::Release);
        unsafe { libc::_exit(127) }
    };
    // SAFETY: plain system calls on data made before the clone.
    unsafe {
        // Handlers are the worker's code: back to the default before any signal
        // can be delivered here. Ignored signals stay ignored (as with std),
        // but SIGPIPE, which Rust ignores, gets its default back.
        for sig in 1..=64 {
            if sig == libc::SIGKILL || sig == libc::SIGSTOP {
                continue;
            }
            let mut sa: libc::sigaction = std::mem::zeroed();
            if libc::sigaction(sig, std::ptr::null(), &mut sa) != 0 {
                continue;
            }
            if sa.sa_sigaction != libc::SIG_DFL
                && (sa.sa_sigaction != libc::SIG_IGN || sig == libc::SIGPIPE)
            {
                let mut dfl: libc::sigaction = std::mem::zeroed();
                dfl.sa_sigaction = libc::SIG_DFL;
                libc::sigaction(sig, &dfl, std::ptr::null_mut());
            }
        }
        if libc::setpgid(0, 0) != 0 {
            return fail(1);
        }
        for (target, &fd) in a.stdio.iter().enumerate() {
            let target = target as c_int;
            if fd == target {
                // Already in place: only the close-on-exec flag must go.
                if libc::fcntl(fd, libc::F_SETFD, 0) != 0 {
                    return fail(2);
                }
            } else if libc::dup2(fd, target) < 0 {
                return fail(2);
            }
        }
        if libc::chdir(a.cwd.as_ptr()) != 0 {
            return fail(3);
        }
        for (resource, limit) in &a.limits {
            if libc::setrlimit(*resource, limit) != 0 {
                return fail(4);
            }
        }
        let mut empty: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut empty);
        libc::pthread_sigmask(libc::SIG_SETMASK, &empty, std::ptr::null_mut());
        // As execvp: the first candidate that is not missing decides.
        let mut first_denied = 0;
        for candidate in &a.candidates {
            libc::execve(candidate.as_ptr(), a.argv.as_ptr(), a.envp.as_ptr());
            let errno = *libc::__errno_location();
            if errno == libc::ENOEXEC {
                let argv = &mut *a.script_argv.get();
                argv[1] = candidate.as_ptr();
                libc::execve(SH.as_ptr(), argv.as_ptr(), a.envp.as_ptr());
                return fail(5);
            }
            match errno {
                libc::ENOENT | libc::ENOTDIR | libc::ESTALE | libc::ENODEV | libc::ETIMEDOUT => {}
                libc::EACCES => {
                    if first_denied == 0 {
                        first_denied = libc::EACCES;
                    }
                }
                _ => return fail(5),
            }
        }
        if first_denied != 0 {
            *libc::__errno_location() = first_denied;
        }
        fail(5)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::time::Duration;

    /// The state letter of `/proc/<pid>/stat` (`None` once the pid is free).
    fn state(pid: libc::pid_t) -> Option<char> {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
        stat[stat.rfind(')')? + 1..].trim_start().chars().next()
    }

    /// Polls `check` (bounded). Blocking: the test's own thread is no
    /// runtime worker, and no timer of the runtime is needed meanwhile.
    fn until(what: &str, mut check: impl FnMut() -> bool) {
        for _ in 0..6000 {
            if check() {
                return;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        panic!("never happened: {what}");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_leader_is_reaped_only_under_the_group_lock_and_its_group_dies_with_it() {
        let args = ["-c".to_string(), "sleep 60 & echo $!; exit 3".to_string()];
        let mut child = spawn(Spec {
            program: OsStr::new("/bin/sh"),
            args: &args,
            env: vec![("PATH".into(), "/usr/bin:/bin".into())],
            cwd: Path::new("/"),
            limits: Vec::new(),
        })
        .expect("sh starts");
        let leader = child.exit.pid();
        let group: Arc<Group> = Arc::new(std::sync::Mutex::new(Some(leader)));
        let mut line = String::new();
        {
            use tokio::io::AsyncBufReadExt;
            tokio::io::BufReader::new(&mut child.stdout)
                .read_line(&mut line)
                .await
                .unwrap();
        }
        let sleeper: libc::pid_t = line.trim().parse().expect("the background pid");

        // A signaller holds the lock: the leader exits, and stays a zombie
        // whose pid (the group's id) nobody else can be given.
        let held = group.lock().unwrap();
        let waiting = tokio::spawn({
            let group = group.clone();
            async move { child.exit.wait(&group).await }
        });
        until("the leader to exit", || {
            !matches!(state(leader), Some('R' | 'S' | 'D'))
        });
        // Room for a wrong order to show: a reap here would free the pid. (The
        // reaper blocks a runtime worker on the lock: only std waits here.)
        std::thread::sleep(Duration::from_millis(200));
        assert_eq!(
            state(leader),
            Some('Z'),
            "reaped while the group was locked"
        );
        assert!(
            state(sleeper).is_some_and(|s| s != 'Z'),
            "the group was killed early"
        );
        drop(held);

        let status = waiting.await.unwrap().unwrap();
        assert_eq!(status.code(), Some(3));
        assert_eq!(
            *group.lock().unwrap(),
            None,
            "a reaped group is not signalled"
        );
        // The rest of the group was killed (then reaped by whoever adopted it).
        until("the group's other process to die", || {
            matches!(state(sleeper), None | Some('Z'))
        });
    }
}
