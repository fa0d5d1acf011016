//! Per-peer protocol state, one concern per room (after quinn-proto's `connection/`):
//! - [`send`]: the send queue, the messages not yet delivered, ordered channels' bookkeeping;
//! - [`recovery`]: the frames in flight, loss detection, the retransmission timer;
//! - [`congestion`]: how much may be in flight (a [`Controller`] trait; NewReno);
//! - [`ack`]: what arrived and when to acknowledge it;
//! - [`reassembly`]: fragmented messages, within the caps;
//! - [`ordering`]: ordered channels on the receiving side;
//! - [`pmtu`]: the path MTU, probed upward from the base size, and black-hole detection;
//! - [`replay`]: the replay window of an authenticated session.
//!
//! [`Peer`] here ties them together: it writes datagrams, takes frames, and keeps the session
//! alive (keep-alive probes, the peer timeout).

mod ack;
mod congestion;
mod flight;
mod keepalive;
mod ordering;
mod pmtu;
mod reassembly;
mod recovery;
mod replay;
mod send;

use std::cell::Cell;
use std::collections::VecDeque;
use std::time::Duration;

use bytes::Bytes;
use mesh_wire::{
    CloseFrame, DataFrame, DatagramWriter, Frame, SeqRange, UnreliableFrame, HEADER_LEN,
};

use self::ack::AckState;
use self::congestion::{Controller, NewReno};
use self::ordering::Ordering;
use self::pmtu::PathMtu;
use self::reassembly::Reassembly;
use self::recovery::{Recovery, Sent};
use self::send::SendQueue;
use crate::config::EndpointConfig;
use crate::pool::BufferPool;
use crate::rtt::Rtt;
use crate::time::Tick;
use crate::types::{Delivery, DownReason, MessageId, Payload, PeerStats};

pub(crate) use self::keepalive::KeepaliveGrid;
pub(crate) use self::replay::ReplayWindow;

/// Data frames a sender may have in flight to one peer.
pub(crate) const MAX_INFLIGHT_FRAMES: usize = 4096;
/// Longest a receiver holds the acknowledgement of a lazy-ack frame (`PROTOCOL.md`).
pub(crate) const LAZY_ACK_DELAY: Duration = Duration::from_millis(5);
/// Room kept in each data datagram for a piggybacked ack with a few ranges.
const ACK_RESERVE: usize = 10 + 8 * 4;
/// Bookkeeping bytes charged per stored fragment or held message, on top of its payload.
const FRAGMENT_OVERHEAD: usize = 64;

/// Bytes of a peer's `send_queue_per_peer` each queued message stands for at least: the
/// queue holds at most `send_queue_per_peer / MESSAGE_CHARGE` messages (about 350 000 by
/// default): what a queued 1-byte message was measured to hold (186 bytes: its queue entry,
/// its pending record, its frame in flight and its share of datagram buffers; `tests/memory.rs`).
const MESSAGE_CHARGE: usize = 192;
/// Most pongs owed to a peer at once.
const MAX_PONGS: usize = 4;
/// Payloads from this size up are sent from where they lie (scatter-gather) when the caller
/// takes a tail; smaller ones are copied, which costs less than another I/O vector.
const DETACH_MIN: usize = 4096;

/// What the receive path tells the endpoint.
#[derive(Debug, Default)]
pub(crate) struct RecvOutcome {
    /// Messages ready for the application, in delivery order.
    pub(crate) delivered: Vec<Bytes>,
    /// Bytes newly charged (+) or released (-) against the reassembly caps.
    pub(crate) charge: isize,
}

/// Why a data frame was not taken.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Refused {
    Duplicate,
    OutOfWindow,
    NoRoom,
    Violation,
}

/// Room the endpoint grants this frame, decided before the frame is accepted.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Room {
    pub(crate) incoming_full: bool,
    pub(crate) reassembly_left: usize,
}

/// The counters a peer keeps; estimates are added when [`PeerStats`] is built.
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct Counters {
    pub(crate) frames_sent: u64,
    pub(crate) retransmitted: u64,
    pub(crate) frames_received: u64,
    pub(crate) duplicates: u64,
    pub(crate) dropped: u64,
    pub(crate) bytes_sent: u64,
    pub(crate) bytes_received: u64,
}

