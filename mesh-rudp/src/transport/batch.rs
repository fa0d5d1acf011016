//! Pure decisions of the driver's I/O, kept apart so they can be tested without a socket:
//! how outgoing datagrams are grouped into GSO runs and `sendmmsg` calls, and how many slots a
//! read asks for.

use std::net::SocketAddr;

/// Fewest datagrams a read asks for (see `Driver::batch`); two or more, so that a read that
/// gets fewer than it asked for knows the queue is empty.
pub(super) const MIN_BATCH: usize = 4;
/// Bytes a read is sized to fill (see [`next_batch`]).
pub(super) const RECV_BYTES: usize = 512 << 10;

/// The run of datagrams that starts at `start` in `meta` (`(destination, length)` of each, in
/// sending order): one GSO send of datagrams to one destination, all as long as the first but
/// the last, which may be shorter (a shorter one ends the run), at most `max_segments` of them
/// and `max_bytes` in all. Returns the end of the run (exclusive) and its length in bytes.
pub(super) fn run_end(
    meta: &[(SocketAddr, usize)],
    start: usize,
    max_segments: usize,
    max_bytes: usize,
) -> (usize, usize) {
    let (to, segment) = meta[start];
    let mut len = segment;
    let mut end = start + 1;
    while end < meta.len()
        && end - start < max_segments
        && meta[end].0 == to
        && meta[end].1 <= segment
        && len + meta[end].1 <= max_bytes
    {
        len += meta[end].1;
        end += 1;
        if meta[end - 1].1 < segment {
            break;
        }
    }
    (end, len)
}

/// Most datagrams of one `sendmmsg`: the kernel's own limit (`UIO_MAXIOV`).
pub(super) const MAX_MMSG: usize = 1024;

/// The end (exclusive) of the datagrams from `start` in `meta` that are each a run of their
/// own (see [`run_end`]; one that starts a longer run ends them), at most [`MAX_MMSG`], and
/// the sum of their `heads`: lone datagrams, most to different destinations, that one
/// `sendmmsg` can carry.
pub(super) fn lone_end(
    meta: &[(SocketAddr, usize)],
    heads: &[usize],
    start: usize,
    max_segments: usize,
    max_bytes: usize,
) -> (usize, usize) {
    let mut end = start;
    let mut bytes = 0;
    while end < meta.len() && end - start < MAX_MMSG {
        if run_end(meta, end, max_segments, max_bytes).0 > end + 1 {
            break;
        }
        bytes += heads[end];
        end += 1;
    }
    (end, bytes)
}

/// How many slots the next read asks for, after one that filled `n` slots with `bytes`:
/// twice as many, so a busy socket is read in few calls, but no more than [`RECV_BYTES`] hold
/// at the sizes that came, so what the kernel writes is still in cache when it is copied out
/// (32 slots of GRO-coalesced 64 KiB runs fill a core's L2: bulk went 5.8 -> 8.0 GB/s with 8).
pub(super) fn next_batch(n: usize, bytes: usize, most: usize) -> usize {
    let fit = RECV_BYTES
        .saturating_mul(n)
        .checked_div(bytes)
        .unwrap_or(most);
    (2 * n).min(fit).clamp(MIN_BATCH.min(most), most)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(port: u16) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], port))
    }

    /// Every run of `meta`, as (start, end, bytes).
    fn runs(
        meta: &[(SocketAddr, usize)],
        segments: usize,
        bytes: usize,
    ) -> Vec<(usize, usize, usize)> {
        let mut out = Vec::new();
        let mut i = 0;
        while i < meta.len() {
            let (j, len) = run_end(meta, i, segments, bytes);
            out.push((i, j, len));
            i = j;
        }
        out
    }

    #[test]
    fn runs_group_equal_datagrams_to_one_destination() {
        let (a, b) = (at(1), at(2));
        let meta = [
            (a, 1200),
            (a, 1200),
            (a, 1200),
            (b, 1200),
            (b, 800),
            (b, 1200),
            (a, 100),
        ];
        assert_eq!(
            runs(&meta, 64, 65_000),
            vec![(0, 3, 3600), (3, 5, 2000), (5, 6, 1200), (6, 7, 100)],
            "a new destination and a shorter datagram each end a run"
        );
    }

    #[test]
    fn runs_stop_at_the_segment_and_byte_limits() {
        let a = at(1);
        let meta = vec![(a, 1200); 10];
        assert_eq!(
            runs(&meta, 4, 65_000),
            vec![(0, 4, 4800), (4, 8, 4800), (8, 10, 2400)]
        );
        assert_eq!(
            runs(&meta, 64, 3000),
            vec![
                (0, 2, 2400),
                (2, 4, 2400),
                (4, 6, 2400),
                (6, 8, 2400),
                (8, 10, 2400)
            ]
        );
        // A longer datagram after a shorter first one starts its own run.
        assert_eq!(
            runs(&[(a, 500), (a, 1200)], 64, 65_000),
            vec![(0, 1, 500), (1, 2, 1200)]
        );
        // One segment allowed: no grouping at all.
        assert_eq!(
            runs(&[(a, 10), (a, 10)], 1, 65_000),
            vec![(0, 1, 10), (1, 2, 10)]
        );
    }

    #[test]
    fn lone_datagrams_are_gathered_until_one_starts_a_run() {
        let (a, b, c) = (at(1), at(2), at(3));
        // A probe to each of three peers, then two equal datagrams to one (a GSO run), then
        // lone ones again.
        let meta = [
            (a, 40),
            (b, 40),
            (c, 40),
            (a, 1200),
            (a, 1200),
            (b, 300),
            (c, 900),
        ];
        let heads = [40, 40, 40, 30, 30, 300, 20];
        assert_eq!(lone_end(&meta, &heads, 0, 64, 65_000), (3, 120));
        assert_eq!(
            lone_end(&meta, &heads, 3, 64, 65_000),
            (3, 0),
            "a run starts here"
        );
        assert_eq!(lone_end(&meta, &heads, 4, 64, 65_000), (7, 350));
        // Two datagrams to one destination, the second longer: each its own run, so both go.
        assert_eq!(
            lone_end(&[(a, 500), (a, 1200)], &[500, 1200], 0, 64, 65_000),
            (2, 1700)
        );
        // GSO off (one segment a run): every datagram is lone.
        assert_eq!(lone_end(&meta, &heads, 0, 1, 65_000), (7, 500));
        // At most MAX_MMSG at a time.
        let many = vec![(a, 10); MAX_MMSG + 5];
        let h = vec![10; MAX_MMSG + 5];
        assert_eq!(lone_end(&many, &h, 0, 1, 65_000), (MAX_MMSG, 10 * MAX_MMSG));
    }

    #[test]
    fn a_read_asks_for_twice_what_came_within_its_byte_budget() {
        // Small datagrams: twice as many slots, up to all of them.
        assert_eq!(next_batch(4, 4 * 100, 32), 8);
        assert_eq!(next_batch(32, 32 * 1200, 32), 32);
        // GRO runs of 64,000 bytes: as many as RECV_BYTES holds, however many came.
        assert_eq!(next_batch(32, 32 * 64_000, 32), RECV_BYTES / 64_000);
        assert_eq!(next_batch(2, 2 * 64_000, 32), 4);
        // Never below the floor, nor above what there is.
        assert_eq!(next_batch(0, 0, 32), MIN_BATCH);
        assert_eq!(next_batch(1, 65_536, 32), MIN_BATCH);
        assert_eq!(next_batch(8, 8, 2), 2);
    }
}
