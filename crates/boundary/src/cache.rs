//! A short cache of anonymous query answers.
//!
//! The key is the SHA-256 of the request path and the exact request bytes. A query answer is
//! signed by the node over the request id, and the request id covers every field (expiry
//! and nonce included), so only a byte-identical request may get a stored answer: anything
//! else would fail the agent's signature check. Agents round their expiry to the minute and
//! send queries without a nonce, so identical anonymous queries are the common case of a
//! popular page. Entries live one second (the IC's boundary uses the same), answers over
//! 1 MiB are not kept, and the whole cache is bounded in entries and bytes.

use bytes::Bytes;
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// A stored answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cached {
    pub status: u16,
    pub content_type: Option<String>,
    pub body: Bytes,
    /// The node that answered.
    pub node: String,
}

pub struct QueryCache {
    ttl: Duration,
    max_entries: usize,
    max_bytes: usize,
    inner: Mutex<Inner>,
}

#[derive(Default)]
struct Inner {
    map: HashMap<[u8; 32], (Instant, Cached)>,
    bytes: usize,
}

/// Answers larger than this are not cached.
pub const MAX_CACHED_BODY: usize = 1 << 20;

impl QueryCache {
    pub fn new(ttl: Duration, max_entries: usize, max_bytes: usize) -> QueryCache {
        QueryCache {
            ttl,
            max_entries,
            max_bytes,
            inner: Mutex::new(Inner::default()),
        }
    }

    pub fn key(path: &str, body: &[u8]) -> [u8; 32] {
        Sha256::new()
            .chain_update((path.len() as u64).to_be_bytes())
            .chain_update(path)
            .chain_update(body)
            .finalize()
            .into()
    }

    pub fn get(&self, key: &[u8; 32]) -> Option<Cached> {
        let inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        inner
            .map
            .get(key)
            .filter(|(at, _)| at.elapsed() < self.ttl)
            .map(|(_, c)| c.clone())
    }

    /// Keep `answer` under `key` if it is small and there is room (after dropping expired
    /// entries).
    pub fn put(&self, key: [u8; 32], answer: Cached) {
        if answer.body.len() > MAX_CACHED_BODY || self.ttl.is_zero() {
            return;
        }
        let mut inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        let full = |i: &Inner| {
            i.map.len() >= self.max_entries || i.bytes + answer.body.len() > self.max_bytes
        };
        if full(&inner) {
            let ttl = self.ttl;
            let mut freed = 0;
            inner.map.retain(|_, (at, c)| {
                let keep = at.elapsed() < ttl;
                if !keep {
                    freed += c.body.len();
                }
                keep
            });
            inner.bytes -= freed;
            if full(&inner) {
                return;
            }
        }
        inner.bytes += answer.body.len();
        if let Some((_, old)) = inner.map.insert(key, (Instant::now(), answer)) {
            inner.bytes -= old.body.len();
        }
    }

    /// Entries and bytes held now.
    pub fn size(&self) -> (usize, usize) {
        let inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        (inner.map.len(), inner.bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn answer(len: usize) -> Cached {
        Cached {
            status: 200,
            content_type: Some("application/cbor".into()),
            body: Bytes::from(vec![7; len]),
            node: "n".into(),
        }
    }

    #[test]
    fn only_identical_requests_hit_and_entries_expire() {
        let c = QueryCache::new(Duration::from_millis(100), 10, 1 << 20);
        let k = QueryCache::key("/api/v2/canister/x/query", b"body");
        c.put(k, answer(10));
        assert_eq!(c.get(&k), Some(answer(10)));
        assert_eq!(
            c.get(&QueryCache::key("/api/v2/canister/x/query", b"bodz")),
            None
        );
        assert_eq!(
            c.get(&QueryCache::key("/api/v3/canister/x/query", b"body")),
            None
        );
        std::thread::sleep(Duration::from_millis(120));
        assert_eq!(c.get(&k), None);
    }

    #[test]
    fn the_cache_stays_within_its_bounds() {
        let c = QueryCache::new(Duration::from_secs(60), 3, 100);
        for i in 0..10u8 {
            c.put(QueryCache::key("p", &[i]), answer(30));
        }
        assert_eq!(c.size(), (3, 90));
        c.put(QueryCache::key("big", b""), answer(MAX_CACHED_BODY + 1));
        assert_eq!(c.size(), (3, 90));
        let expiring = QueryCache::new(Duration::from_millis(10), 2, 1000);
        expiring.put(QueryCache::key("p", b"1"), answer(1));
        expiring.put(QueryCache::key("p", b"2"), answer(1));
        std::thread::sleep(Duration::from_millis(20));
        expiring.put(QueryCache::key("p", b"3"), answer(1));
        assert_eq!(expiring.size(), (1, 1), "expired entries make room");
    }
}
