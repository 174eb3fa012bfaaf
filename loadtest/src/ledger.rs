//! The bookkeeping of a run: which sends were made, acknowledged and pushed, and how long
//! each step took. Pure: no clocks, no I/O; callers pass timestamps in.
//!
//! Every send carries a unique `client_message_id` (see [`MsgKey`]); the broker echoes it
//! in the `ack` (`id`) and in every `push`, so a push is matched to its send even when it
//! arrives before the sender has seen the ack (an *early push*). Pushes are counted per
//! `(message, recipient)`: the first one is a delivery, any further one a duplicate.

use std::collections::HashMap;
use std::collections::hash_map::Entry as MapEntry;

use hdrhistogram::Histogram;

use crate::series::Series;

/// Microseconds since the start of the run.
pub type Micros = u64;

/// Highest latency the histograms keep exactly (one hour); larger values saturate.
const MAX_TRACKED_US: u64 = 3_600_000_000;

/// Identifies one send of this run: the sender's peer index and its sequence number.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct MsgKey {
    pub sender: u32,
    pub seq: u32,
}

impl MsgKey {
    /// The `client_message_id` of this send: `<run>-<sender>-<seq>`.
    pub fn client_id(self, run: &str) -> String {
        format!("{run}-{}-{}", self.sender, self.seq)
    }

    /// Parses a `client_message_id` made by [`MsgKey::client_id`] for the same run.
    pub fn parse(run: &str, id: &str) -> Option<MsgKey> {
        let rest = id.strip_prefix(run)?.strip_prefix('-')?;
        let (sender, seq) = rest.split_once('-')?;
        Some(MsgKey {
            sender: sender.parse().ok()?,
            seq: seq.parse().ok()?,
        })
    }

    fn packed(self) -> u64 {
        (u64::from(self.sender) << 32) | u64::from(self.seq)
    }
}

/// What the broker answered to a send.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AckState {
    /// No `ack` yet (still in flight, or lost with its connection).
    Pending,
    /// `ack{queued:true}`.
    Accepted,
    /// `ack{queued:false, error}`.
    Rejected,
    /// The connection closed before the ack came: it never will.
    Abandoned,
}

#[derive(Debug)]
struct Entry {
    sent_at: Micros,
    ack: AckState,
    /// The broker's `messageId`, from the ack or the first push.
    broker_id: Option<Box<str>>,
    /// How many distinct recipients should get it (1 for a direct message).
    expected: u32,
    /// Recipients (peer indexes) that got it at least once.
    recipients: Vec<u32>,
}

/// What a push turned out to be.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PushOutcome {
    /// The first push of this message to this recipient; the send→push latency.
    Delivered { latency_us: u64, early: bool },
    /// This recipient already had it.
    Duplicate,
    /// Not a send of this run.
    Unknown,
}

/// What an ack turned out to be.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AckOutcome {
    /// The first ack of this send; the send→ack latency.
    Recorded { latency_us: u64 },
    /// A second ack for the same send, or an ack of no send of this run.
    Ignored,
}

/// Counters and latency histograms of one run.
#[derive(Debug)]
pub struct Ledger {
    entries: HashMap<u64, Entry>,
    pub ack_us: Histogram<u64>,
    pub e2e_us: Histogram<u64>,
    pub sent: u64,
    pub accepted: u64,
    pub rejected: u64,
    /// Sends whose connection closed before their ack.
    pub abandoned: u64,
    /// First pushes per (message, recipient), whatever the ack said.
    pub delivered: u64,
    pub duplicates: u64,
    /// Pushes that arrived before their send's ack.
    pub early_pushes: u64,
    pub unknown_pushes: u64,
    /// Pushes whose `messageId` differs from the one the ack gave.
    pub id_mismatches: u64,
    pub first_send_at: Option<Micros>,
    pub last_delivery_at: Option<Micros>,
    /// The per-second series (`--series`), when one is written.
    pub series: Option<Series>,
}

impl Default for Ledger {
    fn default() -> Self {
        Self::new()
    }
}

fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, MAX_TRACKED_US, 3).expect("static histogram bounds are valid")
}

impl Ledger {
    pub fn new() -> Ledger {
        Ledger {
            entries: HashMap::new(),
            ack_us: histogram(),
            e2e_us: histogram(),
            sent: 0,
            accepted: 0,
            rejected: 0,
            abandoned: 0,
            delivered: 0,
            duplicates: 0,
            early_pushes: 0,
            unknown_pushes: 0,
            id_mismatches: 0,
            first_send_at: None,
            last_delivery_at: None,
            series: None,
        }
    }

