//! The child side of the EACCES file-operation test (tests/tests/fs.rs,
//! `fs_eacces_as_an_unprivileged_child`). Started as root by the test, it
//! first drops to uid/gid 65534 (nobody; no supplementary groups), then
//! runs every file operation the loop offers against the paths the test
//! prepared under `ROOT` (argv[1]) on its own loop (backend from
//! `UVRING_BACKEND`, ring or pool from `UVRING_FS_IO_URING`), and prints
//! one line per operation: `<name> <errno>` (`0` for success). A watchdog
//! (`alarm`) ends it after 30 s.
//!
//! Layout under ROOT, made by the test: `locked/` (mode 000, holding
//! `file` and `link`), `sealed/` (mode 555, holding `file` and `sub/`),
//! `secret` (mode 000), `readonly` (mode 444).

use std::cell::RefCell;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::rc::Rc;
use uvring::*;

const NOBODY: u32 = 65534;

/// Results in the order the operations complete, printed at the end.
type Log = Rc<RefCell<Vec<(&'static str, i32)>>>;

fn code<T>(r: &Result<T>) -> i32 {
    match r {
        Ok(_) => 0,
        Err(e) => e.errno().unwrap_or(-1),
    }
}

fn drop_privileges() {
    // SAFETY: plain libc calls with valid arguments; each result is checked.
    unsafe {
        libc::alarm(30);
        if libc::geteuid() != 0 {
            return; // unprivileged already: permission bits bind as they are
        }
        assert_eq!(libc::setgroups(0, std::ptr::null()), 0, "setgroups");
        assert_eq!(libc::setgid(NOBODY), 0, "setgid");
        assert_eq!(libc::setuid(NOBODY), 0, "setuid");
        assert_eq!(libc::geteuid(), NOBODY);
    }
}

fn main() {
    let root = PathBuf::from(std::env::args_os().nth(1).expect("usage: uvring-fs-eacces ROOT"));
    drop_privileges();
    let mut lp: Loop = Loop::new().expect("child loop");
    let log: Log = Rc::default();
    let j = |p: &str| root.join(p);
    let put = |name: &'static str| {
        let log = log.clone();
        move |_: &mut Loop, _: &mut (), r: Result<()>| log.borrow_mut().push((name, code(&r)))
    };
    let put_file = |name: &'static str| {
        let log = log.clone();
        move |_: &mut Loop, _: &mut (), r: Result<File>| log.borrow_mut().push((name, code(&r)))
    };
    let put_stat = |name: &'static str| {
        let log = log.clone();
        move |_: &mut Loop, _: &mut (), r: Result<FileStat>| log.borrow_mut().push((name, code(&r)))
    };
    lp.fs_open(j("locked/file"), OpenFlags::READ_ONLY, 0, put_file("open_in_locked_dir")).unwrap();
    lp.fs_open(j("secret"), OpenFlags::READ_ONLY, 0, put_file("open_unreadable")).unwrap();
    lp.fs_open(j("readonly"), OpenFlags::WRITE_ONLY, 0, put_file("open_readonly_for_write")).unwrap();
    let create = OpenFlags::WRITE_ONLY | OpenFlags::CREATE;
    lp.fs_open(j("sealed/new"), create, 0o644, put_file("create_in_sealed_dir")).unwrap();
    lp.fs_stat(j("locked/file"), put_stat("stat_in_locked_dir")).unwrap();
    lp.fs_lstat(j("locked/link"), put_stat("lstat_in_locked_dir")).unwrap();
    lp.fs_unlink(j("sealed/file"), put("unlink_in_sealed_dir")).unwrap();
    lp.fs_rename(j("sealed/file"), j("sealed/moved"), put("rename_in_sealed_dir")).unwrap();
    lp.fs_mkdir(j("sealed/dir"), 0o755, put("mkdir_in_sealed_dir")).unwrap();
    lp.fs_rmdir(j("sealed/sub"), put("rmdir_in_sealed_dir")).unwrap();
    lp.fs_symlink("file", j("sealed/link"), put("symlink_in_sealed_dir")).unwrap();
    {
        let log1 = log.clone();
        lp.fs_scandir(j("locked"), move |_, _, r| log1.borrow_mut().push(("scandir_locked", code(&r)))).unwrap();
        let log2 = log.clone();
        lp.fs_readlink(j("locked/link"), move |_, _, r| log2.borrow_mut().push(("readlink_in_locked_dir", code(&r))))
            .unwrap();
        let log3 = log.clone();
        lp.fs_copyfile(j("secret"), j("copy"), CopyFlags::empty(), move |_, _, r| {
            log3.borrow_mut().push(("copyfile_from_unreadable", code(&r)))
        })
        .unwrap();
        let log4 = log.clone();
        lp.fs_copyfile(j("readonly"), j("sealed/copy"), CopyFlags::empty(), move |_, _, r| {
            log4.borrow_mut().push(("copyfile_into_sealed_dir", code(&r)))
        })
        .unwrap();
    }
    // Watching a directory one may not read.
    let w = lp.fs_event_init().unwrap();
    let watch = lp.fs_event_start(w, j("locked"), FsEventFlags::empty(), &OnFsEvent::new(|_, _, _, _| {}));
    log.borrow_mut().push(("fs_event_start_locked", code(&watch)));
    lp.close(w, None).unwrap();
    // Reading and writing an open file whose mode changed is not refused
    // (permissions are checked at open), as POSIX says: a sanity line.
    let ro = File::open(Path::new(&j("readonly"))).map_err(Error::from);
    log.borrow_mut().push(("open_readonly_for_read", code(&ro)));
    lp.run(RunMode::Default, &mut ()).expect("child run");
    for (name, errno) in log.borrow().iter() {
        println!("{name} {errno}");
    }
}
