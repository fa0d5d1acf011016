//! Keeping the view: the task that refreshes this node's record, follows the registry's
//! pushed changes, reads it in full now and then, and decides what counts as a departure.

use std::hash::{Hash, Hasher};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::broadcast;
use tokio::time::Instant;
use tracing::{debug, info, warn};

use super::ticker::Ticker;
use super::{Shared, MAX_BACKOFF_INTERVALS, MAX_DEPARTED};
use crate::{Backend, MembershipEvent, NodeKey, NodeRecord, Notice, RegistryError};

fn ttl<R>(shared: &Shared<R>) -> Duration {
    shared.config.update_interval * shared.config.ttl_intervals.max(1)
}

/// How long after the registry comes back a missing record still proves nothing: every live
/// node has re-registered by then, however far it had backed off.
fn grace<R>(shared: &Shared<R>) -> Duration {
    ttl(shared) + shared.config.update_interval * MAX_BACKOFF_INTERVALS
}

/// Whether a missing record may be taken as evidence now, and what to do when it may not.
#[derive(Debug, Clone, Copy)]
pub(super) struct Evidence {
    /// From when a record missing from a healthy registry means its node is gone; `None`
    /// while the registry fails (nothing it lacks means anything then).
    pub(super) from: Option<Instant>,
    /// Absences were set aside: read everything again once `from` has passed.
    pub(super) recheck: bool,
}

impl Evidence {
    fn usable(&mut self, now: Instant) -> bool {
        let ok = self.from.is_some_and(|t| now >= t);
        if !ok {
            self.recheck = true;
        }
        ok
    }

    /// The registry failed: until it recovers, and for a grace after, absences wait.
    pub(super) fn outage(&mut self) {
        self.from = None;
    }

    /// The registry works again, or lost its data (our own record was missing, the push
    /// channel reconnected): absences wait for the grace.
    fn recovered<R>(&mut self, shared: &Shared<R>, now: Instant) {
        let until = now + grace(shared);
        self.from = Some(self.from.map_or(until, |t| t.max(until)));
    }
}

fn count<R>(shared: &Shared<R>, r: &Result<impl Sized, RegistryError>) {
    let mut s = shared.stats.lock();
    s.registry_calls += 1;
    if r.is_err() {
        s.registry_errors += 1;
    }
}

pub(super) async fn publish<R: Backend>(shared: &Shared<R>) -> Result<(), RegistryError> {
    let (key, bytes) = {
        let l = shared.local.lock();
        (l.key, l.encode())
    };
    shared.dirty.store(false, Ordering::Release);
    let r = shared.registry.publish(key, bytes, ttl(shared)).await;
    count(shared, &r);
    if r.is_err() {
        shared.dirty.store(true, Ordering::Release);
    }
    r
}

/// Refreshes liveness, or publishes when the record changed or went missing. `Ok(true)`:
/// our own record was gone (the registry lost it: a restart, a flush, an expiry we could not
/// prevent), so others may be missing theirs for the same reason.
async fn keep_alive<R: Backend>(shared: &Shared<R>) -> Result<bool, RegistryError> {
    if shared.dirty.load(Ordering::Acquire) {
        return publish(shared).await.map(|()| false);
    }
    let key = shared.local.lock().key;
    let r = shared.registry.refresh(key, ttl(shared)).await;
    count(shared, &r);
    match r {
        Err(RegistryError::Missing) => publish(shared).await.map(|()| true),
        other => other.map(|()| false),
    }
}

/// Applies one record read from the registry.
fn upsert<R>(shared: &Shared<R>, key: NodeKey, bytes: &[u8]) {
    let record = match NodeRecord::decode(bytes) {
        Ok(r) if r.key == key => r,
        Ok(_) | Err(_) => {
            debug!(%key, "skipping unreadable record");
            shared.stats.lock().skipped_records += 1;
            return;
        }
    };
    if key == shared.local.lock().key {
        return;
    }
    shared.suspects.lock().remove(&key);
    // Events go out with the view still locked: the order subscribers see is the order the
    // view changed in, whichever task changed it (`mark_down` runs on the caller's).
    let mut view = shared.view.write();
    let event = match view.insert(key, record.clone()) {
        None => Some(MembershipEvent::Joined(record)),
        Some(old) if old.incarnation != record.incarnation => {
            let _ = shared.events.send(MembershipEvent::Left(old));
            Some(MembershipEvent::Joined(record))
        }
        Some(old) if old != record => Some(MembershipEvent::Updated(record)),
        Some(_) => None,
    };
    if let Some(e) = event {
        if let MembershipEvent::Joined(r) = &e {
            info!(node = %r.key, node_type = %r.node_type, "node joined");
        }
        let _ = shared.events.send(e);
    }
}

