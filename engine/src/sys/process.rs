//! Process creation and reaping: `clone3(CLONE_PIDFD)` (or `fork` +
//! `pidfd_open` where `clone3` is refused), `execve`, `waitid(P_PIDFD)` and
//! `pidfd_send_signal`.
//!
//! Everything the child needs (paths, argv, envp, the stdio table) is built
//! by the caller *before* the fork, as C arrays: between fork and exec the
//! child runs only async-signal-safe system calls on that prepared data (no
//! allocation, no locks, no panics). If `execve` fails, the child writes its
//! `errno` into a close-on-exec pipe and exits with 127; the parent reads that
//! pipe, so `spawn` itself fails with `ENOENT`, `EACCES`, ... A successful
//! exec closes the pipe, which the parent reads as end of file.

use super::{owned, syscall};
use crate::error::{Error, Result};
use std::ffi::{c_char, CStr};
use std::os::fd::{AsRawFd, OwnedFd, RawFd};

/// `waitid` id type for a pidfd (`linux/wait.h`).
const P_PIDFD: libc::idtype_t = 3;

/// The kernel's `struct clone_args` (version 0, 64 bytes: up to `tls`).
#[repr(C)]
struct CloneArgs {
    flags: u64,
    pidfd: u64,
    child_tid: u64,
    parent_tid: u64,
    exit_signal: u64,
    stack: u64,
    stack_size: u64,
    tls: u64,
}

/// What the child does between fork and exec, all prepared in the parent.
pub struct SpawnPlan<'a> {
    /// Executables to try in order (a `PATH` search already expanded); the
    /// first that `execve` accepts runs.
    pub paths: &'a [&'a CStr],
    /// Null-terminated `argv`.
    pub argv: &'a [*const c_char],
    /// Null-terminated `envp`.
    pub envp: &'a [*const c_char],
    /// Directory to change to before exec.
    pub cwd: Option<&'a CStr>,
    /// `stdio[i]` is the fd the child gets as fd `i`; `-1` leaves fd `i` as
    /// it is (closed on exec if it is `CLOEXEC`, as every uvring fd is).
    pub stdio: &'a [RawFd],
    /// Scratch space of `stdio.len()` entries for the child's fd shuffle.
    pub scratch: &'a mut [RawFd],
    /// Start the child in a new session (`setsid`).
    pub detached: bool,
    /// `setuid` to this before exec (after `setgid`).
    pub uid: Option<u32>,
    /// `setgid` to this before exec.
    pub gid: Option<u32>,
    /// `setgroups` to these before exec; `None` with `uid` or `gid` set
    /// tries `setgroups(0)` and ignores a refusal (libuv's way).
    pub groups: Option<&'a [u32]>,
    /// `sched_setaffinity` to this set before exec.
    pub cpus: Option<&'a CpuSet>,
}

/// A CPU set for [`SpawnPlan::cpus`] and [`allowed_cpus`], built before
/// the fork.
pub struct CpuSet(libc::cpu_set_t);

impl CpuSet {
    /// The set of the CPUs in `list`; `EINVAL` for an empty list or a CPU
    /// the set cannot hold.
    pub fn from_list(list: &[usize]) -> Result<CpuSet> {
        // SAFETY: cpu_set_t is plain data; all zeroes is the empty set.
        let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
        let max = 8 * std::mem::size_of::<libc::cpu_set_t>();
        if list.is_empty() || list.iter().any(|&c| c >= max) {
            return Err(Error::EINVAL);
        }
        for &cpu in list {
            // SAFETY: `cpu` is below the set's size (checked above).
            unsafe { libc::CPU_SET(cpu, &mut set) };
        }
        Ok(CpuSet(set))
    }
}

/// The CPUs the calling thread may run on (`sched_getaffinity`), in order.
pub fn allowed_cpus() -> Result<Vec<usize>> {
    // SAFETY: cpu_set_t is plain data; the kernel fills it.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    // SAFETY: `set` is a valid cpu_set_t of the size passed.
    syscall!(sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut set))?;
    let max = 8 * std::mem::size_of::<libc::cpu_set_t>();
    // SAFETY: every `c` is below the set's size.
    Ok((0..max).filter(|&c| unsafe { libc::CPU_ISSET(c, &set) }).collect())
}

