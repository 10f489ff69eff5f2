//! The stall watchdog: an assigned partition with lag whose consumed
//! position has not moved for `stall_after` is stalled (logged, the
//! instance unready); stalled for another `stall_after`, the instance
//! should leave the group and join again (a rebalance once left a member
//! holding four partitions and fetching nothing for minutes).
//!
//! Only time spent consuming counts: a loop held up by something else
//! (a batch waiting for ClickHouse) calls [`Watchdog::excuse`], so an
//! outage downstream is not mistaken for a stall.

use crate::health::Health;
use std::collections::HashMap;
use std::time::Duration;
use tokio::time::Instant;

/// Default time without progress, lag present, before a partition counts
/// as stalled (a rebalance or a broker restart takes well under this).
pub const STALL_AFTER_DEFAULT: Duration = Duration::from_secs(120);

/// What the caller should do after a check.
#[derive(Debug, PartialEq, Eq)]
pub enum WatchdogVerdict {
    Fine,
    /// Leave the group and join again: these partitions stayed stalled.
    Rejoin(Vec<(String, i32)>),
}

pub struct Watchdog {
    stall_after: Duration,
    health: Health,
    /// Per partition: the last position seen, when it last moved (or was
    /// excused), and whether it is reported stalled.
    partitions: HashMap<(String, i32), Watched>,
}

struct Watched {
    position: Option<i64>,
    since: Instant,
    /// When it was found stalled.
    stalled: Option<Instant>,
}

impl Watchdog {
    pub fn new(stall_after: Duration, health: &Health) -> Self {
        Self { stall_after, health: health.clone(), partitions: HashMap::new() }
    }

    /// The partitions no longer held are forgotten.
    pub fn retain(&mut self, held: impl Fn(&str, i32) -> bool) {
        let health = &self.health;
        self.partitions.retain(|(t, p), _| {
            let keep = held(t, *p);
            if !keep {
                health.released(t, *p);
            }
            keep
        });
    }

    /// The loop was held up elsewhere: no partition is blamed for it.
    pub fn excuse(&mut self) {
        let now = Instant::now();
        for w in self.partitions.values_mut() {
            w.since = now;
        }
    }

    /// Whether a partition whose position has not moved since the last
    /// check needs its lag looked up (the caller asks the broker only then).
    pub fn needs_lag(&self, topic: &str, partition: i32, position: Option<i64>) -> bool {
        match self.partitions.get(&(topic.to_owned(), partition)) {
            Some(w) => w.position == position && w.since.elapsed() >= self.stall_after,
            None => false,
        }
    }

    /// Records one partition's position and, when asked, whether it has
    /// lag (`None`: not looked up, or unknown).
    pub fn observe(&mut self, topic: &str, partition: i32, position: Option<i64>, lag: Option<bool>) {
        let now = Instant::now();
        let w = self.partitions.entry((topic.to_owned(), partition)).or_insert(Watched {
            position,
            since: now,
            stalled: None,
        });
        if w.position != position || lag == Some(false) {
            w.position = position;
            w.since = now;
            if w.stalled.take().is_some() {
                self.health.stalled(topic, partition, false);
                tracing::info!(topic, partition, "partition moving again");
            }
            return;
        }
        if lag == Some(true) && w.stalled.is_none() && now.duration_since(w.since) >= self.stall_after {
            w.stalled = Some(now);
            self.health.stalled(topic, partition, true);
            tracing::warn!(
                topic,
                partition,
                position,
                stalled_s = now.duration_since(w.since).as_secs(),
                "partition stalled: lag and no progress"
            );
        }
    }

    /// After the partitions are observed: rejoin when one stayed stalled
    /// for another `stall_after` after it was found so. The partitions are
    /// forgotten then (a rejoin gives them out afresh).
    pub fn verdict(&mut self) -> WatchdogVerdict {
        let now = Instant::now();
        let long: Vec<(String, i32)> = self
            .partitions
            .iter()
            .filter(|(_, w)| w.stalled.is_some_and(|at| now.duration_since(at) >= self.stall_after))
            .map(|(k, _)| k.clone())
            .collect();
        if long.is_empty() {
            return WatchdogVerdict::Fine;
        }
        tracing::warn!(partitions = ?long, "partitions stalled too long: leaving the group and joining again");
        self.retain(|_, _| false);
        WatchdogVerdict::Rejoin(long)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Readiness;

    #[tokio::test(start_paused = true)]
    async fn lag_without_progress_is_a_stall_then_a_rejoin_progress_or_an_excuse_clears_it() {
        let health = Health::default();
        let mut dog = Watchdog::new(Duration::from_secs(10), &health);
        dog.observe("raw", 0, Some(5), None);
        dog.observe("raw", 1, Some(7), None);
        tokio::time::advance(Duration::from_secs(11)).await;
        // Partition 1 is at its end (no lag): not stalled, however long.
        assert!(dog.needs_lag("raw", 0, Some(5)) && dog.needs_lag("raw", 1, Some(7)));
        dog.observe("raw", 0, Some(5), Some(true));
        dog.observe("raw", 1, Some(7), Some(false));
        assert_eq!(dog.verdict(), WatchdogVerdict::Fine);
        assert!(matches!(health.readiness(), Readiness::Unready(r) if r.len() == 1 && r[0].starts_with("raw/0")));

        // Moving again: ready.
        dog.observe("raw", 0, Some(6), None);
        assert_eq!(health.readiness(), Readiness::Ready);

        // Stalled, then excused (the loop waited for ClickHouse): not blamed.
        tokio::time::advance(Duration::from_secs(11)).await;
        dog.excuse();
        assert!(!dog.needs_lag("raw", 0, Some(6)));
        dog.observe("raw", 0, Some(6), None);
        assert_eq!(health.readiness(), Readiness::Ready);

        // Found stalled late (checks are spaced): still reported before the
        // rejoin, which comes `stall_after` later; the partitions are
        // forgotten then.
        tokio::time::advance(Duration::from_secs(25)).await;
        dog.observe("raw", 0, Some(6), Some(true));
        assert_eq!(dog.verdict(), WatchdogVerdict::Fine);
        assert!(matches!(health.readiness(), Readiness::Unready(_)));
        tokio::time::advance(Duration::from_secs(10)).await;
        dog.observe("raw", 0, Some(6), Some(true));
        assert_eq!(dog.verdict(), WatchdogVerdict::Rejoin(vec![("raw".into(), 0)]));
        assert_eq!(health.readiness(), Readiness::Ready);
        assert!(!dog.needs_lag("raw", 0, Some(6)));
    }
}
