//! Query texts kept in memory: most answers (`at`, episodes, waits, memory)
//! name the queries their rows refer to, and a fleet's sessions refer to the
//! same few thousand texts over and over. Looking each up in sled costs a
//! tree descent per id; the cache answers from memory those written or read
//! since it last filled.
//!
//! It holds texts the store has (or is writing, in the append that also
//! writes them: an id is the hash of its text, so a text is never wrong for
//! its id). It is bounded by the bytes of text it holds and empties itself
//! when full, so the texts in use come back on their next read.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

/// The bytes of text the cache holds at most.
pub const CAPACITY: usize = 16 << 20;

/// Texts by query id, up to [`CAPACITY`] bytes of them.
#[derive(Debug, Default)]
pub struct TextCache(RwLock<Texts>);

#[derive(Debug, Default)]
struct Texts {
    by_id: HashMap<u64, Arc<str>>,
    bytes: usize,
}

impl TextCache {
    /// The texts of those of `ids` the cache holds, and the ids it does not.
    pub fn get(&self, ids: impl Iterator<Item = u64>) -> (HashMap<u64, String>, Vec<u64>) {
        let texts = self.0.read().expect("not poisoned");
        let mut found = HashMap::new();
        let mut missing = Vec::new();
        for id in ids {
            if found.contains_key(&id) {
                continue;
            }
            match texts.by_id.get(&id) {
                Some(text) => {
                    found.insert(id, text.to_string());
                }
                None => missing.push(id),
            }
        }
        missing.sort_unstable();
        missing.dedup();
        (found, missing)
    }

    /// Keeps these texts, emptying the cache first when they would not fit.
    pub fn put<'a>(&self, texts: impl IntoIterator<Item = (u64, &'a Arc<str>)>) {
        let mut cache = self.0.write().expect("not poisoned");
        for (id, text) in texts {
            if text.len() > CAPACITY || cache.by_id.contains_key(&id) {
                continue;
            }
            if cache.bytes + text.len() > CAPACITY {
                cache.by_id.clear();
                cache.bytes = 0;
            }
            cache.bytes += text.len();
            cache.by_id.insert(id, Arc::clone(text));
        }
    }

    /// The bytes of text held.
    #[cfg(test)]
    fn bytes(&self) -> usize {
        self.0.read().expect("not poisoned").bytes
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_what_it_holds_and_names_what_it_does_not() {
        let cache = TextCache::default();
        let (a, b): (Arc<str>, Arc<str>) = ("SELECT 1".into(), "SELECT 2".into());
        cache.put([(1, &a), (2, &b), (1, &a)]);
        assert_eq!(cache.bytes(), 16);
        let (found, missing) = cache.get([2, 3, 1, 3, 2].into_iter());
        assert_eq!(found.len(), 2);
        assert_eq!(found[&1], "SELECT 1");
        assert_eq!(found[&2], "SELECT 2");
        assert_eq!(missing, vec![3]);
    }

    #[test]
    fn empties_itself_rather_than_outgrow_its_capacity() {
        let cache = TextCache::default();
        let big: Arc<str> = "x".repeat(CAPACITY / 2 + 1).into();
        let small: Arc<str> = "SELECT 1".into();
        cache.put([(1, &big), (2, &small)]);
        assert_eq!(cache.bytes(), CAPACITY / 2 + 1 + 8);
        let other: Arc<str> = "y".repeat(CAPACITY / 2).into();
        cache.put([(3, &other)]);
        assert_eq!(cache.bytes(), CAPACITY / 2);
        let (found, missing) = cache.get([1, 2, 3].into_iter());
        assert_eq!(found.keys().copied().collect::<Vec<_>>(), vec![3]);
        assert_eq!(missing, vec![1, 2]);
        let huge: Arc<str> = "z".repeat(CAPACITY + 1).into();
        cache.put([(4, &huge)]);
        assert!(cache.get([4].into_iter()).1 == vec![4], "too big to keep");
    }
}
