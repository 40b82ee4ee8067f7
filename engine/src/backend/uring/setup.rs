//! Ring setup: the flags ladder, the opcode probe and the kernel-version gate.
//! Everything here runs once per loop; it may allocate.

use super::super::{OpKind, Unavailable};
use crate::error::Error;
use io_uring::{opcode, IoUring, Probe};
use std::fmt::Write as _;

/// Submission-queue entries; the completion queue gets [`CQ_ENTRIES`].
pub(super) const SQ_ENTRIES: u32 = 1024;
/// Completion-queue entries (4x the SQ: multishot ops post many CQEs per SQE).
pub(super) const CQ_ENTRIES: u32 = 4 * SQ_ENTRIES;

/// Oldest kernel we run on: multishot recv and recvmsg arrived in 6.0
/// (multishot accept, provided-buffer rings and `AsyncCancel` by user data
/// with `ALL` in 5.19; `EXT_ARG` waits in 5.11).
pub(super) const MIN_KERNEL: (u32, u32) = (6, 0);

/// Optional setup flags, best first. Each rung is tried in turn while the
/// kernel answers `EINVAL` (a flag it does not know).
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub(super) struct SetupFlags {
    pub coop_taskrun: bool,
    pub single_issuer: bool,
    pub defer_taskrun: bool,
    pub submit_all: bool,
}

const LADDER: [SetupFlags; 6] = [
    SetupFlags { coop_taskrun: true, single_issuer: true, defer_taskrun: true, submit_all: true },
    SetupFlags { coop_taskrun: false, single_issuer: true, defer_taskrun: true, submit_all: true },
    SetupFlags { coop_taskrun: true, single_issuer: true, defer_taskrun: false, submit_all: true },
    SetupFlags { coop_taskrun: true, single_issuer: false, defer_taskrun: false, submit_all: true },
    SetupFlags { coop_taskrun: false, single_issuer: false, defer_taskrun: false, submit_all: true },
    SetupFlags { coop_taskrun: false, single_issuer: false, defer_taskrun: false, submit_all: false },
];

impl SetupFlags {
    /// The most the environment allows: `UVRING_IO_URING_SETUP` = `best`
    /// (default: every flag the kernel has), `defer` (single issuer + deferred
    /// task work), `coop` (cooperative task work only) or `plain` (none). It
    /// exists to measure which flags help (see bench/RESULTS.md).
    fn cap_from_env() -> SetupFlags {
        let all = LADDER[0];
        let none = SetupFlags { coop_taskrun: false, single_issuer: false, defer_taskrun: false, submit_all: true };
        match std::env::var("UVRING_IO_URING_SETUP").as_deref() {
            Ok("defer") => SetupFlags { coop_taskrun: false, ..all },
            Ok("coop") => SetupFlags { coop_taskrun: true, ..none },
            Ok("plain") => none,
            _ => all,
        }
    }

    fn within(&self, cap: &SetupFlags) -> bool {
        (!self.coop_taskrun || cap.coop_taskrun)
            && (!self.single_issuer || cap.single_issuer)
            && (!self.defer_taskrun || cap.defer_taskrun)
            && (!self.submit_all || cap.submit_all)
    }

    pub fn describe(&self, out: &mut String) {
        let names = [
            (self.single_issuer, "single_issuer"),
            (self.defer_taskrun, "defer_taskrun"),
            (self.coop_taskrun, "coop_taskrun"),
            (self.submit_all, "submit_all"),
        ];
        let mut first = true;
        for (on, name) in names {
            if on {
                if !first {
                    out.push('+');
                }
                out.push_str(name);
                first = false;
            }
        }
        if first {
            out.push_str("no optional flags");
        }
    }
}

/// The optional kernel features the backend uses for network I/O (issue
/// 13's "io_uring to the floor"), each with a runtime switch so one
/// benchmark run can compare with and without it (bench/RESULTS.md).
///
/// `UVRING_IO_URING_FEATURES` is a comma-separated list of names, each
/// turning a feature on, or off with a `no_` prefix: `ring_fd`,
/// `fixed_files`, `send_zc`, `close`. Unnamed features keep their default
/// (only `ring_fd` on: in the external echo benchmark neither fixed files
/// nor `SEND_ZC` paid, and in `Connection: close` churn `IORING_OP_CLOSE`
/// did not, see bench/RESULTS.md); unknown names are ignored. A
/// feature the kernel refuses is dropped at setup (the ring works without
/// it).
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub(crate) struct Features {
    /// `IORING_REGISTER_RING_FDS`: enters name the ring by its registered
    /// index, not its fd (no fd lookup per `io_uring_enter`).
    pub ring_fd: bool,
    /// A sparse registered-file table; a socket's recv and send ops use its
    /// fixed slot (no `fget`/`fput` per op). See `FixedFiles`.
    pub fixed_files: bool,
    /// `SEND_ZC` for one-iovec sends of at least [`SEND_ZC_MIN`] bytes.
    pub send_zc: bool,
    /// `IORING_OP_CLOSE` for the fds the loop closes without anyone
    /// watching (`Driver::close_fd`): queued with the next submission
    /// instead of a `close` syscall each. It removes the syscalls but not
    /// their cost (the kernel's close work is the same, and a queued SQE
    /// makes the next poll enter the kernel), so it is off by default.
    pub close: bool,
}