/// `RLIMIT_NOFILE` as `(soft, hard)`.
pub fn nofile_limit() -> Result<(u64, u64)> {
    let mut lim = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: `lim` is a valid rlimit to fill.
    syscall!(getrlimit(libc::RLIMIT_NOFILE, &mut lim))?;
    Ok((lim.rlim_cur, lim.rlim_max))
}

/// Raises the soft `RLIMIT_NOFILE` to the hard limit (nginx's
/// `worker_rlimit_nofile`); children inherit it. Returns the new soft limit.
pub fn raise_nofile_limit() -> Result<u64> {
    let (soft, hard) = nofile_limit()?;
    if soft < hard {
        let lim = libc::rlimit { rlim_cur: hard, rlim_max: hard };
        // SAFETY: `lim` is a valid rlimit.
        syscall!(setrlimit(libc::RLIMIT_NOFILE, &lim))?;
    }
    Ok(hard)
}

/// Opens `path` for appending (created `0644` if missing) and puts it at
/// `target` (`dup2`), closing what `target` was: nginx's log reopen. The
/// new `target` is inherited by children (no `CLOEXEC`).
pub fn reopen_append(path: &CStr, target: RawFd) -> Result<()> {
    let fd = syscall!(open(path.as_ptr(), libc::O_WRONLY | libc::O_APPEND | libc::O_CREAT | libc::O_CLOEXEC, 0o644))?;
    // SAFETY: open returned a fresh fd that nobody else owns.
    let fd = unsafe { owned(fd) };
    if fd.as_raw_fd() != target {
        syscall!(dup2(fd.as_raw_fd(), target))?;
    }
    Ok(())
}

/// A started child: its pid and a pidfd that becomes readable when it exits.
pub struct Child {
    pub pid: i32,
    pub pidfd: OwnedFd,
}

/// How a reaped child ended.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum ExitStatus {
    /// `exit(code)`.
    Exited(i32),
    /// Killed by this signal.
    Signaled(i32),
}

/// Blocks every signal on the calling thread for its lifetime and restores
/// the previous mask on drop, so no signal handler of the parent runs in the
/// child before the child resets dispositions.
struct SignalBlock {
    old: libc::sigset_t,
}

impl SignalBlock {
    fn new() -> SignalBlock {
        // SAFETY: sigset_t is plain data; sigfillset/pthread_sigmask only
        // write into the sets we pass.
        unsafe {
            let mut all: libc::sigset_t = std::mem::zeroed();
            let mut old: libc::sigset_t = std::mem::zeroed();
            libc::sigfillset(&mut all);
            libc::pthread_sigmask(libc::SIG_SETMASK, &all, &mut old);
            SignalBlock { old }
        }
    }
}

impl Drop for SignalBlock {
    fn drop(&mut self) {
        // SAFETY: restores the mask saved by `new`.
        unsafe {
            libc::pthread_sigmask(libc::SIG_SETMASK, &self.old, std::ptr::null_mut());
        }
    }
}

/// A blocking close-on-exec pipe for reporting exec failure.
fn error_pipe() -> Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0 as RawFd; 2];
    // SAFETY: `fds` has room for the two fds pipe2 writes.
    syscall!(pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC))?;
    // SAFETY: pipe2 returned two fresh fds that nobody else owns.
    Ok(unsafe { (owned(fds[0]), owned(fds[1])) })
}