    /// The series bucket of an event at `at`, when a series is kept and started.
    pub fn second(&mut self, at: Micros) -> Option<&mut crate::series::Bucket> {
        self.series.as_mut()?.at(at)
    }

    /// Records a send made at `at` that `expected` recipients should get. A key sent twice
    /// keeps its first record; returns whether this one was new.
    pub fn on_send(&mut self, key: MsgKey, at: Micros, expected: u32) -> bool {
        match self.entries.entry(key.packed()) {
            MapEntry::Occupied(_) => false,
            MapEntry::Vacant(v) => {
                v.insert(Entry {
                    sent_at: at,
                    ack: AckState::Pending,
                    broker_id: None,
                    expected,
                    recipients: Vec::new(),
                });
                self.sent += 1;
                if let Some(b) = self.series.as_mut().and_then(|s| s.at(at)) {
                    b.sent += 1;
                }
                self.first_send_at = Some(self.first_send_at.map_or(at, |f| f.min(at)));
                true
            }
        }
    }

    /// Records the broker's `ack` of `key` at `at`.
    pub fn on_ack(&mut self, key: MsgKey, at: Micros, queued: bool, broker_id: &str) -> AckOutcome {
        let Some(e) = self.entries.get_mut(&key.packed()) else {
            return AckOutcome::Ignored;
        };
        match e.ack {
            AckState::Pending => {}
            AckState::Abandoned => self.abandoned -= 1,
            AckState::Accepted | AckState::Rejected => return AckOutcome::Ignored,
        }
        let latency_us = at.saturating_sub(e.sent_at);
        self.ack_us.saturating_record(latency_us.max(1));
        if let Some(b) = self.series.as_mut().and_then(|s| s.at(at)) {
            b.ack_us.saturating_record(latency_us.max(1));
            if queued {
                b.accepted += 1;
            } else {
                b.rejected += 1;
                b.errors += 1;
            }
        }
        if queued {
            e.ack = AckState::Accepted;
            self.accepted += 1;
            match &e.broker_id {
                // An early push already told us the id: it must be the same.
                Some(seen) if **seen != *broker_id => self.id_mismatches += 1,
                Some(_) => {}
                None => e.broker_id = Some(broker_id.into()),
            }
        } else {
            e.ack = AckState::Rejected;
            self.rejected += 1;
        }
        AckOutcome::Recorded { latency_us }
    }

    /// Records a push of `key` (broker id `broker_id`) to peer `recipient` at `at`.
    pub fn on_push(
        &mut self,
        key: MsgKey,
        recipient: u32,
        broker_id: &str,
        at: Micros,
    ) -> PushOutcome {
        let Some(e) = self.entries.get_mut(&key.packed()) else {
            self.unknown_pushes += 1;
            return PushOutcome::Unknown;
        };
        match &e.broker_id {
            Some(seen) if **seen != *broker_id => self.id_mismatches += 1,
            Some(_) => {}
            None => e.broker_id = Some(broker_id.into()),
        }
        if e.recipients.contains(&recipient) {
            self.duplicates += 1;
            if let Some(b) = self.series.as_mut().and_then(|s| s.at(at)) {
                b.duplicates += 1;
            }
            return PushOutcome::Duplicate;
        }
        e.recipients.push(recipient);
        let early = e.ack == AckState::Pending;
        if early {
            self.early_pushes += 1;
        }
        let latency_us = at.saturating_sub(e.sent_at);
        self.e2e_us.saturating_record(latency_us.max(1));
        if let Some(b) = self.series.as_mut().and_then(|s| s.at(at)) {
            b.e2e_us.saturating_record(latency_us.max(1));
            b.delivered += 1;
        }
        self.delivered += 1;
        self.last_delivery_at = Some(self.last_delivery_at.map_or(at, |l| l.max(at)));
        PushOutcome::Delivered { latency_us, early }
    }

    /// Marks the unacknowledged sends `seqs` of `sender` as abandoned: their connection
    /// closed, so no ack will come (a push still may, if the broker had queued them).
    pub fn abandon(&mut self, sender: u32, seqs: impl IntoIterator<Item = u32>) {
        for seq in seqs {
            if let Some(e) = self.entries.get_mut(&MsgKey { sender, seq }.packed())
                && e.ack == AckState::Pending
            {
                e.ack = AckState::Abandoned;
                self.abandoned += 1;
            }
        }
    }

