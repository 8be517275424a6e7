//! Schedules: a history of events, and the one fault injected into a run
//! of it; their printed form, and the enumeration of each [`Size`].

use std::fmt;
use std::ops::RangeInclusive;
use std::str::FromStr;

use super::Size;

/// One event a writer attempted, in the order writers attempted them.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(super) struct Event {
    /// Its key: a lowercase letter.
    pub(super) key: char,
    /// Its rank among the events of its key, from 1 (rolled-back ones
    /// included).
    pub(super) ordinal: usize,
    /// The commit wave: wave `w` commits just before the relays' turn `w`.
    pub(super) wave: usize,
    /// Attempted but never committed, so never enqueued.
    pub(super) rolled_back: bool,
    /// Its writer's transaction holds its key across relay steps: it
    /// opens (enqueueing the event, holding the key) right after the claim
    /// of turn `wave`, so over that batch's settlements and the whole next
    /// turn, and commits (or rolls back) just before turn `wave + 2`.
    pub(super) held: bool,
    /// The offers (1 for the first time the sink is handed the record) on
    /// which the destination fails it, retriably.
    pub(super) fails_on: Vec<u32>,
}

impl Event {
    /// `a1`, `b2`: its key and ordinal.
    pub(super) fn label(&self) -> String {
        format!("{}{}", self.key, self.ordinal)
    }
}

impl fmt::Display for Event {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.rolled_back {
            f.write_str("~")?;
        }
        write!(f, "{}{}", self.key, self.ordinal)?;
        if self.held {
            f.write_str("^")?;
        }
        for offer in &self.fails_on {
            write!(f, "!{offer}")?;
        }
        Ok(())
    }
}

/// A history: the events writers attempted, each committed or rolled
/// back, in commit waves; the offers on which the destination fails each
/// one; and the relays' batch size.
///
/// Printed (and parsed) as `a1 b1 | a2!1 ~b2; batch=2`: events in the
/// order writers attempted them, named by key and rank within the key;
/// `|` starts the next commit wave (wave `w` commits just before the
/// relays' turn `w`, so wave 0 before the first claim and later waves
/// between batches); `~` marks an event whose transaction rolled back;
/// `^` an event whose writer holds its key across relay steps (it
/// enqueues right after the turn's claim, in a transaction left open over
/// that batch's settlements and the next turn, until just before the turn
/// after; the last event of its key in its wave); `!n`
/// makes the destination fail the event, retriably, the `n`th time the
/// sink is handed it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct History {
    pub(super) events: Vec<Event>,
    pub(super) batch_size: usize,
}

impl History {
    /// How many of its events commit.
    pub fn committed(&self) -> usize {
        self.events.iter().filter(|e| !e.rolled_back).count()
    }

    /// How many of its events roll back.
    pub fn rolled_back(&self) -> usize {
        self.events.len() - self.committed()
    }

    /// The relays' batch size.
    pub fn batch_size(&self) -> usize {
        self.batch_size
    }

    /// How many commit waves it has (the last wave's number, plus 1; a
    /// held event commits two waves later).
    pub(super) fn waves(&self) -> usize {
        self.events
            .iter()
            .map(|e| e.wave + 1 + 2 * usize::from(e.held))
            .max()
            .unwrap_or(0)
    }

    /// How many of its events hold their key across a turn.
    pub fn held(&self) -> usize {
        self.events.iter().filter(|e| e.held).count()
    }