/// Smallest send `SEND_ZC` is used for (when the feature is on): below
/// this, pinning pages and the second (notification) CQE cost more than
/// the copy they save.
pub(crate) const SEND_ZC_MIN: usize = 16 * 1024;

impl Default for Features {
    fn default() -> Features {
        Features { ring_fd: true, fixed_files: false, send_zc: false, close: false }
    }
}

impl Features {
    /// The defaults, changed by `UVRING_IO_URING_FEATURES` if set.
    pub(crate) fn from_env() -> Features {
        match std::env::var("UVRING_IO_URING_FEATURES") {
            Ok(list) => Features::parse(&list),
            Err(_) => Features::default(),
        }
    }

    /// Applies a comma-separated list of (`no_`-prefixed) names to the
    /// defaults.
    pub(crate) fn parse(list: &str) -> Features {
        let mut f = Features::default();
        for item in list.split(',').map(str::trim) {
            let (on, name) = match item.strip_prefix("no_") {
                Some(rest) => (false, rest),
                None => (true, item),
            };
            match name {
                "ring_fd" => f.ring_fd = on,
                "fixed_files" => f.fixed_files = on,
                "send_zc" => f.send_zc = on,
                "close" => f.close = on,
                _ => {}
            }
        }
        f
    }

    pub(crate) fn describe(&self, out: &mut String) {
        let all = [
            (self.ring_fd, "ring_fd"),
            (self.fixed_files, "fixed_files"),
            (self.send_zc, "send_zc"),
            (self.close, "close"),
        ];
        for (on, name) in all {
            if on {
                out.push('+');
                out.push_str(name);
            }
        }
    }
}

fn unavailable(errno: i32, reason: String) -> Unavailable {
    let error = if errno > 0 { Error::from_errno(errno) } else { Error::BACKEND_UNAVAILABLE };
    Unavailable { error, reason }
}

fn errno_name(errno: i32) -> &'static str {
    match errno {
        libc::EPERM => "EPERM",
        libc::ENOSYS => "ENOSYS",
        libc::ENOMEM => "ENOMEM",
        libc::EINVAL => "EINVAL",
        libc::EMFILE => "EMFILE",
        libc::ENFILE => "ENFILE",
        libc::EFAULT => "EFAULT",
        libc::EACCES => "EACCES",
        _ => "error",
    }
}

/// A sentence for a failed `io_uring_setup`.
fn setup_reason(errno: i32) -> String {
    let why = match errno {
        libc::EPERM => "kernel.io_uring_disabled or a seccomp filter forbids it",
        libc::ENOSYS => "the kernel was built without io_uring, or a seccomp filter hides it",
        libc::ENOMEM => "not enough locked memory (RLIMIT_MEMLOCK) or kernel memory for the rings",
        libc::EMFILE | libc::ENFILE => "no file descriptor left for the ring",
        _ => "the kernel refused the ring",
    };
    format!("io_uring_setup: {} ({why})", errno_name(errno))
}

/// Kernel release as (major, minor), from `/proc/sys/kernel/osrelease` (the
/// same string `uname -r` prints); `None` if it cannot be read.
pub(super) fn kernel_version() -> Option<(u32, u32)> {
    parse_release(std::fs::read_to_string("/proc/sys/kernel/osrelease").ok()?.trim())
}

/// Parses "6.18.44-foo" into (6, 18).
pub(super) fn parse_release(release: &str) -> Option<(u32, u32)> {
    let mut parts = release.split(|c: char| !c.is_ascii_digit());
    let major = parts.next()?.parse().ok()?;
    let minor = parts.next()?.parse().ok()?;
    Some((major, minor))
}

/// Builds the ring with the best flags this kernel accepts.
pub(super) fn build_ring() -> Result<(IoUring, SetupFlags), Unavailable> {
    match kernel_version() {
        Some(v) if v < MIN_KERNEL => {
            return Err(unavailable(
                libc::ENOSYS,
                format!(
                    "io_uring backend needs Linux {}.{} (multishot recv/recvmsg); this kernel is {}.{}",
                    MIN_KERNEL.0, MIN_KERNEL.1, v.0, v.1
                ),
            ))
        }
        _ => {}
    }
    let mut last = libc::EINVAL;
    let cap = SetupFlags::cap_from_env();
    for flags in LADDER.into_iter().filter(|f| f.within(&cap)) {
        let mut b = IoUring::builder();
        b.dontfork().setup_cqsize(CQ_ENTRIES).setup_clamp();
        if flags.coop_taskrun {
            b.setup_coop_taskrun();
        }
        if flags.single_issuer {
            b.setup_single_issuer();
        }
        if flags.defer_taskrun {
            b.setup_defer_taskrun();
        }
        if flags.submit_all {
            b.setup_submit_all();
        }
        match b.build(SQ_ENTRIES) {
            Ok(ring) => return Ok((ring, flags)),
            Err(e) => {
                last = e.raw_os_error().unwrap_or(libc::EIO);
                if last != libc::EINVAL {
                    break;
                }
            }
        }
    }
    Err(unavailable(last, setup_reason(last)))
}

