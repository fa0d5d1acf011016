//! Per-peer protocol state: sending, acknowledgement, loss recovery, receiving, reassembly.

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::time::{Duration, Instant};

use bytes::Bytes;
use mesh_wire::{
    AckFrame, AckRanges, CloseFrame, DataFrame, DatagramWriter, Fragment, Frame, SeqRange,
    UnreliableFrame, HEADER_LEN,
};

use crate::config::EndpointConfig;
use crate::pool::BufferPool;
use crate::ranges::{unwrap_seq, RangeSet};
use crate::rtt::Rtt;
use crate::types::{Delivery, MessageId, Payload, PeerStats};

/// Data frames a sender may have in flight to one peer.
pub(crate) const MAX_INFLIGHT_FRAMES: usize = 4096;
/// Sequence numbers a receiver accepts beyond its cumulative point (> `MAX_INFLIGHT_FRAMES`).
pub(crate) const RECV_WINDOW: u64 = 8192;
/// Most disjoint ranges a receiver tracks above its cumulative point.
const MAX_RECV_RANGES: usize = 256;
/// Most selective ranges written in one ack.
const ACK_RANGES_SENT: usize = 16;
/// Longest a receiver holds the acknowledgement of a lazy-ack frame (`PROTOCOL.md`).
pub(crate) const LAZY_ACK_DELAY: Duration = Duration::from_millis(5);
/// Lazy-ack frames a receiver holds unacknowledged at most.
const LAZY_ACK_FRAMES: u32 = 16;
/// Room kept in each data datagram for a piggybacked ack with a few ranges.
const ACK_RESERVE: usize = 10 + 8 * 4;
/// Most partial messages held per peer.
const MAX_PARTIALS: usize = 64;
/// Bookkeeping bytes charged per stored fragment, on top of its payload.
const FRAGMENT_OVERHEAD: usize = 64;
/// Most pongs owed to a peer at once.
const MAX_PONGS: usize = 4;
/// Multiplicative decrease and the minimum window, in datagrams.
const MIN_CWND_DATAGRAMS: usize = 2;
/// Acks of this many later frames mark an earlier one lost (fast retransmit).
const PACKET_THRESHOLD: u64 = 3;

/// A message waiting for its frames to be sent for the first time.
#[derive(Debug)]
struct OutMsg {
    id: MessageId,
    message: u32,
    channel: u8,
    order: Option<u32>,
    data: Payload,
    count: u32,
    next_frag: u32,
    frag_size: usize,
    /// Its frames ask for a lazy acknowledgement.
    lazy: bool,
}

impl OutMsg {
    /// The payload of frame `index`. A message of one frame gives its bytes up rather than
    /// cloning them (cloning a `Bytes` made from a `Vec` allocates); [`give_back`](Self::give_back)
    /// returns them if the frame is not sent after all.
    fn take_frame_payload(&mut self, index: u32) -> Bytes {
        if self.count == 1 {
            return std::mem::take(&mut self.data).into_bytes();
        }
        let start = index as usize * self.frag_size;
        let end = (start + self.frag_size).min(self.data.len());
        self.data.range(start, end)
    }

    fn give_back(&mut self, payload: Bytes) {
        if self.count == 1 {
            self.data = payload.into();
        }
    }

