//! The io_uring backend (being built; see the backend contract in `super`).

use super::{Backend, BufPool, Completion, Driver, PoolConfig, Token, Unavailable};
use crate::error::{Error, Result};
use std::os::fd::RawFd;
use std::rc::Rc;

pub(crate) struct Uring {
    pool: Rc<BufPool>,
}

impl Uring {
    pub fn new(_pool: PoolConfig) -> std::result::Result<Uring, Unavailable> {
        Err(Unavailable { error: Error::BACKEND_UNAVAILABLE, reason: "io_uring backend not built yet".into() })
    }
}

impl Driver for Uring {
    fn kind(&self) -> Backend {
        Backend::IoUring
    }
    fn accept(&mut self, _fd: RawFd, _token: Token, _exclusive: bool) -> Result<()> {
        Err(Error::ENOSYS)
    }
    fn recv(&mut self, _fd: RawFd, _token: Token) -> Result<()> {
        Err(Error::ENOSYS)
    }
    fn recvmsg(&mut self, _fd: RawFd, _token: Token) -> Result<()> {
        Err(Error::ENOSYS)
    }
    unsafe fn send(&mut self, _fd: RawFd, _token: Token, _iov: &[libc::iovec], _fds: &[RawFd]) -> Result<()> {
        Err(Error::ENOSYS)
    }
    fn connect(&mut self, _fd: RawFd, _token: Token, _addr: &crate::sys::socket::SockAddr) -> Result<()> {
        Err(Error::ENOSYS)
    }
    unsafe fn read(&mut self, _fd: RawFd, _token: Token, _ptr: *mut u8, _len: usize) -> Result<()> {
        Err(Error::ENOSYS)
    }
    fn poll_in(&mut self, _fd: RawFd, _token: Token) -> Result<()> {
        Err(Error::ENOSYS)
    }
    fn cancel(&mut self, _fd: RawFd, _token: Token) {}
    fn deregister(&mut self, _fd: RawFd) {}
    fn poll(&mut self, _timeout_ms: i64, _out: &mut Vec<Completion>) -> Result<()> {
        Err(Error::ENOSYS)
    }
    fn pool(&self) -> &Rc<BufPool> {
        &self.pool
    }
    fn recycle(&mut self, _id: u16) {}
}