/// Checks that the kernel supports every operation and feature we use.
/// The optional file operations a ring performs, by kind.
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct FileOps(u8);

impl FileOps {
    fn bit(kind: OpKind) -> u8 {
        match kind {
            OpKind::FileRead => 1,
            OpKind::FileWrite => 2,
            OpKind::Fsync => 4,
            OpKind::Statx => 8,
            OpKind::OpenAt => 16,
            OpKind::FileReadv => 32,
            OpKind::FileWritev => 64,
            _ => 0,
        }
    }
    pub(crate) fn has(self, kind: OpKind) -> bool {
        let bit = Self::bit(kind);
        bit != 0 && self.0 & bit != 0
    }
}

/// Checks that the ring has every operation the loop needs (else io_uring
/// is unavailable) and finds which file operations it has (the loop sends
/// the others to its work pool).
pub(super) fn probe(ring: &IoUring) -> Result<FileOps, Unavailable> {
    let mut probe = Probe::new();
    if let Err(e) = ring.submitter().register_probe(&mut probe) {
        let errno = e.raw_os_error().unwrap_or(libc::EIO);
        return Err(unavailable(errno, format!("io_uring probe failed: {} ({e})", errno_name(errno))));
    }
    let needed: [(u8, &str); 9] = [
        (opcode::Accept::CODE, "ACCEPT"),
        (opcode::Recv::CODE, "RECV"),
        (opcode::RecvMsg::CODE, "RECVMSG"),
        (opcode::Send::CODE, "SEND"),
        (opcode::SendMsg::CODE, "SENDMSG"),
        (opcode::Connect::CODE, "CONNECT"),
        (opcode::Read::CODE, "READ"),
        (opcode::PollAdd::CODE, "POLL_ADD"),
        (opcode::AsyncCancel::CODE, "ASYNC_CANCEL"),
    ];
    let mut missing = String::new();
    for (code, name) in needed {
        if !probe.is_supported(code) {
            if !missing.is_empty() {
                missing.push_str(", ");
            }
            missing.push_str(name);
        }
    }
    if !missing.is_empty() {
        return Err(unavailable(libc::ENOSYS, format!("io_uring lacks needed operations: {missing}")));
    }
    let params = ring.params();
    if !params.is_feature_ext_arg() {
        return Err(unavailable(libc::ENOSYS, "io_uring lacks IORING_FEAT_EXT_ARG (timed waits)".into()));
    }
    if !params.is_feature_nodrop() {
        return Err(unavailable(libc::ENOSYS, "io_uring lacks IORING_FEAT_NODROP (completions could be lost)".into()));
    }
    let optional = [
        (opcode::Read::CODE, OpKind::FileRead),
        (opcode::Write::CODE, OpKind::FileWrite),
        (opcode::Readv::CODE, OpKind::FileReadv),
        (opcode::Writev::CODE, OpKind::FileWritev),
        (opcode::Fsync::CODE, OpKind::Fsync),
        (opcode::Statx::CODE, OpKind::Statx),
        (opcode::OpenAt::CODE, OpKind::OpenAt),
    ];
    let mut file_ops = FileOps::default();
    for (code, kind) in optional {
        if probe.is_supported(code) {
            file_ops.0 |= FileOps::bit(kind);
        }
    }
    Ok(file_ops)
}

/// Whether the kernel has `SEND_ZC` (6.0).
pub(super) fn has_send_zc(ring: &IoUring) -> bool {
    let mut probe = Probe::new();
    ring.submitter().register_probe(&mut probe).is_ok() && probe.is_supported(opcode::SendZc::CODE)
}

/// A one-line description of the ring as set up, for diagnostics.
pub(super) fn describe(
    ring: &IoUring,
    flags: SetupFlags,
    features: Features,
    pool_count: u16,
    pool_size: usize,
) -> String {
    let mut s = String::with_capacity(160);
    let p = ring.params();
    let _ = write!(s, "io_uring sq={} cq={} ", p.sq_entries(), p.cq_entries());
    flags.describe(&mut s);
    features.describe(&mut s);
    let _ = write!(s, "; bufring {pool_count}x{pool_size}B");
    s
}

/// Why buffer-ring registration failed.
pub(super) fn bufring_reason(e: &std::io::Error) -> Unavailable {
    let errno = e.raw_os_error().unwrap_or(libc::EIO);
    unavailable(
        errno,
        format!("io_uring provided-buffer ring registration failed: {} ({e}); needs Linux 5.19", errno_name(errno)),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_release_forms() {
        assert_eq!(parse_release("6.18.44-fc-v595"), Some((6, 18)));
        assert_eq!(parse_release("5.15.0"), Some((5, 15)));
        assert_eq!(parse_release("6.1"), Some((6, 1)));
        assert_eq!(parse_release("garbage"), None);
    }
}
