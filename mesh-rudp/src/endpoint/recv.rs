//! The receiving half: a datagram from the network, checked, matched to its session (or a
//! new one, within the limits on unknown senders), and its frames handed to the peer.

use std::net::SocketAddr;
use std::time::Instant;

use bytes::Bytes;
use mesh_wire::{
    Datagram, DecodeError, Frame, FrameReader, CLOSE_PROTOCOL_ERROR, CLOSE_UNKNOWN_SESSION,
};
use tracing::{debug, trace, trace_span};

use super::*;
use crate::config::is_loopback;
use crate::peer::{Peer, Refused, Room};
use crate::types::{DownReason, Event};

impl Endpoint {
    /// Takes one received datagram. Invalid input is counted in [`stats`](Self::stats) and
    /// dropped before any peer state is created. The frames of a datagram of a known session
    /// are read once, each acted on as it is read: one that turns out malformed part-way
    /// (which only a faulty peer sends: its checksum and session ids were right) is acted on up
    /// to that frame, its arrival counting as word from the peer, and counted as invalid.
    pub fn handle_datagram(&mut self, now: Instant, from: SocketAddr, bytes: &[u8]) {
        let now = self.tick(now);
        let _span = trace_span!("peer", peer = %from).entered();
        self.stats.datagrams_received += 1;
        self.stats.bytes_received += bytes.len() as u64;
        let opened =
            match Datagram::open(bytes, self.config.cluster_key.as_ref(), is_loopback(from)) {
                Ok(d) => d,
                Err(e @ (DecodeError::BadTag | DecodeError::Unauthenticated)) => {
                    trace!(%from, error = %e, "unauthenticated datagram");
                    self.stats.dropped_unauthenticated += 1;
                    return;
                }
                Err(e) => {
                    trace!(%from, error = %e, "invalid datagram");
                    self.stats.dropped_invalid += 1;
                    return;
                }
            };
        let h = opened.header();
        if h.src_session == 0 {
            self.stats.dropped_invalid += 1;
            return;
        }
        let pn = opened.packet_number();
        // The common case, a datagram of the session we know (what the general path below
        // does for it, with one lookup of the peer instead of three).
        if let Some(p) = self.peers.get_mut(&from) {
            if p.remote_id == h.src_session && (h.dst_session == 0 || h.dst_session == p.local_id) {
                if pn.is_some_and(|pn| !p.replay.accept(pn)) {
                    trace!(%from, pn, "replayed datagram");
                    self.stats.dropped_replay += 1;
                    return;
                }
                self.process_frames(now, from, opened.frames(), bytes.len());
                return;
            }
        }
        // Off the common path every frame is checked before anything is done: a malformed
        // datagram creates no peer and ends no session.
        let datagram = match opened.check() {
            Ok(d) => d,
            Err(e) => {
                trace!(%from, error = %e, "invalid datagram");
                self.stats.dropped_invalid += 1;
                return;
            }
        };
        if let Some(pn) = pn {
            if !self.fresh(now, from, h.src_session, pn) {
                trace!(%from, pn, "replayed datagram");
                self.stats.dropped_replay += 1;
                return;
            }
        }
        // Needed only off the common path (a datagram of the session we know), so it is not
        // worked out (a pass over the frames) unless asked.
        let is_close = || datagram.frames().any(|f| matches!(f, Frame::Close(_)));
        match self.peers.get(&from) {
            Some(p) => {
                if h.dst_session != 0 && h.dst_session != p.local_id {
                    let src = p.local_id;
                    self.stale_session(now, from, src, h.src_session, is_close());
                    return;
                }
                if h.src_session != p.remote_id {
                    let is_close = is_close();
                    if is_close && h.dst_session == p.local_id {
                        // A close on our session is honoured whoever's session it names.
                        self.peer_down(from, DownReason::Closed);
                        return;
                    }
                    if p.remote_id == 0 {
                        self.peers.get_mut(&from).expect("present").remote_id = h.src_session;
                    } else if h.src_session == p.retired_remote || h.dst_session != 0 || is_close {
                        self.stats.dropped_stale_session += 1;
                        return;
                    } else {
                        // A new session from the same address: the peer restarted or reset.
                        let retired = p.remote_id;
                        self.peer_down(from, DownReason::Reset);
                        if !self.create_remote_peer(now, from, h.src_session) {
                            return;
                        }
                        self.peers.get_mut(&from).expect("created").retired_remote = retired;
                    }
                }
            }
            None => {
                let is_close = is_close();
                if h.dst_session != 0 {
                    let src = self.next_id();
                    self.stale_session(now, from, src, h.src_session, is_close);
                    return;
                }
                if is_close || !self.create_remote_peer(now, from, h.src_session) {
                    return;
                }
            }
        }
        if let (Some(pn), Some(p)) = (pn, self.peers.get_mut(&from)) {
            // A session just created (or re-created) starts its window here.
            if p.replay.highest < pn {
                p.replay.accept(pn);
            }
        }
        self.process_frames(now, from, opened.frames(), bytes.len());
    }

