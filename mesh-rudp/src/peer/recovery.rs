//! Loss recovery on the sending side: the frames in flight, which of them are lost (fast
//! retransmit after [`PACKET_THRESHOLD`] later frames were acknowledged, or the
//! retransmission timer), and the round-trip estimate that sets that timer.

use std::collections::BTreeSet;
use std::time::Duration;

use bytes::Bytes;
use mesh_wire::{AckFrame, DataFrame, Fragment};

use super::flight::Flight;
use super::LAZY_ACK_DELAY;
use crate::config::EndpointConfig;
use crate::ranges::unwrap_seq;
use crate::rtt::Rtt;
use crate::time::Tick;
use crate::types::MessageId;

/// Acks of this many later frames mark an earlier one lost (fast retransmit).
pub(crate) const PACKET_THRESHOLD: u64 = 3;

/// A data frame sent and not yet acknowledged.
#[derive(Debug)]
pub(crate) struct Sent {
    pub(crate) id: MessageId,
    pub(crate) channel: u8,
    pub(crate) message: u32,
    pub(crate) order: Option<u32>,
    pub(crate) fragment: Option<Fragment>,
    pub(crate) payload: Bytes,
    pub(crate) sent_at: Tick,
    pub(crate) retransmitted: bool,
    lost: bool,
    pub(crate) lazy: bool,
}

impl Sent {
    #[allow(clippy::too_many_arguments, reason = "a frame's every field")]
    pub(crate) fn new(
        id: MessageId,
        channel: u8,
        message: u32,
        order: Option<u32>,
        fragment: Option<Fragment>,
        payload: Bytes,
        sent_at: Tick,
        lazy: bool,
    ) -> Self {
        Self {
            id,
            channel,
            message,
            order,
            fragment,
            payload,
            sent_at,
            retransmitted: false,
            lost: false,
            lazy,
        }
    }

    pub(crate) fn wire_len(&self) -> usize {
        DataFrame::overhead(self.order.is_some(), self.fragment.is_some()) + self.payload.len()
    }
}

/// What an acknowledgement newly covered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Acked {
    /// The largest sequence number newly acknowledged.
    pub(crate) largest: u64,
    /// Wire bytes newly acknowledged.
    pub(crate) bytes: usize,
}

/// The frames one peer has in flight and what is known of them.
#[derive(Debug)]
pub(crate) struct Recovery {
    pub(crate) next_seq: u64,
    sent: Flight,
    lost: BTreeSet<u64>,
    pub(crate) in_flight_bytes: usize,
    pub(crate) in_flight_frames: usize,
    largest_acked: Option<u64>,
    /// Frames below this were looked at for loss already.
    loss_scan_from: u64,
    pub(crate) rto_deadline: Option<Tick>,
    pub(crate) rtt: Rtt,
    /// Lazy-ack frames sent and not yet acknowledged: the peer may hold their acks.
    lazy_unacked: usize,
}

impl Recovery {
    pub(crate) fn new(rtt: Rtt) -> Self {
        Self {
            next_seq: 0,
            sent: Flight::default(),
            lost: BTreeSet::new(),
            in_flight_bytes: 0,
            in_flight_frames: 0,
            largest_acked: None,
            loss_scan_from: 0,
            rto_deadline: None,
            rtt,
            lazy_unacked: 0,
        }
    }

    /// Records a frame sent for the first time, under the next sequence number (returned).
    pub(crate) fn on_sent(&mut self, s: Sent) -> u64 {
        let seq = self.next_seq;
        self.next_seq += 1;
        self.in_flight_bytes += s.wire_len();
        self.in_flight_frames += 1;
        self.lazy_unacked += usize::from(s.lazy);
        // The ring ends at `next_seq`, counted up above: this frame's slot is its last.
        self.sent.push(s);
        seq
    }