/// Pushes a data frame whose payload is `bytes`: detached into `tail` when one is offered
/// (and empty) and the payload is large, copied into the datagram otherwise.
fn push_data(
    w: &mut DatagramWriter<'_>,
    frame: DataFrame<'_>,
    bytes: &Bytes,
    tail: &mut Option<&mut Option<Bytes>>,
) -> Result<(), mesh_wire::EncodeError> {
    match tail {
        Some(slot) if slot.is_none() && bytes.len() >= DETACH_MIN => {
            w.push_detached(&frame)?;
            **slot = Some(bytes.clone());
            Ok(())
        }
        _ => w.push(&Frame::Data(frame)),
    }
}

/// A frame for a Close datagram written on a peer's session.
pub(crate) fn close_frame(reason: u8) -> Frame<'static> {
    Frame::Close(CloseFrame { reason })
}

/// Whether a frame of `len` wire bytes may go out now: under the frame cap, and within the
/// congestion window (a lone frame always may, so a window smaller than a frame still moves).
fn window_allows(recovery: &Recovery, cc: &impl Controller, len: usize) -> bool {
    recovery.in_flight_frames < MAX_INFLIGHT_FRAMES
        && (recovery.in_flight_bytes == 0 || recovery.in_flight_bytes + len <= cc.window())
}

/// The earliest deadline a change to a peer added to its timers, if any (see
/// [`Peer::queue_reliable`]): when the change moved nothing else, the peer's timer needs
/// refiling only if this is earlier than the one filed.
pub(crate) type Added = Option<Tick>;

