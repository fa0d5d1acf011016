//! Shared helpers: message payloads that identify themselves, and event bookkeeping.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;

use bytes::Bytes;
use mesh_rudp::{Event, MessageId, SendError};

/// A payload of `len` bytes (at least 8) that starts with `tag` and is derived from it, so a
/// corrupted or mixed-up message is detected.
pub(crate) fn payload(tag: u64, len: usize) -> Bytes {
    let len = len.max(8);
    let mut v = Vec::with_capacity(len);
    v.extend_from_slice(&tag.to_le_bytes());
    let mut x = tag.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    while v.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        v.push(x as u8);
    }
    Bytes::from(v)
}

/// The tag of a payload made by [`payload`], after checking its body.
pub(crate) fn tag_of(data: &[u8]) -> u64 {
    let tag = u64::from_le_bytes(data[..8].try_into().expect("8 bytes"));
    assert_eq!(
        &payload(tag, data.len())[..],
        data,
        "payload {tag} corrupted"
    );
    tag
}

/// What one side saw.
#[derive(Debug, Default)]
pub(crate) struct Outcome {
    pub(crate) received: Vec<(SocketAddr, u64)>,
    pub(crate) delivered: HashSet<MessageId>,
    pub(crate) failed: HashMap<MessageId, SendError>,
    pub(crate) downs: usize,
}

impl Outcome {
    pub(crate) fn absorb(&mut self, events: Vec<Event>) {
        for e in events {
            match e {
                Event::Message { from, data, .. } => self.received.push((from, tag_of(&data))),
                Event::Delivered { id, .. } => {
                    assert!(self.delivered.insert(id), "{id:?} delivered twice");
                    assert!(
                        !self.failed.contains_key(&id),
                        "{id:?} both failed and delivered"
                    );
                }
                Event::Failed { id, error, .. } => {
                    assert!(
                        !self.delivered.contains(&id),
                        "{id:?} both delivered and failed"
                    );
                    assert!(
                        self.failed.insert(id, error).is_none(),
                        "{id:?} failed twice"
                    );
                }
                Event::PeerDown { .. } => self.downs += 1,
                _ => {}
            }
        }
    }
}
