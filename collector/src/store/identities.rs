//! Session identities stored once (tree `identities`) and referred to by a
//! small number from closed episodes, instead of copying the strings into
//! every record.
//!
//! An identity is who a session is: user, database, application, client
//! address and backend type (a blocker's is its user and application).
//! Ids are numbered from 1 in the order identities are first written; the
//! tree is keyed by id (big-endian u32) and holds the [`IdentityRecord`].
//!
//! The store keeps every identity in memory both ways (by id for reads,
//! by value for writes), loaded when it opens. An id is handed out before
//! the seal ([`super::seal`]) that first refers to it, and the identity is
//! written in that seal's transaction; it is known to be stored only once
//! that transaction has committed, so until then every seal that refers
//! to it writes it again (the same bytes under the same key). An id handed
//! out by a seal that never committed is referred to by nothing stored,
//! so after a restart the next id may reuse it.
//!
//! Identities are never removed: the tree and the memory it takes grow
//! with the number of distinct identities seen, like the query texts.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use prost::encoding::{encode_key, encode_varint, WireType};
use prost::Message;
use sled::Tree;

use super::sled::decode;
use super::StoreError;

/// Who a session is (tree `identities`).
#[derive(Clone, PartialEq, Eq, Hash, prost::Message)]
pub struct IdentityRecord {
    /// usename.
    #[prost(string, optional, tag = "1")]
    pub user: Option<String>,
    /// datname.
    #[prost(string, optional, tag = "2")]
    pub database: Option<String>,
    /// application_name.
    #[prost(string, optional, tag = "3")]
    pub application_name: Option<String>,
    /// client_addr.
    #[prost(string, optional, tag = "4")]
    pub client_addr: Option<String>,
    /// backend_type.
    #[prost(string, optional, tag = "5")]
    pub backend_type: Option<String>,
}

/// An identity's fields borrowed from where they are (an episode's), so
/// that looking one up copies nothing: as [`IdentityRecord`] holds them.
#[derive(Debug, Clone, Copy, Default)]
pub struct IdentityRef<'a> {
    /// usename.
    pub user: Option<&'a str>,
    /// datname.
    pub database: Option<&'a str>,
    /// application_name.
    pub application_name: Option<&'a str>,
    /// client_addr.
    pub client_addr: Option<&'a str>,
    /// backend_type.
    pub backend_type: Option<&'a str>,
}

impl IdentityRef<'_> {
    /// The fields, by tag.
    fn fields(&self) -> [(u32, Option<&str>); 5] {
        [
            (1, self.user),
            (2, self.database),
            (3, self.application_name),
            (4, self.client_addr),
            (5, self.backend_type),
        ]
    }

    /// Whether it says nothing (an instance-level episode has no session).
    pub fn is_empty(&self) -> bool {
        self.fields().iter().all(|(_, v)| v.is_none())
    }

    /// The bytes prost writes for the [`IdentityRecord`] of these fields.
    fn encode(&self) -> Vec<u8> {
        let mut bytes = Vec::with_capacity(64);
        for (tag, value) in self.fields() {
            if let Some(value) = value {
                encode_key(tag, WireType::LengthDelimited, &mut bytes);
                encode_varint(value.len() as u64, &mut bytes);
                bytes.extend_from_slice(value.as_bytes());
            }
        }
        bytes
    }

    /// The record of these fields.
    pub fn to_record(self) -> IdentityRecord {
        let owned = |v: Option<&str>| v.map(str::to_string);
        IdentityRecord {
            user: owned(self.user),
            database: owned(self.database),
            application_name: owned(self.application_name),
            client_addr: owned(self.client_addr),
            backend_type: owned(self.backend_type),
        }
    }
}

impl<'a> From<&'a IdentityRecord> for IdentityRef<'a> {
    fn from(r: &'a IdentityRecord) -> Self {
        Self {
            user: r.user.as_deref(),
            database: r.database.as_deref(),
            application_name: r.application_name.as_deref(),
            client_addr: r.client_addr.as_deref(),
            backend_type: r.backend_type.as_deref(),
        }
    }
}

/// An identity that an append must write with the records that refer to
/// it: its id and its encoding.
pub type NewIdentity = (u32, Vec<u8>);

#[derive(Debug, Clone, Copy)]
struct Known {
    id: u32,
    stored: bool,
}

#[derive(Debug, Default)]
struct Inner {
    /// By encoding: the id, and whether it is known to be stored.
    ids: HashMap<Vec<u8>, Known>,
    /// By id.
    by_id: HashMap<u32, Arc<IdentityRecord>>,
    /// The next id to hand out.
    next: u32,
}

/// Every identity of the store, both ways.
#[derive(Debug, Default)]
pub struct Identities {
    inner: RwLock<Inner>,
}