/// Starts a child per `plan`. Returns once the child has exec'd (or fails
/// with the child's exec error, after reaping it).
pub fn spawn(mut plan: SpawnPlan<'_>) -> Result<Child> {
    if plan.argv.last() != Some(&std::ptr::null()) || plan.envp.last() != Some(&std::ptr::null()) {
        return Err(Error::EINVAL);
    }
    if plan.scratch.len() < plan.stdio.len() || plan.paths.is_empty() {
        return Err(Error::EINVAL);
    }
    let (err_read, err_write) = error_pipe()?;
    let (pid, pidfd) = {
        let _block = SignalBlock::new();
        let mut pidfd: RawFd = -1;
        let args = CloneArgs {
            flags: libc::CLONE_PIDFD as u64,
            pidfd: (&mut pidfd as *mut RawFd) as u64,
            child_tid: 0,
            parent_tid: 0,
            exit_signal: libc::SIGCHLD as u64,
            stack: 0,
            stack_size: 0,
            tls: 0,
        };
        // SAFETY: clone3 without CLONE_VM duplicates the address space, like
        // fork; `args` and `pidfd` are live for the call. The child branch
        // below never returns.
        let res =
            unsafe { libc::syscall(libc::SYS_clone3, &args as *const CloneArgs, std::mem::size_of::<CloneArgs>()) };
        let res = if res < 0 {
            let e = Error::last_os_error();
            if !matches!(e.errno(), Some(libc::ENOSYS | libc::EPERM | libc::EINVAL)) {
                return Err(e);
            }
            // clone3 unavailable (old kernel, seccomp): fork, then open a
            // pidfd. The child cannot be reaped in between by this library
            // (only waitid on its pidfd does that), so its pid is stable.
            // SAFETY: fork is called with every signal blocked; the child
            // branch below never returns.
            let pid = unsafe { libc::fork() };
            if pid < 0 {
                return Err(Error::last_os_error());
            }
            if pid > 0 {
                match pidfd_open(pid) {
                    Ok(fd) => pidfd = std::os::fd::IntoRawFd::into_raw_fd(fd),
                    Err(e) => {
                        // SAFETY: kill and waitpid on our own child.
                        unsafe {
                            libc::kill(pid, libc::SIGKILL);
                            libc::waitpid(pid, std::ptr::null_mut(), 0);
                        }
                        return Err(e);
                    }
                }
            }
            pid as libc::c_long
        } else {
            res
        };
        if res == 0 {
            // SAFETY: we are the child; `child_exec` never returns.
            unsafe { child_exec(&mut plan, err_write.as_raw_fd()) };
        }
        // SAFETY: clone3 (CLONE_PIDFD) or pidfd_open gave us a fresh pidfd.
        (res as i32, unsafe { owned(pidfd) })
    };
    drop(err_write);
    let mut errno = [0u8; 4];
    let mut got = 0;
    while got < 4 {
        // SAFETY: reads into the unfilled tail of `errno`.
        let n = unsafe { libc::read(err_read.as_raw_fd(), errno[got..].as_mut_ptr().cast(), 4 - got) };
        if n < 0 && Error::last_os_error().errno() == Some(libc::EINTR) {
            continue;
        }
        if n <= 0 {
            break;
        }
        got += n as usize;
    }
    if got == 0 {
        return Ok(Child { pid, pidfd });
    }
    // The child failed before or at exec and is exiting: reap it.
    let _ = wait_blocking(pidfd.as_raw_fd());
    let code = if got == 4 { i32::from_ne_bytes(errno) } else { libc::EIO };
    Err(Error::from_errno(code))
}

