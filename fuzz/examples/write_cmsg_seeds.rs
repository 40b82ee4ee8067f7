//! Writes the checked-in seed corpus of the `cmsg` target:
//! `cargo run --manifest-path fuzz/Cargo.toml --example write_cmsg_seeds`.
//!
//! Each seed follows the input layout documented in `fuzz_targets/cmsg.rs`.

use std::path::Path;

/// A block: `n` fds (numbers from `first`), optionally `SCM_CREDENTIALS`
/// or with a bogus `cmsg_len` (`len_byte * 3`).
fn block(n: u8, first: i32, creds: bool, bogus_len: Option<u8>) -> Vec<u8> {
    let mut out = vec![n | if creds { 8 } else { 0 } | if bogus_len.is_some() { 16 } else { 0 }];
    out.extend(bogus_len);
    for i in 0..i32::from(n) {
        out.extend_from_slice(&(first + i).to_ne_bytes());
    }
    out
}

fn built(mode: u8, payload_len: u8, blocks: &[Vec<u8>]) -> Vec<u8> {
    let mut out = vec![mode, payload_len];
    blocks.iter().for_each(|b| out.extend_from_slice(b));
    out
}

fn main() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("corpus/cmsg");
    std::fs::create_dir_all(&dir).unwrap();
    let write = |name: &str, bytes: Vec<u8>| std::fs::write(dir.join(format!("seed-{name}")), bytes).unwrap();
    write("one-fd", built(0, 5, &[block(1, 7, false, None)]));
    write("no-control", built(0, 32, &[]));
    write(
        "several-blocks",
        built(0, 9, &[block(3, 10, false, None), block(0, 0, true, None), block(2, 20, false, None)]),
    );
    write(
        "max-fds",
        built(0, 1, &[block(7, 100, false, None), block(7, 200, false, None), block(2, 300, false, None)]),
    );
    write("ctrunc", built(2, 4, &[block(2, 40, false, None)]));
    write("overstated-controllen", built(4, 4, &[block(1, 50, false, None)]));
    write("bogus-len-small", built(0, 3, &[block(1, 60, false, None), block(2, 61, false, Some(1))]));
    write("bogus-len-large", built(0, 3, &[block(2, 70, false, Some(200)), block(1, 72, false, None)]));
    write("bogus-len-longer", built(0, 3, &[block(1, 80, false, Some(10)), block(1, 81, false, None)]));
    write("cut-record", built(8, 10, &[block(1, 90, false, None)]));
    write("raw-truncated-header", vec![1, 0, 0, 0, 0, 16, 0, 0]);
    let mut raw = vec![1u8];
    for word in [0u32, 40, 2, 0] {
        raw.extend_from_slice(&word.to_ne_bytes());
    }
    raw.extend_from_slice(&20u64.to_ne_bytes());
    raw.extend_from_slice(&1i32.to_ne_bytes());
    raw.extend_from_slice(&1i32.to_ne_bytes());
    raw.extend_from_slice(&33i32.to_ne_bytes());
    write("raw-record-short-control-space", raw);
    println!("wrote seeds to {}", dir.display());
}
