//! The requests a node waits on: one table, one lock, and one timer for all of them.
//!
//! A request registers no timer of its own (a tokio timer per request was about 3 % of a
//! round trip's instructions): its deadline goes into a heap, and one expiry task sleeps until
//! the earliest deadline, fails what is due and plans again. Answered requests leave their
//! heap entry behind (a removal from a heap costs a search); the expiry task skips entries
//! whose request is gone, and the heap is rebuilt from the table when stale entries outnumber
//! live ones, so it stays within a constant factor of the table.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use mesh_discovery::NodeKey;
use parking_lot::Mutex;
use tokio::sync::{oneshot, Notify};
use tokio::time::Instant;

use crate::RequestError;

/// Where a request's outcome goes.
pub(crate) type Answer = Result<Bytes, RequestError>;

/// Stale heap entries tolerated beyond the live ones before the heap is rebuilt.
const HEAP_SLACK: usize = 1024;

struct Entry {
    peer: SocketAddr,
    handler: u16,
    /// `None`: a timeout too long to represent, so never.
    deadline: Option<Instant>,
    after: Duration,
    tx: oneshot::Sender<Answer>,
}

#[derive(Default)]
struct Table {
    entries: rustc_hash::FxHashMap<u64, Entry>,
    deadlines: BinaryHeap<Reverse<(Instant, u64)>>,
    /// When the expiry task next looks (`None`: not before a request wakes it).
    planned: Option<Instant>,
}

impl Entry {
    fn timed_out(&self) -> RequestError {
        RequestError::Timeout {
            handler: self.handler,
            node: NodeKey::from(self.peer),
            after: self.after,
        }
    }
}

/// The requests of one node that wait for answers.
pub(crate) struct PendingRequests {
    table: Mutex<Table>,
    max: usize,
    /// Wakes the expiry task when a request is due before its planned look.
    wake: Notify,
}

/// A registered request: its outcome, and whether the expiry task must be woken to plan again.
pub(crate) struct Registered {
    pub(crate) answer: oneshot::Receiver<Answer>,
    pub(crate) wake_expiry: bool,
}

impl PendingRequests {
    /// An empty table that holds at most `max` requests.
    pub(crate) fn new(max: usize) -> Self {
        Self {
            table: Mutex::new(Table::default()),
            max,
            wake: Notify::new(),
        }
    }

    /// Registers request `id` to `peer`'s handler, failing with `Timeout` after `timeout`
    /// from `now`.
    pub(crate) fn insert(
        &self,
        id: u64,
        peer: SocketAddr,
        handler: u16,
        now: Instant,
        timeout: Duration,
    ) -> Result<Registered, RequestError> {
        let (tx, answer) = oneshot::channel();
        let deadline = now.checked_add(timeout);
        let mut t = self.table.lock();
        if t.entries.len() >= self.max {
            return Err(RequestError::TooManyRequests);
        }
        t.entries.insert(
            id,
            Entry {
                peer,
                handler,
                deadline,
                after: timeout,
                tx,
            },
        );
        let mut wake_expiry = false;
        if let Some(d) = deadline {
            if t.deadlines.len() > 2 * t.entries.len() + HEAP_SLACK {
                let live: Vec<_> = t
                    .entries
                    .iter()
                    .filter_map(|(&id, e)| e.deadline.map(|d| Reverse((d, id))))
                    .collect();
                t.deadlines = BinaryHeap::from(live);
            } else {
                t.deadlines.push(Reverse((d, id)));
            }
            if t.planned.is_none_or(|p| d < p) {
                t.planned = Some(d);
                wake_expiry = true;
            }
        }
        Ok(Registered {
            answer,
            wake_expiry,
        })
    }

    /// Completes request `id` with `answer` if `from` is the node asked and `handler` the
    /// handler asked (the original took any answer carrying the id). False if no such request
    /// waits.
    pub(crate) fn resolve(&self, id: u64, from: SocketAddr, handler: u16, answer: Answer) -> bool {
        let mut t = self.table.lock();
        match t.entries.get(&id) {
            Some(e) if e.peer == from && e.handler == handler => {
                if let Some(e) = t.entries.remove(&id) {
                    drop(t);
                    let _ = e.tx.send(answer);
                }
                true
            }
            _ => false,
        }
    }

    /// Forgets request `id` (its caller stopped waiting).
    pub(crate) fn remove(&self, id: u64) {
        self.table.lock().entries.remove(&id);
    }