/// The child's side: stdio, cwd, signals, exec. Only async-signal-safe calls.
///
/// # Safety
/// Must be called only in a freshly forked child; never returns.
unsafe fn child_exec(plan: &mut SpawnPlan<'_>, err_fd: RawFd) -> ! {
    let fail = |err_fd: RawFd| -> ! {
        // SAFETY: __errno_location, write and _exit are async-signal-safe.
        unsafe {
            let errno = *libc::__errno_location();
            let bytes = errno.to_ne_bytes();
            libc::write(err_fd, bytes.as_ptr().cast(), 4);
            libc::_exit(127)
        }
    };
    // SAFETY (for the block): raw system calls on fds and memory prepared by
    // the parent; nothing allocates or takes a lock.
    unsafe {
        if plan.detached && libc::setsid() < 0 {
            fail(err_fd);
        }
        let n = plan.stdio.len();
        let scratch = plan.scratch.as_mut_ptr();
        // Pass 1: a source fd that is also a target slot (other than its own)
        // would be clobbered by an earlier dup2; move it above the table.
        for (i, &src) in plan.stdio.iter().enumerate() {
            let mut fd = src;
            if src >= 0 && src as usize != i && (src as usize) < n {
                fd = libc::fcntl(src, libc::F_DUPFD_CLOEXEC, n as libc::c_int);
                if fd < 0 {
                    fail(err_fd);
                }
            }
            *scratch.add(i) = fd;
        }
        // Pass 2: install each source at its slot without CLOEXEC.
        for i in 0..n {
            let src = *scratch.add(i);
            if src < 0 {
                continue;
            }
            if src as usize == i {
                // Inherited as is: only clear CLOEXEC (a closed fd stays closed).
                let _ = libc::fcntl(src, libc::F_SETFD, 0);
            } else if libc::dup2(src, i as libc::c_int) < 0 {
                fail(err_fd);
            }
        }
        if let Some(cwd) = plan.cwd {
            if libc::chdir(cwd.as_ptr()) < 0 {
                fail(err_fd);
            }
        }
        if let Some(cpus) = plan.cpus {
            if libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &cpus.0) < 0 {
                fail(err_fd);
            }
        }
        // Privileges last: groups, then the group, then the user (after
        // setuid the others are no longer allowed). Raw system calls, not
        // glibc's wrappers: those change the credentials of every thread
        // glibc knows of, signalling each and waiting on futexes, and this
        // child (made by clone3, so glibc's fork handlers did not run)
        // inherited the parent's thread list without the threads; a thread
        // the parent was creating at the moment of the clone never answers,
        // and the child hung before exec. The kernel's calls change this
        // thread's credentials, which here is the whole process.
        match plan.groups {
            Some(groups) if libc::syscall(libc::SYS_setgroups, groups.len(), groups.as_ptr()) < 0 => fail(err_fd),
            Some(_) => {}
            None if plan.uid.is_some() || plan.gid.is_some() => {
                // Drops root's groups; refused (and harmless) when not root.
                let _ = libc::syscall(libc::SYS_setgroups, 0usize, std::ptr::null::<libc::gid_t>());
            }
            None => {}
        }
        if let Some(gid) = plan.gid {
            if libc::syscall(libc::SYS_setgid, gid) < 0 {
                fail(err_fd);
            }
        }
        if let Some(uid) = plan.uid {
            if libc::syscall(libc::SYS_setuid, uid) < 0 {
                fail(err_fd);
            }
        }
        // Default dispositions for every classic signal (as libuv), then an
        // empty mask: the new program starts clean.
        for sig in 1..32 {
            if sig != libc::SIGKILL && sig != libc::SIGSTOP {
                libc::signal(sig, libc::SIG_DFL);
            }
        }
        let mut empty: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut empty);
        libc::pthread_sigmask(libc::SIG_SETMASK, &empty, std::ptr::null_mut());
        // Try each candidate as execvp does: remember EACCES, skip ENOENT.
        let mut saw_eacces = false;
        for path in plan.paths {
            libc::execve(path.as_ptr(), plan.argv.as_ptr(), plan.envp.as_ptr());
            let e = *libc::__errno_location();
            match e {
                libc::EACCES => saw_eacces = true,
                libc::ENOENT | libc::ENOTDIR | libc::ESTALE | libc::ENODEV | libc::ETIMEDOUT => {}
                _ => fail(err_fd),
            }
        }
        if saw_eacces {
            *libc::__errno_location() = libc::EACCES;
        }
        fail(err_fd)
    }
}

/// Whether the calling thread runs under `SCHED_OTHER` (Linux's default
/// policy), as opposed to `SCHED_BATCH`, `SCHED_IDLE` or a real-time one.
pub fn sched_is_normal() -> bool {
    // SAFETY: a plain system call on the calling thread.
    let policy = unsafe { libc::sched_getscheduler(0) };
    policy >= 0 && policy & !libc::SCHED_RESET_ON_FORK == libc::SCHED_OTHER
}

