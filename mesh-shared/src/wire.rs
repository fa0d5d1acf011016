//! What nodes send each other about shared objects (bincode through `mesh_wire::codec`).

use std::fmt;
use std::net::SocketAddr;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_json::Value;

use crate::model::{Change, Op, Properties, Rejected};

/// A serde value carried as JSON text (bincode cannot carry self-describing values itself).
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Json(pub Value);

impl Serialize for Json {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.0.to_string())
    }
}

impl<'de> Deserialize<'de> for Json {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        serde_json::from_str(&text)
            .map(Json)
            .map_err(serde::de::Error::custom)
    }
}

impl From<Value> for Json {
    fn from(v: Value) -> Self {
        Self(v)
    }
}

/// A shared object's name: a random id and its owner's address. Written as
/// `<32 hex digits>@<address>:<port>`, and parsed back with [`FromStr`].
///
/// ```
/// let mid: mesh_shared::Mid = "0123456789abcdef0123456789abcdef@127.0.0.1:8100".parse().unwrap();
/// assert_eq!(mid.owner.port(), 8100);
/// assert_eq!(mid.to_string().parse::<mesh_shared::Mid>().unwrap(), mid);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Mid {
    /// Random, chosen by the creator.
    pub id: u128,
    /// The node that holds the object and orders its changes.
    pub owner: SocketAddr,
}

impl fmt::Display for Mid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:032x}@{}", self.id, self.owner)
    }
}

/// A `Mid` could not be parsed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("not a shared object id (<32 hex>@<address>:<port>): {0:?}")]
pub struct BadMid(pub String);

impl FromStr for Mid {
    type Err = BadMid;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || BadMid(s.to_owned());
        let (id, owner) = s.split_once('@').ok_or_else(bad)?;
        if id.len() != 32 {
            return Err(bad());
        }
        Ok(Self {
            id: u128::from_str_radix(id, 16).map_err(|_| bad())?,
            owner: owner.parse().map_err(|_| bad())?,
        })
    }
}

/// Why an object went away.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub enum RemoveReason {
    /// Someone removed it.
    Removed,
    /// Nothing changed it for its TTL.
    Expired,
    /// Its owner left the mesh (or restarted): the object died with it.
    OwnerLost,
}

/// A message about shared objects.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[non_exhaustive]
pub enum Message {
    /// To the owner (a request): hold this new object; the sender watches it.
    Create {
        /// The object id.
        id: u128,
        /// Its properties.
        props: Properties,
        /// Milliseconds without a change before it expires.
        ttl_ms: u64,
    },
    /// To the owner (a request): a snapshot, and watch the object from now on.
    Get {
        /// The object id.
        id: u128,
    },
    /// To the owner (a request): apply a change.
    Apply {
        /// The object id.
        id: u128,
        /// The change.
        op: Op,
    },
    /// To the owner (a request): remove the object everywhere.
    Remove {
        /// The object id.
        id: u128,
    },
    /// To the owner: the sender no longer watches the object.
    Unwatch {
        /// The object id.
        id: u128,
    },
    /// From the owner to a watcher: change number `version` was applied.
    Delta {
        /// The object id.
        id: u128,
        /// The object's version after the change.
        version: u64,
        /// What changed.
        change: Change,
    },
    /// From the owner to a watcher: the object is gone.
    Gone {
        /// The object id.
        id: u128,
        /// Why.
        reason: RemoveReason,
    },
}

/// The owner's answer to a request.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[non_exhaustive]
pub enum Reply {
    /// Created at version 0.
    Created,
    /// The object now, at `version`.
    Snapshot {
        /// Its properties.
        props: Properties,
        /// Its version.
        version: u64,
        /// Its TTL in milliseconds.
        ttl_ms: u64,
    },
    /// The change was applied as change number `version`.
    Applied {
        /// The version after the change.
        version: u64,
        /// What changed.
        change: Change,
    },
    /// Removed.
    Removed,
    /// Refused.
    Rejected(Rejected),
}