    /// A history of events with keys `keys` (0 for `a`), the `rollback`th
    /// rolled back, committed in waves as `split` says, failing as
    /// `failures` says.
    fn build(
        keys: &[usize],
        rollback: Option<usize>,
        split: Split,
        failures: Failures,
        held: Held,
        batch_size: usize,
    ) -> Self {
        let mut ranks = [0; 26];
        let mut events: Vec<Event> = keys
            .iter()
            .enumerate()
            .map(|(index, &key)| {
                ranks[key] += 1;
                Event {
                    key: char::from(b'a' + key as u8),
                    ordinal: ranks[key],
                    wave: split.wave(index, keys.len()),
                    rolled_back: rollback == Some(index),
                    held: false,
                    fails_on: Vec::new(),
                }
            })
            .collect();
        if let Held::LastOfFirstWave = held
            && let Some(last) = events.iter().rposition(|e| e.wave == 0)
        {
            events[last].held = true;
        }
        let committed: Vec<usize> = (0..events.len())
            .filter(|&i| !events[i].rolled_back)
            .collect();
        if let (Some(&first), Some(&last)) = (committed.first(), committed.last()) {
            match failures {
                Failures::None => {}
                Failures::FirstOnce => events[first].fails_on = vec![1],
                Failures::Several => {
                    events[first].fails_on = vec![1, 2];
                    events[last].fails_on.push(1);
                    events[last].fails_on.sort_unstable();
                    events[last].fails_on.dedup();
                }
            }
        }
        Self { events, batch_size }
    }
}

impl fmt::Display for History {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut wave = 0;
        for (index, event) in self.events.iter().enumerate() {
            if index > 0 {
                f.write_str(" ")?;
            }
            while wave < event.wave {
                f.write_str("| ")?;
                wave += 1;
            }
            write!(f, "{event}")?;
        }
        write!(f, "; batch={}", self.batch_size)
    }
}

/// The one fault of a run.
///
/// Steps are numbered from 0 over the whole run, both relays together, in
/// the order they happen. The relays' protocol steps are: a claim that
/// returned records (the store leased them), a record handed off to the
/// sink (it reached the destination, its outcome not yet reported), an
/// outcome reported to the relay, a settle about to be sent to the store,
/// and a settle the store applied (before the relay sees its answer).
/// Claims and settles are the *store steps*.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Fault {
    /// No fault: the relays run the history until nothing is pending.
    /// Printed `clean`.
    None,
    /// The relay that takes step `step` crashes right after it: nothing it
    /// would have done next happens, and its leases stay until they run
    /// out. A fresh relay, with a new id, takes its place. Printed
    /// `crash@7`.
    Crash {
        /// The step after which the relay crashes.
        step: usize,
    },
    /// The store step `step` (a claim or a settle) fails with a retriable
    /// error: before the store applies it when the step is a settle about
    /// to be sent, after it applied it (the answer lost) when the step is a
    /// claim or an applied settle. The relay goes on. Printed `fail@5`.
    Fail {
        /// The store step that fails.
        step: usize,
    },
    /// The relay that takes step `step` (a store step, when enumerated)
    /// stalls right after it, alive. With `takeover`, its lease runs out
    /// and the other relay runs alone until nothing is pending, taking its
    /// records over; without, the other relay runs one batch while the
    /// stalled one holds its lease. Then the stalled relay resumes and
    /// finishes its batch: after a takeover, its settle must change
    /// nothing. Printed `stall@3+takeover` or `stall@3+interleave`.
    Stall {
        /// The step after which the relay stalls.
        step: usize,
        /// Whether its lease runs out and is taken over while it stalls.
        takeover: bool,
    },
}

impl Fault {
    /// The step the fault happens at, if any.
    pub fn step(&self) -> Option<usize> {
        match *self {
            Fault::None => None,
            Fault::Crash { step } | Fault::Fail { step } | Fault::Stall { step, .. } => Some(step),
        }
    }
}

impl fmt::Display for Fault {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Fault::None => f.write_str("clean"),
            Fault::Crash { step } => write!(f, "crash@{step}"),
            Fault::Fail { step } => write!(f, "fail@{step}"),
            Fault::Stall { step, takeover } => {
                let then = if takeover { "takeover" } else { "interleave" };
                write!(f, "stall@{step}+{then}")
            }
        }
    }
}

