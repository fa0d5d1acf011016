//! The sending half: the next datagram to send, from the peers with something to say (in
//! turn), or a Close owed to a stray sender.

use std::time::Instant;

use bytes::Bytes;
use mesh_wire::{DatagramWriter, Header, FLAG_NO_CHECKSUM};

use super::*;
use crate::config::is_loopback;

impl Endpoint {
    /// Whether [`poll_transmit`](Self::poll_transmit) may have a datagram now (when this is
    /// false it has none, and a driver can skip reading the clock for it).
    pub fn has_transmit(&self) -> bool {
        !self.stray.is_empty() || !self.sched.ready.is_empty()
    }

    /// Writes the next datagram to send into `buf` (cleared first), or returns `None` when
    /// there is nothing to send now.
    pub fn poll_transmit(&mut self, now: Instant, buf: &mut Vec<u8>) -> Option<Transmit> {
        buf.clear();
        self.poll_transmit_append(now, buf)
    }

    /// Like [`poll_transmit`](Self::poll_transmit), but appends the datagram to what `buf`
    /// already holds: it is `buf[len_before..len_before + size]`. A driver fills one buffer
    /// with a batch this way and hands it to the socket without copying.
    pub fn poll_transmit_append(&mut self, now: Instant, buf: &mut Vec<u8>) -> Option<Transmit> {
        if !self.has_transmit() {
            return None;
        }
        self.poll_transmit_inner(self.tick(now), buf, None)
    }

    /// Like [`poll_transmit_append`](Self::poll_transmit_append), but a large data payload
    /// is not copied: it is left in `tail` (a slice of the message), and the datagram is
    /// `buf[len_before..len_before + size]` followed by the tail. For a driver that sends with
    /// scatter-gather I/O. `tail` must be `None` on entry. `Transmit::size` counts the bytes in
    /// `buf` only.
    pub fn poll_transmit_gather(
        &mut self,
        now: Instant,
        buf: &mut Vec<u8>,
        tail: &mut Option<Bytes>,
    ) -> Option<Transmit> {
        debug_assert!(tail.is_none());
        if !self.has_transmit() {
            return None;
        }
        // An authenticated datagram's trailer follows its frames: no detached payload then.
        let tail = self.config.cluster_key.is_none().then_some(tail);
        self.poll_transmit_inner(self.tick(now), buf, tail)
    }

    fn poll_transmit_inner(
        &mut self,
        now: Tick,
        buf: &mut Vec<u8>,
        mut tail: Option<&mut Option<Bytes>>,
    ) -> Option<Transmit> {
        let start = buf.len();
        if let Some(s) = self.stray.pop_front() {
            let header = Header::new(s.src, s.dst);
            let size = if self.config.cluster_key.is_some() {
                let pn = self.next_packet_number(now);
                let key = self.config.cluster_key.as_ref()?;
                let mut w = DatagramWriter::append_authenticated(buf, header, self.config.mtu);
                // A close frame always fits an empty datagram.
                let _ = w.push(&crate::peer::close_frame(s.reason));
                w.finish_authenticated(pn, key).len()
            } else {
                let mut w = DatagramWriter::append(buf, header, self.config.mtu);
                let _ = w.push(&crate::peer::close_frame(s.reason));
                w.finish().len()
            };
            self.stats.datagrams_sent += 1;
            self.stats.bytes_sent += size as u64;
            return Some(Transmit {
                destination: s.to,
                size,
                probe: false,
            });
        }
        while let Some(addr) = self.sched.ready.pop_front() {
            // Numbered whether or not the datagram is sent: gaps are harmless.
            let pn = self
                .config
                .cluster_key
                .is_some()
                .then(|| self.next_packet_number(now));
            let Some(p) = self.peers.get_mut(&addr) else {
                continue;
            };
            p.in_ready = false;
            let mut header = Header::new(p.local_id, p.remote_id);
            if !self.config.loopback_checksum && is_loopback(addr) {
                header.flags |= FLAG_NO_CHECKSUM;
            }
            // A path-MTU probe goes when nothing else is waiting, alone, at its own size.
            let probe = p.probe_due(now);
            let limit = probe.unwrap_or(p.mtu());
            let mut w = if self.config.cluster_key.is_some() {
                DatagramWriter::append_authenticated(buf, header, limit)
            } else {
                DatagramWriter::append(buf, header, limit)
            };
            let mut retransmitted = 0;
            if probe.is_some() {
                p.write_probe(now, &mut w);
            } else {
                p.write_datagram(
                    now,
                    &mut w,
                    &self.config,
                    &mut self.ack_scratch,
                    &mut retransmitted,
                    tail.as_deref_mut(),
                );
            }
            self.stats.retransmitted += retransmitted;
            if w.is_empty() {
                // Nothing fitted after all (the window closed): wait for an ack or a timer,
                // rather than coming straight back to this peer.
                buf.truncate(start);
                self.update_timer(addr);
                continue;
            }
            let detached = tail.as_deref().and_then(Option::as_ref);
            let size = match (&self.config.cluster_key, pn, detached) {
                (Some(key), Some(pn), _) => w.finish_authenticated(pn, key).len(),
                (_, _, Some(payload)) => w.finish_detached(payload).len(),
                _ => w.finish().len(),
            };
            let wire = size + detached.map_or(0, Bytes::len);
            p.stats.bytes_sent += wire as u64;
            self.stats.datagrams_sent += 1;
            self.stats.bytes_sent += wire as u64;
            self.sched.touch(&self.config, p, addr, now);
            return Some(Transmit {
                destination: addr,
                size,
                probe: probe.is_some(),
            });
        }
        None
    }
}
