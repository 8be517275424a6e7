//! [`Wakeup`]: tells an idle relay that records were committed.

use std::fmt;
use std::sync::Arc;

use tokio::sync::Notify;

/// Wakes a relay waiting between polls, so a record committed in the same
/// process is claimed at once instead of at the next poll.
///
/// Give the same `Wakeup` to the relay ([`RelayBuilder::wakeup`]) and to
/// the code that commits outbox records, which calls [`wake`](Self::wake)
/// after each commit (`outbox_sea_orm::Outbox::transaction` does it for
/// you). Wake-ups coalesce: any number of them while the relay is busy
/// make it claim once more when it is done, and a wake-up before the
/// commit is visible costs one empty claim. The relay still polls, so a
/// record committed by another process (or a lost wake-up) waits at most
/// the poll interval.
///
/// Clones share one signal. Cheap to clone and to call.
///
/// [`RelayBuilder::wakeup`]: crate::RelayBuilder::wakeup
#[derive(Clone, Default)]
pub struct Wakeup {
    notify: Arc<Notify>,
}

impl Wakeup {
    /// A new signal, shared by its clones.
    pub fn new() -> Self {
        Self::default()
    }

    /// Wakes the relay if it waits, or makes its next wait return at once.
    pub fn wake(&self) {
        self.notify.notify_one();
    }

    /// Waits for a [`wake`](Self::wake), or returns at once when one came
    /// since the last wait (the relay waits so; a test can too).
    pub async fn woken(&self) {
        self.notify.notified().await;
    }
}

impl fmt::Debug for Wakeup {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Wakeup").finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_wake_before_the_wait_is_kept_and_many_coalesce() {
        let wakeup = Wakeup::new();
        wakeup.wake();
        wakeup.clone().wake();
        tokio::time::timeout(Duration::from_millis(1), wakeup.woken())
            .await
            .expect("the earlier wake-up is kept");
        // Two wake-ups made one permit: the next wait waits.
        assert!(
            tokio::time::timeout(Duration::from_secs(1), wakeup.woken())
                .await
                .is_err()
        );
    }
}