/// The earlier of two deadlines, either of which may be absent.
fn earlier(a: Added, b: Added) -> Added {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

/// One peer's session: its sending and receiving halves, and its liveness. Generic over its
/// congestion controller (stored inline: an idle peer's size is budgeted).
#[derive(Debug)]
pub(crate) struct Peer<C: Controller = NewReno> {
    /// Packet numbers seen in this session (with a cluster key).
    pub(crate) replay: ReplayWindow,
    pub(crate) local_id: u64,
    pub(crate) remote_id: u64,
    /// Largest datagram to this peer: the base size, raised as probes find the path carries
    /// more (see `EndpointConfig::max_mtu`).
    pmtu: PathMtu,
    pub(crate) retired_remote: u64,
    pub(crate) timer: Option<Tick>,
    pub(crate) in_ready: bool,
    pub(crate) last_recv: Tick,
    /// When an acknowledgement last covered something new (or the queue went from empty).
    last_progress: Tick,
    last_ping: Option<Tick>,
    /// Keep-alive probes sent in a row before the last one with nothing heard in between:
    /// the exponent of the retry's backoff.
    unanswered_pings: u32,
    /// The last keep-alive instant computed on the grid, and what it was computed from (when
    /// last heard, and whether this end waits a step longer): the deadline is read several
    /// times per datagram, and what it depends on changes at most once per datagram.
    keepalive_memo: Cell<Option<(Tick, bool, Tick)>>,
    ping_token: u64,
    pub(crate) ping_now: bool,
    pongs: VecDeque<u64>,
    /// New small frames are held until then to pack more (`flush_interval`).
    flush_at: Option<Tick>,

    send: SendQueue,
    recovery: Recovery,
    cc: C,
    acks: AckState,
    reassembly: Reassembly,
    ordering: Ordering,
    /// Bytes charged against the reassembly caps: partial messages and held ordered ones.
    pub(crate) reassembly_bytes: usize,

    pub(crate) stats: Counters,
}

impl Peer<NewReno> {
    /// A session with a peer whose path may carry datagrams up to `ceiling` bytes (probed from
    /// `config.mtu` up).
    pub(crate) fn new(
        local_id: u64,
        remote_id: u64,
        ceiling: usize,
        now: Tick,
        config: &EndpointConfig,
    ) -> Self {
        let mtu = config.mtu;
        let cc = NewReno::new(
            config.initial_cwnd_datagrams * mtu,
            mtu,
            config.max_cwnd_bytes,
        );
        Self {
            // Keep-alive tokens count up from `local_id`; probe tokens from its complement.
            pmtu: PathMtu::new(mtu, ceiling, !local_id),
            replay: ReplayWindow::default(),
            local_id,
            remote_id,
            retired_remote: 0,
            timer: None,
            in_ready: false,
            last_recv: now,
            last_progress: now,
            last_ping: None,
            unanswered_pings: 0,
            keepalive_memo: Cell::new(None),
            ping_token: local_id,
            ping_now: false,
            pongs: VecDeque::new(),
            flush_at: None,
            send: SendQueue::default(),
            recovery: Recovery::new(Rtt::default()),
            cc,
            acks: AckState::default(),
            reassembly: Reassembly::default(),
            ordering: Ordering::default(),
            reassembly_bytes: 0,
            stats: Counters::default(),
        }
    }
}

impl<C: Controller> Peer<C> {
    /// Bytes of one unfragmented message's payload that fit a datagram, and of one fragment.
    fn payload_sizes(mtu: usize, ordered: bool) -> (usize, usize) {
        let room = Self::frame_room(mtu);
        (
            room - DataFrame::overhead(ordered, false),
            room - DataFrame::overhead(ordered, true),
        )
    }

    /// Whether messages are queued or unacknowledged.
    pub(crate) fn has_outstanding(&self) -> bool {
        self.send.has_outstanding()
    }

    /// Messages queued or in flight.
    pub(crate) fn pending_ids(&self) -> impl Iterator<Item = MessageId> + '_ {
        self.send.pending_ids()
    }

    /// Whether a message of `len` bytes fits the send queue: its bytes within
    /// `send_queue_per_peer`, and the messages within one per [`MESSAGE_CHARGE`] bytes of it
    /// (a message's bookkeeping outweighs a tiny one's bytes: without a count, 64 MiB of
    /// 1-byte messages would hold gigabytes).
    pub(crate) fn queue_has_room(&self, len: usize, config: &EndpointConfig) -> bool {
        let limit = config.send_queue_per_peer;
        self.send.queued_bytes + len <= limit
            && self.send.queued_messages() < (limit / MESSAGE_CHARGE).max(1)
    }

    /// Queues a reliable message the queue has room for ([`queue_has_room`](Self::queue_has_room),
    /// asked first). Returns the earliest deadline queueing added (the progress timeout it
    /// started, the flush it scheduled): nothing else about the peer's timers changes.
    pub(crate) fn queue_reliable(
        &mut self,
        now: Tick,
        id: MessageId,
        data: Payload,
        delivery: Delivery,
        lazy: bool,
        config: &EndpointConfig,
    ) -> Added {
        debug_assert!(self.queue_has_room(data.len(), config));
        let mut added = None;
        if !self.send.has_outstanding() {
            // Progress is measured from the moment there is something to acknowledge.
            self.last_progress = now;
            added = Some(now + config.peer_timeout);
        }
        let mtu = self.pmtu.current();
        self.send
            .queue_reliable(id, data, delivery, lazy, |ordered| {
                Self::payload_sizes(mtu, ordered)
            });
        earlier(added, self.hold_for_flush(now, config))
    }

    /// Queues an unreliable message (false: the oldest queued was dropped for it), and the
    /// deadline queueing added, as [`queue_reliable`](Self::queue_reliable) returns it.
    pub(crate) fn queue_unreliable(
        &mut self,
        now: Tick,
        data: Bytes,
        config: &EndpointConfig,
    ) -> (bool, Added) {
        let kept = self.send.queue_unreliable(data, config.unreliable_queue);
        (kept, self.hold_for_flush(now, config))
    }

    /// Schedules the flush of what was just queued, unless one is scheduled; returns the new
    /// deadline.
    fn hold_for_flush(&mut self, now: Tick, config: &EndpointConfig) -> Added {
        if let (Some(interval), None) = (config.flush_interval, self.flush_at) {
            self.flush_at = Some(now + interval);
            return self.flush_at;
        }
        None
    }

    fn flush_allows(&self, now: Tick) -> bool {
        match self.flush_at {
            None => true,
            Some(at) => at <= now || self.send.unsent_bytes >= self.pmtu.current(),
        }
    }

    /// Whether a datagram would carry anything right now, a path-MTU probe included.
    pub(crate) fn wants_transmit(&self, now: Tick) -> bool {
        self.pmtu.due().is_some() || self.wants_datagram(now)
    }

    /// Whether a datagram other than a probe would carry anything right now.
    fn wants_datagram(&self, now: Tick) -> bool {
        if self.acks.now || self.ping_now || !self.pongs.is_empty() {
            return true;
        }
        let cc = &self.cc;
        let lost_fits = self
            .recovery
            .first_lost()
            .is_some_and(|(_, s)| window_allows(&self.recovery, cc, s.wire_len()));
        lost_fits
            || (self.flush_allows(now)
                && (self
                    .send
                    .next_frame_len(DataFrame::overhead)
                    .is_some_and(|len| window_allows(&self.recovery, cc, len))
                    || !self.send.unreliable.is_empty()))
    }

    /// The largest datagram to this peer now.
    pub(crate) fn mtu(&self) -> usize {
        self.pmtu.current()
    }

    /// The size of the path-MTU probe (or base-size check) to send now, if one is due and
    /// nothing else is (a probe waits behind data, acknowledgements and pings, and goes
    /// alone: [`write_probe`](Self::write_probe)).
    pub(crate) fn probe_due(&self, now: Tick) -> Option<usize> {
        self.pmtu.due().filter(|_| !self.wants_datagram(now))
    }

    /// Writes the probe [`probe_due`](Self::probe_due) announced into `w` (sized for it): a
    /// ping padded to the probed size. Not counted in flight, never retransmitted.
    pub(crate) fn write_probe(&mut self, now: Tick, w: &mut DatagramWriter<'_>) {
        if let Some(p) = self.pmtu.on_sent(now) {
            if w.push(&Frame::Ping { token: p.token }).is_ok() {
                w.pad_to(p.size);
            }
        }
    }

    /// The socket refused a datagram of `size` bytes to this peer as larger than its link.
    pub(crate) fn on_refused(&mut self, size: usize, now: Tick) {
        self.pmtu.on_refused(size, now);
    }

    /// A pong: a probe's answer, or a keep-alive's. A keep-alive's answer is also a round-trip
    /// sample: each probe, repeats included, carries a token of its own, so the answer names
    /// the probe it answers (Karn's ambiguity does not arise). An end that sends no data has
    /// no other, and would repeat its unanswered probes on the initial timeout's schedule.
    pub(crate) fn on_pong(&mut self, token: u64, now: Tick) {
        let before = self.pmtu.current();
        if self.pmtu.on_pong(token, now) {
            if self.pmtu.current() != before {
                self.cc.on_mtu(self.pmtu.current());
            }
        } else if token == self.ping_token {
            // While a probe waits to be written it already has the next token: a match is
            // the answer to the probe sent at `last_ping`. Taken once, so a duplicated answer
            // gives no second, later sample; an answered probe counts for nothing more
            // (`last_ping` matters only while later than anything heard).
            if !self.ping_now {
                if let Some(sent) = self.last_ping.take() {
                    self.recovery
                        .rtt
                        .sample(now.saturating_duration_since(sent));
                }
            }
            self.ping_now = false;
        }
    }

    /// Writes one datagram's worth of frames into `w`. With `tail` given, a large data frame's
    /// payload is left out of `w` (see [`DatagramWriter::push_detached`]) and put in `tail`, to
    /// be sent behind it.
    pub(crate) fn write_datagram(
        &mut self,
        now: Tick,
        w: &mut DatagramWriter<'_>,
        config: &EndpointConfig,
        ack_scratch: &mut Vec<SeqRange>,
        retransmitted: &mut u64,
        mut tail: Option<&mut Option<Bytes>>,
    ) {
        if self.acks.owed() {
            self.acks.write(now, w, ack_scratch);
        }
        while let Some(&token) = self.pongs.front() {
            if w.push(&Frame::Pong { token }).is_err() {
                break;
            }
            self.pongs.pop_front();
        }
        if self.ping_now
            && w.push(&Frame::Ping {
                token: self.ping_token,
            })
            .is_ok()
        {
            self.ping_now = false;
            self.unanswered_pings = match self.last_ping {
                Some(p) if p > self.last_recv => self.unanswered_pings.saturating_add(1),
                _ => 0,
            };
            self.last_ping = Some(now);
        }
        self.write_retransmissions(now, w, retransmitted, &mut tail);
        if self.flush_allows(now) {
            self.write_new_data(now, w, &mut tail);
            while let Some(data) = self.send.unreliable.front() {
                if w.push(&Frame::Unreliable(UnreliableFrame { payload: data }))
                    .is_err()
                {
                    break;
                }
                self.send.unsent_bytes -= data.len();
                self.send.unreliable.pop_front();
            }
            if !self.send.has_new_data() && self.send.unreliable.is_empty() {
                self.flush_at = None;
            }
        }
        if self.recovery.in_flight_frames > 0 && self.recovery.rto_deadline.is_none() {
            self.recovery.rto_deadline = Some(now + self.recovery.rto(config));
        }
    }

    /// Lost frames first, oldest first, as the window allows.
    fn write_retransmissions(
        &mut self,
        now: Tick,
        w: &mut DatagramWriter<'_>,
        retransmitted: &mut u64,
        tail: &mut Option<&mut Option<Bytes>>,
    ) {
        loop {
            self.recovery.skip_stale_lost();
            let Some((seq, s)) = self.recovery.first_lost() else {
                return;
            };
            if !window_allows(&self.recovery, &self.cc, s.wire_len()) {
                return;
            }
            let frame = DataFrame {
                lazy_ack: s.lazy,
                channel: s.channel,
                seq: seq as u32,
                message: s.message,
                order: s.order,
                fragment: s.fragment,
                payload: &s.payload,
            };
            if push_data(w, frame, &s.payload, tail).is_err() {
                return;
            }
            self.recovery.retransmitting(now);
            self.stats.retransmitted += 1;
            *retransmitted += 1;
        }
    }

    /// New data frames, small messages first, as the window and the datagram allow.
    fn write_new_data(
        &mut self,
        now: Tick,
        w: &mut DatagramWriter<'_>,
        tail: &mut Option<&mut Option<Bytes>>,
    ) {
        let Self {
            send,
            recovery,
            cc,
            stats,
            ..
        } = self;
        while let Some((msg, small)) = send.front_mut() {
            let index = msg.next_frag;
            let payload = msg.take_frame_payload(index);
            let fragment = msg.fragment(index);
            let len = DataFrame::overhead(msg.order.is_some(), fragment.is_some()) + payload.len();
            if !window_allows(recovery, cc, len) {
                msg.give_back(payload);
                return;
            }
            let frame = DataFrame {
                lazy_ack: msg.lazy,
                channel: msg.channel,
                seq: recovery.next_seq as u32,
                message: msg.message,
                order: msg.order,
                fragment,
                payload: &payload,
            };
            if push_data(w, frame, &payload, tail).is_err() {
                msg.give_back(payload);
                return;
            }
            let payload_len = payload.len();
            let sent = Sent::new(
                msg.id,
                msg.channel,
                msg.message,
                msg.order,
                fragment,
                payload,
                now,
                msg.lazy,
            );
            msg.next_frag += 1;
            let done = msg.next_frag == msg.count;
            recovery.on_sent(sent);
            send.unsent_bytes -= payload_len;
            stats.frames_sent += 1;
            if done {
                send.pop_front(small);
            }
        }
    }

    /// Processes an acknowledgement: the messages it completes go to `delivered`. `Err` for an
    /// ack of data never sent. `scratch`: the endpoint's, for the sequence numbers covered.
    pub(crate) fn on_ack(
        &mut self,
        now: Tick,
        ack: &mesh_wire::AckFrame<'_>,
        config: &EndpointConfig,
        delivered: &mut Vec<MessageId>,
        scratch: &mut Vec<u64>,
    ) -> Result<(), ()> {
        let Self { send, recovery, .. } = self;
        let Some(acked) =
            recovery.on_ack(now, ack, scratch, |s| send.on_frame_acked(s, delivered))?
        else {
            return Ok(());
        };
        self.last_progress = now;
        self.pmtu.on_progress(now);
        // Congestion control: slow start, then additive increase, outside recovery.
        self.cc.on_ack(acked.largest, acked.bytes);
        if config.fixed_rto.is_none() {
            if let Some(first) = self.recovery.detect_losses() {
                self.cc.on_loss(first, self.recovery.next_seq);
                self.pmtu.on_data_lost();
            }
        }
        self.recovery.rto_deadline =
            (self.recovery.in_flight_frames > 0).then(|| now + self.recovery.rto(config));
        Ok(())
    }

    /// The retransmission timer fired: everything in flight is presumed lost. Returns true
    /// when this shows a path-MTU black hole: the oldest frame in flight is larger than the
    /// base size carries and cannot be cut smaller (a fragment is numbered among its
    /// message's pieces), so the session must end; the next starts at the base size.
    fn on_rto(&mut self, now: Tick, config: &EndpointConfig) -> bool {
        self.recovery.on_rto(now, config);
        self.cc.on_rto(self.recovery.next_seq);
        self.pmtu.on_data_lost();
        let base_room = Self::frame_room(self.pmtu.base());
        let suspicious = self
            .recovery
            .first_lost()
            .is_some_and(|(_, s)| s.wire_len() > base_room);
        let black_hole = suspicious && self.pmtu.on_rto();
        if black_hole {
            tracing::debug!(mtu = self.pmtu.current(), "path MTU black hole");
        }
        black_hole
    }

    /// Bytes of frames that fit a data datagram of `mtu` bytes.
    fn frame_room(mtu: usize) -> usize {
        mtu - HEADER_LEN - ACK_RESERVE
    }

    /// Takes a data frame. `room` says what the endpoint can still hold.
    pub(crate) fn on_data(
        &mut self,
        now: Tick,
        d: &DataFrame<'_>,
        room: Room,
        config: &EndpointConfig,
        pool: &BufferPool,
        out: &mut RecvOutcome,
    ) -> Result<(), Refused> {
        self.stats.frames_received += 1;
        let seq = self.acks.unwrap(d.seq);
        if let Err(e) = self.acks.admit(seq) {
            if e == Refused::Duplicate {
                self.stats.duplicates += 1;
                self.acks.on_duplicate();
            }
            return Err(e);
        }
        if room.incoming_full {
            return Err(Refused::NoRoom);
        }
        let complete = match d.fragment {
            None => {
                let held = d
                    .order
                    .is_some_and(|o| !self.ordering.is_next(d.channel, o));
                if held {
                    let cost = d.payload.len() + FRAGMENT_OVERHEAD;
                    if cost > room.reassembly_left
                        || self.reassembly_bytes + cost > config.reassembly_per_peer
                    {
                        return Err(Refused::NoRoom);
                    }
                }
                Some(Bytes::copy_from_slice(d.payload))
            }
            Some(f) => self.reassembly.on_fragment(
                d,
                f,
                room,
                config,
                pool,
                &mut self.reassembly_bytes,
                &mut out.charge,
            )?,
        };
        // Accepted: record the sequence number and decide when to acknowledge it.
        self.acks.on_received(now, seq, d.lazy_ack, config);
        if let Some(data) = complete {
            let charge = self
                .ordering
                .deliver(d.channel, d.order, data, &mut out.delivered);
            self.reassembly_bytes = (self.reassembly_bytes as isize + charge) as usize;
            out.charge += charge;
        }
        Ok(())
    }

    pub(crate) fn queue_pong(&mut self, token: u64) {
        if self.pongs.len() < MAX_PONGS {
            self.pongs.push_back(token);
        }
    }

    /// The next instant this peer needs `handle_timeout`.
    pub(crate) fn deadline(&self, config: &EndpointConfig, grid: &KeepaliveGrid) -> Tick {
        let mut d = self.silent_until(config);
        if !self.ping_now {
            // While a ping waits to be written, its deadline has already fired.
            d = d.min(self.keepalive_due(config, grid));
        }
        if self.has_outstanding() {
            d = d.min(self.last_progress + config.peer_timeout);
        }
        for t in [
            self.acks.deadline,
            self.recovery.rto_deadline,
            self.flush_at,
            self.pmtu.deadline(|| self.recovery.rto(config)),
        ]
        .into_iter()
        .flatten()
        {
            d = d.min(t);
        }
        d
    }

    /// When this peer, heard from last at `last_recv`, has been silent for `peer_timeout`
    /// and is taken for dead.
    fn silent_until(&self, config: &EndpointConfig) -> Tick {
        self.last_recv + config.peer_timeout
    }

    /// Timer work. Returns why the session must end, if it must.
    pub(crate) fn on_timeout(
        &mut self,
        now: Tick,
        config: &EndpointConfig,
        grid: &KeepaliveGrid,
    ) -> Option<DownReason> {
        if now >= self.silent_until(config)
            || (self.has_outstanding() && now >= self.last_progress + config.peer_timeout)
        {
            return Some(DownReason::Timeout);
        }
        self.acks.on_timeout(now);
        if self.recovery.rto_deadline.is_some_and(|t| t <= now) {
            if self.recovery.has_unacked() {
                if self.on_rto(now, config) {
                    return Some(DownReason::PathMtu);
                }
            } else {
                self.recovery.rto_deadline = None;
            }
        }
        self.pmtu.on_timeout(now, self.recovery.rto(config));
        if now >= self.keepalive_due(config, grid) {
            self.ping_now = true;
            self.ping_token = self.ping_token.wrapping_add(1);
        }
        None
    }

    /// When this peer is next probed, if nothing is heard from it before. A probe still
    /// unanswered is repeated a retransmission timeout after it went out, doubling with each
    /// probe in a row that goes unanswered, at most a keep-alive interval, and at most half
    /// the time left before `peer_timeout` (never less than a retransmission timeout): a lost
    /// probe or answer costs about a round trip, a path that comes back before the timeout is
    /// asked again before it runs out, and a dead peer costs a few probes (about two per
    /// doubling from the retransmission timeout to the interval) before it is reported.
    /// Otherwise on the endpoint's keep-alive grid, within a keep-alive interval
    /// of the last datagram from it. Of the two ends of a session, the one with the larger
    /// session id waits a grid step longer: the other's probe comes first and pushes its own
    /// back, so a quiet pair exchanges one probe and one answer per interval, not two of each.
    fn keepalive_due(&self, config: &EndpointConfig, grid: &KeepaliveGrid) -> Tick {
        if let Some(p) = self.last_ping.filter(|&p| p > self.last_recv) {
            let rto = self.recovery.rto(config);
            let backoff = rto.saturating_mul(1 << self.unanswered_pings.min(16));
            let half_left = self.silent_until(config).saturating_duration_since(p) / 2;
            return p + backoff.min(config.keepalive()).min(half_left.max(rto));
        }
        let heard = self.last_recv;
        let passive = self.remote_id != 0 && self.local_id > self.remote_id;
        if let Some((h, p, due)) = self.keepalive_memo.get() {
            if h == heard && p == passive {
                return due;
            }
        }
        let wait = config.keepalive() + if passive { grid.step() } else { Duration::ZERO };
        let due = grid.due(heard, wait);
        self.keepalive_memo.set(Some((heard, passive, due)));
        due
    }

    pub(crate) fn snapshot_stats(&self, config: &EndpointConfig) -> PeerStats {
        let c = self.stats;
        PeerStats {
            frames_sent: c.frames_sent,
            retransmitted: c.retransmitted,
            frames_received: c.frames_received,
            duplicates: c.duplicates,
            dropped: c.dropped,
            bytes_sent: c.bytes_sent,
            bytes_received: c.bytes_received,
            srtt: self.recovery.rtt.srtt(config),
            rtt_measured: self.recovery.rtt.measured(),
            rttvar: self.recovery.rtt.rttvar(),
            rto: self.recovery.rto(config),
            cwnd: self.cc.window(),
            in_flight_bytes: self.recovery.in_flight_bytes,
            in_flight_frames: self.recovery.in_flight_frames,
            pending_messages: self.send.pending_len(),
            mtu: self.pmtu.current(),
        }
    }
}