    /// Sends still waiting for an ack on a live connection.
    pub fn pending_acks(&self) -> u64 {
        self.sent - self.accepted - self.rejected - self.abandoned
    }

    /// Sends that never got an ack: still waiting, or abandoned with their connection.
    pub fn unacked(&self) -> u64 {
        self.sent - self.accepted - self.rejected
    }

    /// Deliveries still missing for acknowledged sends (`expected` minus recipients so far).
    pub fn missing_deliveries(&self) -> u64 {
        self.entries
            .values()
            .filter(|e| e.ack == AckState::Accepted)
            .map(|e| u64::from(e.expected.saturating_sub(e.recipients.len() as u32)))
            .sum()
    }

    /// Acknowledged sends that reached none of their recipients.
    pub fn lost_acked(&self) -> u64 {
        self.entries
            .values()
            .filter(|e| e.ack == AckState::Accepted && e.recipients.is_empty())
            .count() as u64
    }

    /// Deliveries the acknowledged sends should produce.
    pub fn expected_deliveries(&self) -> u64 {
        self.entries
            .values()
            .filter(|e| e.ack == AckState::Accepted)
            .map(|e| u64::from(e.expected))
            .sum()
    }

    /// True when every send has its ack and every acknowledged send all its deliveries.
    pub fn settled(&self) -> bool {
        self.pending_acks() == 0 && self.missing_deliveries() == 0
    }

