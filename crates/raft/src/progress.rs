//! The leader's view of each follower: how far its log matches, what to send next, and how
//! much is in flight (flow control, as in the Raft thesis §10.2 and etcd's progress tracker).

use std::collections::VecDeque;

/// How the leader replicates to one follower.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ProgressState {
    /// The leader does not know where the follower's log matches; it sends one
    /// AppendEntries at a time and waits for the answer.
    Probe,
    /// The follower's log matches up to `match_index`; the leader streams entries
    /// optimistically, bounded by the inflight limits.
    Replicate,
    /// The entries the follower needs are compacted; a snapshot up to `pending_index`
    /// was sent and the leader waits for it to be installed.
    Snapshot {
        /// Index of the snapshot sent.
        pending_index: u64,
    },
}

/// A bounded window of AppendEntries messages sent and not yet acknowledged.
#[derive(Clone, Debug)]
pub struct Inflights {
    /// (last index in the message, entry bytes in the message), in send order.
    window: VecDeque<(u64, u64)>,
    bytes: u64,
    max_messages: usize,
    max_bytes: u64,
}

impl Inflights {
    /// An empty window with the given limits.
    pub fn new(max_messages: usize, max_bytes: u64) -> Inflights {
        Inflights {
            window: VecDeque::new(),
            bytes: 0,
            max_messages,
            max_bytes,
        }
    }

    /// True if no further message may be sent.
    pub fn is_full(&self) -> bool {
        self.window.len() >= self.max_messages || self.bytes >= self.max_bytes
    }

    /// Records a message whose last entry is `last_index`.
    pub fn add(&mut self, last_index: u64, bytes: u64) {
        assert!(!self.is_full(), "inflight window overflow");
        if let Some((previous, _)) = self.window.back() {
            assert!(last_index > *previous, "inflight indexes must increase");
        }
        self.window.push_back((last_index, bytes));
        self.bytes += bytes;
    }

    /// Forgets every message whose last index is at most `index` (acknowledged).
    pub fn free_to(&mut self, index: u64) {
        while let Some((last, bytes)) = self.window.front().copied() {
            if last > index {
                break;
            }
            self.window.pop_front();
            self.bytes -= bytes;
        }
    }

    /// Forgets everything.
    pub fn reset(&mut self) {
        self.window.clear();
        self.bytes = 0;
    }

    /// Number of messages in flight.
    pub fn len(&self) -> usize {
        self.window.len()
    }

    /// True if nothing is in flight.
    pub fn is_empty(&self) -> bool {
        self.window.is_empty()
    }
}

/// Replication progress of one member, kept by the leader.
#[derive(Clone, Debug)]
pub struct Progress {
    /// Highest index known to match the leader's log.
    pub match_index: u64,
    /// Next index to send.
    pub next_index: u64,
    /// Replication mode.
    pub state: ProgressState,
    /// In the probe state: a probe was sent and is unanswered.
    pub probe_sent: bool,
    /// Messages in flight in the replicate state.
    pub inflights: Inflights,
    /// Heard from since the last check-quorum round.
    pub recent_active: bool,
    /// Was heard from in the previous check-quorum round.
    pub active_last_round: bool,
    /// Highest heartbeat sequence number this member acknowledged in the current term.
    pub acked_heartbeat: u64,
    /// `match_index` when the previous heartbeat response arrived; a replicate pipeline
    /// that made no progress between two responses is probed at its tail.
    pub match_at_last_heartbeat: u64,
    /// Highest commit index sent to this member that it could apply (capped at what the
    /// leader had sent it), so a late acknowledgement still learns the commit at once.
    pub commit_sent: u64,
    /// Ticks spent in the snapshot state; past the configured timeout the leader assumes the
    /// snapshot or its acknowledgement was lost and probes again.
    pub snapshot_elapsed_ticks: u32,
}

