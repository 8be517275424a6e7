//! The figures of one run, as a line for people or a JSON object.

use std::time::Duration;

use serde::Serialize;

/// The figures of one run of a scenario: one line of output.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct Figures {
    pub(crate) scenario: &'static str,
    /// `postgres`, `mysql` or `sqlite`.
    pub(crate) backend: &'static str,
    /// `mock` (librdkafka's mock cluster), `kafka`, or `none`.
    pub(crate) sink: &'static str,
    /// What moved the records: `outbox`, `outbox+wakeup`, `seed`, ...
    pub(crate) relay: String,
    pub(crate) events: u64,
    pub(crate) keys: u64,
    pub(crate) relays: u32,
    pub(crate) seconds: f64,
    pub(crate) events_per_s: f64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) p50_ms: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) p99_ms: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) per_event_ms: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) peak_rss_mb: Option<f64>,
    /// What else the run saw, in words.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) note: Option<String>,
}

impl Figures {
    /// `events` moved in `elapsed`, the rest unmeasured.
    pub(crate) fn throughput(
        scenario: &'static str,
        backend: &'static str,
        sink: &'static str,
        relay: impl Into<String>,
        (events, keys, relays): (u64, u64, u32),
        elapsed: Duration,
    ) -> Self {
        let seconds = elapsed.as_secs_f64();
        Self {
            scenario,
            backend,
            sink,
            relay: relay.into(),
            events,
            keys,
            relays,
            seconds: round(seconds, 3),
            events_per_s: round(events as f64 / seconds.max(1e-9), 1),
            p50_ms: None,
            p99_ms: None,
            per_event_ms: None,
            peak_rss_mb: None,
            note: None,
        }
    }

    /// With the median and 99th percentile of `times`.
    pub(crate) fn percentiles(mut self, times: &mut [Duration]) -> Self {
        if let Some((p50, p99)) = percentiles(times) {
            self.p50_ms = Some(round(p50, 3));
            self.p99_ms = Some(round(p99, 3));
        }
        self
    }

    /// Prints the figures: a JSON object on stdout with `json` (and the
    /// line for people on stderr), else the line for people on stdout.
    pub(crate) fn print(&self, json: bool) {
        if json {
            println!(
                "{}",
                serde_json::to_string(self).expect("figures serialize")
            );
            eprintln!("{self}");
        } else {
            println!("{self}");
        }
    }
}

impl std::fmt::Display for Figures {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{:<8} {:<8} {:<5} {:<20} {:>8} events {:>5} keys {} relay{}: {:>8.3} s {:>9.1} events/s",
            self.scenario,
            self.backend,
            self.sink,
            self.relay,
            self.events,
            self.keys,
            self.relays,
            if self.relays == 1 { " " } else { "s" },
            self.seconds,
            self.events_per_s,
        )?;
        if let (Some(p50), Some(p99)) = (self.p50_ms, self.p99_ms) {
            write!(f, "   p50 {p50:.2} ms  p99 {p99:.2} ms")?;
        }
        if let Some(ms) = self.per_event_ms {
            write!(f, "   {ms:.3} ms per event")?;
        }
        if let Some(mb) = self.peak_rss_mb {
            write!(f, "   peak RSS {mb:.1} MB")?;
        }
        if let Some(note) = &self.note {
            write!(f, "   ({note})")?;
        }
        Ok(())
    }
}

/// Median and 99th percentile of `times`, in milliseconds (none of no
/// times).
pub(crate) fn percentiles(times: &mut [Duration]) -> Option<(f64, f64)> {
    if times.is_empty() {
        return None;
    }
    times.sort();
    let at = |q: f64| {
        let i = ((times.len() as f64 - 1.0) * q).round() as usize;
        times[i].as_secs_f64() * 1000.0
    };
    Some((at(0.5), at(0.99)))
}

/// `value` rounded to `decimals` decimals.
pub(crate) fn round(value: f64, decimals: i32) -> f64 {
    let scale = 10f64.powi(decimals);
    (value * scale).round() / scale
}