    /// A datagram named a session of ours that is gone: count it, and (unless it was itself a
    /// close, or this second's budget of such replies is spent) tell the sender to start a new
    /// session.
    fn stale_session(&mut self, now: Tick, from: SocketAddr, src: u64, their: u64, is_close: bool) {
        self.stats.dropped_stale_session += 1;
        if !is_close
            && self
                .stray_tokens
                .take(now, self.config.new_peers_per_second)
        {
            self.push_stray(Stray {
                to: from,
                src,
                dst: their,
                reason: CLOSE_UNKNOWN_SESSION,
            });
        }
    }

    fn create_remote_peer(&mut self, now: Tick, from: SocketAddr, remote: u64) -> bool {
        if self.closing
            || self.peers.len() >= self.config.max_peers
            || !self.take_new_peer_token(now)
        {
            self.stats.dropped_peer_limit += 1;
            return false;
        }
        let id = self.next_id();
        self.peers.insert(
            from,
            Box::new(Peer::new(
                id,
                remote,
                self.config.ceiling_for(from),
                now,
                &self.config,
            )),
        );
        self.stats.peers = self.peers.len();
        debug!(peer = %from, "new peer");
        true
    }

    fn process_frames(&mut self, now: Tick, from: SocketAddr, frames: FrameReader<'_>, len: usize) {
        let mut out = std::mem::take(&mut self.recv_scratch);
        out.delivered.clear();
        out.charge = 0;
        let mut delivered = std::mem::take(&mut self.delivered_scratch);
        delivered.clear();
        let mut violation = false;
        let mut closed = false;
        {
            let p = self.peers.get_mut(&from).expect("caller ensured");
            p.last_recv = now;
            p.stats.bytes_received += len as u64;
            for frame in frames {
                let frame = match frame {
                    Ok(frame) => frame,
                    Err(e) => {
                        trace!(%from, error = %e, "malformed frame");
                        self.stats.dropped_invalid += 1;
                        break;
                    }
                };
                match frame {
                    Frame::Data(data) => {
                        let room = Room {
                            incoming_full: self.incoming + self.backlog
                                >= self.config.max_incoming_messages,
                            reassembly_left: self
                                .config
                                .reassembly_total
                                .saturating_sub(self.reassembly_total),
                        };
                        match p.on_data(now, &data, room, &self.config, &self.pool, &mut out) {
                            Ok(()) => {}
                            Err(Refused::Duplicate) => self.stats.duplicates += 1,
                            Err(Refused::OutOfWindow) => {
                                p.stats.dropped += 1;
                                self.stats.dropped_out_of_window += 1;
                            }
                            Err(Refused::NoRoom) => {
                                p.stats.dropped += 1;
                                self.stats.dropped_no_room += 1;
                            }
                            Err(Refused::Violation) => {
                                violation = true;
                                break;
                            }
                        }
                        self.reassembly_total =
                            (self.reassembly_total as isize + out.charge).max(0) as usize;
                        out.charge = 0;
                        for data in out.delivered.drain(..) {
                            self.incoming += 1;
                            self.stats.messages_received += 1;
                            self.events.push_back(Event::Message {
                                from,
                                data,
                                reliable: true,
                            });
                        }
                    }
                    Frame::Ack(ack) => {
                        let scratch = &mut self.acked_scratch;
                        match p.on_ack(now, &ack, &self.config, &mut delivered, scratch) {
                            Ok(()) => {}
                            Err(()) => self.stats.dropped_out_of_window += 1,
                        }
                    }
                    Frame::Unreliable(u) => {
                        if self.incoming + self.backlog >= self.config.max_incoming_messages {
                            self.stats.dropped_unreliable += 1;
                        } else {
                            self.incoming += 1;
                            self.events.push_back(Event::Message {
                                from,
                                data: Bytes::copy_from_slice(u.payload),
                                reliable: false,
                            });
                        }
                    }
                    Frame::Ping { token } => p.queue_pong(token),
                    Frame::Pong { token } => p.on_pong(token, now),
                    Frame::Close(_) => {
                        closed = true;
                        break;
                    }
                    _ => {}
                }
            }
            if !violation && !closed {
                // Its timer and its place in the send queue, with the lookup already made
                // (one lookup of the peer per datagram fewer: they are a visible share of a
                // bulk receiver's time).
                self.sched.touch(&self.config, p, from, now);
            }
        }
        for id in delivered.drain(..) {
            self.stats.messages_delivered += 1;
            self.events.push_back(Event::Delivered { peer: from, id });
        }
        self.delivered_scratch = delivered;
        self.recv_scratch = out;
        if violation {
            debug!(peer = %from, "protocol violation; closing");
            self.close_peer_with(from, CLOSE_PROTOCOL_ERROR, DownReason::ProtocolError);
        } else if closed {
            self.peer_down(from, DownReason::Closed);
        }
    }

    /// Whether an authenticated datagram from `from` is new: unseen in its session, or, for a
    /// session this endpoint has no state for, recent by the sender's clock.
    fn fresh(&mut self, now: Tick, from: SocketAddr, src_session: u64, pn: u64) -> bool {
        match self.peers.get_mut(&from) {
            Some(p) if p.remote_id == src_session || p.remote_id == 0 => p.replay.accept(pn),
            // A new session from a known address must be newer than all we saw from it.
            Some(p) => pn > p.replay.highest,
            None => {
                let skew = self.config.max_clock_skew.as_micros() as u64;
                self.unix_micros(now).abs_diff(pn) <= skew
            }
        }
    }
}
