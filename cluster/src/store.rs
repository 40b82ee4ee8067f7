//! The shared key/value store held by the primary. Workers reach it through
//! `StoreGet`/`StoreSet`/`StoreDelete` frames with request ids; the primary
//! answers each in order, so a worker always reads its own writes.

use std::collections::HashMap;

/// Byte keys to byte values.
#[derive(Debug, Default, Clone)]
pub struct SharedStore {
    map: HashMap<Vec<u8>, Vec<u8>>,
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
}