    /// The oldest lost frame, to retransmit first.
    pub(crate) fn first_lost(&self) -> Option<(u64, &Sent)> {
        let &seq = self.lost.first()?;
        self.sent.get(seq, self.next_seq).map(|s| (seq, s))
    }

    /// The oldest lost frame is being retransmitted at `now`: in flight again.
    pub(crate) fn retransmitting(&mut self, now: Tick) -> Option<(u64, &Sent)> {
        let seq = self.lost.pop_first()?;
        let s = self.sent.get_mut(seq, self.next_seq)?;
        s.lost = false;
        s.retransmitted = true;
        s.sent_at = now;
        self.in_flight_bytes += s.wire_len();
        self.in_flight_frames += 1;
        Some((seq, s))
    }

    /// Drops lost entries whose frames were acknowledged meanwhile (none are left behind).
    pub(crate) fn skip_stale_lost(&mut self) {
        while let Some(&seq) = self.lost.first() {
            if self.sent.get(seq, self.next_seq).is_some() {
                return;
            }
            self.lost.pop_first();
        }
    }

    #[cfg(test)]
    pub(crate) fn has_lost(&self) -> bool {
        !self.lost.is_empty()
    }

    /// The retransmission timeout, allowing for the peer's ack delay: longer while frames
    /// whose acks the peer may hold (lazy acks) are in flight.
    pub(crate) fn rto(&self, config: &EndpointConfig) -> Duration {
        let allowance = if self.lazy_unacked > 0 {
            config.max_ack_delay.max(LAZY_ACK_DELAY)
        } else {
            config.max_ack_delay
        };
        self.rtt.rto(config, allowance)
    }