    fn fragment(&self, index: u32) -> Option<Fragment> {
        (self.count > 1).then_some(Fragment {
            index,
            count: self.count,
        })
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

/// A data frame sent and not yet acknowledged.
#[derive(Debug)]
struct Sent {
    id: MessageId,
    channel: u8,
    message: u32,
    order: Option<u32>,
    fragment: Option<Fragment>,
    payload: Bytes,
    sent_at: Instant,
    retransmitted: bool,
    lost: bool,
    lazy: bool,
}

impl Sent {
    fn wire_len(&self) -> usize {
        DataFrame::overhead(self.order.is_some(), self.fragment.is_some()) + self.payload.len()
    }
}

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

/// Payloads from this size up are sent from where they lie (scatter-gather) when the caller
/// takes a tail; smaller ones are copied, which costs less than another I/O vector.
const DETACH_MIN: usize = 4096;

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

/// Ordered-delivery state of one channel from one peer.
#[derive(Debug, Default)]
struct ChannelRecv {
    next: u64,
    held: BTreeMap<u64, Bytes>,
}

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

#[derive(Debug)]
pub(crate) struct Peer {
    /// Packet numbers seen in this session (with a cluster key).
    pub(crate) replay: ReplayWindow,
    pub(crate) local_id: u64,
    pub(crate) remote_id: u64,
    /// Largest datagram to this peer (see `EndpointConfig::loopback_mtu`).
    pub(crate) mtu: usize,
    pub(crate) retired_remote: u64,
    pub(crate) timer: Option<Instant>,
    pub(crate) in_ready: bool,
    pub(crate) last_recv: Instant,
    last_progress: Instant,
    last_ping: Option<Instant>,
    ping_token: u64,
    pub(crate) ping_now: bool,
    pongs: VecDeque<u64>,

    // Sending.
    next_seq: u64,
    next_msg: u32,
    /// Per ordered channel: the next order number, and the messages not yet reported
    /// delivered, in order (an ordered message counts as delivered only when every earlier one
    /// on its channel is acknowledged too: until then the receiver may be holding it).
    send_orders: Vec<(u8, u32, VecDeque<MessageId>)>,
    small: VecDeque<OutMsg>,
    large: VecDeque<OutMsg>,
    sent: BTreeMap<u64, Sent>,
    lost: BTreeSet<u64>,
    pending: rustc_hash::FxHashMap<MessageId, Pending>,
    queued_bytes: usize,
    unsent_bytes: usize,
    in_flight_bytes: usize,
    in_flight_frames: usize,
    largest_acked: Option<u64>,
    loss_scan_from: u64,
    recovery_until: u64,
    rtt: Rtt,
    rto_deadline: Option<Instant>,
    cwnd: usize,
    ssthresh: usize,
    flush_at: Option<Instant>,
    unreliable: VecDeque<Bytes>,
    scratch: Vec<u64>,

    // Receiving.
    recv_cum: u64,
    recv_above: RangeSet,
    ack_pending: bool,
    pub(crate) ack_now: bool,
    ack_deadline: Option<Instant>,
    ack_since: Option<Instant>,
    ack_count: u32,
    /// Lazy-ack frames received and not yet acknowledged.
    lazy_count: u32,
    /// Lazy-ack frames sent and not yet acknowledged: the peer may hold their acks.
    lazy_unacked: usize,
    partials: HashMap<u32, Partial>,
    pub(crate) reassembly_bytes: usize,
    channels: Vec<(u8, ChannelRecv)>,

    pub(crate) stats: Counters,
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

impl Peer {
    pub(crate) fn new(
        local_id: u64,
        remote_id: u64,
        mtu: usize,
        now: Instant,
        config: &EndpointConfig,
    ) -> Self {
        let cwnd = config.initial_cwnd_datagrams * mtu;
        Self {
            mtu,
            replay: ReplayWindow::default(),
            local_id,
            remote_id,
            retired_remote: 0,
            timer: None,
            in_ready: false,
            last_recv: now,
            last_progress: now,
            last_ping: None,
            ping_token: local_id,
            ping_now: false,
            pongs: VecDeque::new(),
            next_seq: 0,
            next_msg: 0,
            send_orders: Vec::new(),
            small: VecDeque::new(),
            large: VecDeque::new(),
            sent: BTreeMap::new(),
            lost: BTreeSet::new(),
            pending: rustc_hash::FxHashMap::default(),
            queued_bytes: 0,
            unsent_bytes: 0,
            in_flight_bytes: 0,
            in_flight_frames: 0,
            largest_acked: None,
            loss_scan_from: 0,
            recovery_until: 0,
            rtt: Rtt::new(
                config.initial_rto,
                config.min_rto,
                config.effective_max_rto(),
                config.fixed_rto,
            ),
            rto_deadline: None,
            cwnd,
            ssthresh: usize::MAX,
            flush_at: None,
            unreliable: VecDeque::new(),
            scratch: Vec::new(),
            recv_cum: 0,
            recv_above: RangeSet::new(),
            ack_pending: false,
            ack_now: false,
            ack_deadline: None,
            ack_since: None,
            ack_count: 0,
            lazy_count: 0,
            lazy_unacked: 0,
            partials: HashMap::new(),
            reassembly_bytes: 0,
            channels: Vec::new(),
            stats: Counters::default(),
        }
    }

    /// Bytes of one unfragmented message's payload that fit a datagram, and of one fragment.
    fn payload_sizes(&self, ordered: bool) -> (usize, usize) {
        let room = self.mtu - HEADER_LEN - ACK_RESERVE;
        (
            room - DataFrame::overhead(ordered, false),
            room - DataFrame::overhead(ordered, true),
        )
    }

    /// Whether messages are queued or unacknowledged.
    pub(crate) fn has_outstanding(&self) -> bool {
        !self.pending.is_empty()
    }

    /// Messages queued or in flight.
    pub(crate) fn pending_ids(&self) -> impl Iterator<Item = MessageId> + '_ {
        self.pending.keys().copied()
    }

    pub(crate) fn queue_has_room(&self, len: usize, config: &EndpointConfig) -> bool {
        self.queued_bytes + len <= config.send_queue_per_peer
    }

    pub(crate) fn queue_reliable(
        &mut self,
        now: Instant,
        id: MessageId,
        data: Payload,
        delivery: Delivery,
        lazy: bool,
        config: &EndpointConfig,
    ) -> bool {
        if !self.queue_has_room(data.len(), config) {
            return false;
        }
        if self.pending.is_empty() {
            // Progress is measured from the moment there is something to acknowledge.
            self.last_progress = now;
        }
        let (channel, order) = match delivery {
            Delivery::Unordered => (0, None),
            Delivery::Ordered { channel } => {
                let i = match self.send_orders.iter().position(|(c, _, _)| *c == channel) {
                    Some(i) => i,
                    None => {
                        self.send_orders.push((channel, 0, VecDeque::new()));
                        self.send_orders.len() - 1
                    }
                };
                let (_, next, waiting) = &mut self.send_orders[i];
                let o = *next;
                *next = next.wrapping_add(1);
                waiting.push_back(id);
                (channel, Some(o))
            }
        };
        let (whole, frag_size) = self.payload_sizes(order.is_some());
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
        if let (Some(interval), None) = (config.flush_interval, self.flush_at) {
            self.flush_at = Some(now + interval);
        }
        true
    }

    pub(crate) fn queue_unreliable(
        &mut self,
        now: Instant,
        data: Bytes,
        config: &EndpointConfig,
    ) -> bool {
        let mut dropped = false;
        if self.unreliable.len() >= config.unreliable_queue {
            self.unreliable.pop_front();
            dropped = true;
        }
        self.unsent_bytes += data.len();
        self.unreliable.push_back(data);
        if let (Some(interval), None) = (config.flush_interval, self.flush_at) {
            self.flush_at = Some(now + interval);
        }
        !dropped
    }

    fn window_allows(&self, len: usize) -> bool {
        self.in_flight_frames < MAX_INFLIGHT_FRAMES
            && (self.in_flight_bytes == 0 || self.in_flight_bytes + len <= self.cwnd)
    }

    fn flush_allows(&self, now: Instant) -> bool {
        match self.flush_at {
            None => true,
            Some(at) => at <= now || self.unsent_bytes >= self.mtu,
        }
    }

    fn has_new_data(&self) -> bool {
        !self.small.is_empty() || !self.large.is_empty()
    }

    /// Wire length of the next new data frame, if any.
    fn next_new_frame_len(&self) -> Option<usize> {
        let msg = self.small.front().or(self.large.front())?;
        let fragment = msg.fragment(msg.next_frag);
        let payload = if msg.count == 1 {
            msg.data.len()
        } else {
            let start = msg.next_frag as usize * msg.frag_size;
            (msg.data.len() - start).min(msg.frag_size)
        };
        Some(DataFrame::overhead(msg.order.is_some(), fragment.is_some()) + payload)
    }

    /// Whether a datagram would carry anything right now.
    pub(crate) fn wants_transmit(&self, now: Instant) -> bool {
        if self.ack_now || self.ping_now || !self.pongs.is_empty() {
            return true;
        }
        let lost_fits = self
            .lost
            .first()
            .and_then(|seq| self.sent.get(seq))
            .is_some_and(|s| self.window_allows(s.wire_len()));
        lost_fits
            || (self.flush_allows(now)
                && (self
                    .next_new_frame_len()
                    .is_some_and(|len| self.window_allows(len))
                    || !self.unreliable.is_empty()))
    }

    /// Writes one datagram's worth of frames into `w`. With `tail` given, a large data frame's
    /// payload is left out of `w` (see [`DatagramWriter::push_detached`]) and put in `tail`, to
    /// be sent behind it.
    pub(crate) fn write_datagram(
        &mut self,
        now: Instant,
        w: &mut DatagramWriter<'_>,
        config: &EndpointConfig,
        ack_scratch: &mut Vec<SeqRange>,
        retransmitted: &mut u64,
        mut tail: Option<&mut Option<Bytes>>,
    ) {
        if self.ack_pending || self.ack_now {
            self.write_ack(now, w, ack_scratch);
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
            self.last_ping = Some(now);
        }
        // Retransmissions first, oldest first.
        while let Some(&seq) = self.lost.first() {
            let Some(s) = self.sent.get_mut(&seq) else {
                self.lost.pop_first();
                continue;
            };
            let len = s.wire_len();
            if !(self.in_flight_frames < MAX_INFLIGHT_FRAMES
                && (self.in_flight_bytes == 0 || self.in_flight_bytes + len <= self.cwnd))
            {
                break;
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
            if push_data(w, frame, &s.payload, &mut tail).is_err() {
                break;
            }
            s.lost = false;
            s.retransmitted = true;
            s.sent_at = now;
            self.in_flight_bytes += len;
            self.in_flight_frames += 1;
            self.lost.pop_first();
            self.stats.retransmitted += 1;
            *retransmitted += 1;
        }
        if self.flush_allows(now) {
            self.write_new_data(now, w, &mut tail);
            while let Some(data) = self.unreliable.front() {
                if w.push(&Frame::Unreliable(UnreliableFrame { payload: data }))
                    .is_err()
                {
                    break;
                }
                self.unsent_bytes -= data.len();
                self.unreliable.pop_front();
            }
            if !self.has_new_data() && self.unreliable.is_empty() {
                self.flush_at = None;
            }
        }
        if self.in_flight_frames > 0 && self.rto_deadline.is_none() {
            self.rto_deadline = Some(now + self.rto(config));
        }
    }

    fn write_new_data(
        &mut self,
        now: Instant,
        w: &mut DatagramWriter<'_>,
        tail: &mut Option<&mut Option<Bytes>>,
    ) {
        loop {
            let from_small = !self.small.is_empty();
            let Some(msg) = (if from_small {
                self.small.front_mut()
            } else {
                self.large.front_mut()
            }) else {
                return;
            };
            let index = msg.next_frag;
            let payload = msg.take_frame_payload(index);
            let fragment = msg.fragment(index);
            let len = DataFrame::overhead(msg.order.is_some(), fragment.is_some()) + payload.len();
            if !(self.in_flight_frames < MAX_INFLIGHT_FRAMES
                && (self.in_flight_bytes == 0 || self.in_flight_bytes + len <= self.cwnd))
            {
                msg.give_back(payload);
                return;
            }
            let seq = self.next_seq;
            let frame = DataFrame {
                lazy_ack: msg.lazy,
                channel: msg.channel,
                seq: seq as u32,
                message: msg.message,
                order: msg.order,
                fragment,
                payload: &payload,
            };
            if push_data(w, frame, &payload, tail).is_err() {
                msg.give_back(payload);
                return;
            }
            self.next_seq += 1;
            self.in_flight_bytes += len;
            self.in_flight_frames += 1;
            self.unsent_bytes -= payload.len();
            self.stats.frames_sent += 1;
            let sent = Sent {
                id: msg.id,
                channel: msg.channel,
                message: msg.message,
                order: msg.order,
                fragment,
                payload,
                sent_at: now,
                retransmitted: false,
                lost: false,
                lazy: msg.lazy,
            };
            self.lazy_unacked += usize::from(msg.lazy);
            msg.next_frag += 1;
            if msg.next_frag == msg.count {
                if from_small {
                    self.small.pop_front();
                } else {
                    self.large.pop_front();
                }
            }
            self.sent.insert(seq, sent);
        }
    }

    fn write_ack(&mut self, now: Instant, w: &mut DatagramWriter<'_>, scratch: &mut Vec<SeqRange>) {
        scratch.clear();
        let room = w.remaining().saturating_sub(10) / 8;
        for r in self.recv_above.iter().take(ACK_RANGES_SENT.min(room)) {
            scratch.push(SeqRange {
                start: r.start as u32,
                end: r.end as u32,
            });
        }
        let delay = self
            .ack_since
            .map_or(0, |t| now.saturating_duration_since(t).as_micros())
            .min(u128::from(u32::MAX)) as u32;
        let frame = Frame::Ack(AckFrame {
            cumulative: self.recv_cum as u32,
            delay_micros: delay,
            ranges: AckRanges::List(scratch),
        });
        if w.push(&frame).is_ok() {
            self.ack_pending = false;
            self.ack_now = false;
            self.ack_deadline = None;
            self.ack_since = None;
            self.ack_count = 0;
            self.lazy_count = 0;
        }
    }

    /// The retransmission timeout, allowing for the peer's ack delay: longer while frames
    /// whose acks the peer may hold (lazy acks) are in flight.
    fn rto(&self, config: &EndpointConfig) -> Duration {
        let allowance = if self.lazy_unacked > 0 {
            config.max_ack_delay.max(LAZY_ACK_DELAY)
        } else {
            config.max_ack_delay
        };
        self.rtt.rto(allowance)
    }

    /// Processes an acknowledgement. Returns the messages now fully acknowledged, or `Err` for
    /// an ack of data never sent.
    pub(crate) fn on_ack(
        &mut self,
        now: Instant,
        ack: &AckFrame<'_>,
        config: &EndpointConfig,
        delivered: &mut Vec<MessageId>,
    ) -> Result<(), ()> {
        let cum = unwrap_seq(ack.cumulative, self.next_seq);
        if cum > self.next_seq {
            return Err(());
        }
        let mut largest_new: Option<(u64, bool, Instant)> = None;
        let mut acked_bytes = 0usize;
        let mut newly = std::mem::take(&mut self.scratch);
        newly.clear();
        newly.extend(self.sent.range(..cum).map(|(&k, _)| k));
        for r in ack.ranges.iter() {
            let start = unwrap_seq(r.start, cum);
            let end = unwrap_seq(r.end, start);
            if start < cum || end <= start || end > self.next_seq {
                continue;
            }
            newly.extend(self.sent.range(start..end).map(|(&k, _)| k));
        }
        for &seq in &newly {
            let Some(s) = self.sent.remove(&seq) else {
                continue;
            };
            self.lazy_unacked -= usize::from(s.lazy);
            let len = s.wire_len();
            if s.lost {
                self.lost.remove(&seq);
            } else {
                self.in_flight_bytes -= len;
                self.in_flight_frames -= 1;
            }
            acked_bytes += len;
            self.queued_bytes -= s.payload.len();
            if largest_new.is_none_or(|(l, _, _)| seq > l) {
                largest_new = Some((seq, s.retransmitted, s.sent_at));
            }
            if let Some(p) = self.pending.get_mut(&s.id) {
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
        }
        self.scratch = newly;
        let Some((largest, retransmitted, sent_at)) = largest_new else {
            return Ok(());
        };
        self.last_progress = now;
        self.rtt.backoff = 0;
        if !retransmitted {
            // Karn: only frames sent once give samples.
            let sample = now.saturating_duration_since(sent_at);
            let delay = Duration::from_micros(u64::from(ack.delay_micros));
            self.rtt.sample(if sample > delay {
                sample - delay
            } else {
                sample
            });
        }
        // Congestion control: slow start, then additive increase, outside recovery.
        if largest >= self.recovery_until {
            if self.cwnd < self.ssthresh {
                self.cwnd += acked_bytes;
            } else {
                self.cwnd += (self.mtu * acked_bytes / self.cwnd).max(1);
            }
            self.cwnd = self.cwnd.min(config.max_cwnd_bytes);
        }
        self.largest_acked = Some(self.largest_acked.map_or(largest, |l| l.max(largest)));
        if !self.rtt.is_fixed() {
            self.detect_losses();
        }
        self.rto_deadline = (self.in_flight_frames > 0).then(|| now + self.rto(config));
        Ok(())
    }

    /// Reports, in order, the ordered messages of `channel` whose frames and predecessors are
    /// all acknowledged.
    fn release_ordered(&mut self, channel: u8, delivered: &mut Vec<MessageId>) {
        let Some((_, _, waiting)) = self.send_orders.iter_mut().find(|(c, _, _)| *c == channel)
        else {
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

    /// Marks frames lost that `PACKET_THRESHOLD` later frames have overtaken.
    fn detect_losses(&mut self) {
        let Some(largest) = self.largest_acked else {
            return;
        };
        let threshold = largest.saturating_sub(PACKET_THRESHOLD - 1);
        if threshold <= self.loss_scan_from {
            return;
        }
        let mut first_loss = None;
        for (&seq, s) in self.sent.range_mut(self.loss_scan_from..threshold) {
            if !s.lost {
                s.lost = true;
                self.in_flight_bytes -= s.wire_len();
                self.in_flight_frames -= 1;
                self.lost.insert(seq);
                first_loss.get_or_insert(seq);
            }
        }
        self.loss_scan_from = threshold;
        if let Some(seq) = first_loss {
            if seq >= self.recovery_until {
                self.enter_recovery(false);
            }
        }
    }

    fn enter_recovery(&mut self, timeout: bool) {
        let min = MIN_CWND_DATAGRAMS * self.mtu;
        self.ssthresh = (self.cwnd / 2).max(min);
        self.cwnd = if timeout { min } else { self.ssthresh };
        self.recovery_until = self.next_seq;
    }

    /// The retransmission timer fired: everything in flight is presumed lost.
    pub(crate) fn on_rto(&mut self, now: Instant, config: &EndpointConfig) {
        for (&seq, s) in self.sent.iter_mut() {
            if !s.lost {
                s.lost = true;
                self.lost.insert(seq);
            }
        }
        self.in_flight_bytes = 0;
        self.in_flight_frames = 0;
        self.loss_scan_from = self.next_seq;
        self.enter_recovery(true);
        self.rtt.backoff = self.rtt.backoff.saturating_add(1);
        self.rto_deadline = Some(now + self.rto(config));
    }

    /// Takes a data frame. `room` says what the endpoint can still hold.
    pub(crate) fn on_data(
        &mut self,
        now: Instant,
        d: &DataFrame<'_>,
        room: Room,
        config: &EndpointConfig,
        pool: &BufferPool,
        out: &mut RecvOutcome,
    ) -> Result<(), Refused> {
        self.stats.frames_received += 1;
        let seq = unwrap_seq(d.seq, self.recv_cum);
        if seq < self.recv_cum || self.recv_above.contains(seq) {
            self.stats.duplicates += 1;
            self.ack_now = true;
            return Err(Refused::Duplicate);
        }
        if seq >= self.recv_cum + RECV_WINDOW {
            return Err(Refused::OutOfWindow);
        }
        if seq != self.recv_cum && self.recv_above.len() >= MAX_RECV_RANGES {
            return Err(Refused::NoRoom);
        }
        if room.incoming_full {
            return Err(Refused::NoRoom);
        }
        let complete = match d.fragment {
            None => {
                let held = d
                    .order
                    .is_some_and(|o| !self.is_next_in_order(d.channel, o));
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
            Some(f) => self.on_fragment(d, f, room, config, pool, out)?,
        };
        // Accepted: record the sequence number.
        if seq == self.recv_cum {
            self.recv_cum += 1;
            if let Some(r) = self.recv_above.first() {
                if r.start == self.recv_cum {
                    self.recv_cum = r.end;
                    self.recv_above.remove_below(r.end);
                }
            }
        } else {
            self.recv_above.insert(seq);
            self.ack_now = true;
        }
        self.ack_pending = true;
        if self.ack_since.is_none() {
            self.ack_since = Some(now);
        }
        let delay = if d.lazy_ack {
            // Nobody waits on it: held for something else to carry it, within limits.
            self.lazy_count += 1;
            if self.lazy_count >= LAZY_ACK_FRAMES {
                self.ack_now = true;
            }
            config.max_ack_delay.max(LAZY_ACK_DELAY)
        } else {
            self.ack_count += 1;
            if self.ack_count >= 2 || config.max_ack_delay.is_zero() {
                self.ack_now = true;
            }
            config.max_ack_delay
        };
        if !self.recv_above.is_empty() {
            self.ack_now = true;
        }
        if !self.ack_now {
            let t = now + delay;
            self.ack_deadline = Some(self.ack_deadline.map_or(t, |d| d.min(t)));
        }
        if let Some(data) = complete {
            self.deliver(d.channel, d.order, data, out);
        }
        Ok(())
    }

    fn is_next_in_order(&self, channel: u8, order: u32) -> bool {
        let next = self
            .channels
            .iter()
            .find(|(c, _)| *c == channel)
            .map_or(0, |(_, ch)| ch.next);
        unwrap_seq(order, next) == next
    }

    fn on_fragment(
        &mut self,
        d: &DataFrame<'_>,
        f: Fragment,
        room: Room,
        config: &EndpointConfig,
        pool: &BufferPool,
        out: &mut RecvOutcome,
    ) -> Result<Option<Bytes>, Refused> {
        let len = d.payload.len();
        let fresh = !self.partials.contains_key(&d.message);
        if fresh
            && (self.partials.len() >= MAX_PARTIALS
                || len + FRAGMENT_OVERHEAD > room.reassembly_left
                || self.reassembly_bytes + len + FRAGMENT_OVERHEAD > config.reassembly_per_peer)
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
        let left = room.reassembly_left.min(
            config
                .reassembly_per_peer
                .saturating_sub(self.reassembly_bytes),
        );
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
        let charge = (cost + slack) as isize - p.slack as isize;
        p.slack = slack;
        p.charged = (p.charged as isize + charge) as usize;
        self.reassembly_bytes = (self.reassembly_bytes as isize + charge) as usize;
        out.charge += charge;
        if p.next != p.count {
            return Ok(None);
        }
        let p = self.partials.remove(&d.message).expect("present");
        self.reassembly_bytes -= p.charged;
        out.charge -= p.charged as isize;
        Ok(Some(pool.wrap(p.head)))
    }

    fn deliver(&mut self, channel: u8, order: Option<u32>, data: Bytes, out: &mut RecvOutcome) {
        let Some(order) = order else {
            out.delivered.push(data);
            return;
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
        if o == ch.next {
            out.delivered.push(data);
            ch.next += 1;
            while let Some(entry) = ch.held.first_entry() {
                if *entry.key() != ch.next {
                    break;
                }
                let held = entry.remove();
                let cost = held.len() + FRAGMENT_OVERHEAD;
                self.reassembly_bytes -= cost;
                out.charge -= cost as isize;
                out.delivered.push(held);
                ch.next += 1;
            }
        } else if o > ch.next {
            let cost = data.len() + FRAGMENT_OVERHEAD;
            self.reassembly_bytes += cost;
            out.charge += cost as isize;
            ch.held.insert(o, data);
        }
    }

    pub(crate) fn queue_pong(&mut self, token: u64) {
        if self.pongs.len() < MAX_PONGS {
            self.pongs.push_back(token);
        }
    }

    /// The next instant this peer needs `handle_timeout`.
    pub(crate) fn deadline(&self, config: &EndpointConfig) -> Instant {
        let heard = self.last_recv.max(self.last_ping.unwrap_or(self.last_recv));
        let mut d = self.last_recv + config.peer_timeout;
        if !self.ping_now {
            // While a ping waits to be written, its deadline has already fired.
            d = d.min(heard + config.keepalive());
        }
        if self.has_outstanding() {
            d = d.min(self.last_progress + config.peer_timeout);
        }
        for t in [self.ack_deadline, self.rto_deadline, self.flush_at]
            .into_iter()
            .flatten()
        {
            d = d.min(t);
        }
        d
    }

    /// Timer work. Returns true when the peer must be reported down (timeout).
    pub(crate) fn on_timeout(&mut self, now: Instant, config: &EndpointConfig) -> bool {
        if now >= self.last_recv + config.peer_timeout
            || (self.has_outstanding() && now >= self.last_progress + config.peer_timeout)
        {
            return true;
        }
        if self.ack_deadline.is_some_and(|t| t <= now) {
            self.ack_now = true;
            self.ack_deadline = None;
        }
        if self.rto_deadline.is_some_and(|t| t <= now) {
            if self.sent.is_empty() {
                self.rto_deadline = None;
            } else {
                self.on_rto(now, config);
            }
        }
        let heard = self.last_recv.max(self.last_ping.unwrap_or(self.last_recv));
        if now >= heard + config.keepalive() {
            self.ping_now = true;
            self.ping_token = self.ping_token.wrapping_add(1);
        }
        false
    }

    /// A frame for a Close datagram written on this peer's session.
    pub(crate) fn close_frame(reason: u8) -> Frame<'static> {
        Frame::Close(CloseFrame { reason })
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
            srtt: self.rtt.srtt(),
            rttvar: self.rtt.rttvar(),
            rto: self.rto(config),
            cwnd: self.cwnd,
            in_flight_bytes: self.in_flight_bytes,
            in_flight_frames: self.in_flight_frames,
            pending_messages: self.pending.len(),
        }
    }

    /// Whether `token` answers our last ping.
    pub(crate) fn pong_matches(&self, token: u64) -> bool {
        token == self.ping_token
    }
}

/// The packet numbers a session has seen: the highest, and which of the 64 below it (more
/// reordering than that is refused and recovered by retransmission).
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct ReplayWindow {
    pub(crate) highest: u64,
    seen: u64,
}

impl ReplayWindow {
    /// Records `pn`; false if it was seen, or is too far below the highest to tell.
    pub(crate) fn accept(&mut self, pn: u64) -> bool {
        if pn > self.highest {
            let shift = pn - self.highest;
            self.seen = if shift >= 64 { 0 } else { self.seen << shift };
            self.seen |= 1;
            self.highest = pn;
            return true;
        }
        let back = self.highest - pn;
        if back >= 64 || self.seen & (1 << back) != 0 {
            return false;
        }
        self.seen |= 1 << back;
        true
    }
}

#[cfg(test)]
mod replay_tests {
    use super::ReplayWindow;

    #[test]
    fn replays_and_ancient_numbers_are_refused() {
        let mut w = ReplayWindow::default();
        assert!(w.accept(1000));
        assert!(!w.accept(1000));
        assert!(w.accept(1002));
        assert!(w.accept(1001), "reordered but new");
        assert!(!w.accept(1001));
        assert!(w.accept(1100));
        assert!(!w.accept(1002), "too far below the highest");
        assert!(w.accept(1050));
        assert!(!w.accept(1050));
        assert!(w.accept(u64::MAX));
        assert!(!w.accept(u64::MAX));
    }
}
