//! The send queue of one peer: messages waiting for their first transmission, the messages
//! not yet reported delivered, ordered channels' bookkeeping, and unreliable messages.

use std::collections::VecDeque;

use bytes::Bytes;
use mesh_wire::Fragment;

use super::recovery::Sent;
use crate::types::{Delivery, MessageId, Payload};

/// A message waiting for its frames to be sent for the first time.
#[derive(Debug)]
pub(crate) struct OutMsg {
    pub(crate) id: MessageId,
    pub(crate) message: u32,
    pub(crate) channel: u8,
    pub(crate) order: Option<u32>,
    data: Payload,
    pub(crate) count: u32,
    pub(crate) next_frag: u32,
    frag_size: usize,
    /// Its frames ask for a lazy acknowledgement.
    pub(crate) lazy: bool,
}

impl OutMsg {
    /// The payload of frame `index`. A message of one frame gives its bytes up rather than
    /// cloning them (cloning a `Bytes` made from a `Vec` allocates); [`give_back`](Self::give_back)
    /// returns them if the frame is not sent after all.
    pub(crate) fn take_frame_payload(&mut self, index: u32) -> Bytes {
        if self.count == 1 {
            return std::mem::take(&mut self.data).into_bytes();
        }
        let start = index as usize * self.frag_size;
        let end = (start + self.frag_size).min(self.data.len());
        self.data.range(start, end)
    }

    pub(crate) fn give_back(&mut self, payload: Bytes) {
        if self.count == 1 {
            self.data = payload.into();
        }
    }

    pub(crate) fn fragment(&self, index: u32) -> Option<Fragment> {
        (self.count > 1).then_some(Fragment {
            index,
            count: self.count,
        })
    }

    /// Payload length of the next frame to send.
    fn next_payload_len(&self) -> usize {
        if self.count == 1 {
            self.data.len()
        } else {
            let start = self.next_frag as usize * self.frag_size;
            (self.data.len() - start).min(self.frag_size)
        }
    }
}

/// A reliable message not yet reported delivered.
#[derive(Debug, Clone, Copy)]
struct Pending {
    /// Frames not yet acknowledged.
    left: u32,
    /// The ordered channel, if ordered.
    channel: Option<u8>,
}

/// What one peer has to send, and what it sent that is not yet known delivered.
#[derive(Debug, Default)]
pub(crate) struct SendQueue {
    next_msg: u32,
    /// Per ordered channel: the next order number, and the messages not yet reported
    /// delivered, in order (an ordered message counts as delivered only when every earlier one
    /// on its channel is acknowledged too: until then the receiver may be holding it).
    orders: Vec<(u8, u32, VecDeque<MessageId>)>,
    /// Messages of one frame, sent before the fragments of large ones (small messages never
    /// wait behind a large one).
    small: VecDeque<OutMsg>,
    large: VecDeque<OutMsg>,
    pending: rustc_hash::FxHashMap<MessageId, Pending>,
    /// Bytes of reliable messages queued or unacknowledged.
    pub(crate) queued_bytes: usize,
    /// Bytes not yet sent once (reliable and unreliable).
    pub(crate) unsent_bytes: usize,
    pub(crate) unreliable: VecDeque<Bytes>,
}

impl SendQueue {
    /// Whether messages are queued or unacknowledged.
    pub(crate) fn has_outstanding(&self) -> bool {
        !self.pending.is_empty()
    }

    /// How many messages are queued or unacknowledged.
    pub(crate) fn queued_messages(&self) -> usize {
        self.pending.len()
    }

