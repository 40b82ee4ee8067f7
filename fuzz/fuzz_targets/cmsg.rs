//! Feeds IPC receive records — the bytes `recvmsg` leaves for an IPC pipe:
//! a 16-byte header, the control space (`SCM_RIGHTS` messages), the
//! payload — to the engine's record and control-message parsers
//! (`uvring::fuzzing`, the functions the loop runs) and checks that they
//! never panic, never report an fd from outside the control data, and
//! report exactly the fds of well-formed `SCM_RIGHTS` blocks, in order.
//!
//! Input layout:
//! - byte 0, bit 0 set: the rest of the input *is* the record (raw mode:
//!   truncated headers, any lengths), and it is also walked as a bare
//!   control buffer; no oracle beyond "no panic, fds from inside".
//! - otherwise a record is built: byte 0 bit 1 = `MSG_CTRUNC` in the flags,
//!   bit 2 = the header overstates `controllen` (the kernel reports the
//!   untruncated length), bit 3 = the record is cut short (inconsistent
//!   with its header: must be refused); byte 1 = payload length; then
//!   blocks, each a byte `b` (bits 0-2: fd count, bit 3: an
//!   `SCM_CREDENTIALS` block instead, bit 4: a bogus `cmsg_len` taken from
//!   the next byte) followed by 4 bytes per fd (the fd numbers).

#![no_main]

use libfuzzer_sys::fuzz_target;
use uvring::fuzzing::{ipc_record, rights_fds, RECORD_CONTROL_LEN, RECORD_HEADER_LEN};

const HDR: usize = 16; // sizeof(struct cmsghdr) on 64-bit Linux
const SOL_SOCKET: i32 = 1;
const SCM_RIGHTS: i32 = 1;
const SCM_CREDENTIALS: i32 = 2;
const MSG_CTRUNC: u32 = 8;
const _: () = assert!(std::mem::size_of::<usize>() == 8, "the layout above is 64-bit Linux's");

fn space(len: usize) -> usize {
    HDR + (len + 7) / 8 * 8
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else { return };
    if mode & 1 != 0 {
        raw(rest);
    } else {
        built(mode, rest);
    }
});

/// Every fd reported must be 4 bytes found inside `control`.
fn check_inside(control: &[u8], fds: &[i32]) {
    assert!(fds.len() <= control.len() / 4, "{} fds from {} bytes", fds.len(), control.len());
    for fd in fds {
        let bytes = fd.to_ne_bytes();
        assert!(control.windows(4).any(|w| w == bytes), "fd {fd} is not in the control data");
    }
}

fn raw(record: &[u8]) {
    let mut fds = Vec::new();
    let rec = ipc_record(record, |fd| fds.push(fd));
    let control_end = record.len().min(RECORD_HEADER_LEN + RECORD_CONTROL_LEN);
    let control = record.get(RECORD_HEADER_LEN..control_end).unwrap_or(&[]);
    match rec {
        Some(r) => {
            check_inside(control, &fds);
            assert!(r.payload_len <= record.len().saturating_sub(RECORD_HEADER_LEN + RECORD_CONTROL_LEN));
        }
        None => assert!(fds.is_empty(), "a refused record reported fds"),
    }
    let mut bare = Vec::new();
    rights_fds(record, |fd| bare.push(fd));
    check_inside(record, &bare);
}

fn built(mode: u8, rest: &[u8]) {
    let Some((&payload_len, mut blocks)) = rest.split_first() else { return };
    let mut control = Vec::new();
    let mut expected = Vec::new();
    let mut well_formed = true;
    while let Some((&b, tail)) = blocks.split_first() {
        let n = usize::from(b & 7);
        let creds = b & 8 != 0;
        let bogus = b & 16 != 0;
        let (bogus_len, tail) = match (bogus, tail.split_first()) {
            (true, Some((&l, t))) => (Some(usize::from(l) * 3), t),
            (true, None) => break,
            (false, _) => (None, tail),
        };
        let Some((fd_bytes, tail)) = tail.split_at_checked(n * 4) else { break };
        blocks = tail;
        if control.len() + space(n * 4) > RECORD_CONTROL_LEN {
            break;
        }
        let start = control.len();
        let len = bogus_len.unwrap_or(HDR + n * 4);
        control.extend_from_slice(&(len as u64).to_ne_bytes());
        control.extend_from_slice(&SOL_SOCKET.to_ne_bytes());
        control.extend_from_slice(&(if creds { SCM_CREDENTIALS } else { SCM_RIGHTS }).to_ne_bytes());
        control.extend_from_slice(fd_bytes);
        control.resize(start + space(n * 4), 0);
        if bogus_len.is_some() {
            well_formed = false;
        }
        if well_formed && !creds {
            expected.extend(fd_bytes.chunks_exact(4).map(|c| i32::from_ne_bytes([c[0], c[1], c[2], c[3]])));
        }
    }
    let controllen = if mode & 4 != 0 { RECORD_CONTROL_LEN + 64 } else { control.len() } as u32;
    let flags = if mode & 2 != 0 { MSG_CTRUNC } else { 0 };
    let mut record = Vec::new();
    for word in [0u32, controllen, u32::from(payload_len), flags] {
        record.extend_from_slice(&word.to_ne_bytes());
    }
    record.extend_from_slice(&control);
    record.resize(RECORD_HEADER_LEN + RECORD_CONTROL_LEN, 0);
    record.extend((0..payload_len).map(|i| i ^ 0x5a));
    let cut = mode & 8 != 0 && payload_len > 0;
    if cut {
        record.pop();
    }

    let mut fds = Vec::new();
    let rec = ipc_record(&record, |fd| fds.push(fd));
    if cut {
        assert!(rec.is_none(), "a record shorter than its header says was accepted");
        assert!(fds.is_empty());
        return;
    }
    let rec = rec.expect("a consistent record was refused");
    assert_eq!(rec.payload_len, usize::from(payload_len));
    assert_eq!(rec.truncated, flags != 0);
    // The parser sees the control space up to `controllen` (an overstated
    // length gives it the whole space, zero-filled past the blocks).
    let seen = (controllen as usize).min(RECORD_CONTROL_LEN);
    check_inside(&record[RECORD_HEADER_LEN..RECORD_HEADER_LEN + seen], &fds);
    if well_formed {
        assert_eq!(fds, expected, "well-formed SCM_RIGHTS blocks, in order");
    } else {
        assert!(fds.starts_with(&expected), "blocks before the first bogus one are reported");
    }
}