    /// Fails every request due at `now` with `Timeout`, and returns when the next one is due.
    pub(crate) fn expire(&self, now: Instant) -> Option<Instant> {
        let mut due = Vec::new();
        let next = {
            let mut t = self.table.lock();
            let Table {
                entries,
                deadlines,
                planned,
            } = &mut *t;
            let next = loop {
                match deadlines.peek() {
                    Some(&Reverse((d, id))) if d <= now => {
                        deadlines.pop();
                        // Answered meanwhile, or a stale entry of a reused id: skipped.
                        if entries.get(&id).is_some_and(|e| e.deadline == Some(d)) {
                            if let Some(e) = entries.remove(&id) {
                                due.push(e);
                            }
                        }
                    }
                    // The earliest request still waiting: answered ones are dropped here too,
                    // so that an idle node does not wake at the deadlines of requests that
                    // were answered long ago.
                    Some(&Reverse((d, id))) => {
                        if entries.get(&id).is_some_and(|e| e.deadline == Some(d)) {
                            break Some(d);
                        }
                        deadlines.pop();
                    }
                    None => break None,
                }
            };
            *planned = next;
            next
        };
        for e in due {
            let err = e.timed_out();
            let _ = e.tx.send(Err(err));
        }
        next
    }

    /// Fails every request to `peer` with `error` (its session ended). A scan of the table:
    /// it happens once per peer that goes down.
    pub(crate) fn fail_peer(&self, peer: SocketAddr, error: impl Fn() -> RequestError) -> usize {
        let failed: Vec<Entry> = {
            let mut t = self.table.lock();
            let ids: Vec<u64> = t
                .entries
                .iter()
                .filter(|(_, e)| e.peer == peer)
                .map(|(&id, _)| id)
                .collect();
            ids.into_iter()
                .filter_map(|id| t.entries.remove(&id))
                .collect()
        };
        let n = failed.len();
        for e in failed {
            let _ = e.tx.send(Err(error()));
        }
        n
    }

    /// Fails every request with `error` (the node stops); how many there were.
    pub(crate) fn drain(&self, error: impl Fn() -> RequestError) -> usize {
        let all: Vec<Entry> = {
            let mut t = self.table.lock();
            t.deadlines.clear();
            t.planned = None;
            t.entries.drain().map(|(_, e)| e).collect()
        };
        let n = all.len();
        for e in all {
            let _ = e.tx.send(Err(error()));
        }
        n
    }

    /// Requests waiting now.
    pub(crate) fn len(&self) -> usize {
        self.table.lock().entries.len()
    }

    /// Runs the expiry: sleeps until the earliest deadline (or until a request due sooner
    /// wakes it), fails what is due, and plans again. With one timeout for every request, a
    /// steady stream of requests wakes it about once per timeout.
    pub(crate) async fn run_expiry(&self) {
        loop {
            let next = self.expire(Instant::now());
            // A request due earlier than planned notifies; the permit is kept if this has not
            // started waiting yet.
            match next {
                Some(at) => {
                    tokio::select! {
                        () = tokio::time::sleep_until(at) => {}
                        () = self.wake.notified() => {}
                    }
                }
                None => self.wake.notified().await,
            }
        }
    }

    /// Wakes the expiry task (after an [`insert`](Self::insert) that asked for it).
    pub(crate) fn wake_expiry(&self) {
        self.wake.notify_one();
    }
}