    /// Messages queued or in flight.
    pub(crate) fn pending_ids(&self) -> impl Iterator<Item = MessageId> + '_ {
        self.pending.keys().copied()
    }

    pub(crate) fn pending_len(&self) -> usize {
        self.pending.len()
    }

    /// Queues a reliable message of `len` bytes split into frames: whole up to `whole` bytes,
    /// else fragments of `frag_size` (the sizes for its ordering, see `Peer::payload_sizes`).
    pub(crate) fn queue_reliable(
        &mut self,
        id: MessageId,
        data: Payload,
        delivery: Delivery,
        lazy: bool,
        sizes: impl Fn(bool) -> (usize, usize),
    ) {
        let (channel, order) = match delivery {
            Delivery::Unordered => (0, None),
            Delivery::Ordered { channel } => {
                let i = match self.orders.iter().position(|(c, _, _)| *c == channel) {
                    Some(i) => i,
                    None => {
                        self.orders.push((channel, 0, VecDeque::new()));
                        self.orders.len() - 1
                    }
                };
                let (_, next, waiting) = &mut self.orders[i];
                let o = *next;
                *next = next.wrapping_add(1);
                waiting.push_back(id);
                (channel, Some(o))
            }
        };
        let (whole, frag_size) = sizes(order.is_some());
        let count = if data.len() <= whole {
            1
        } else {
            data.len().div_ceil(frag_size) as u32
        };
        let message = self.next_msg;
        self.next_msg = self.next_msg.wrapping_add(1);
        self.queued_bytes += data.len();
        self.unsent_bytes += data.len();
        self.pending.insert(
            id,
            Pending {
                left: count,
                channel: order.map(|_| channel),
            },
        );
        let msg = OutMsg {
            id,
            message,
            channel,
            order,
            data,
            count,
            next_frag: 0,
            frag_size,
            lazy,
        };
        if count == 1 {
            self.small.push_back(msg);
        } else {
            self.large.push_back(msg);
        }
    }

    /// Queues an unreliable message, dropping the oldest past `limit`; false if one was
    /// dropped.
    pub(crate) fn queue_unreliable(&mut self, data: Bytes, limit: usize) -> bool {
        let mut dropped = false;
        if self.unreliable.len() >= limit {
            if let Some(old) = self.unreliable.pop_front() {
                self.unsent_bytes -= old.len();
            }
            dropped = true;
        }
        self.unsent_bytes += data.len();
        self.unreliable.push_back(data);
        !dropped
    }

    pub(crate) fn has_new_data(&self) -> bool {
        !self.small.is_empty() || !self.large.is_empty()
    }

    /// The message whose frame goes next (small ones first), and whether it is a small one.
    pub(crate) fn front_mut(&mut self) -> Option<(&mut OutMsg, bool)> {
        if let Some(m) = self.small.front_mut() {
            return Some((m, true));
        }
        self.large.front_mut().map(|m| (m, false))
    }

    /// The front message of its queue has sent its last frame.
    pub(crate) fn pop_front(&mut self, small: bool) {
        if small {
            self.small.pop_front();
        } else {
            self.large.pop_front();
        }
    }

    /// Wire length of the next new data frame, if any (`overhead` of a frame of its kind).
    pub(crate) fn next_frame_len(&self, overhead: impl Fn(bool, bool) -> usize) -> Option<usize> {
        let msg = self.small.front().or(self.large.front())?;
        let fragmented = msg.count > 1;
        Some(overhead(msg.order.is_some(), fragmented) + msg.next_payload_len())
    }

    /// A frame was acknowledged: its message's bytes leave the queue, and the message is
    /// reported `delivered` once all its frames are (an ordered one also once every earlier
    /// one of its channel is).
    pub(crate) fn on_frame_acked(&mut self, s: &Sent, delivered: &mut Vec<MessageId>) {
        self.queued_bytes -= s.payload.len();
        let Some(p) = self.pending.get_mut(&s.id) else {
            return;
        };
        p.left -= 1;
        if p.left == 0 {
            match p.channel {
                None => {
                    self.pending.remove(&s.id);
                    delivered.push(s.id);
                }
                Some(c) => self.release_ordered(c, delivered),
            }
        }
    }

    /// Reports, in order, the ordered messages of `channel` whose frames and predecessors are
    /// all acknowledged.
    fn release_ordered(&mut self, channel: u8, delivered: &mut Vec<MessageId>) {
        let Some((_, _, waiting)) = self.orders.iter_mut().find(|(c, _, _)| *c == channel) else {
            return;
        };
        while let Some(id) = waiting.front() {
            if self.pending.get(id).is_some_and(|p| p.left > 0) {
                break;
            }
            self.pending.remove(id);
            delivered.push(*id);
            waiting.pop_front();
        }
    }
}
