//! Ordered delivery on the receiving side: messages of an ordered channel wait for the ones
//! before them.

use std::collections::BTreeMap;

use bytes::Bytes;

use super::FRAGMENT_OVERHEAD;
use crate::ranges::unwrap_seq;

/// Ordered-delivery state of one channel from one peer.
#[derive(Debug, Default)]
struct ChannelRecv {
    next: u64,
    held: BTreeMap<u64, Bytes>,
}

/// The ordered channels of one peer.
#[derive(Debug, Default)]
pub(crate) struct Ordering {
    channels: Vec<(u8, ChannelRecv)>,
}

impl Ordering {
    /// Whether `order` is the next message of `channel`.
    pub(crate) fn is_next(&self, channel: u8, order: u32) -> bool {
        let next = self
            .channels
            .iter()
            .find(|(c, _)| *c == channel)
            .map_or(0, |(_, ch)| ch.next);
        unwrap_seq(order, next) == next
    }

    /// Hands a complete message on: at once when unordered or next in its channel (with the
    /// held ones it releases), otherwise held. Returns the bytes newly charged (+) or released
    /// (-) against the reassembly caps by holding.
    pub(crate) fn deliver(
        &mut self,
        channel: u8,
        order: Option<u32>,
        data: Bytes,
        delivered: &mut Vec<Bytes>,
    ) -> isize {
        let Some(order) = order else {
            delivered.push(data);
            return 0;
        };
        let idx = match self.channels.iter().position(|(c, _)| *c == channel) {
            Some(i) => i,
            None => {
                self.channels.push((channel, ChannelRecv::default()));
                self.channels.len() - 1
            }
        };
        let ch = &mut self.channels[idx].1;
        let o = unwrap_seq(order, ch.next);
        let mut charge = 0isize;
        if o == ch.next {
            delivered.push(data);
            ch.next += 1;
            while let Some(entry) = ch.held.first_entry() {
                if *entry.key() != ch.next {
                    break;
                }
                let held = entry.remove();
                charge -= (held.len() + FRAGMENT_OVERHEAD) as isize;
                delivered.push(held);
                ch.next += 1;
            }
        } else if o > ch.next {
            charge += (data.len() + FRAGMENT_OVERHEAD) as isize;
            ch.held.insert(o, data);
        }
        charge
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn b(n: u8) -> Bytes {
        Bytes::from(vec![n])
    }

    #[test]
    fn a_channel_holds_what_comes_early_and_releases_it_in_order() {
        let mut o = Ordering::default();
        let mut out = Vec::new();
        assert!(o.is_next(3, 0));
        assert_eq!(
            o.deliver(3, Some(2), b(2), &mut out),
            1 + FRAGMENT_OVERHEAD as isize
        );
        assert_eq!(
            o.deliver(3, Some(1), b(1), &mut out),
            1 + FRAGMENT_OVERHEAD as isize
        );
        assert!(out.is_empty());
        // Another channel and unordered messages are not held behind it.
        o.deliver(4, Some(0), b(40), &mut out);
        o.deliver(0, None, b(99), &mut out);
        assert_eq!(out, vec![b(40), b(99)]);
        out.clear();
        let released = o.deliver(3, Some(0), b(0), &mut out);
        assert_eq!(released, -2 * (1 + FRAGMENT_OVERHEAD as isize));
        assert_eq!(out, vec![b(0), b(1), b(2)]);
        assert!(o.is_next(3, 3));
        // A late duplicate of an old order number is dropped.
        out.clear();
        assert_eq!(o.deliver(3, Some(1), b(1), &mut out), 0);
        assert!(out.is_empty());
    }
}
