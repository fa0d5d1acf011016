//! Reassembly of fragmented messages, bounded per peer and overall: a piece that would break
//! a cap is refused unacknowledged, so its sender retries later.

use std::collections::{BTreeMap, HashMap};

use foldhash::fast::RandomState;

use bytes::Bytes;
use mesh_wire::{DataFrame, Fragment};

use super::{Refused, Room, FRAGMENT_OVERHEAD};
use crate::config::EndpointConfig;
use crate::pool::BufferPool;

/// Most partial messages held per peer.
const MAX_PARTIALS: usize = 64;

/// A message being reassembled.
#[derive(Debug)]
struct Partial {
    count: u32,
    channel: u8,
    order: Option<u32>,
    frag_size: Option<usize>,
    last_len: Option<usize>,
    /// Pieces `0..next`, back to back. A piece that arrives in order is copied once, straight
    /// here, so the finished message needs no second pass.
    head: Vec<u8>,
    next: u32,
    /// Pieces that arrived ahead of `next`, until the gap before them fills.
    ahead: BTreeMap<u32, Bytes>,
    /// Charged against the reassembly caps: every piece taken, plus `slack`.
    charged: usize,
    /// Capacity of `head` not filled yet, charged like received bytes, so that the caps bound
    /// what is allocated and not only what arrived.
    slack: usize,
}

impl Partial {
    /// Appends a piece to `head`. Capacity grows fourfold (fewer reallocations than doubling),
    /// never past `bound` (the most the whole message can be), and never leaves more than
    /// `max_slack` bytes unfilled: the caller's room under the reassembly caps.
    /// The first growth takes a spare buffer from `pool` when one is large enough for the whole
    /// message and within the room.
    fn extend_head(&mut self, piece: &[u8], bound: usize, max_slack: usize, pool: &BufferPool) {
        let need = self.head.len() + piece.len();
        if self.head.capacity() == 0 {
            if let Some(buf) = pool.take(bound, need.saturating_add(max_slack)) {
                self.head = buf;
            }
        }
        if need > self.head.capacity() {
            let want = (self.head.capacity() * 4)
                .min(bound)
                .min(need.saturating_add(max_slack))
                .max(need);
            self.head.reserve_exact(want - self.head.len());
        }
        self.head.extend_from_slice(piece);
    }
}

/// The partial messages of one peer.
#[derive(Debug, Default)]
pub(crate) struct Reassembly {
    /// Keyed by the sender's message ids: hashed by foldhash, seeded per map (SipHash, the
    /// standard one, was 9 % of a bulk receiver's time, looked up once per fragment).
    partials: HashMap<u32, Partial, RandomState>,
}

impl Reassembly {
    /// Takes one piece of a fragmented message. `held` is the peer's bytes charged against the
    /// caps (reassembly and held ordered messages), updated here, and `charge` what changed.
    /// Returns the whole message once its last piece arrived.
    #[allow(
        clippy::too_many_arguments,
        reason = "the piece, the caps and the accounting"
    )]
    pub(crate) fn on_fragment(
        &mut self,
        d: &DataFrame<'_>,
        f: Fragment,
        room: Room,
        config: &EndpointConfig,
        pool: &BufferPool,
        held: &mut usize,
        charge: &mut isize,
    ) -> Result<Option<Bytes>, Refused> {
        let len = d.payload.len();
        let fresh = !self.partials.contains_key(&d.message);
        if fresh
            && (self.partials.len() >= MAX_PARTIALS
                || len + FRAGMENT_OVERHEAD > room.reassembly_left
                || *held + len + FRAGMENT_OVERHEAD > config.reassembly_per_peer)
        {
            return Err(Refused::NoRoom);
        }
        let p = self.partials.entry(d.message).or_insert_with(|| Partial {
            count: f.count,
            channel: d.channel,
            order: d.order,
            frag_size: None,
            last_len: None,
            head: Vec::new(),
            next: 0,
            ahead: BTreeMap::new(),
            charged: 0,
            slack: 0,
        });
        if p.count != f.count || p.channel != d.channel || p.order != d.order {
            return Err(Refused::Violation);
        }
        let last = f.index == f.count - 1;
        if last {
            p.last_len = Some(len);
        } else {
            if len == 0 || p.frag_size.is_some_and(|s| s != len) {
                return Err(Refused::Violation);
            }
            p.frag_size = Some(len);
        }
        if let (Some(size), Some(last_len)) = (p.frag_size, p.last_len) {
            if last_len > size {
                return Err(Refused::Violation);
            }
        }
        if let Some(size) = p.frag_size {
            let total = (u64::from(p.count) - 1) * size as u64 + p.last_len.unwrap_or(0) as u64;
            if total > config.max_message_size as u64 {
                return Err(Refused::Violation);
            }
        }
        if f.index < p.next || p.ahead.contains_key(&f.index) {
            // A different sequence number carrying a piece we have: only a broken or hostile
            // sender does that.
            return Err(Refused::Violation);
        }
        // A piece copied into `head` costs its bytes; one held aside also its bookkeeping. A
        // piece that lands in capacity already charged (as slack) costs nothing new, and is
        // never refused: refusing it could leave two messages each holding the room the other
        // needs, neither able to finish.
        let in_order = f.index == p.next;
        let cost = if in_order {
            len
        } else {
            len + FRAGMENT_OVERHEAD
        };
        let left = room
            .reassembly_left
            .min(config.reassembly_per_peer.saturating_sub(*held));
        if !(in_order && len <= p.slack) && cost > left {
            if fresh {
                self.partials.remove(&d.message);
            }
            return Err(Refused::NoRoom);
        }
        // Every piece but the last is `frag_size` long, so this bounds the whole message.
        let bound = p.frag_size.unwrap_or(len).saturating_mul(p.count as usize);
        // What the caps leave once this piece is charged: the most the buffer may grow
        // beyond what it holds (its current slack is charged already).
        let max_slack = p.slack + left.saturating_sub(cost);
        if in_order {
            p.extend_head(d.payload, bound, max_slack, pool);
            p.next += 1;
            while let Some(piece) = p.ahead.remove(&p.next) {
                p.extend_head(&piece, bound, max_slack, pool);
                p.next += 1;
            }
        } else {
            p.ahead.insert(f.index, Bytes::copy_from_slice(d.payload));
        }
        let slack = p.head.capacity() - p.head.len();
        let change = (cost + slack) as isize - p.slack as isize;
        p.slack = slack;
        p.charged = (p.charged as isize + change) as usize;
        *held = (*held as isize + change) as usize;
        *charge += change;
        if p.next != p.count {
            return Ok(None);
        }
        let p = self.partials.remove(&d.message).expect("present");
        *held -= p.charged;
        *charge -= p.charged as isize;
        Ok(Some(pool.wrap(p.head)))
    }
}
