//! The shared key/value store held by the primary. Workers reach it through
//! `StoreGet`/`StoreSet`/`StoreDelete` frames and the atomic operations
//! (`StoreAdd`, `StoreCas`, `StoreKeys`) with request ids; the primary
//! answers each in order, so a worker always reads its own writes. The
//! primary's loop runs one request at a time, so each operation is atomic
//! with respect to every worker: counters incremented with
//! [`add`](SharedStore::add) lose no update, whatever the workers race.

use crate::proto::{field, push_key_entry};
use std::collections::HashMap;

/// Why an atomic operation left the store unchanged.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum StoreError {
    /// [`add`](SharedStore::add): the value is not a decimal `i64`.
    NotAnInteger,
    /// [`add`](SharedStore::add): the sum does not fit an `i64`.
    Overflow,
}

impl std::fmt::Display for StoreError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            StoreError::NotAnInteger => "value is not a decimal integer",
            StoreError::Overflow => "integer overflow",
        })
    }
}

impl std::error::Error for StoreError {}

/// Byte keys to byte values.
#[derive(Debug, Default, Clone)]
pub struct SharedStore {
    map: HashMap<Vec<u8>, Vec<u8>>,
    /// A `StoreKeys` answer being built (reused).
    page: Vec<u8>,
}

/// Parses a decimal `i64` (`-` allowed, nothing else around it).
pub(crate) fn parse_i64(bytes: &[u8]) -> Option<i64> {
    std::str::from_utf8(bytes).ok()?.parse().ok().filter(|_| !bytes.starts_with(b"+"))
}

/// `n` in decimal, into `buf`; returns the digits.
pub(crate) fn format_i64(n: i64, buf: &mut [u8; 20]) -> &[u8] {
    let mut i = buf.len();
    let mut m = n.unsigned_abs();
    loop {
        i -= 1;
        buf[i] = b'0' + (m % 10) as u8;
        m /= 10;
        if m == 0 {
            break;
        }
    }
    if n < 0 {
        i -= 1;
        buf[i] = b'-';
    }
    &buf[i..]
}

impl SharedStore {
    /// An empty store.
    pub fn new() -> SharedStore {
        SharedStore::default()
    }

    /// The value of `key`, if set.
    pub fn get(&self, key: &[u8]) -> Option<&[u8]> {
        self.map.get(key).map(Vec::as_slice)
    }

    /// Sets `key` to `value`, reusing the old value's buffer when there is one.
    pub fn set(&mut self, key: &[u8], value: &[u8]) {
        match self.map.get_mut(key) {
            Some(v) => {
                v.clear();
                v.extend_from_slice(value);
            }
            None => {
                self.map.insert(key.to_vec(), value.to_vec());
            }
        }
    }

    /// Removes `key`; returns whether it was there.
    pub fn delete(&mut self, key: &[u8]) -> bool {
        self.map.remove(key).is_some()
    }

    /// The number of keys.
    pub fn len(&self) -> usize {
        self.map.len()
    }

    /// Whether the store holds no key.
    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    /// Every entry, in no particular order.
    pub fn iter(&self) -> impl Iterator<Item = (&[u8], &[u8])> {
        self.map.iter().map(|(k, v)| (k.as_slice(), v.as_slice()))
    }

    /// Adds `delta` to the decimal integer at `key` (an absent key counts as
    /// 0) and returns the new value, which is stored in decimal. A value
    /// that is not a decimal `i64`, or a sum that overflows, is an error and
    /// leaves the store as it was.
    ///
    /// # Errors
    ///
    /// [`StoreError::NotAnInteger`] if the value is not a decimal `i64`;
    /// [`StoreError::Overflow`] if the sum overflows. The store is unchanged then.
    pub fn add(&mut self, key: &[u8], delta: i64) -> Result<i64, StoreError> {
        let old = match self.map.get(key) {
            Some(v) => parse_i64(v).ok_or(StoreError::NotAnInteger)?,
            None => 0,
        };
        let new = old.checked_add(delta).ok_or(StoreError::Overflow)?;
        let mut buf = [0u8; 20];
        self.set(key, format_i64(new, &mut buf));
        Ok(new)
    }

    /// Sets `key` to `value` if its value is `expected` (`None`: if the key
    /// is absent). `Ok` if it did; otherwise `Err` with the current value
    /// (`None`: absent), and the store is unchanged.
    ///
    /// # Errors
    ///
    /// The current value (`None`: absent) when it is not `expected`.
    pub fn compare_and_swap(&mut self, key: &[u8], expected: Option<&[u8]>, value: &[u8]) -> Result<(), Option<&[u8]>> {
        if self.get(key) != expected {
            return Err(self.get(key));
        }
        self.set(key, value);
        Ok(())
    }

