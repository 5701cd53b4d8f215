//! The lanes of the stage: one main lane, or while a backlog drains a
//! live lane of new records in front and the backfill lane behind it
//! (header `lane = backfill`); where each reads next, when the live lane
//! opens and merges, and how a settled batch moves the cursors.

use super::batch::Pending;
use super::part::{Lane, Part};
use super::{
    Replicate, ReplicateError, StageTimes, BACKFILL_IN_FLIGHT, BATCH, IN_FLIGHT, IN_FLIGHT_IMAGE_BYTES, LIVE_QUIET,
};
use crate::log::Cursor;
use std::collections::{HashMap, VecDeque};
use std::sync::atomic::Ordering;
use std::time::Instant;
use tokio_util::sync::CancellationToken;

/// Where each lane reads next.
#[derive(Debug, Clone, Copy)]
pub(super) struct Lanes {
    /// The main lane, or the live lane while a backlog drains.
    next: u64,
    /// Gap records (they always travel in the main or live lane).
    next_gap: u64,
    /// The backfill lane's next record, while a backlog drains behind the
    /// live lane; it reads up to the `replicate_live` cursor.
    backfill: Option<u64>,
    /// When the live lane last produced a batch.
    live_at: Option<std::time::Instant>,
}

impl Replicate {
    /// How far the stage may read (exclusive): never past detect.
    pub(super) fn read_bound(&self) -> Result<u64, ReplicateError> {
        Ok(if self.faults.replicate_unbounded {
            // Injected fault (tests only): the pre-fix bound.
            self.log.bound(Cursor::Detect)?
        } else {
            self.log.bound(Cursor::Replicate)?
        })
    }

    /// The lanes from the durable cursors, with nothing in flight (start-up,
    /// after a failed round), opening the live lane if a backlog waits.
    /// Called again during an outage, it moves the live lane's start up to
    /// the end again, so what waits in the live lane stays near the bound.
    pub(super) fn lanes(&self) -> Result<Lanes, ReplicateError> {
        let done = self.log.cursor(Cursor::Replicate)?;
        let live = self.log.cursor(Cursor::ReplicateLive)?;
        let mut lanes = Lanes {
            next: done.max(live),
            next_gap: self.log.cursor(Cursor::ReplicateGaps)?,
            backfill: (live > done).then_some(done),
            live_at: None,
        };
        self.open_live_lane(&mut lanes)?;
        self.stats.live_lane.store(lanes.backfill.is_some(), Ordering::Relaxed);
        Ok(lanes)
    }

    /// Opens a live lane when more than `replicate.live_lane_after` records
    /// wait to be read: `replicate_live` is set at the end of what can be
    /// read now, new records go first from there, and everything below
    /// (from where the backfill lane already was, or else from where the
    /// main lane was reading) is the backlog. No live-lane batch may be in
    /// flight (its cursor would move back).
    pub(super) fn open_live_lane(&self, lanes: &mut Lanes) -> Result<(), ReplicateError> {
        let after = self.cfg.live_lane_after;
        let bound = self.read_bound()?;
        if after == 0 || bound.saturating_sub(lanes.next) <= after {
            return Ok(());
        }
        let mut b = self.log.batch();
        b.set_cursor(Cursor::ReplicateLive, bound);
        self.log.apply(b)?;
        let from = lanes.backfill.unwrap_or(lanes.next);
        tracing::info!(
            backlog = bound - from,
            live_from = bound,
            "a backlog waits: new records go first, the backlog follows in order behind them (header lane=backfill)"
        );
        self.stats.lanes_opened.fetch_add(1, Ordering::Relaxed);
        self.stats.live_lane.store(true, Ordering::Relaxed);
        lanes.backfill = Some(from);
        lanes.next = bound;
        Ok(())
    }