/// A [`History`] and the [`Fault`] injected into a run of it: everything
/// needed to replay a run step for step.
///
/// Printed (and parsed) as the history, then the fault:
/// `a1 b1 | a2!1 ~b2; batch=2; crash@7`. Hand a printed schedule to
/// [`Explorer::run_schedule`](super::Explorer::run_schedule) to replay it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Schedule {
    pub(super) history: History,
    pub(super) fault: Fault,
}

impl Schedule {
    pub(super) fn new(history: History, fault: Fault) -> Self {
        Self { history, fault }
    }

    /// The history.
    pub fn history(&self) -> &History {
        &self.history
    }

    /// The fault.
    pub fn fault(&self) -> Fault {
        self.fault
    }
}

impl fmt::Display for Schedule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}; {}", self.history, self.fault)
    }
}

/// A schedule that does not parse; says which part and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParseScheduleError(String);

impl fmt::Display for ParseScheduleError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} (a schedule reads like `a1 b1 | a2!1 ~b2; batch=2; crash@7`)",
            self.0
        )
    }
}

impl std::error::Error for ParseScheduleError {}

fn invalid(message: String) -> ParseScheduleError {
    ParseScheduleError(message)
}

impl FromStr for Schedule {
    type Err = ParseScheduleError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let parts: Vec<&str> = s.split(';').map(str::trim).collect();
        let [events, batch, fault] = parts[..] else {
            return Err(invalid(format!(
                "expected three parts separated by `;` (events, batch size, fault), got {}",
                parts.len()
            )));
        };
        let batch_size = batch
            .strip_prefix("batch=")
            .and_then(|n| n.parse::<usize>().ok())
            .filter(|&n| n > 0)
            .ok_or_else(|| invalid(format!("expected `batch=N` with N ≥ 1, got `{batch}`")))?;
        let history = History {
            events: parse_events(events)?,
            batch_size,
        };
        Ok(Self::new(history, fault.parse()?))
    }
}

fn parse_events(text: &str) -> Result<Vec<Event>, ParseScheduleError> {
    let mut events = Vec::new();
    let mut wave = 0;
    let mut ranks = [0; 26];
    for token in text.split_whitespace() {
        if token == "|" {
            wave += 1;
            continue;
        }
        let (rolled_back, rest) = match token.strip_prefix('~') {
            Some(rest) => (true, rest),
            None => (false, token),
        };
        let mut pieces = rest.split('!');
        let name = pieces.next().unwrap_or_default();
        let (name, held) = match name.strip_suffix('^') {
            Some(name) => (name, true),
            None => (name, false),
        };
        let mut chars = name.chars();
        let key = chars
            .next()
            .filter(char::is_ascii_lowercase)
            .ok_or_else(|| invalid(format!("event `{token}` must start with a key, a to z")))?;
        let slot = usize::from(key as u8 - b'a');
        ranks[slot] += 1;
        let expected = format!("{key}{}", ranks[slot]);
        if name != expected {
            return Err(invalid(format!(
                "event `{token}`: events of key {key} are numbered in order, expected \
                 `{expected}`"
            )));
        }
        let fails_on = pieces
            .map(|offer| offer.parse::<u32>().ok().filter(|&n| n > 0))
            .collect::<Option<Vec<u32>>>()
            .ok_or_else(|| invalid(format!("event `{token}`: `!n` needs a number n ≥ 1")))?;
        if let Some(holder) = events
            .iter()
            .find(|e: &&Event| e.held && e.key == key && e.wave == wave)
        {
            return Err(invalid(format!(
                "event `{token}` follows `{holder}` of its key in its wave: a held event is the \
                 last of its key in its wave"
            )));
        }
        events.push(Event {
            key,
            ordinal: ranks[slot],
            wave,
            rolled_back,
            held,
            fails_on,
        });
    }
    if events.is_empty() {
        return Err(invalid("a history needs at least one event".to_owned()));
    }
    Ok(events)
}