    /// The keys that start with `prefix`, in byte order.
    pub fn keys(&self, prefix: &[u8]) -> Vec<&[u8]> {
        let mut keys: Vec<&[u8]> = self.map.keys().map(Vec::as_slice).filter(|k| k.starts_with(prefix)).collect();
        keys.sort_unstable();
        keys
    }

    /// One page of a `StoreKeys` answer: the keys that start with `prefix`
    /// and sort after `after` (all of them when `after` is empty), in byte
    /// order, encoded as `key_len u32, key` entries, as many as fit
    /// `max_len` bytes. Returns the page and whether it ends the list;
    /// `None` when not even the first key fits.
    pub(crate) fn keys_page(&mut self, prefix: &[u8], after: &[u8], max_len: usize) -> Option<(&[u8], bool)> {
        let mut keys: Vec<&[u8]> = self
            .map
            .keys()
            .map(Vec::as_slice)
            .filter(|k| k.starts_with(prefix) && (after.is_empty() || *k > after))
            .collect();
        keys.sort_unstable();
        self.page.clear();
        let mut complete = true;
        for key in keys {
            if self.page.len() + field::key_entry::KEY + key.len() > max_len
                || push_key_entry(&mut self.page, key).is_err()
            {
                complete = false;
                break;
            }
        }
        if !complete && self.page.is_empty() {
            return None;
        }
        Some((&self.page, complete))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn set_get_delete() {
        let mut s = SharedStore::new();
        assert_eq!(s.get(b"k"), None);
        s.set(b"k", b"one");
        s.set(b"k", b"two");
        assert_eq!(s.get(b"k"), Some(&b"two"[..]));
        assert_eq!(s.len(), 1);
        assert!(s.delete(b"k"));
        assert!(!s.delete(b"k"));
        assert!(s.is_empty());
    }

    #[test]
    fn add_counts_and_refuses_non_integers() {
        let mut s = SharedStore::new();
        assert_eq!(s.add(b"n", 5), Ok(5));
        assert_eq!(s.add(b"n", -7), Ok(-2));
        assert_eq!(s.get(b"n"), Some(&b"-2"[..]));
        s.set(b"n", b"9223372036854775807");
        assert_eq!(s.add(b"n", 1), Err(StoreError::Overflow));
        assert_eq!(s.get(b"n"), Some(&b"9223372036854775807"[..]));
        assert_eq!(s.add(b"n", i64::MIN), Ok(-1));
        for bad in [&b"x"[..], b"", b"+1", b" 1", b"1.0"] {
            s.set(b"b", bad);
            assert_eq!(s.add(b"b", 1), Err(StoreError::NotAnInteger), "{bad:?}");
        }
        let mut buf = [0u8; 20];
        assert_eq!(format_i64(i64::MIN, &mut buf), b"-9223372036854775808");
        assert_eq!(parse_i64(b"-9223372036854775808"), Some(i64::MIN));
        assert_eq!(format_i64(0, &mut buf), b"0");
    }

    #[test]
    fn compare_and_swap_swaps_only_on_a_match() {
        let mut s = SharedStore::new();
        assert_eq!(s.compare_and_swap(b"k", Some(b"a"), b"b"), Err(None));
        assert_eq!(s.compare_and_swap(b"k", None, b"a"), Ok(()));
        assert_eq!(s.compare_and_swap(b"k", None, b"x"), Err(Some(&b"a"[..])));
        assert_eq!(s.compare_and_swap(b"k", Some(b"b"), b"x"), Err(Some(&b"a"[..])));
        assert_eq!(s.compare_and_swap(b"k", Some(b"a"), b"b"), Ok(()));
        assert_eq!(s.get(b"k"), Some(&b"b"[..]));
    }

    #[test]
    fn keys_by_prefix_in_pages() {
        let mut s = SharedStore::new();
        for k in ["w:3", "w:1", "x:1", "w:2", "w"] {
            s.set(k.as_bytes(), b"");
        }
        assert_eq!(s.keys(b"w:"), [&b"w:1"[..], b"w:2", b"w:3"]);
        assert_eq!(s.keys(b"").len(), 5);
        let keys =
            |page: &[u8]| -> Vec<Vec<u8>> { crate::proto::key_entries(page).map(|k| k.unwrap().to_vec()).collect() };
        // Two entries of 7 bytes fit 14.
        let (page, complete) = s.keys_page(b"w:", b"", 14).unwrap();
        assert_eq!((keys(page), complete), (vec![b"w:1".to_vec(), b"w:2".to_vec()], false));
        let (page, complete) = s.keys_page(b"w:", b"w:2", 14).unwrap();
        assert_eq!((keys(page), complete), (vec![b"w:3".to_vec()], true));
        let (page, complete) = s.keys_page(b"nothing", b"", 14).unwrap();
        assert_eq!((page.len(), complete), (0, true));
        assert!(s.keys_page(b"w:", b"", 6).is_none(), "not even one key fits");
    }
}