    /// A number that changes whenever anything is recorded (for stall detection).
    pub fn progress_marker(&self) -> u64 {
        self.sent + self.accepted + self.rejected + self.delivered + self.duplicates
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const RUN: &str = "r1";

    fn key(sender: u32, seq: u32) -> MsgKey {
        MsgKey { sender, seq }
    }

    #[test]
    fn client_ids_round_trip_and_foreign_ids_are_refused() {
        let k = key(7, 42);
        let id = k.client_id(RUN);
        assert_eq!(id, "r1-7-42");
        assert_eq!(MsgKey::parse(RUN, &id), Some(k));
        assert_eq!(MsgKey::parse("r2", &id), None);
        assert_eq!(MsgKey::parse(RUN, "r1-7"), None);
        assert_eq!(MsgKey::parse(RUN, "r1-x-1"), None);
        assert_eq!(MsgKey::parse(RUN, "r17-1-1"), None);
    }

    #[test]
    fn ack_then_push_records_both_latencies() {
        let mut l = Ledger::new();
        assert!(l.on_send(key(0, 0), 1_000, 1));
        assert_eq!(
            l.on_ack(key(0, 0), 1_500, true, "m1"),
            AckOutcome::Recorded { latency_us: 500 }
        );
        assert_eq!(
            l.on_push(key(0, 0), 3, "m1", 4_000),
            PushOutcome::Delivered {
                latency_us: 3_000,
                early: false
            }
        );
        assert_eq!(
            (l.sent, l.accepted, l.delivered, l.duplicates),
            (1, 1, 1, 0)
        );
        assert_eq!(l.ack_us.len(), 1);
        assert_eq!(l.e2e_us.len(), 1);
        assert!(l.ack_us.equivalent(l.ack_us.max(), 500));
        assert!(l.e2e_us.equivalent(l.e2e_us.max(), 3_000));
        assert!(l.settled());
        assert_eq!(l.lost_acked(), 0);
        assert_eq!(l.last_delivery_at, Some(4_000));
    }

    #[test]
    fn a_push_before_its_ack_is_delivered_not_lost() {
        let mut l = Ledger::new();
        l.on_send(key(1, 0), 0, 1);
        assert_eq!(
            l.on_push(key(1, 0), 2, "m9", 800),
            PushOutcome::Delivered {
                latency_us: 800,
                early: true
            }
        );
        // Not settled yet: the ack is missing.
        assert!(!l.settled());
        assert_eq!(l.pending_acks(), 1);
        l.on_ack(key(1, 0), 900, true, "m9");
        assert_eq!(l.early_pushes, 1);
        assert_eq!((l.accepted, l.delivered, l.lost_acked()), (1, 1, 0));
        assert_eq!(l.missing_deliveries(), 0);
        assert_eq!(l.id_mismatches, 0);
        assert!(l.settled());
    }

    #[test]
    fn an_early_push_with_another_id_than_the_ack_is_a_mismatch() {
        let mut l = Ledger::new();
        l.on_send(key(1, 0), 0, 1);
        l.on_push(key(1, 0), 2, "a", 10);
        l.on_ack(key(1, 0), 20, true, "b");
        assert_eq!(l.id_mismatches, 1);
    }

    #[test]
    fn repeated_pushes_are_duplicates_and_do_not_move_latency() {
        let mut l = Ledger::new();
        l.on_send(key(0, 1), 0, 1);
        l.on_ack(key(0, 1), 10, true, "m");
        l.on_push(key(0, 1), 5, "m", 100);
        assert_eq!(l.on_push(key(0, 1), 5, "m", 30_000), PushOutcome::Duplicate);
        assert_eq!(l.on_push(key(0, 1), 5, "m", 60_000), PushOutcome::Duplicate);
        assert_eq!((l.delivered, l.duplicates), (1, 2));
        assert_eq!(l.e2e_us.len(), 1);
        assert_eq!(l.last_delivery_at, Some(100));
    }

    #[test]
    fn fan_out_counts_each_recipient_once() {
        let mut l = Ledger::new();
        l.on_send(key(0, 0), 0, 3);
        l.on_ack(key(0, 0), 5, true, "b");
        l.on_push(key(0, 0), 1, "b", 10);
        l.on_push(key(0, 0), 2, "b", 12);
        assert_eq!(l.missing_deliveries(), 1);
        assert_eq!(l.expected_deliveries(), 3);
        assert!(!l.settled());
        l.on_push(key(0, 0), 2, "b", 13);
        l.on_push(key(0, 0), 3, "b", 14);
        assert_eq!((l.delivered, l.duplicates), (3, 1));
        assert!(l.settled());
    }

    #[test]
    fn unacked_rejected_and_lost_are_told_apart() {
        let mut l = Ledger::new();
        l.on_send(key(0, 0), 0, 1); // accepted, never pushed: lost
        l.on_send(key(0, 1), 0, 1); // rejected
        l.on_send(key(0, 2), 0, 1); // never acked (connection died)
        l.on_ack(key(0, 0), 1, true, "x");
        l.on_ack(key(0, 1), 1, false, "");
        assert_eq!(
            l.on_ack(key(0, 1), 2, true, "late"),
            AckOutcome::Ignored,
            "a second ack changes nothing"
        );
        assert_eq!((l.accepted, l.rejected, l.pending_acks()), (1, 1, 1));
        assert_eq!(l.lost_acked(), 1);
        assert_eq!(l.expected_deliveries(), 1);
        assert!(!l.settled());
    }

    #[test]
    fn abandoned_sends_settle_and_may_still_be_delivered() {
        let mut l = Ledger::new();
        l.on_send(key(2, 0), 0, 1);
        l.on_send(key(2, 1), 0, 1);
        l.on_send(key(2, 2), 0, 1);
        l.on_ack(key(2, 0), 5, true, "a");
        l.on_push(key(2, 0), 0, "a", 6);
        assert!(!l.settled());
        // The connection dies with 1 and 2 in flight; 0 (already acked) is untouched.
        l.abandon(2, [0, 1, 2]);
        assert_eq!((l.abandoned, l.pending_acks(), l.unacked()), (2, 0, 2));
        assert!(l.settled(), "nothing more can come for abandoned sends");
        // The broker had queued 1 before dying: it arrives after the reconnect.
        assert!(matches!(
            l.on_push(key(2, 1), 0, "b", 50),
            PushOutcome::Delivered { early: false, .. }
        ));
        assert_eq!((l.delivered, l.lost_acked(), l.accepted), (2, 0, 1));
    }

    #[test]
    fn foreign_pushes_and_acks_are_ignored() {
        let mut l = Ledger::new();
        assert_eq!(l.on_push(key(9, 9), 0, "z", 1), PushOutcome::Unknown);
        assert_eq!(l.on_ack(key(9, 9), 1, true, "z"), AckOutcome::Ignored);
        assert_eq!(l.unknown_pushes, 1);
        assert_eq!(l.sent, 0);
        assert!(!l.on_send(key(0, 0), 5, 1) || !l.on_send(key(0, 0), 6, 1));
        assert_eq!(l.sent, 1);
    }

    #[test]
    fn latencies_beyond_an_hour_saturate() {
        let mut l = Ledger::new();
        l.on_send(key(0, 0), 0, 1);
        l.on_push(key(0, 0), 1, "m", 10 * MAX_TRACKED_US);
        assert_eq!(l.e2e_us.len(), 1);
        assert!(l.e2e_us.max() >= MAX_TRACKED_US - MAX_TRACKED_US / 1000);
    }
}