pub(super) fn depart<R>(shared: &Shared<R>, key: NodeKey) {
    shared.suspects.lock().remove(&key);
    let backups = {
        let mut view = shared.view.write();
        let Some(old) = view.remove(&key) else {
            return;
        };
        let backups = old.backups.clone();
        info!(node = %key, node_type = %old.node_type, "node left");
        // With the view locked, as in `upsert`.
        let _ = shared.events.send(MembershipEvent::Left(old));
        backups
    };
    // After the view's lock (`prepare_nodes` reads the view while it holds this one).
    let mut d = shared.departed.lock();
    if d.len() >= MAX_DEPARTED {
        d.pop_front();
    }
    d.push_back((key, backups));
}

/// The registry no longer has `key`'s record, while it was healthy. Without a liveness check
/// that is the node's departure; with one, the node is asked first (in a task of its own, one
/// at a time per node) and departs only if it does not answer and no record came meanwhile.
fn registry_lost<R: Backend>(shared: &Arc<Shared<R>>, key: NodeKey) {
    if !shared.view.read().contains_key(&key) {
        return;
    }
    let Some(check) = shared.liveness.read().clone() else {
        depart(shared, key);
        return;
    };
    if !shared.suspects.lock().insert(key) {
        return; // already being asked
    }
    let weak = Arc::downgrade(shared);
    tokio::spawn(async move {
        let alive = check(key).await;
        let Some(shared) = weak.upgrade() else {
            return;
        };
        let still_suspect = shared.suspects.lock().remove(&key);
        if still_suspect && !alive {
            debug!(%key, "record gone and the node does not answer: departed");
            depart(&shared, key);
        } else if still_suspect {
            debug!(%key, "record gone but the node answers: kept");
        }
    });
}

/// A full read: adds what is missing, and takes what is gone for departed when the registry
/// has been healthy long enough for its absence to mean something (see [`Evidence`]).
pub(super) async fn reconcile<R: Backend>(
    shared: &Arc<Shared<R>>,
    evidence: &mut Evidence,
) -> Result<(), RegistryError> {
    let r = shared.registry.snapshot().await;
    count(shared, &r);
    let all = r?;
    shared.stats.lock().reconciliations += 1;
    let local = shared.local.lock().key;
    let live: Vec<NodeKey> = all.iter().map(|(k, _)| *k).collect();
    for (k, bytes) in &all {
        if *k != local {
            upsert(shared, *k, bytes);
        }
    }
    let gone: Vec<NodeKey> = shared
        .view
        .read()
        .keys()
        .filter(|k| !live.contains(k))
        .copied()
        .collect();
    if !gone.is_empty() && evidence.usable(Instant::now()) {
        for k in gone {
            registry_lost(shared, k);
        }
    } else if !gone.is_empty() {
        debug!(
            missing = gone.len(),
            "records missing soon after a registry outage: not taken as departures yet"
        );
    }
    Ok(())
}

/// Rendezvous score: every node ranks candidates differently, spreading backup load.
fn score(me: NodeKey, candidate: NodeKey) -> u64 {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    (me, candidate).hash(&mut h);
    h.finish()
}

/// Keeps this node's backups: live ones stay, gaps are filled by rendezvous ranking.
fn choose_backups<R>(shared: &Shared<R>) {
    let (me, my_type, current) = {
        let l = shared.local.lock();
        (l.key, l.node_type.clone(), l.backups.clone())
    };
    let want = shared.config.backups.get(&my_type).copied().unwrap_or(0);
    let view = shared.view.read();
    let mut candidates: Vec<NodeKey> = view
        .values()
        .filter(|r| r.node_type == my_type && r.key != me)
        .map(|r| r.key)
        .collect();
    drop(view);
    let mut chosen: Vec<NodeKey> = current
        .into_iter()
        .filter(|k| candidates.contains(k))
        .take(want)
        .collect();
    candidates.sort_by_key(|c| score(me, *c));
    for c in candidates {
        if chosen.len() >= want {
            break;
        }
        if !chosen.contains(&c) {
            chosen.push(c);
        }
    }
    let mut l = shared.local.lock();
    if l.backups != chosen {
        l.backups = chosen;
        shared.dirty.store(true, Ordering::Release);
    }
}

