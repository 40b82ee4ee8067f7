//! The shared store's atomic operations under concurrent use: increments
//! from four workers lose nothing (get + set would), compare-and-swap
//! retries converge, keys are listed by prefix (over several answers when
//! the message size limit is small), and a request the primary does not
//! answer in time fails with `ETIMEDOUT` on the worker's side.

mod cluster_support;

use cluster_support::*;
use std::time::{Duration, Instant};

cluster_test! {
    // 4 workers x 1,000 increments of one counter: exactly 4,000. Each
    // worker also does 50 compare-and-swap increments of another key (200
    // in all), and lists its 300 keys in pages of a 1 KiB message limit.
    fn atomic_increments(lp, policy) [rr = RoundRobin] {
        let s = settings(policy, "store-atomic", 4)
            .env(vec![("ADDS".into(), "1000".into()), ("CAS".into(), "50".into()), ("KEYS".into(), "300".into())])
            .max_message_len(1024);
        let mut c = start_cluster(lp, s);
        wait_for(lp, &mut c, |l| {
            l.count_prefix("adds-done ") == 4 && l.count_prefix("cas-") == 4 && l.count_prefix("keys-after-delete ") == 4
        });
        assert_eq!(c.log.count_prefix("adds-done 1000 failed 0"), 4, "{:?}", c.log.messages);
        assert_eq!(c.primary.store_get(b"counter"), Some(&b"4000"[..]));
        assert_eq!(c.log.count_prefix("cas-done "), 4, "{:?}", c.log.messages);
        assert_eq!(c.primary.store_get(b"cas"), Some(&b"200"[..]));
        assert_eq!(c.log.count_prefix("keys 300 true"), 4, "{:?}", c.log.messages);
        assert_eq!(c.log.count_prefix("deleted Ok(true)"), 4, "{:?}", c.log.messages);
        assert_eq!(c.log.count_prefix("keys-after-delete 299"), 4, "{:?}", c.log.messages);
        assert_eq!(c.primary.store_keys(b"k:").len(), 4 * 299);
        assert_eq!(c.primary.store_keys(b"k:2:")[0], b"k:2:0001");
        // The primary's own API composes with the workers'.
        assert_eq!(c.primary.store_add(b"counter", -1000), Ok(3000));
        assert!(c.primary.store_compare_and_swap(b"cas", Some(b"200"), b"0").is_ok());
        shutdown(lp, &mut c);
    }

    // The primary stalls past the worker's 100 ms store timeout: the
    // request fails with ETIMEDOUT, its late answer is dropped, and the
    // next request is answered.
    fn store_request_times_out(lp, policy) [rr = RoundRobin] {
        let dir = std::env::temp_dir().join(format!("uvring-store-timeout-{}-{:?}", std::process::id(), policy));
        let file = dir.with_extension(lp.backend().name());
        let _ = std::fs::remove_file(&file);
        let s = settings(policy, "store-timeout", 1).env(vec![("STALL_FILE".into(), file.clone().into())]);
        let mut c = Cluster::new(lp, s);
        let stall_file = file.clone();
        c.primary.on_message(move |_, d, w, bytes, _| {
            if bytes == b"stall" {
                // Blocks the primary's loop until the worker has seen its
                // request time out (bounded).
                let deadline = Instant::now() + WAIT;
                while !stall_file.exists() && Instant::now() < deadline {
                    std::thread::sleep(Duration::from_millis(10));
                }
            }
            d.log.messages.push((w.id(), String::from_utf8_lossy(bytes).into_owned()));
        });
        c.primary.store_set(b"x", b"late");
        c.primary.start(lp).unwrap();
        wait_for(lp, &mut c, |l| l.count_prefix("store-timeout ") == 1);
        let _ = std::fs::remove_file(&file);
        let etimedout = libc::ETIMEDOUT;
        let want = format!("store-timeout {etimedout} pending 0 then Ok(Some([108, 97, 116, 101]))");
        assert!(c.log.has_message(&want), "{:?}", c.log.messages);
        shutdown(lp, &mut c);
    }
}
