//! File operations: libuv's fs scenarios that apply (fs_file_noent,
//! fs_file_async, fs_file_write_null_buffer, fs_stat, fs_rename,
//! fs_scandir, fs_unlink, fs_mkdir_rmdir, fs_copyfile,
//! fs_read_write_offset, fs_fsync), symlinks, cancellation, and every error
//! path that can be produced as a value (ENOENT, EISDIR, ENOTDIR, EEXIST,
//! ENOTEMPTY, EACCES: as root, from a child that drops to uid 65534), vectored
//! reads and writes, on both backends, each under a temporary directory
//! the test removes. Each scenario runs three ways: on epoll (the work
//! pool), on io_uring with file operations in the ring (read, write, fsync,
//! statx and openat; the rest on the pool), and on io_uring with every file
//! operation on the pool (`UVRING_FS_IO_URING=0`).

use std::any::Any;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, SystemTime};
use uvring::*;

/// Defines each body as three tests: `<name>::epoll`, `<name>::io_uring`
/// (file operations in the ring) and `<name>::io_uring_pool` (all on the
/// work pool). The io_uring cases skip visibly where io_uring is
/// unavailable (and fail under `UVRING_REQUIRE_IO_URING=1`).
macro_rules! fs_cases {
    ($($(#[$meta:meta])* fn $name:ident($lp:ident: $d:ty) $body:block)*) => {
        $(
            $(#[$meta])*
            mod $name {
                #[allow(unused_imports)]
                use super::*;
                fn body($lp: &mut Loop<$d>) $body
                #[test]
                fn epoll() {
                    uvring_tests::run_on_of(Backend::Epoll, LoopOptions::default(), body)
                }
                #[test]
                fn io_uring() {
                    uvring_tests::run_on_of(Backend::IoUring, LoopOptions::default().fs_io_uring(true), |lp: &mut Loop<$d>| {
                        assert!(lp.fs_io_uring(), "file operations go through the ring");
                        body(lp)
                    })
                }
                #[test]
                fn io_uring_pool() {
                    uvring_tests::run_on_of(Backend::IoUring, LoopOptions::default().fs_io_uring(false), |lp: &mut Loop<$d>| {
                        assert!(!lp.fs_io_uring());
                        body(lp)
                    })
                }
            }
        )*
    };
}

/// What the last callback got (tests run one operation at a time with
/// [`finish`], except the callback-chained ones).
type Got = Option<Box<dyn Any>>;

/// A callback that keeps its result for [`finish`].
fn keep<T: 'static>(_: &mut Loop<Got>, got: &mut Got, r: T) {
    *got = Some(Box::new(r));
}

/// A read or write callback that keeps the count and the buffer.
fn keep_rw(_: &mut Loop<Got>, got: &mut Got, r: Result<usize>, buf: Vec<u8>) {
    *got = Some(Box::new((r, buf)));
}

/// Runs the loop until the operation queued last has called back (the
/// request keeps the loop alive), and returns what its callback got.
fn finish<T: 'static>(lp: &mut Loop<Got>) -> T {
    let mut got = None;
    lp.run(RunMode::Default, &mut got).unwrap();
    *got.expect("the callback ran").downcast::<T>().expect("the callback's type")
}

/// A directory of its own under the system's temporary directory, removed
/// (with what is left in it) when dropped.
struct TempDir(PathBuf);

impl TempDir {
    fn new(test: &str) -> TempDir {
        static N: AtomicUsize = AtomicUsize::new(0);
        let n = N.fetch_add(1, Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!("uvring-fs-{test}-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        TempDir(dir)
    }
    fn join(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn open(lp: &mut Loop<Got>, path: &Path, flags: OpenFlags, mode: u32) -> Result<File> {
    lp.fs_open(path, flags, mode, keep).unwrap();
    finish(lp)
}

fn create(lp: &mut Loop<Got>, path: &Path, contents: &[u8]) {
    let f = open(lp, path, OpenFlags::WRITE_ONLY | OpenFlags::CREATE | OpenFlags::TRUNCATE, 0o644).unwrap();
    lp.fs_write(&f, contents.to_vec(), Some(0), keep_rw).unwrap();
    let (n, _): (Result<usize>, Vec<u8>) = finish(lp);
    assert_eq!(n, Ok(contents.len()));
    lp.fs_close(f, keep).unwrap();
    assert_eq!(finish::<Result<()>>(lp), Ok(()));
}

fn stat(lp: &mut Loop<Got>, path: &Path) -> Result<FileStat> {
    lp.fs_stat(path, keep).unwrap();
    finish(lp)
}

fn read_at(lp: &mut Loop<Got>, f: &File, len: usize, offset: Option<u64>) -> Result<Vec<u8>> {
    lp.fs_read(f, vec![0; len], offset, keep_rw).unwrap();
    let (n, mut buf): (Result<usize>, Vec<u8>) = finish(lp);
    buf.truncate(n?);
    Ok(buf)
}

fn write_at(lp: &mut Loop<Got>, f: &File, data: &[u8], offset: Option<u64>) -> Result<usize> {
    lp.fs_write(f, data.to_vec(), offset, keep_rw).unwrap();
    let (n, buf): (Result<usize>, Vec<u8>) = finish(lp);
    assert_eq!(buf, data, "the buffer comes back");
    n
}

fn unit(lp: &mut Loop<Got>) -> Result<()> {
    finish(lp)
}

/// The callback-chained scenario's state.
#[derive(Default)]
struct Steps {
    log: Vec<&'static str>,
    path: PathBuf,
    file: Option<File>,
    read: Vec<u8>,
}

fn steps_write(lp: &mut Loop<Steps>, st: &mut Steps, r: Result<File>) {
    st.log.push("open for writing");
    let f = r.unwrap();
    lp.fs_write(&f, b"test\n".to_vec(), None, |lp, st: &mut Steps, n, _| {
        assert_eq!(n, Ok(5));
        st.log.push("write");
        let f = st.file.take().unwrap();
        lp.fs_close(f, |lp, st: &mut Steps, r| {
            r.unwrap();
            st.log.push("close");
            lp.fs_open(&st.path, OpenFlags::READ_ONLY, 0, steps_read).unwrap();
        })
        .unwrap();
    })
    .unwrap();
    st.file = Some(f);
}

fn steps_read(lp: &mut Loop<Steps>, st: &mut Steps, r: Result<File>) {
    st.log.push("open for reading");
    let f = r.unwrap();
    lp.fs_read(&f, vec![0; 64], Some(0), |lp, st: &mut Steps, n, buf| {
        st.read = buf[..n.unwrap()].to_vec();
        st.log.push("read");
        let f = st.file.take().unwrap();
        lp.fs_close(f, |lp, st: &mut Steps, r| {
            r.unwrap();
            st.log.push("close");
            lp.fs_unlink(&st.path, |_, st: &mut Steps, r| {
                r.unwrap();
                st.log.push("unlink");
            })
            .unwrap();
        })
        .unwrap();
    })
    .unwrap();
    st.file = Some(f);
}

fs_cases! {
    /// libuv's fs_file_noent: opening (and stat-ing) a missing file is ENOENT.
    fn fs_file_noent(lp: Got) {
        let dir = TempDir::new("noent");
        assert_eq!(open(lp, &dir.join("does_not_exist"), OpenFlags::READ_ONLY, 0).err(), Some(Error::ENOENT));
        assert_eq!(stat(lp, &dir.join("does_not_exist")).err(), Some(Error::ENOENT));
    }

    /// libuv's fs_file_async: open, write, close, open, read, close, unlink,
    /// each started from the previous one's callback.
    fn fs_file_async(lp: Steps) {
        let dir = TempDir::new("async");
        let mut st = Steps { path: dir.join("test_file"), ..Steps::default() };
        let flags = OpenFlags::WRITE_ONLY | OpenFlags::CREATE | OpenFlags::TRUNCATE;
        lp.fs_open(&st.path, flags, 0o644, steps_write).unwrap();
        lp.run(RunMode::Default, &mut st).unwrap();
        assert_eq!(st.log, ["open for writing", "write", "close", "open for reading", "read", "close", "unlink"]);
        assert_eq!(st.read, b"test\n");
        assert!(!st.path.exists());
    }

    /// libuv's fs_file_write_null_buffer: an empty write writes nothing.
    fn fs_file_write_null_buffer(lp: Got) {
        let dir = TempDir::new("null");
        let f = open(lp, &dir.join("f"), OpenFlags::WRITE_ONLY | OpenFlags::CREATE, 0o644).unwrap();
        assert_eq!(write_at(lp, &f, b"", None), Ok(0));
        assert_eq!(write_at(lp, &f, b"", Some(100)), Ok(0));
        lp.fs_close(f, keep).unwrap();
        unit(lp).unwrap();
        assert_eq!(std::fs::metadata(dir.join("f")).unwrap().len(), 0);
    }

    /// libuv's fs_stat (with fstat and lstat): size, kind, permissions,
    /// times, and the same inode through a path and an fd.
    fn fs_stat(lp: Got) {
        let dir = TempDir::new("stat");
        let before = SystemTime::now() - Duration::from_secs(5);
        create(lp, &dir.join("file"), b"hello world!");
        let st = stat(lp, &dir.join("file")).unwrap();
        assert!(st.is_file() && st.size == 12 && st.nlink == 1, "{st:?}");
        assert_eq!(st.permissions() & 0o600, 0o600);
        assert!(st.mtime >= before && st.mtime <= SystemTime::now() + Duration::from_secs(5));
        let f = open(lp, &dir.join("file"), OpenFlags::READ_ONLY, 0).unwrap();
        lp.fs_fstat(&f, keep).unwrap();
        let fst: FileStat = finish::<Result<FileStat>>(lp).unwrap();
        assert_eq!((fst.ino, fst.dev, fst.size), (st.ino, st.dev, 12));
        lp.fs_close(f, keep).unwrap();
        unit(lp).unwrap();
        assert!(stat(lp, &dir.0).unwrap().is_dir());
        std::os::unix::fs::symlink(dir.join("file"), dir.join("link")).unwrap();
        lp.fs_lstat(dir.join("link"), keep).unwrap();
        assert!(finish::<Result<FileStat>>(lp).unwrap().is_symlink());
        assert_eq!(stat(lp, &dir.join("link")).unwrap().ino, st.ino, "stat follows the link");
    }

    /// libuv's fs_rename: the old name is gone, the new one has the
    /// contents; renaming onto an existing file replaces it.
    fn fs_rename(lp: Got) {
        let dir = TempDir::new("rename");
        create(lp, &dir.join("a"), b"A");
        create(lp, &dir.join("b"), b"B");
        lp.fs_rename(dir.join("a"), dir.join("c"), keep).unwrap();
        unit(lp).unwrap();
        assert_eq!(stat(lp, &dir.join("a")).err(), Some(Error::ENOENT));
        assert_eq!(std::fs::read(dir.join("c")).unwrap(), b"A");
        lp.fs_rename(dir.join("c"), dir.join("b"), keep).unwrap();
        unit(lp).unwrap();
        assert_eq!(std::fs::read(dir.join("b")).unwrap(), b"A");
        lp.fs_rename(dir.join("missing"), dir.join("x"), keep).unwrap();
        assert_eq!(unit(lp), Err(Error::ENOENT));
        std::fs::create_dir(dir.join("d")).unwrap();
        lp.fs_rename(dir.join("b"), dir.join("d"), keep).unwrap();
        assert_eq!(unit(lp), Err(Error::from_errno(libc::EISDIR)), "a file cannot replace a directory");
    }

    /// libuv's fs_scandir (and fs_readdir): the entries with their kinds,
    /// sorted; a file or a missing path is an error value.
    fn fs_scandir(lp: Got) {
        let dir = TempDir::new("scandir");
        create(lp, &dir.join("b"), b"");
        create(lp, &dir.join("a"), b"");
        std::fs::create_dir(dir.join("c")).unwrap();
        lp.fs_scandir(&dir.0, keep).unwrap();
        let entries: Vec<DirEntry> = finish::<Result<Vec<DirEntry>>>(lp).unwrap();
        let seen: Vec<(&str, FileKind)> = entries.iter().map(|e| (e.name.to_str().unwrap(), e.kind)).collect();
        assert_eq!(seen, [("a", FileKind::File), ("b", FileKind::File), ("c", FileKind::Dir)]);
        lp.fs_scandir(dir.join("c"), keep).unwrap();
        assert_eq!(finish::<Result<Vec<DirEntry>>>(lp), Ok(vec![]));
        lp.fs_scandir(dir.join("a"), keep).unwrap();
        assert_eq!(finish::<Result<Vec<DirEntry>>>(lp), Err(Error::from_errno(libc::ENOTDIR)));
        lp.fs_scandir(dir.join("missing"), keep).unwrap();
        assert_eq!(finish::<Result<Vec<DirEntry>>>(lp), Err(Error::ENOENT));
    }

    /// libuv's fs_unlink: the file is gone; a missing file is ENOENT, a
    /// directory EISDIR.
    fn fs_unlink(lp: Got) {
        let dir = TempDir::new("unlink");
        create(lp, &dir.join("f"), b"x");
        lp.fs_unlink(dir.join("f"), keep).unwrap();
        unit(lp).unwrap();
        assert_eq!(stat(lp, &dir.join("f")).err(), Some(Error::ENOENT));
        lp.fs_unlink(dir.join("f"), keep).unwrap();
        assert_eq!(unit(lp), Err(Error::ENOENT));
        lp.fs_unlink(&dir.0, keep).unwrap();
        assert_eq!(unit(lp), Err(Error::from_errno(libc::EISDIR)));
    }

    /// libuv's fs_mkdir_rmdir, with the error paths: EEXIST, ENOENT,
    /// ENOTEMPTY, ENOTDIR.
    fn fs_mkdir_rmdir(lp: Got) {
        let dir = TempDir::new("mkdir");
        let sub = dir.join("sub");
        lp.fs_mkdir(&sub, 0o755, keep).unwrap();
        unit(lp).unwrap();
        assert!(stat(lp, &sub).unwrap().is_dir());
        lp.fs_mkdir(&sub, 0o755, keep).unwrap();
        assert_eq!(unit(lp), Err(Error::from_errno(libc::EEXIST)));
        create(lp, &sub.join("f"), b"");
        lp.fs_rmdir(&sub, keep).unwrap();
        assert_eq!(unit(lp), Err(Error::from_errno(libc::ENOTEMPTY)));
        lp.fs_rmdir(sub.join("f"), keep).unwrap();
        assert_eq!(unit(lp), Err(Error::from_errno(libc::ENOTDIR)));
        lp.fs_mkdir(sub.join("f").join("below"), 0o755, keep).unwrap();
        assert_eq!(unit(lp), Err(Error::from_errno(libc::ENOTDIR)));
        lp.fs_mkdir(dir.join("no").join("parent"), 0o755, keep).unwrap();
        assert_eq!(unit(lp), Err(Error::ENOENT));
        std::fs::remove_file(sub.join("f")).unwrap();
        lp.fs_rmdir(&sub, keep).unwrap();
        unit(lp).unwrap();
        assert_eq!(stat(lp, &sub).err(), Some(Error::ENOENT));
        lp.fs_rmdir(&sub, keep).unwrap();
        assert_eq!(unit(lp), Err(Error::ENOENT));
    }

    /// libuv's fs_copyfile: contents and mode copied; EXCLUSIVE refuses an
    /// existing destination; a missing source is ENOENT.
    fn fs_copyfile(lp: Got) {
        let dir = TempDir::new("copy");
        let data: Vec<u8> = (0..100_000u32).map(|i| (i * 7) as u8).collect();
        create(lp, &dir.join("src"), &data);
        std::fs::set_permissions(dir.join("src"), std::os::unix::fs::PermissionsExt::from_mode(0o640)).unwrap();
        lp.fs_copyfile(dir.join("src"), dir.join("dst"), CopyFlags::empty(), keep).unwrap();
        assert_eq!(finish::<Result<u64>>(lp), Ok(data.len() as u64));
        assert_eq!(std::fs::read(dir.join("dst")).unwrap(), data);
        assert_eq!(stat(lp, &dir.join("dst")).unwrap().permissions(), 0o640);
        lp.fs_copyfile(dir.join("src"), dir.join("dst"), CopyFlags::EXCLUSIVE, keep).unwrap();
        assert_eq!(finish::<Result<u64>>(lp), Err(Error::from_errno(libc::EEXIST)));
        lp.fs_copyfile(dir.join("src"), dir.join("dst2"), CopyFlags::EXCLUSIVE, keep).unwrap();
        assert_eq!(finish::<Result<u64>>(lp), Ok(data.len() as u64));
        create(lp, &dir.join("dst"), b"shorter");
        lp.fs_copyfile(dir.join("src"), dir.join("dst"), CopyFlags::empty(), keep).unwrap();
        finish::<Result<u64>>(lp).unwrap();
        assert_eq!(std::fs::read(dir.join("dst")).unwrap(), data, "an existing destination is replaced");
        lp.fs_copyfile(dir.join("missing"), dir.join("x"), CopyFlags::empty(), keep).unwrap();
        assert_eq!(finish::<Result<u64>>(lp), Err(Error::ENOENT));
    }

    /// libuv's fs_read_write_offset: writes and reads at offsets leave the
    /// file position alone; `None` uses (and moves) it.
    fn fs_read_write_offset(lp: Got) {
        let dir = TempDir::new("offset");
        let f = open(lp, &dir.join("f"), OpenFlags::READ_WRITE | OpenFlags::CREATE, 0o644).unwrap();
        assert_eq!(write_at(lp, &f, b"0123456789", Some(0)), Ok(10));
        assert_eq!(write_at(lp, &f, b"AB", Some(4)), Ok(2));
        assert_eq!(read_at(lp, &f, 4, Some(3)).unwrap(), b"3AB6");
        assert_eq!(read_at(lp, &f, 4, Some(100)).unwrap(), b"", "past the end: 0 bytes");
        // The position is still 0: positional I/O did not move it.
        assert_eq!(read_at(lp, &f, 3, None).unwrap(), b"012");
        assert_eq!(read_at(lp, &f, 3, None).unwrap(), b"3AB");
        assert_eq!(write_at(lp, &f, b"xy", None), Ok(2));
        assert_eq!(read_at(lp, &f, 20, Some(0)).unwrap(), b"0123ABxy89");
        // A hole reads as zeros.
        assert_eq!(write_at(lp, &f, b"!", Some(20)), Ok(1));
        assert_eq!(read_at(lp, &f, 11, Some(10)).unwrap(), b"\0\0\0\0\0\0\0\0\0\0!");
        lp.fs_close(f, keep).unwrap();
        unit(lp).unwrap();
    }

    /// libuv's fs_fsync (with fdatasync and ftruncate).
    fn fs_fsync(lp: Got) {
        let dir = TempDir::new("fsync");
        let f = open(lp, &dir.join("f"), OpenFlags::READ_WRITE | OpenFlags::CREATE, 0o644).unwrap();
        assert_eq!(write_at(lp, &f, b"durable bytes", Some(0)), Ok(13));
        lp.fs_fsync(&f, keep).unwrap();
        unit(lp).unwrap();
        lp.fs_fdatasync(&f, keep).unwrap();
        unit(lp).unwrap();
        lp.fs_ftruncate(&f, 7, keep).unwrap();
        unit(lp).unwrap();
        lp.fs_fstat(&f, keep).unwrap();
        assert_eq!(finish::<Result<FileStat>>(lp).unwrap().size, 7);
        assert_eq!(read_at(lp, &f, 64, Some(0)).unwrap(), b"durable");
        lp.fs_close(f, keep).unwrap();
        unit(lp).unwrap();
    }

    /// Error paths of open and read/write as values: EISDIR, ENOTDIR,
    /// EEXIST, EBADF; EACCES as an unprivileged user (skipped as root).
    fn fs_open_error_paths(lp: Got) {
        let dir = TempDir::new("errors");
        create(lp, &dir.join("file"), b"x");
        assert_eq!(open(lp, &dir.0, OpenFlags::WRITE_ONLY, 0).err(), Some(Error::from_errno(libc::EISDIR)));
        assert_eq!(
            open(lp, &dir.join("file"), OpenFlags::READ_ONLY | OpenFlags::DIRECTORY, 0).err(),
            Some(Error::from_errno(libc::ENOTDIR))
        );
        assert_eq!(
            open(lp, &dir.join("file").join("x"), OpenFlags::READ_ONLY, 0).err(),
            Some(Error::from_errno(libc::ENOTDIR))
        );
        let excl = OpenFlags::WRITE_ONLY | OpenFlags::CREATE | OpenFlags::EXCLUSIVE;
        assert_eq!(open(lp, &dir.join("file"), excl, 0o644).err(), Some(Error::from_errno(libc::EEXIST)));
        // Reading a directory, writing a read-only file.
        let d = open(lp, &dir.0, OpenFlags::READ_ONLY | OpenFlags::DIRECTORY, 0).unwrap();
        assert_eq!(read_at(lp, &d, 8, Some(0)).err(), Some(Error::from_errno(libc::EISDIR)));
        let ro = open(lp, &dir.join("file"), OpenFlags::READ_ONLY, 0).unwrap();
        assert_eq!(write_at(lp, &ro, b"no", Some(0)), Err(Error::EBADF));
        for f in [d, ro] {
            lp.fs_close(f, keep).unwrap();
            unit(lp).unwrap();
        }
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } == 0 {
            eprintln!(
                "SKIP (EACCES part, in process): running as root, permission bits do not bind; \
                 fs_eacces_as_an_unprivileged_child covers EACCES from a child running as uid 65534"
            );
        } else {
            create(lp, &dir.join("locked"), b"secret");
            std::fs::set_permissions(dir.join("locked"), std::os::unix::fs::PermissionsExt::from_mode(0o000)).unwrap();
            assert_eq!(open(lp, &dir.join("locked"), OpenFlags::READ_ONLY, 0).err(), Some(Error::EACCES));
        }
        // A path with a NUL byte is refused at once; nothing is queued.
        assert_eq!(lp.fs_open("a\0b", OpenFlags::READ_ONLY, 0, keep).err(), Some(Error::EINVAL));
    }

    /// symlink and readlink; readlink of a regular file is EINVAL.
    fn fs_symlink_readlink(lp: Got) {
        let dir = TempDir::new("symlink");
        create(lp, &dir.join("target"), b"t");
        lp.fs_symlink("target", dir.join("link"), keep).unwrap();
        unit(lp).unwrap();
        lp.fs_readlink(dir.join("link"), keep).unwrap();
        assert_eq!(finish::<Result<PathBuf>>(lp), Ok(PathBuf::from("target")));
        assert_eq!(std::fs::read(dir.join("link")).unwrap(), b"t");
        lp.fs_symlink("target", dir.join("link"), keep).unwrap();
        assert_eq!(unit(lp), Err(Error::from_errno(libc::EEXIST)));
        lp.fs_readlink(dir.join("target"), keep).unwrap();
        assert_eq!(finish::<Result<PathBuf>>(lp), Err(Error::EINVAL));
    }

    /// Many reads in flight at once on one file, each with its own buffer,
    /// all complete with the right bytes.
    fn fs_concurrent_reads(lp: Got) {
        let dir = TempDir::new("concurrent");
        let data: Vec<u8> = (0..64 * 1024u32).map(|i| (i % 251) as u8).collect();
        create(lp, &dir.join("f"), &data);
        let f = open(lp, &dir.join("f"), OpenFlags::READ_ONLY, 0).unwrap();
        let mut all: Got = Some(Box::new(Vec::<(u64, Vec<u8>)>::new()));
        for i in 0..64u64 {
            lp.fs_read(&f, vec![0; 1024], Some(i * 1024), move |_, got: &mut Got, n, mut buf| {
                buf.truncate(n.unwrap());
                got.as_mut().unwrap().downcast_mut::<Vec<(u64, Vec<u8>)>>().unwrap().push((i, buf));
            })
            .unwrap();
        }
        lp.run(RunMode::Default, &mut all).unwrap();
        let mut reads = *all.unwrap().downcast::<Vec<(u64, Vec<u8>)>>().unwrap();
        reads.sort_by_key(|r| r.0);
        assert_eq!(reads.len(), 64);
        for (i, buf) in reads {
            assert_eq!(buf, &data[i as usize * 1024..][..1024], "chunk {i}");
        }
        lp.fs_close(f, keep).unwrap();
        unit(lp).unwrap();
    }
}

/// Cancelling a file operation that waits for a pool thread gives
/// ECANCELED and the buffer back (on epoll, where every file operation goes
/// to the pool).
#[test]
fn fs_cancel_gives_the_buffer_back() {
    let _guard = uvring_tests::TestGuard::new();
    let dir = TempDir::new("cancel");
    let mut lp: Loop<Got> = Loop::with_backend(Backend::Epoll).unwrap();
    create(&mut lp, &dir.join("f"), b"data");
    let f = open(&mut lp, &dir.join("f"), OpenFlags::READ_ONLY, 0).unwrap();
    // Occupy every pool thread.
    let gate = std::sync::Arc::new((std::sync::Mutex::new(false), std::sync::Condvar::new()));
    let started = std::sync::Arc::new(AtomicUsize::new(0));
    for _ in 0..threadpool_size() {
        let (g, s) = (gate.clone(), started.clone());
        lp.queue_work(
            move || {
                s.fetch_add(1, Ordering::AcqRel);
                let mut open = g.0.lock().unwrap();
                while !*open {
                    open = g.1.wait(open).unwrap();
                }
            },
            |_, _, r| r.unwrap(),
        )
        .unwrap();
    }
    while started.load(Ordering::Acquire) < threadpool_size() {
        std::thread::sleep(Duration::from_millis(1));
    }
    let buf = b"untouched".to_vec();
    let req = lp.fs_read(&f, buf, Some(0), keep_rw).unwrap();
    lp.fs_cancel(req).unwrap();
    assert_eq!(lp.fs_cancel(req), Err(Error::EBUSY));
    let mut got = None;
    lp.run(RunMode::NoWait, &mut got).unwrap();
    let (n, buf) = *got.take().unwrap().downcast::<(Result<usize>, Vec<u8>)>().unwrap();
    assert_eq!(n, Err(Error::ECANCELED));
    assert_eq!(buf, b"untouched");
    *gate.0.lock().unwrap() = true;
    gate.1.notify_all();
    lp.run(RunMode::Default, &mut got).unwrap();
    drop(f);
    drop(lp);
    drop(dir);
    _guard.check_fds();
}

#[global_allocator]
static GLOBAL: uvring_tests::alloc_count::CountingAllocator = uvring_tests::alloc_count::CountingAllocator;

/// On io_uring, reads, writes, fsyncs, stats and opens go through the ring
/// (no work item), the other operations through the pool; on epoll, all
/// through the pool.
#[test]
fn fs_ops_are_routed_to_the_ring_or_the_pool() {
    for (backend, ring) in [(Backend::Epoll, false), (Backend::IoUring, true), (Backend::IoUring, false)] {
        uvring_tests::run_on_of(backend, LoopOptions::default().fs_io_uring(ring), |lp: &mut Loop<Got>| {
            let dir = TempDir::new("routing");
            create(lp, &dir.join("f"), b"abc");
            let f = open(lp, &dir.join("f"), OpenFlags::READ_WRITE, 0).unwrap();
            let in_ring = ring && backend == Backend::IoUring;
            let expect = if in_ring { 0 } else { 1 };
            let what = format!("{backend} with fs_io_uring({ring})");
            lp.fs_read(&f, vec![0; 3], Some(0), keep_rw).unwrap();
            assert_eq!(lp.work_in_flight(), expect, "{what}: read");
            let _: (Result<usize>, Vec<u8>) = finish(lp);
            lp.fs_write(&f, b"x".to_vec(), Some(0), keep_rw).unwrap();
            assert_eq!(lp.work_in_flight(), expect, "{what}: write");
            let _: (Result<usize>, Vec<u8>) = finish(lp);
            lp.fs_fdatasync(&f, keep).unwrap();
            assert_eq!(lp.work_in_flight(), expect, "{what}: fdatasync");
            unit(lp).unwrap();
            lp.fs_fstat(&f, keep).unwrap();
            assert_eq!(lp.work_in_flight(), expect, "{what}: fstat");
            assert_eq!(finish::<Result<FileStat>>(lp).unwrap().size, 3);
            lp.fs_open(dir.join("f"), OpenFlags::READ_ONLY, 0, keep).unwrap();
            assert_eq!(lp.work_in_flight(), expect, "{what}: open");
            drop(finish::<Result<File>>(lp).unwrap());
            lp.fs_unlink(dir.join("f"), keep).unwrap();
            assert_eq!(lp.work_in_flight(), 1, "{what}: unlink is a pool operation");
            unit(lp).unwrap();
            drop(f);
        });
    }
}

/// Cancelling a read in the ring: its callback runs once, with ECANCELED
/// or its real result, and the buffer comes back; the request is stale
/// afterwards.
#[test]
fn fs_ring_cancel_gives_the_buffer_back() {
    uvring_tests::run_on_of(Backend::IoUring, LoopOptions::default().fs_io_uring(true), |lp: &mut Loop<Got>| {
        let dir = TempDir::new("ring-cancel");
        create(lp, &dir.join("f"), b"0123456789");
        let f = open(lp, &dir.join("f"), OpenFlags::READ_ONLY, 0).unwrap();
        let req = lp.fs_read(&f, vec![b'-'; 4], Some(2), keep_rw).unwrap();
        lp.fs_cancel(req).unwrap();
        assert_eq!(lp.fs_cancel(req), Err(Error::EBUSY));
        let (n, buf): (Result<usize>, Vec<u8>) = finish(lp);
        match n {
            Ok(4) => assert_eq!(buf, b"2345", "finished before the cancel"),
            Err(e) => {
                assert_eq!(e, Error::ECANCELED);
                assert_eq!(buf.len(), 4);
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(lp.fs_cancel(req), Err(Error::STALE_REQUEST));
        drop(f);
    });
}

/// After warm-up, a read or write in the ring whose callback captures
/// nothing allocates nothing (the buffer is the caller's and comes back);
/// on the pool it costs the one box that carries the task.
#[test]
fn fs_read_write_allocations() {
    fn round(lp: &mut Loop<Got>, f: &File, n: usize, warm_up: bool) {
        let mut sum: Got = Some(Box::new(0usize));
        let bufs: Vec<Vec<u8>> = (0..n).map(|_| vec![0u8; 512]).collect();
        let measured = uvring_tests::alloc_count::allocations_in(|| {
            for (i, buf) in bufs.into_iter().enumerate() {
                if i % 2 == 0 {
                    lp.fs_write(f, buf, Some(0), |_, got: &mut Got, r, b| {
                        *got.as_mut().unwrap().downcast_mut::<usize>().unwrap() += r.unwrap();
                        drop(b);
                    })
                    .unwrap();
                } else {
                    lp.fs_read(f, buf, Some(0), |_, got: &mut Got, r, b| {
                        *got.as_mut().unwrap().downcast_mut::<usize>().unwrap() += r.unwrap();
                        drop(b);
                    })
                    .unwrap();
                }
            }
            lp.run(RunMode::Default, &mut sum).unwrap();
        });
        assert_eq!(*sum.unwrap().downcast::<usize>().unwrap(), n * 512);
        let per_op = measured as f64 / n as f64;
        if warm_up {
            return;
        }
        if lp.fs_io_uring() {
            assert_eq!(measured, 0, "{measured} allocations for {n} ring reads and writes");
        } else {
            assert_eq!(measured as usize, n, "{per_op} allocations per pool read or write (one expected)");
        }
    }
    for (backend, ring) in [(Backend::Epoll, false), (Backend::IoUring, true), (Backend::IoUring, false)] {
        uvring_tests::run_on_of(backend, LoopOptions::default().fs_io_uring(ring), |lp: &mut Loop<Got>| {
            let dir = TempDir::new("alloc");
            create(lp, &dir.join("f"), &[7u8; 512]);
            let f = open(lp, &dir.join("f"), OpenFlags::READ_WRITE, 0).unwrap();
            for warm_up in [true, true, false] {
                round(lp, &f, 32, warm_up);
            }
            drop(f);
        });
    }
}

/// A loop dropped with file operations in flight (in the ring and on the
/// pool) ends them before it frees their buffers, and leaks no fd (an
/// open that completed in the kernel is closed).
#[test]
fn dropping_a_loop_with_file_ops_in_flight() {
    for (backend, ring) in [(Backend::Epoll, false), (Backend::IoUring, true), (Backend::IoUring, false)] {
        let guard = uvring_tests::TestGuard::new();
        let dir = TempDir::new("drop");
        {
            let Some(mut lp) = uvring_tests::make_loop_of::<Got>(backend, LoopOptions::default().fs_io_uring(ring))
            else {
                continue;
            };
            create(&mut lp, &dir.join("f"), &[1u8; 4096]);
            let f = open(&mut lp, &dir.join("f"), OpenFlags::READ_WRITE, 0).unwrap();
            for i in 0..16u64 {
                lp.fs_read(&f, vec![0; 4096], Some(0), |_, _, _, _| panic!("the loop is gone")).unwrap();
                lp.fs_write(&f, vec![2; 16], Some(i * 16), |_, _, _, _| panic!("the loop is gone")).unwrap();
                lp.fs_open(dir.join("f"), OpenFlags::READ_ONLY, 0, |_, _, _| panic!("the loop is gone")).unwrap();
                lp.fs_fstat(&f, |_, _, _| panic!("the loop is gone")).unwrap();
            }
            drop(lp);
            drop(f);
        }
        // Pool threads may still be finishing reads of the dropped loop.
        std::thread::sleep(Duration::from_millis(50));
        drop(dir);
        guard.check_fds();
    }
}

/// Vectored reads and writes (issue 12): `uv_fs_read`/`uv_fs_write` with
/// several buffers, at an offset and at the file position, each buffer
/// filled in order, the buffers handed back; through the ring's
/// `READV`/`WRITEV` on io_uring (no work item), the pool otherwise.
type Bufs = (Result<usize>, Vec<Vec<u8>>);

fn keep_rwv(_: &mut Loop<Got>, got: &mut Got, r: Result<usize>, bufs: Vec<Vec<u8>>) {
    *got = Some(Box::new((r, bufs)));
}

/// Runs a vectored op queued just now; checks it went where the loop's
/// mode sends file operations.
fn finish_rwv(lp: &mut Loop<Got>) -> Bufs {
    let expect = if lp.fs_io_uring() { 0 } else { 1 };
    assert_eq!(lp.work_in_flight(), expect, "vectored op routed to the ring or the pool");
    finish(lp)
}

fs_cases! {
    fn fs_read_write_vectored(lp: Got) {
        let dir = TempDir::new("vectored");
        let f = open(lp, &dir.join("f"), OpenFlags::READ_WRITE | OpenFlags::CREATE, 0o644).unwrap();
        // Three buffers, one empty, written as one write at offset 2.
        let out = vec![b"abc".to_vec(), Vec::new(), b"defgh".to_vec()];
        lp.fs_write_vectored(&f, out.clone(), Some(2), keep_rwv).unwrap();
        let (n, back) = finish_rwv(lp);
        assert_eq!(n, Ok(8));
        assert_eq!(back, out, "the buffers come back as lent");
        // Read back into buffers of 4, 3 and 10: each is filled in turn;
        // the last one's tail (past the end of file) is left alone.
        let bufs = vec![vec![b'-'; 4], vec![b'-'; 3], vec![b'-'; 10]];
        lp.fs_read_vectored(&f, bufs, Some(0), keep_rwv).unwrap();
        let (n, got) = finish_rwv(lp);
        assert_eq!(n, Ok(10));
        assert_eq!(got, vec![b"\0\0ab".to_vec(), b"cde".to_vec(), b"fgh-------".to_vec()]);
        // At the file position (`None`): the position moves, offsets don't.
        lp.fs_write_vectored(&f, vec![b"XY".to_vec(), b"Z".to_vec()], None, keep_rwv).unwrap();
        assert_eq!(finish_rwv(lp).0, Ok(3));
        lp.fs_read_vectored(&f, vec![vec![0; 2], vec![0; 2]], None, keep_rwv).unwrap();
        let (n, got) = finish_rwv(lp);
        assert_eq!(n, Ok(4));
        assert_eq!(got.concat(), b"bcde", "read from position 3, after the write's 3 bytes");
        assert_eq!(read_at(lp, &f, 64, Some(0)).unwrap(), b"XYZbcdefgh");
        // Past the end: 0, buffers untouched.
        lp.fs_read_vectored(&f, vec![vec![7; 2]], Some(100), keep_rwv).unwrap();
        assert_eq!(finish_rwv(lp), (Ok(0), vec![vec![7; 2]]));
        lp.fs_close(f, keep).unwrap();
        unit(lp).unwrap();
    }

    /// Vectored errors as values (EBADF, EISDIR, with the buffers back);
    /// more buffers than `IOV_MAX` refused at once.
    fn fs_read_write_vectored_errors(lp: Got) {
        let dir = TempDir::new("vectored-errors");
        create(lp, &dir.join("f"), b"data");
        let ro = open(lp, &dir.join("f"), OpenFlags::READ_ONLY, 0).unwrap();
        lp.fs_write_vectored(&ro, vec![b"no".to_vec(), b"pe".to_vec()], Some(0), keep_rwv).unwrap();
        assert_eq!(finish_rwv(lp), (Err(Error::EBADF), vec![b"no".to_vec(), b"pe".to_vec()]));
        let d = open(lp, &dir.0, OpenFlags::READ_ONLY | OpenFlags::DIRECTORY, 0).unwrap();
        lp.fs_read_vectored(&d, vec![vec![0; 4]; 2], Some(0), keep_rwv).unwrap();
        assert_eq!(finish_rwv(lp).0, Err(Error::from_errno(libc::EISDIR)));
        let too_many = vec![vec![0u8; 1]; 1025];
        assert_eq!(lp.fs_read_vectored(&ro, too_many, Some(0), keep_rwv).err(), Some(Error::EINVAL));
        assert_eq!(lp.work_in_flight(), 0, "nothing was queued");
        for f in [ro, d] {
            lp.fs_close(f, keep).unwrap();
            unit(lp).unwrap();
        }
    }
}

/// Every file operation's EACCES, as values (issue 12): a child that drops
/// to uid/gid 65534 (`uvring-fs-eacces`, started as root; as another user
/// it runs as that user) runs each operation on its own loop, in the same
/// mode as this case (epoll, io_uring with the ring, io_uring with the
/// pool), against files and directories whose permission bits refuse it,
/// and prints each result.
fn eacces_layout(root: &Path) {
    use std::os::unix::fs::PermissionsExt;
    let mode = |p: &Path, m: u32| std::fs::set_permissions(p, std::fs::Permissions::from_mode(m)).unwrap();
    for d in ["locked", "sealed", "sealed/sub"] {
        std::fs::create_dir(root.join(d)).unwrap();
    }
    for f in ["locked/file", "sealed/file", "secret", "readonly"] {
        std::fs::write(root.join(f), b"contents").unwrap();
    }
    std::os::unix::fs::symlink("file", root.join("locked/link")).unwrap();
    mode(&root.join("locked"), 0o000);
    mode(&root.join("sealed"), 0o555);
    mode(&root.join("secret"), 0o000);
    mode(&root.join("readonly"), 0o444);
}

fn eacces_unlock(root: &Path) {
    use std::os::unix::fs::PermissionsExt;
    for d in ["locked", "sealed"] {
        let _ = std::fs::set_permissions(root.join(d), std::fs::Permissions::from_mode(0o755));
    }
}

fs_cases! {
    fn fs_eacces_as_an_unprivileged_child(lp: Got) {
        let dir = TempDir::new("eacces");
        eacces_layout(&dir.0);
        let exe = env!("CARGO_BIN_EXE_uvring-fs-eacces");
        let mut cmd = std::process::Command::new(exe);
        cmd.arg(&dir.0)
            .env("UVRING_BACKEND", lp.backend().name())
            .env("UVRING_FS_IO_URING", if lp.fs_io_uring() { "1" } else { "0" });
        // The child's own watchdog (alarm, 30 s) bounds it; this bounds the wait.
        let out = uvring_tests::with_timeout(Duration::from_secs(60), move || cmd.output().expect("run the child"));
        eacces_unlock(&dir.0);
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success(), "child failed: {:?}\n{stdout}\n{}", out.status, String::from_utf8_lossy(&out.stderr));
        let results: Vec<(&str, i32)> = stdout
            .lines()
            .map(|l| {
                let (name, errno) = l.split_once(' ').expect("`name errno`");
                (name, errno.parse().expect("an errno"))
            })
            .collect();
        let expected_refused = [
            "open_in_locked_dir",
            "open_unreadable",
            "open_readonly_for_write",
            "create_in_sealed_dir",
            "stat_in_locked_dir",
            "lstat_in_locked_dir",
            "unlink_in_sealed_dir",
            "rename_in_sealed_dir",
            "mkdir_in_sealed_dir",
            "rmdir_in_sealed_dir",
            "symlink_in_sealed_dir",
            "scandir_locked",
            "readlink_in_locked_dir",
            "copyfile_from_unreadable",
            "copyfile_into_sealed_dir",
            "fs_event_start_locked",
        ];
        for name in expected_refused {
            let got = results.iter().find(|(n, _)| *n == name).map(|&(_, e)| e);
            assert_eq!(got, Some(libc::EACCES), "{name}: child output:\n{stdout}");
        }
        assert!(results.contains(&("open_readonly_for_read", 0)), "sanity: a permitted open works:\n{stdout}");
        assert_eq!(results.len(), expected_refused.len() + 1, "one line per operation:\n{stdout}");
    }
}