pub(super) async fn run<R: Backend>(
    shared: Arc<Shared<R>>,
    mut notices: broadcast::Receiver<Notice>,
    healthy: bool,
    mut evidence: Evidence,
) {
    let mut tick = Ticker::new(shared.config.update_interval);
    let mut cycle: u64 = 0;
    let mut need_full = !healthy;
    let mut failures: u32 = 0;
    let mut skip: u32 = 0;
    loop {
        tokio::select! {
            () = shared.stop.notified() => return,
            () = tick.tick() => {
                cycle += 1;
                for f in shared.on_update.lock().iter() {
                    f();
                }
                choose_backups(&shared);
                if skip > 0 {
                    skip -= 1;
                    continue;
                }
                let now = Instant::now();
                let mut r = keep_alive(&shared).await.map(|lost_ours| {
                    if failures > 0 || lost_ours {
                        // Back, or back empty: others may not have re-registered yet.
                        evidence.recovered(&shared, now);
                        need_full = true;
                    }
                });
                if evidence.recheck && evidence.from.is_some_and(|t| now >= t) {
                    evidence.recheck = false;
                    need_full = true;
                }
                if r.is_ok() && (need_full || cycle.is_multiple_of(u64::from(shared.config.reconcile_every.max(1)))) {
                    r = reconcile(&shared, &mut evidence).await;
                }
                match r {
                    Ok(()) => {
                        if failures > 0 {
                            info!(failures, "registry reachable again");
                        }
                        failures = 0;
                        need_full = false;
                    }
                    Err(e) => {
                        failures += 1;
                        evidence.outage();
                        // Back off: skip 1, 3, 7 ... intervals, then reconcile on recovery.
                        skip = (1u32 << failures.min(5)).min(MAX_BACKOFF_INTERVALS) - 1;
                        need_full = true;
                        shared.dirty.store(true, Ordering::Release);
                        // One line per outage (the first failure), not one per attempt.
                        if failures == 1 {
                            warn!(error = %e, "registry unavailable; keeping the last known view");
                        } else {
                            debug!(error = %e, failures, "registry still unavailable");
                        }
                    }
                }
                let all = {
                    let view = shared.view.read();
                    let mut all: Vec<NodeRecord> = view.values().cloned().collect();
                    all.push(shared.local.lock().clone());
                    all
                };
                for f in shared.on_updated.lock().iter() {
                    f(&all);
                }
            }
            n = notices.recv() => match n {
                Ok(Notice::Changed(k)) => {
                    if k != shared.local.lock().key {
                        let r = shared.registry.get(k).await;
                        count(&shared, &r);
                        match r {
                            Ok(Some(bytes)) => upsert(&shared, k, &bytes),
                            // Removed since, or not yet on the replica we read: a removal comes
                            // as its own notice, and reconciliation catches the rest.
                            Ok(None) => {}
                            Err(_) => need_full = true,
                        }
                    }
                }
                // A goodbye: the node itself removed its record.
                Ok(Notice::Removed(k)) => depart(&shared, k),
                Ok(Notice::Expired(k)) => {
                    if k != shared.local.lock().key && evidence.usable(Instant::now()) {
                        registry_lost(&shared, k);
                    }
                }
                // The push channel reconnected: there was an outage, whatever our own calls saw.
                Ok(Notice::Resync) => {
                    evidence.recovered(&shared, Instant::now());
                    need_full = true;
                }
                Err(broadcast::error::RecvError::Lagged(_)) => need_full = true,
                Err(broadcast::error::RecvError::Closed) => {
                    notices = shared.registry.subscribe();
                    need_full = true;
                }
            },
            () = shared.wake.notified() => {
                if failures == 0 && shared.dirty.load(Ordering::Acquire) {
                    let _ = publish(&shared).await;
                }
            }
        }
    }
}