impl Identities {
    /// The identities stored in `tree`.
    pub fn load(tree: &Tree) -> Result<Self, StoreError> {
        let mut inner = Inner {
            next: 1,
            ..Inner::default()
        };
        for entry in tree.iter() {
            let (key, value) = entry?;
            let id = u32::from_be_bytes(
                key.as_ref()
                    .try_into()
                    .map_err(|_| StoreError::DamagedKey("identities"))?,
            );
            let record: IdentityRecord = decode("identities", &value)?;
            let known = Known { id, stored: true };
            inner.ids.insert(record.encode_to_vec(), known);
            inner.by_id.insert(id, Arc::new(record));
            inner.next = inner.next.max(id + 1);
        }
        Ok(Self {
            inner: RwLock::new(inner),
        })
    }

    /// The id of `identity` (none when it is empty), handing out a new one
    /// when it was never seen. When it is not known to be stored, it is
    /// pushed to `new` for the caller to write.
    pub fn intern(&self, identity: IdentityRef<'_>, new: &mut Vec<NewIdentity>) -> Option<u32> {
        if identity.is_empty() {
            return None;
        }
        let bytes = identity.encode();
        let known = self
            .inner
            .read()
            .expect("not poisoned")
            .ids
            .get(&bytes)
            .copied();
        let known = match known {
            Some(k) => k,
            None => {
                let mut inner = self.inner.write().expect("not poisoned");
                match inner.ids.get(&bytes) {
                    Some(k) => *k,
                    None => {
                        let id = inner.next;
                        inner.next += 1;
                        let k = Known { id, stored: false };
                        inner.ids.insert(bytes.clone(), k);
                        inner.by_id.insert(id, Arc::new(identity.to_record()));
                        k
                    }
                }
            }
        };
        if !known.stored && !new.iter().any(|(id, _)| *id == known.id) {
            new.push((known.id, bytes));
        }
        Some(known.id)
    }

    /// Notes that these identities are stored (their append committed).
    pub fn settle(&self, written: &[NewIdentity]) {
        if written.is_empty() {
            return;
        }
        let mut inner = self.inner.write().expect("not poisoned");
        for (_, bytes) in written {
            if let Some(k) = inner.ids.get_mut(bytes) {
                k.stored = true;
            }
        }
    }

    /// The identity numbered `id`.
    pub fn get(&self, id: u32) -> Result<Arc<IdentityRecord>, StoreError> {
        self.inner
            .read()
            .expect("not poisoned")
            .by_id
            .get(&id)
            .cloned()
            .ok_or(StoreError::MissingIdentity(id))
    }
}

/// The key of identity `id` in the tree.
pub fn key(id: u32) -> [u8; 4] {
    id.to_be_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn identity(user: &str) -> IdentityRecord {
        IdentityRecord {
            user: Some(user.into()),
            backend_type: Some("client backend".into()),
            ..Default::default()
        }
    }

    #[test]
    fn a_borrowed_identity_encodes_as_its_record() {
        let records = [
            IdentityRecord::default(),
            identity("a"),
            IdentityRecord {
                user: Some(String::new()),
                database: Some("db".into()),
                application_name: Some("app".into()),
                client_addr: Some("10.0.0.1".into()),
                backend_type: Some("x".repeat(300)),
            },
            IdentityRecord {
                client_addr: Some("::1".into()),
                ..Default::default()
            },
        ];
        for r in records {
            let borrowed = IdentityRef::from(&r);
            assert_eq!(borrowed.encode(), r.encode_to_vec());
            assert_eq!(borrowed.to_record(), r);
            assert_eq!(borrowed.is_empty(), r == IdentityRecord::default());
        }
    }

    #[test]
    fn ids_are_handed_out_once_and_written_until_settled() {
        let dir = tempfile::tempdir().unwrap();
        let db = sled::open(dir.path()).unwrap();
        let tree = db.open_tree("identities").unwrap();
        let ids = Identities::load(&tree).unwrap();
        let mut new = Vec::new();
        assert_eq!(ids.intern(IdentityRef::default(), &mut new), None);
        let a = ids.intern((&identity("a")).into(), &mut new).unwrap();
        let b = ids.intern((&identity("b")).into(), &mut new).unwrap();
        assert_eq!(ids.intern((&identity("a")).into(), &mut new), Some(a));
        assert_ne!(a, b);
        assert_eq!(new.len(), 2, "each new identity is listed once");
        // Not settled: the next append writes them again.
        let mut again = Vec::new();
        ids.intern((&identity("a")).into(), &mut again);
        assert_eq!(again.len(), 1);
        for (id, bytes) in &new {
            tree.insert(key(*id), bytes.as_slice()).unwrap();
        }
        ids.settle(&new);
        let mut after = Vec::new();
        assert_eq!(ids.intern((&identity("a")).into(), &mut after), Some(a));
        assert!(after.is_empty(), "settled identities are not written again");

        // Reloaded from the tree: the same ids, and new ones after them.
        let reloaded = Identities::load(&tree).unwrap();
        assert_eq!(*reloaded.get(b).unwrap(), identity("b"));
        let mut more = Vec::new();
        assert_eq!(reloaded.intern((&identity("a")).into(), &mut more), Some(a));
        let c = reloaded.intern((&identity("c")).into(), &mut more).unwrap();
        assert!(c > a.max(b));
        assert!(matches!(
            reloaded.get(99),
            Err(StoreError::MissingIdentity(99))
        ));
    }
}
