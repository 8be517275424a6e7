use std::ops::AddAssign;
use std::time::Duration;

use chrono::{DateTime, Utc};

/// What one [`Relay::run_once`](super::Relay::run_once) did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RunReport {
    /// Records claimed.
    pub claimed: usize,
    /// Records delivered and marked published.
    pub published: usize,
    /// Records that failed and were scheduled for another attempt.
    pub retried: usize,
    /// Records moved to dead letters.
    pub dead: usize,
    /// Records released without an attempt counted (held back behind a
    /// failed record of their key).
    pub released: usize,
}

impl AddAssign for RunReport {
    fn add_assign(&mut self, other: Self) {
        self.claimed += other.claimed;
        self.published += other.published;
        self.retried += other.retried;
        self.dead += other.dead;
        self.released += other.released;
    }
}

/// What a relay has done so far, for operators and health checks
/// ([`Relay::status`](super::Relay::status)).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RelayStatus {
    /// The relay's id.
    pub relay_id: String,
    /// Whether [`Relay::run`](super::Relay::run) is looping.
    pub running: bool,
    /// When the last batch ended, successfully or not.
    pub last_run_at: Option<DateTime<Utc>>,
    /// When the last batch (or empty poll) succeeded.
    pub last_success_at: Option<DateTime<Utc>>,
    /// Batches that failed in a row since the last success (0 when the last
    /// one succeeded).
    pub consecutive_failures: u32,
    /// The error of the last batch, cleared by a successful one.
    pub last_error: Option<String>,
    /// Totals since the relay was built.
    pub totals: RunReport,
}

impl RelayStatus {
    /// Whether the relay is working, for a readiness check: `Ok` when its
    /// last batch or empty poll succeeded within `window` before `now`
    /// (a few poll intervals, and more than a batch takes), otherwise why
    /// not, in a sentence for the check's response.
    pub fn health(&self, now: DateTime<Utc>, window: Duration) -> Result<(), String> {
        let window_text = format!("{:.1}s", window.as_secs_f64());
        let failing = match &self.last_error {
            Some(error) => format!(
                "; {} batch(es) failed in a row, the last with: {error}",
                self.consecutive_failures
            ),
            None => String::new(),
        };
        match self.last_success_at {
            None => Err(format!(
                "relay {} has not completed a batch or poll yet{failing}",
                self.relay_id
            )),
            Some(at) => {
                let age = (now - at).to_std().unwrap_or_default();
                if age <= window {
                    Ok(())
                } else {
                    Err(format!(
                        "relay {}'s last successful batch or poll was {:.1}s ago (at {at}), \
                         more than {window_text}{failing}",
                        self.relay_id,
                        age.as_secs_f64()
                    ))
                }
            }
        }
    }

    pub(super) fn new(relay_id: String) -> Self {
        Self {
            relay_id,
            running: false,
            last_run_at: None,
            last_success_at: None,
            consecutive_failures: 0,
            last_error: None,
            totals: RunReport::default(),
        }
    }
}