impl std::fmt::Debug for PendingRequests {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PendingRequests")
            .field("waiting", &self.len())
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(port: u16) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], port))
    }

    fn ok(r: &mut oneshot::Receiver<Answer>) -> Option<Answer> {
        r.try_recv().ok()
    }

    #[test]
    fn an_answer_completes_only_the_request_it_answers() {
        let p = PendingRequests::new(8);
        let now = Instant::now();
        let mut r = p
            .insert(1, addr(1), 7, now, Duration::from_secs(1))
            .unwrap();
        // Another node, another handler, another id: refused.
        assert!(!p.resolve(1, addr(2), 7, Ok(Bytes::new())));
        assert!(!p.resolve(1, addr(1), 8, Ok(Bytes::new())));
        assert!(!p.resolve(2, addr(1), 7, Ok(Bytes::new())));
        assert!(ok(&mut r.answer).is_none());
        assert!(p.resolve(1, addr(1), 7, Ok(Bytes::from_static(b"a"))));
        assert_eq!(ok(&mut r.answer), Some(Ok(Bytes::from_static(b"a"))));
        assert!(!p.resolve(1, addr(1), 7, Ok(Bytes::new())), "once");
        assert_eq!(p.len(), 0);
    }

    #[test]
    fn expiry_fails_what_is_due_and_says_what_is_next() {
        let p = PendingRequests::new(8);
        let t0 = Instant::now();
        let s = Duration::from_secs;
        let mut a = p.insert(1, addr(1), 1, t0, s(3)).unwrap();
        let mut b = p.insert(2, addr(1), 1, t0, s(1)).unwrap();
        let mut c = p.insert(3, addr(2), 1, t0, s(2)).unwrap();
        assert!(a.wake_expiry, "the first plans the look");
        assert!(b.wake_expiry, "an earlier one moves it");
        assert!(!c.wake_expiry, "a later one does not");
        assert!(p.resolve(3, addr(2), 1, Ok(Bytes::new())));
        assert_eq!(p.expire(t0), Some(t0 + s(1)));
        assert_eq!(
            p.expire(t0 + s(1)),
            Some(t0 + s(3)),
            "c was answered: a is next, c's stale deadline wakes nobody"
        );
        assert!(matches!(
            ok(&mut b.answer),
            Some(Err(RequestError::Timeout { .. }))
        ));
        assert_eq!(p.expire(t0 + s(2)), Some(t0 + s(3)));
        assert_eq!(
            ok(&mut c.answer),
            Some(Ok(Bytes::new())),
            "answered, not failed"
        );
        assert_eq!(p.expire(t0 + s(5)), None);
        assert!(
            matches!(ok(&mut a.answer), Some(Err(RequestError::Timeout { after, .. })) if after == s(3))
        );
        // Nothing planned: the next request wakes the task.
        assert!(p.insert(4, addr(1), 1, t0, s(9)).unwrap().wake_expiry);
    }

    #[test]
    fn a_timeout_too_long_to_represent_never_expires() {
        let p = PendingRequests::new(8);
        let t0 = Instant::now();
        let mut r = p.insert(1, addr(1), 1, t0, Duration::MAX).unwrap();
        assert!(!r.wake_expiry);
        assert_eq!(p.expire(t0 + Duration::from_secs(1 << 30)), None);
        assert!(ok(&mut r.answer).is_none());
    }

    #[test]
    fn the_table_is_bounded_and_the_heap_stays_near_it() {
        let p = PendingRequests::new(4);
        let t0 = Instant::now();
        let mut keep = Vec::new();
        for id in 0..4 {
            keep.push(
                p.insert(id, addr(1), 1, t0, Duration::from_secs(1))
                    .unwrap(),
            );
        }
        assert!(matches!(
            p.insert(9, addr(1), 1, t0, Duration::from_secs(1)),
            Err(RequestError::TooManyRequests)
        ));
        // Many answered requests leave stale heap entries; the heap is rebuilt before they
        // outnumber the live ones by more than the slack.
        for id in 100..100 + 10 * HEAP_SLACK as u64 {
            p.remove(0);
            let _r = p
                .insert(id, addr(1), 1, t0, Duration::from_secs(1))
                .unwrap();
            assert!(p.resolve(id, addr(1), 1, Ok(Bytes::new())));
        }
        let t = p.table.lock();
        assert!(t.deadlines.len() <= 2 * t.entries.len() + HEAP_SLACK + 1);
    }

    #[test]
    fn a_peer_that_goes_fails_its_requests_only() {
        let p = PendingRequests::new(8);
        let t0 = Instant::now();
        let mut a = p.insert(1, addr(1), 1, t0, Duration::from_secs(1)).unwrap();
        let mut b = p.insert(2, addr(2), 1, t0, Duration::from_secs(1)).unwrap();
        assert_eq!(p.fail_peer(addr(1), || RequestError::Stopped), 1);
        assert_eq!(ok(&mut a.answer), Some(Err(RequestError::Stopped)));
        assert!(ok(&mut b.answer).is_none());
        assert_eq!(p.drain(|| RequestError::Stopped), 1);
        assert_eq!(ok(&mut b.answer), Some(Err(RequestError::Stopped)));
        assert_eq!(p.len(), 0);
        assert_eq!(p.expire(t0 + Duration::from_secs(2)), None);
    }
}