impl FromStr for Fault {
    type Err = ParseScheduleError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || {
            invalid(format!(
                "expected the fault `clean`, `crash@N`, `fail@N`, `stall@N+takeover` or \
                 `stall@N+interleave`, got `{s}`"
            ))
        };
        if s == "clean" {
            return Ok(Fault::None);
        }
        if let Some(step) = s.strip_prefix("crash@") {
            let step = step.parse().map_err(|_| bad())?;
            return Ok(Fault::Crash { step });
        }
        if let Some(step) = s.strip_prefix("fail@") {
            let step = step.parse().map_err(|_| bad())?;
            return Ok(Fault::Fail { step });
        }
        let rest = s.strip_prefix("stall@").ok_or_else(bad)?;
        let (step, then) = rest.split_once('+').ok_or_else(bad)?;
        let takeover = match then {
            "takeover" => true,
            "interleave" => false,
            _ => return Err(bad()),
        };
        let step = step.parse().map_err(|_| bad())?;
        Ok(Fault::Stall { step, takeover })
    }
}

/// When the events of a history commit.
#[derive(Debug, Clone, Copy)]
enum Split {
    /// All before the first claim.
    Together,
    /// The first half before the first claim, the rest after the first
    /// batch.
    Halves,
    /// A third before the first claim, a third after the first batch, the
    /// rest after the second.
    Thirds,
}

impl Split {
    fn wave(self, index: usize, len: usize) -> usize {
        match self {
            Split::Together => 0,
            Split::Halves => usize::from(index >= len / 2),
            Split::Thirds => index * 3 / len,
        }
    }
}

/// Which records the destination fails, retriably.
#[derive(Debug, Clone, Copy)]
enum Failures {
    /// None.
    None,
    /// The first committed event, the first time it is offered.
    FirstOnce,
    /// The first committed event, the first two times; the last, the
    /// first time.
    Several,
}

/// Which event's writer holds its key across a relay turn.
#[derive(Debug, Clone, Copy)]
enum Held {
    /// None.
    None,
    /// The last event of the first wave: it enqueues right after the
    /// first claim and commits before the third turn.
    LastOfFirstWave,
}

/// What a [`Size`] enumerates: every combination of these.
struct Dimensions {
    /// Events per history.
    events: &'static [usize],
    /// Distinct keys per history.
    keys: RangeInclusive<usize>,
    splits: &'static [Split],
    failures: &'static [Failures],
    held: &'static [Held],
    batch_sizes: &'static [usize],
}

impl Size {
    fn dimensions(self) -> Dimensions {
        match self {
            Size::Small => Dimensions {
                events: &[4],
                keys: 2..=3,
                splits: &[Split::Together, Split::Halves],
                failures: &[Failures::None, Failures::FirstOnce],
                held: &[Held::None, Held::LastOfFirstWave],
                batch_sizes: &[2],
            },
            Size::Large => Dimensions {
                events: &[5, 6],
                keys: 2..=3,
                splits: &[Split::Together, Split::Halves, Split::Thirds],
                failures: &[Failures::None, Failures::FirstOnce, Failures::Several],
                held: &[Held::None, Held::LastOfFirstWave],
                batch_sizes: &[2, 3],
            },
        }
    }
}

/// Every history of `size`: each way to give its events keys (up to
/// renaming the keys), times no rollback or each event rolled back, times
/// each commit split, failure plan, held writer and batch size.
pub(super) fn histories(size: Size) -> Vec<History> {
    let dims = size.dimensions();
    let mut histories = Vec::new();
    for &len in dims.events {
        for keys in key_patterns(len, &dims.keys) {
            for rollback in std::iter::once(None).chain((0..len).map(Some)) {
                for &split in dims.splits {
                    for &failures in dims.failures {
                        for &held in dims.held {
                            for &batch_size in dims.batch_sizes {
                                histories.push(History::build(
                                    &keys, rollback, split, failures, held, batch_size,
                                ));
                            }
                        }
                    }
                }
            }
        }
    }
    histories
}