    /// Takes an acknowledgement: every frame it newly covers leaves the flight and is passed
    /// to `acked`; the RTT is sampled from the largest (if it was sent once: Karn's rule).
    /// `Err` for an ack of data never sent; `Ok(None)` if it covered nothing new. `newly` is
    /// scratch space (the endpoint's, shared by its peers: an idle peer's size is budgeted).
    pub(crate) fn on_ack(
        &mut self,
        now: Tick,
        ack: &AckFrame<'_>,
        newly: &mut Vec<u64>,
        mut acked: impl FnMut(&Sent),
    ) -> Result<Option<Acked>, ()> {
        let cum = unwrap_seq(ack.cumulative, self.next_seq);
        if cum > self.next_seq {
            return Err(());
        }
        let mut largest_new: Option<(u64, bool, Tick)> = None;
        let mut acked_bytes = 0usize;
        newly.clear();
        let next = self.next_seq;
        newly.extend(self.sent.keys_in(0..cum, next));
        // Each range is walked from where the last one ended at the earliest: however the
        // ranges of an ack overlap, it walks the ring once (ours come in ascending order).
        let mut floor = cum;
        for r in ack.ranges.iter() {
            let start = unwrap_seq(r.start, cum);
            let end = unwrap_seq(r.end, start);
            if start < cum || end <= start || end > next {
                continue;
            }
            newly.extend(self.sent.keys_in(start.max(floor)..end, next));
            floor = floor.max(end);
        }
        for &seq in newly.iter() {
            let Some(s) = self.sent.remove(seq, next) else {
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
            if largest_new.is_none_or(|(l, _, _)| seq > l) {
                // A frame already deemed lost (not yet resent) that an acknowledgement covers
                // now was most likely received long ago, its own acknowledgement lost: this
                // one came for another frame, and timing it would read the wait for the
                // retransmission timer as round-trip time. Karn's rule, extended.
                largest_new = Some((seq, s.retransmitted || s.lost, s.sent_at));
            }
            acked(&s);
        }
        let Some((largest, retransmitted, sent_at)) = largest_new else {
            return Ok(None);
        };
        self.rtt.backoff = 0;
        if !retransmitted {
            // Karn: only frames sent once (and not deemed lost) give samples.
            let sample = now.saturating_duration_since(sent_at);
            let delay = Duration::from_micros(u64::from(ack.delay_micros));
            self.rtt.sample(if sample > delay {
                sample - delay
            } else {
                sample
            });
        }
        self.largest_acked = Some(self.largest_acked.map_or(largest, |l| l.max(largest)));
        Ok(Some(Acked {
            largest,
            bytes: acked_bytes,
        }))
    }

    /// Marks lost the frames that [`PACKET_THRESHOLD`] later acknowledged frames have
    /// overtaken; the first newly lost one, if any.
    pub(crate) fn detect_losses(&mut self) -> Option<u64> {
        let largest = self.largest_acked?;
        let threshold = largest.saturating_sub(PACKET_THRESHOLD - 1);
        if threshold <= self.loss_scan_from {
            return None;
        }
        let mut first_loss = None;
        let next = self.next_seq;
        for (seq, s) in self.sent.iter_mut_in(self.loss_scan_from..threshold, next) {
            if !s.lost {
                s.lost = true;
                self.in_flight_bytes -= s.wire_len();
                self.in_flight_frames -= 1;
                self.lost.insert(seq);
                first_loss.get_or_insert(seq);
            }
        }
        self.loss_scan_from = threshold;
        first_loss
    }

    /// The retransmission timer fired: everything in flight is presumed lost, and the timeout
    /// backs off.
    pub(crate) fn on_rto(&mut self, now: Tick, config: &EndpointConfig) {
        let next = self.next_seq;
        for (seq, s) in self.sent.iter_mut_in(0..next, next) {
            if !s.lost {
                s.lost = true;
                self.lost.insert(seq);
            }
        }
        self.in_flight_bytes = 0;
        self.in_flight_frames = 0;
        self.loss_scan_from = self.next_seq;
        self.rtt.backoff = self.rtt.backoff.saturating_add(1);
        self.rto_deadline = Some(now + self.rto(config));
    }

    /// Whether anything sent is still unacknowledged.
    pub(crate) fn has_unacked(&self) -> bool {
        !self.sent.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use mesh_wire::{AckRanges, SeqRange};

    use super::*;

    fn frame(now: Tick) -> Sent {
        Sent::new(
            MessageId(1),
            0,
            0,
            None,
            None,
            Bytes::from_static(&[0; 100]),
            now,
            false,
        )
    }

    fn ack(cumulative: u32, ranges: &[SeqRange]) -> AckFrame<'_> {
        AckFrame {
            cumulative,
            delay_micros: 0,
            ranges: AckRanges::List(ranges),
        }
    }

    fn recovery() -> Recovery {
        Recovery::new(Rtt::default())
    }

    #[test]
    fn three_later_acks_mark_a_frame_lost_and_two_do_not() {
        let t0 = Tick::ZERO;
        let mut r = recovery();
        for _ in 0..6 {
            r.on_sent(frame(t0));
        }
        // 0 is acked; 1 missing; 2 and 3 acked: only two frames above 1.
        let two = [SeqRange { start: 2, end: 4 }];
        assert!(r
            .on_ack(t0, &ack(1, &two), &mut Vec::new(), |_| {})
            .unwrap()
            .is_some());
        assert_eq!(r.detect_losses(), None);
        assert!(!r.has_lost());
        // 4 acked too: three frames above 1, which is now lost (and out of flight).
        let three = [SeqRange { start: 2, end: 5 }];
        let before = r.in_flight_frames;
        r.on_ack(t0, &ack(1, &three), &mut Vec::new(), |_| {})
            .unwrap();
        assert_eq!(r.detect_losses(), Some(1));
        assert_eq!(r.in_flight_frames, before - 2, "4 acked, 1 lost");
        assert_eq!(r.first_lost().map(|(s, _)| s), Some(1));
        // Retransmitted, it is in flight again; its ack gives no RTT sample (Karn).
        let later = t0 + Duration::from_secs(1);
        assert_eq!(r.retransmitting(later).map(|(s, _)| s), Some(1));
        let srtt = r.rtt.srtt(&EndpointConfig::default());
        r.on_ack(
            later + Duration::from_secs(5),
            &ack(5, &[]),
            &mut Vec::new(),
            |_| {},
        )
        .unwrap();
        assert_eq!(
            r.rtt.srtt(&EndpointConfig::default()),
            srtt,
            "no sample from a retransmitted frame"
        );
        assert_eq!(r.in_flight_frames, 1, "5 is still out");
    }

    #[test]
    fn an_ack_of_data_never_sent_is_refused() {
        let mut r = recovery();
        r.on_sent(frame(Tick::ZERO));
        assert!(r
            .on_ack(Tick::ZERO, &ack(2, &[]), &mut Vec::new(), |_| {})
            .is_err());
        assert_eq!(
            r.on_ack(Tick::ZERO, &ack(0, &[]), &mut Vec::new(), |_| {}),
            Ok(None)
        );
    }

    #[test]
    fn overlapping_repeated_and_backward_ranges_ack_each_frame_once() {
        let t0 = Tick::ZERO;
        let mut r = recovery();
        for _ in 0..100 {
            r.on_sent(frame(t0));
        }
        // Frame 0 missing; the rest acknowledged by ranges a peer would never send: the same
        // range again and again, one inside another, one going backwards.
        let mut ranges = vec![SeqRange { start: 1, end: 100 }; 16];
        ranges.push(SeqRange { start: 50, end: 60 });
        ranges.push(SeqRange { start: 90, end: 10 });
        ranges.push(SeqRange { start: 5, end: 7 });
        let mut acked = 0;
        let mut walked = Vec::new();
        let got = r
            .on_ack(t0, &ack(0, &ranges), &mut walked, |_| acked += 1)
            .unwrap()
            .unwrap();
        assert_eq!(acked, 99, "every frame but 0, each once");
        // One pass over the frames in flight, not one per range (16 x 99 without the floor).
        assert_eq!(walked.len(), 99);
        assert_eq!((got.largest, r.in_flight_frames), (99, 1));
        // Frame 0 then, cumulatively: the ring is empty.
        r.on_ack(t0, &ack(100, &[]), &mut Vec::new(), |_| acked += 1)
            .unwrap();
        assert_eq!(acked, 100);
        assert!(!r.has_unacked());
    }

    #[test]
    fn first_samples_set_the_estimate() {
        let t0 = Tick::ZERO;
        let mut r = recovery();
        r.on_sent(frame(t0));
        let acked = r
            .on_ack(
                t0 + Duration::from_millis(40),
                &ack(1, &[]),
                &mut Vec::new(),
                |s| {
                    assert_eq!(s.payload.len(), 100);
                },
            )
            .unwrap()
            .unwrap();
        assert_eq!(acked.largest, 0);
        assert_eq!(
            r.rtt.srtt(&EndpointConfig::default()),
            Duration::from_millis(40)
        );
        assert_eq!(r.in_flight_bytes, 0);
        assert!(!r.has_unacked());
    }

    #[test]
    fn a_timeout_marks_all_lost_and_backs_off() {
        let t0 = Tick::ZERO;
        let c = EndpointConfig::default();
        let mut r = recovery();
        for _ in 0..3 {
            r.on_sent(frame(t0));
        }
        let first = r.rto(&c);
        r.on_rto(t0, &c);
        assert_eq!((r.in_flight_frames, r.in_flight_bytes), (0, 0));
        assert_eq!(r.first_lost().map(|(s, _)| s), Some(0));
        assert_eq!(r.rto(&c), first * 2, "backed off");
        r.on_rto(t0, &c);
        assert_eq!(r.rto(&c), first * 4);
        // Progress resets the backoff.
        r.retransmitting(t0);
        r.on_ack(t0, &ack(1, &[]), &mut Vec::new(), |_| {}).unwrap();
        assert_eq!(r.rto(&c), first);
    }
}