impl Progress {
    /// Fresh progress for a new leader whose last index is `last_index`.
    pub fn new(last_index: u64, max_inflight_messages: usize, max_inflight_bytes: u64) -> Progress {
        Progress {
            match_index: 0,
            next_index: last_index + 1,
            state: ProgressState::Probe,
            probe_sent: false,
            inflights: Inflights::new(max_inflight_messages, max_inflight_bytes),
            recent_active: false,
            active_last_round: false,
            acked_heartbeat: 0,
            match_at_last_heartbeat: 0,
            commit_sent: 0,
            snapshot_elapsed_ticks: 0,
        }
    }

    /// True if the leader must not send more AppendEntries for now.
    pub fn is_paused(&self) -> bool {
        match self.state {
            ProgressState::Probe => self.probe_sent,
            ProgressState::Replicate => self.inflights.is_full(),
            ProgressState::Snapshot { .. } => true,
        }
    }

    /// Switches to probing from just after the match.
    pub fn become_probe(&mut self) {
        if let ProgressState::Snapshot { pending_index } = self.state {
            self.next_index = (self.match_index + 1).max(pending_index + 1);
        } else {
            self.next_index = self.match_index + 1;
        }
        self.state = ProgressState::Probe;
        self.probe_sent = false;
        self.inflights.reset();
    }

    /// Switches to streaming.
    pub fn become_replicate(&mut self) {
        self.state = ProgressState::Replicate;
        self.next_index = self.match_index + 1;
        self.probe_sent = false;
        self.inflights.reset();
    }

    /// Switches to waiting for a snapshot up to `index` to be installed.
    pub fn become_snapshot(&mut self, index: u64) {
        self.state = ProgressState::Snapshot {
            pending_index: index,
        };
        self.snapshot_elapsed_ticks = 0;
        self.probe_sent = false;
        self.inflights.reset();
    }

    /// Records a successful AppendEntries up to `index`. Returns false if stale.
    pub fn maybe_update(&mut self, index: u64) -> bool {
        let updated = index > self.match_index;
        if updated {
            self.match_index = index;
            self.probe_sent = false;
        }
        self.next_index = self.next_index.max(index + 1);
        updated
    }

    /// Handles a rejection of the AppendEntries whose previous index was `rejected`;
    /// `hint_next` is the leader's guess of the next index to try. Returns false if the
    /// rejection is stale (answers an earlier message).
    pub fn maybe_decrease(&mut self, rejected: u64, hint_next: u64) -> bool {
        match self.state {
            ProgressState::Replicate => {
                if rejected <= self.match_index {
                    return false;
                }
                self.become_probe();
                true
            }
            ProgressState::Probe | ProgressState::Snapshot { .. } => {
                if self.next_index == 0 || rejected != self.next_index - 1 {
                    return false;
                }
                self.next_index = hint_next.min(rejected).max(self.match_index + 1);
                self.probe_sent = false;
                true
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn inflights_limit_by_count_and_bytes() {
        let mut window = Inflights::new(2, 100);
        window.add(5, 10);
        assert!(!window.is_full());
        window.add(9, 10);
        assert!(window.is_full());
        window.free_to(5);
        assert_eq!(window.len(), 1);
        window.add(12, 200);
        assert!(window.is_full(), "bytes limit");
        window.free_to(12);
        assert!(window.is_empty());
    }

    #[test]
    fn stale_rejections_are_ignored() {
        let mut progress = Progress::new(10, 4, 1 << 20);
        assert!(progress.maybe_decrease(10, 5));
        assert_eq!(progress.next_index, 5);
        assert!(!progress.maybe_decrease(10, 3), "answers an older probe");
        progress.maybe_update(4);
        progress.become_replicate();
        assert!(!progress.maybe_decrease(3, 1), "below the match");
        assert!(progress.maybe_decrease(7, 1));
        assert_eq!(progress.state, ProgressState::Probe);
        assert_eq!(progress.next_index, 5);
    }
}