    /// Produces batches while there is room: the main or live lane first,
    /// then the backfill lane, with at most [`BACKFILL_IN_FLIGHT`] of its
    /// batches in flight while live records are coming. A main lane that has fallen behind (the broker
    /// came back before any delivery timed out, or Kafka is slower than the
    /// cameras) opens the live lane here: its batches in flight stay below
    /// the backlog. When the backfill lane has nothing left and nothing
    /// below the live lane is in flight, the lanes merge.
    pub(super) async fn fill(
        &self,
        lanes: &mut Lanes,
        inflight: &mut VecDeque<Pending>,
        stop: &CancellationToken,
    ) -> Result<(), ReplicateError> {
        // Not while live-lane batches of a lane just merged are in flight:
        // their commits would move `replicate_live` back.
        if lanes.backfill.is_none() && !inflight.iter().any(|p| p.lane == Lane::Live) {
            self.open_live_lane(lanes)?;
        }
        while !stop.is_cancelled() && inflight.len() < IN_FLIGHT {
            let held: usize = inflight.iter().map(|p| p.image_bytes).sum();
            if held >= IN_FLIGHT_IMAGE_BYTES {
                break;
            }
            let budget = IN_FLIGHT_IMAGE_BYTES - held;
            let t = Instant::now();
            let records = self.next_records(lanes.next, self.read_bound()?, budget)?;
            StageTimes::add(&self.stats.time_ns.read, t);
            let gaps = self.log.read_gaps(lanes.next_gap, self.log.bound(Cursor::ReplicateGaps)?, BATCH)?;
            if !records.is_empty() || !gaps.is_empty() {
                let lane = if lanes.backfill.is_some() { Lane::Live } else { Lane::Main };
                if lane == Lane::Live {
                    lanes.live_at = Some(std::time::Instant::now());
                }
                let t = Instant::now();
                let p = self.produce(lane, records, gaps).await;
                StageTimes::add(&self.stats.time_ns.produce, t);
                lanes.next = p.records_end.unwrap_or(lanes.next);
                lanes.next_gap = p.gaps_end.unwrap_or(lanes.next_gap);
                let refused = !p.failures.is_empty();
                inflight.push_back(p);
                if refused {
                    break; // settle what is in flight, then retry from the cursors
                }
                continue;
            }
            let Some(from) = lanes.backfill else { break };
            let waiting = inflight.iter().filter(|p| p.lane == Lane::Backfill).count();
            let live_coming = lanes.live_at.is_some_and(|t| t.elapsed() < LIVE_QUIET);
            if (live_coming && waiting >= BACKFILL_IN_FLIGHT) || inflight.len() + 1 >= IN_FLIGHT {
                break; // the last slot is the live lane's
            }
            let live = self.log.cursor(Cursor::ReplicateLive)?;
            let t = Instant::now();
            let records = self.next_records(from, live, budget)?;
            StageTimes::add(&self.stats.time_ns.read, t);
            if records.is_empty() {
                if inflight.iter().any(|p| p.lane != Lane::Live) {
                    break;
                }
                // Every record below the live lane's cursor is in Kafka:
                // the backlog lane's or acknowledged (and deleted) live.
                let mut b = self.log.batch();
                b.set_cursor(Cursor::Replicate, live);
                if self.images_follow.load(Ordering::Relaxed) {
                    b.set_cursor(Cursor::ReplicateImages, live);
                }
                self.log.apply(b)?;
                lanes.backfill = None;
                self.stats.live_lane.store(false, Ordering::Relaxed);
                tracing::info!(at = live, "backlog drained: one lane again");
                continue;
            }
            let t = Instant::now();
            let p = self.produce(Lane::Backfill, records, Vec::new()).await;
            StageTimes::add(&self.stats.time_ns.produce, t);
            lanes.backfill = Some(p.records_end.unwrap_or(from));
            let refused = !p.failures.is_empty();
            inflight.push_back(p);
            if refused {
                break;
            }
            // The backfill's log reads run on a runtime worker: give the
            // other stages' tasks on it (a live frame's intake and detect)
            // their turn between batches.
            tokio::task::yield_now().await;
        }
        Ok(())
    }

    /// Moves the cursors past a wholly acknowledged batch, in one log
    /// batch. A live-lane batch above a backlog moves `replicate_live` and
    /// deletes its records itself (retention follows `replicate`, which
    /// waits for the backlog); every other batch moves `replicate`.
    pub(super) fn commit(
        &self,
        lanes: &Lanes,
        p: &Pending,
        strikes: &mut HashMap<Part, u32>,
    ) -> Result<(), ReplicateError> {
        let mut b = self.log.batch();
        for part in &p.parts {
            strikes.remove(part);
        }
        if let Some(end) = p.records_end {
            if p.lane == Lane::Live && lanes.backfill.is_some() {
                b.set_cursor(Cursor::ReplicateLive, end);
                for part in p.parts.iter().filter(|k| !matches!(k, Part::Gap(_))) {
                    b.remove(part.area(), part.seq());
                }
            } else {
                b.set_cursor(Cursor::Replicate, end);
                if self.images_follow.load(Ordering::Relaxed) {
                    b.set_cursor(Cursor::ReplicateImages, end);
                }
            }
        }
        if let Some(end) = p.gaps_end {
            b.set_cursor(Cursor::ReplicateGaps, end);
        }
        if p.lane == Lane::Backfill {
            self.stats.backfilled.fetch_add(p.records as u64, Ordering::Relaxed);
        }
        let t = Instant::now();
        self.log.apply(b)?;
        StageTimes::add(&self.stats.time_ns.commit, t);
        Ok(())
    }
}