/// Every sequence of `len` keys using a number of distinct keys in
/// `keys`, each key first appearing in order (`a` before `b`): one
/// representative per renaming.
fn key_patterns(len: usize, keys: &RangeInclusive<usize>) -> Vec<Vec<usize>> {
    fn grow(len: usize, most: usize, pattern: &mut Vec<usize>, out: &mut Vec<Vec<usize>>) {
        if pattern.len() == len {
            out.push(pattern.clone());
            return;
        }
        let used = pattern.iter().max().map_or(0, |&key| key + 1);
        for key in 0..=used.min(most - 1) {
            pattern.push(key);
            grow(len, most, pattern, out);
            pattern.pop();
        }
    }
    let mut all = Vec::new();
    grow(len, *keys.end(), &mut Vec::with_capacity(len), &mut all);
    all.retain(|pattern| keys.contains(&(pattern.iter().max().map_or(0, |&key| key + 1))));
    all
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_patterns_count_set_partitions() {
        // Stirling numbers of the second kind: S(4,2) = 7, S(5,2) + S(5,3) =
        // 15 + 25, S(6,2) + S(6,3) = 31 + 90.
        assert_eq!(key_patterns(4, &(2..=2)).len(), 7);
        assert_eq!(key_patterns(4, &(2..=3)).len(), 13);
        assert_eq!(histories(Size::Small).len(), 13 * 5 * 2 * 2 * 2);
        assert_eq!(
            histories(Size::Large).len(),
            (40 * 6 + 121 * 7) * 3 * 3 * 2 * 2
        );
        assert_eq!(key_patterns(5, &(2..=3)).len(), 40);
        assert_eq!(key_patterns(6, &(2..=3)).len(), 121);
    }

    #[test]
    fn schedules_print_and_parse_back() {
        for history in histories(Size::Small) {
            for fault in [
                Fault::None,
                Fault::Crash { step: 7 },
                Fault::Fail { step: 5 },
                Fault::Stall {
                    step: 3,
                    takeover: true,
                },
                Fault::Stall {
                    step: 0,
                    takeover: false,
                },
            ] {
                let schedule = Schedule::new(history.clone(), fault);
                let printed = schedule.to_string();
                assert_eq!(printed.parse::<Schedule>(), Ok(schedule), "{printed}");
            }
        }
        let parsed: Schedule = "a1 b1 | | a2!1!2 ~b2; batch=3; stall@4+interleave"
            .parse()
            .unwrap();
        assert_eq!(parsed.history.waves(), 3);
        assert_eq!(parsed.history.committed(), 3);
        assert_eq!(parsed.history.events[2].fails_on, vec![1, 2]);
        let parsed: Schedule = "a1 b1^ | ~a2^!1; batch=2; fail@3".parse().unwrap();
        assert_eq!(parsed.history.held(), 2);
        assert_eq!(
            parsed.history.waves(),
            4,
            "the last held event commits in a fourth"
        );
        assert!(parsed.history.events[2].rolled_back && parsed.history.events[2].held);
        assert_eq!(parsed.fault, Fault::Fail { step: 3 });
    }

    #[test]
    fn bad_schedules_say_what_is_wrong() {
        for (text, needle) in [
            ("a1 b1; batch=2", "three parts"),
            ("a1 a3; batch=2; clean", "expected `a2`"),
            ("a1 1b; batch=2; clean", "must start with a key"),
            ("a1!x; batch=2; clean", "`!n`"),
            ("a1; batch=0; clean", "batch=N"),
            (" ; batch=1; clean", "at least one event"),
            ("a1; batch=1; crash", "the fault"),
            ("a1; batch=1; stall@1+later", "the fault"),
            ("a1^ a2; batch=1; clean", "last of its key in its wave"),
        ] {
            let error = text.parse::<Schedule>().unwrap_err().to_string();
            assert!(error.contains(needle), "{text}: {error}");
        }
    }
}