/// Moves the calling thread to `SCHED_BATCH` (`batch`) or back to
/// `SCHED_OTHER`; the nice value is kept. Under `SCHED_BATCH` a wake-up does
/// not preempt the task running on the CPU: the thread runs at its turn,
/// with whatever work piled up meanwhile (larger batches, fewer context
/// switches when the CPUs are busy; no delay when one is idle).
pub fn set_sched_batch(batch: bool) -> Result<()> {
    set_sched_batch_of(0, batch)
}

/// As [`set_sched_batch`], for thread `tid` (0: the calling thread).
pub fn set_sched_batch_of(tid: i32, batch: bool) -> Result<()> {
    let param = libc::sched_param { sched_priority: 0 };
    let policy = if batch { libc::SCHED_BATCH } else { libc::SCHED_OTHER };
    // SAFETY: a plain system call with an integer id; `param` is valid for
    // the call.
    if unsafe { libc::sched_setscheduler(tid, policy, &param) } < 0 {
        return Err(Error::last_os_error());
    }
    Ok(())
}

/// `pidfd_open(2)`.
pub fn pidfd_open(pid: i32) -> Result<OwnedFd> {
    // SAFETY: a plain system call with integer arguments.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
    if fd < 0 {
        return Err(Error::last_os_error());
    }
    // SAFETY: pidfd_open returned a fresh fd (CLOEXEC by default).
    Ok(unsafe { owned(fd as RawFd) })
}

/// `pidfd_send_signal(2)`: `ESRCH` once the child is reaped.
pub fn pidfd_send_signal(pidfd: RawFd, signum: i32) -> Result<()> {
    // SAFETY: a plain system call; a null siginfo means "as kill(2)".
    let res =
        unsafe { libc::syscall(libc::SYS_pidfd_send_signal, pidfd, signum, std::ptr::null::<libc::siginfo_t>(), 0) };
    if res < 0 {
        return Err(Error::last_os_error());
    }
    Ok(())
}

fn waitid_pidfd(pidfd: RawFd, flags: i32) -> Result<Option<ExitStatus>> {
    // SAFETY: siginfo_t is plain data; zero marks "no child changed state".
    let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
    loop {
        // SAFETY: `info` is a valid siginfo_t to fill.
        let res = unsafe { libc::waitid(P_PIDFD, pidfd as libc::id_t, &mut info, libc::WEXITED | flags) };
        if res == 0 {
            break;
        }
        let e = Error::last_os_error();
        if e.errno() != Some(libc::EINTR) {
            return Err(e);
        }
    }
    // SAFETY: waitid filled `info` for a child (or left it zeroed with WNOHANG).
    let (pid, status) = unsafe { (info.si_pid(), info.si_status()) };
    if pid == 0 {
        return Ok(None);
    }
    Ok(Some(match info.si_code {
        libc::CLD_EXITED => ExitStatus::Exited(status),
        _ => ExitStatus::Signaled(status),
    }))
}

/// Reaps the child behind `pidfd` if it has exited (`waitid(P_PIDFD,
/// WNOHANG)`); `None` if it still runs. `ECHILD` if it was already reaped.
pub fn try_wait(pidfd: RawFd) -> Result<Option<ExitStatus>> {
    waitid_pidfd(pidfd, libc::WNOHANG)
}

/// Waits for and reaps the child behind `pidfd`.
pub fn wait_blocking(pidfd: RawFd) -> Result<ExitStatus> {
    waitid_pidfd(pidfd, 0)?.ok_or(Error::from_errno(libc::ECHILD))
}

/// Opens `/dev/null` read-write, close-on-exec (for ignored stdio).
pub fn open_dev_null_rw() -> Result<OwnedFd> {
    let fd = syscall!(open(c"/dev/null".as_ptr(), libc::O_RDWR | libc::O_CLOEXEC))?;
    // SAFETY: open returned a fresh fd that nobody else owns.
    Ok(unsafe { owned(fd) })
}
