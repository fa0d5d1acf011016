//! The cluster key: an optional shared secret that authenticates every datagram.
//!
//! A datagram sent with a key has the [`FLAG_AUTH`](crate::FLAG_AUTH) header flag and ends
//! with a 24-byte trailer: a packet number (u64, for replay protection by the receiver) and a
//! 16-byte tag, keyed BLAKE3 over the whole datagram before the tag with the CRC field zeroed.
//! The CRC still comes first when receiving, so noise is rejected before any hashing.
//!
//! Key rotation: a key may carry a previous secret that is still accepted (never used to
//! sign), for a rollover window during which nodes move to the new one.

use std::fmt;

use crate::datagram::{CRC_OFFSET, HEADER_LEN};

/// Bytes of the tag.
pub const TAG_LEN: usize = 16;
/// Bytes of the trailer of an authenticated datagram: packet number and tag.
pub const AUTH_TRAILER_LEN: usize = 8 + TAG_LEN;

const CONTEXT: &str = "mesh-link 2026-11 cluster key v1 datagram MAC";

/// A cluster's shared secret, derived into MAC keys. Its `Debug` output never shows the key.
///
/// ```
/// use mesh_wire::ClusterKey;
/// let old = ClusterKey::from_secret(b"old secret");
/// let new = ClusterKey::from_secret(b"new secret").with_previous(b"old secret");
/// let mut d = b"ML\x01\x01 some datagram bytes ..........".to_vec();
/// old.seal(&mut d);
/// assert!(new.verify(&d), "the previous secret is still accepted");
/// new.seal(&mut d);
/// assert!(!old.verify(&d), "a node with only the old secret rejects the new one");
/// ```
#[derive(Clone)]
pub struct ClusterKey {
    current: [u8; 32],
    previous: Option<[u8; 32]>,
}

impl fmt::Debug for ClusterKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClusterKey")
            .field("rollover", &self.previous.is_some())
            .finish_non_exhaustive()
    }
}

impl PartialEq for ClusterKey {
    fn eq(&self, other: &Self) -> bool {
        ct_eq(&self.current, &other.current)
            && match (&self.previous, &other.previous) {
                (Some(a), Some(b)) => ct_eq(a, b),
                (None, None) => true,
                _ => false,
            }
    }
}

impl Eq for ClusterKey {}

/// Compares without an early exit, so timing does not reveal where bytes differ.
fn ct_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

impl ClusterKey {
    /// A key from a secret of any length (a passphrase or random bytes; use at least 16 random
    /// bytes). The MAC key is derived from it with BLAKE3's key derivation.
    pub fn from_secret(secret: &[u8]) -> Self {
        Self {
            current: blake3::derive_key(CONTEXT, secret),
            previous: None,
        }
    }

    /// Also accepts datagrams signed with `previous_secret` (a rollover window).
    pub fn with_previous(mut self, previous_secret: &[u8]) -> Self {
        self.previous = Some(blake3::derive_key(CONTEXT, previous_secret));
        self
    }

    fn tag_with(key: &[u8; 32], signed: &[u8]) -> [u8; TAG_LEN] {
        let mut h = blake3::Hasher::new_keyed(key);
        h.update(&signed[..CRC_OFFSET]);
        h.update(&[0; HEADER_LEN - CRC_OFFSET]);
        h.update(&signed[HEADER_LEN..]);
        let mut tag = [0; TAG_LEN];
        tag.copy_from_slice(&h.finalize().as_bytes()[..TAG_LEN]);
        tag
    }

    /// Appends the tag of `datagram` (everything before it, CRC field zeroed) with the current
    /// key. `datagram` must be at least a header long.
    pub fn seal(&self, datagram: &mut Vec<u8>) {
        let tag = self.tag_of(datagram);
        datagram.extend_from_slice(&tag);
    }

    /// The tag [`seal`](Self::seal) would append to `datagram`.
    pub(crate) fn tag_of(&self, datagram: &[u8]) -> [u8; TAG_LEN] {
        Self::tag_with(&self.current, datagram)
    }

    /// Whether the last [`TAG_LEN`] bytes of `datagram` are the tag of the rest, under the
    /// current or the previous key.
    pub fn verify(&self, datagram: &[u8]) -> bool {
        if datagram.len() < HEADER_LEN + TAG_LEN {
            return false;
        }
        let (signed, tag) = datagram.split_at(datagram.len() - TAG_LEN);
        ct_eq(&Self::tag_with(&self.current, signed), tag)
            || self
                .previous
                .is_some_and(|p| ct_eq(&Self::tag_with(&p, signed), tag))
    }
}
