//! The fuzz targets' checked-in seed corpora, replayed on stable with
//! expectations per seed (`.ci/run` also runs every target binary over its
//! corpus). The corpora live in `fuzz/corpus/`, outside the published
//! crates, so this unpublished package replays them.

use std::fs::File;
use std::os::fd::OwnedFd;
use uvring_cluster::proto::{DecodeError, Frame, FrameDecoder, FrameKind, DEFAULT_MAX_FRAME_LEN, HEADER_LEN};

// -- the fuzz seed corpus ---------------------------------------------------

/// Replays one `frame_decoder` fuzz input (layout documented in
/// `fuzz/fuzz_targets/frame_decoder.rs`): returns how many frames it
/// decoded and how it ended. Every frame must re-encode to its bytes.
fn replay_fuzz_input(data: &[u8]) -> (usize, Result<(), DecodeError>) {
    let [cfg, fd_plan, rest @ ..] = data else { panic!("input shorter than its 2-byte header") };
    let max_frame_len = match usize::from(cfg >> 4) {
        0 => HEADER_LEN + 4096,
        15 => DEFAULT_MAX_FRAME_LEN,
        n => HEADER_LEN + 16 * n * n,
    };
    let (splits, stream) = rest.split_at(usize::from(cfg & 0x0f).min(rest.len()));
    let mut dec = FrameDecoder::with_max_frame_len(max_frame_len);
    let mut fds_left = usize::from(fd_plan & 0x7f);
    let dev_null = || OwnedFd::from(File::open("/dev/null").unwrap());
    if fd_plan & 0x80 != 0 {
        for _ in 0..std::mem::take(&mut fds_left) {
            if let Err(e) = dec.push_fd(dev_null()) {
                return (0, Err(e));
            }
        }
    }
    let (mut pos, mut offset, mut frames) = (0, 0, 0);
    let mut split = splits.iter().cycle();
    while pos < stream.len() {
        let len = split.next().map_or(stream.len(), |&s| usize::from(s).max(1));
        if fds_left > 0 {
            fds_left -= 1;
            if let Err(e) = dec.push_fd(dev_null()) {
                return (frames, Err(e));
            }
        }
        let end = pos.saturating_add(len).min(stream.len());
        while pos < end {
            pos += dec.feed(&stream[pos..end]);
            loop {
                match dec.next_frame() {
                    Ok(Some(d)) => {
                        let bytes = {
                            let mut v = Vec::new();
                            d.frame.emit_to_vec(&mut v).unwrap();
                            v
                        };
                        assert_eq!(&stream[offset..offset + bytes.len()], &bytes[..]);
                        assert_eq!(d.fds.len(), usize::from(d.frame.nfds()));
                        offset += bytes.len();
                        frames += 1;
                    }
                    Ok(None) => break,
                    Err(e) => return (frames, Err(e)),
                }
            }
        }
    }
    for _ in 0..fds_left {
        if let Err(e) = dec.push_fd(dev_null()) {
            return (frames, Err(e));
        }
    }
    (frames, dec.finish())
}

#[test]
fn fuzz_seed_corpus_replays_through_the_decoder() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz/corpus/frame_decoder");
    let mut seeds: Vec<_> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .filter(|p| p.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.starts_with("seed-")))
        .collect();
    seeds.sort();
    assert!(seeds.len() >= FrameKind::ALL.len(), "seed corpus is missing from {}", dir.display());
    let mut kinds = Vec::new();
    for path in &seeds {
        let name = path.file_name().unwrap().to_str().unwrap().trim_start_matches("seed-");
        let data = std::fs::read(path).unwrap();
        let (frames, end) = replay_fuzz_input(&data);
        match name {
            "truncated" => assert!(matches!(end, Err(DecodeError::Truncated { .. })), "{name}: {end:?}"),
            "missing-fds" => assert!(matches!(end, Err(DecodeError::MissingFds { .. })), "{name}: {end:?}"),
            "bad-version" => assert_eq!(end, Err(DecodeError::BadVersion { version: 2 }), "{name}"),
            _ => {
                assert_eq!(end, Ok(()), "{name}");
                assert!(frames >= 1, "{name}");
                if frames == 1 {
                    let stream = &data[2 + usize::from(data[0] & 0x0f)..];
                    kinds.push(Frame::parse_prefix(stream).unwrap().0.kind());
                }
            }
        }
    }
    for kind in FrameKind::ALL {
        assert!(kinds.contains(&kind), "no single-frame seed for {kind:?}");
    }
}
