//! Budget accounting of a [`RateLimiter`](super::RateLimiter): what was used of the request and
//! token budgets, when it comes back, and when a given cost will fit.
//!
//! Pure bookkeeping over instants handed in by the caller, so it is tested without a runtime.
//! The limiter brings the books up to an instant never later than the true one
//! ([`advance`](Ledger::advance)) and records uses at an instant never earlier than the true one
//! and never earlier than any recorded before (the `now` of [`take`](Ledger::take) and its
//! kin); with a precise clock reading both are that reading. Amounts are exact integers;
//! nothing is rounded.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use super::Replenishment;
use crate::time::saturating_add;

/// Index of the request budget in the `[requests, tokens]` pairs.
pub(crate) const REQUESTS: usize = 0;
/// Index of the token budget.
pub(crate) const TOKENS: usize = 1;

/// An amount of each budget: `[requests, tokens]`.
pub(crate) type Amount = [u64; 2];

#[derive(Debug)]
pub(crate) struct Ledger {
    /// The budget per interval; `None` is unlimited (and not tracked).
    limits: [Option<u64>; 2],
    interval: Duration,
    /// What is in use now (sliding: inside the last interval; fixed: in the current window).
    used: Amount,
    mode: Mode,
}

#[derive(Debug)]
enum Mode {
    /// Every use comes back exactly one interval after it was recorded.
    Sliding { log: VecDeque<Entry> },
    /// Everything comes back at the next multiple of the interval after `origin`.
    Fixed {
        /// Set at the first use, so a limiter built before the clock it runs on still lines
        /// its windows up with that clock.
        origin: Option<Instant>,
        /// The index of the current window.
        window: u64,
        /// Where the current window ends (once the origin is set).
        edge: Option<Instant>,
    },
}

/// The uses recorded at one instant: those of reservations `first_id..=id` (and of charges
/// and provider figures with identities in that range).
#[derive(Debug, Clone, Copy)]
struct Entry {
    at: Instant,
    /// `at` plus the interval: when the uses come back.
    back: Instant,
    first_id: u64,
    id: u64,
    amount: Amount,
}

/// What one reservation recorded, so that it can be refunded later.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Mark {
    /// Where its use is counted.
    key: Key,
    /// What it reserved, already restricted to the tracked budgets.
    pub(crate) amount: Amount,
}

/// Where a reservation's use is counted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Key {
    /// Sliding mode: the reservation's identity, within its log entry's range.
    Id(u64),
    /// Sliding mode, an admission made on credit (which has no identity): the instant its
    /// use is recorded at, which names its log entry.
    At(Instant),
    /// The same before it is worked out ([`Mark::resolve`]): the coarse clock epoch of the
    /// credit, whose end is that instant.
    Epoch(u64),
    /// Fixed mode: the window it was charged to.
    Window(u64),
}

/// The tags of [`Mark::to_word`] (the top two bits; `0b11` is left to other words).
const WORD_ID: u64 = 0b01 << 62;
const WORD_WINDOW: u64 = 0b10 << 62;
const WORD_PAYLOAD: u64 = (1 << 62) - 1;

impl Mark {
    /// The mark of a reservation that recorded nothing (unlimited budgets).
    pub(crate) fn empty(id: u64) -> Self {
        Mark {
            key: Key::Id(id),
            amount: [0; 2],
        }
    }

    /// The mark of an admission made on credit in coarse clock `epoch` (whose use is
    /// recorded at the epoch's end).
    #[inline]
    pub(crate) fn on_credit(epoch: u64, amount: Amount) -> Self {
        Mark {
            key: Key::Epoch(epoch),
            amount,
        }
    }

    /// The mark as one word for a waiter's mailbox (never 0 nor `u64::MAX`), without its
    /// amount, which the waiter knows. Only marks from [`Ledger::take`] and
    /// [`empty`](Self::empty) are sent this way.
    pub(crate) fn to_word(self) -> u64 {
        let (tag, payload) = match self.key {
            Key::Id(id) => (WORD_ID, id),
            Key::Window(window) => (WORD_WINDOW, window),
            Key::At(_) | Key::Epoch(_) => unreachable!("admissions on credit are not sent"),
        };
        debug_assert!(
            payload <= WORD_PAYLOAD,
            "identities and windows stay below 2^62"
        );
        tag | (payload & WORD_PAYLOAD)
    }

    /// The mark [`to_word`](Self::to_word) sent, with its `amount`; `None` for a word that
    /// is no mark.
    pub(crate) fn from_word(word: u64, amount: Amount) -> Option<Self> {
        let payload = word & WORD_PAYLOAD;
        let key = match word & !WORD_PAYLOAD {
            WORD_ID => Key::Id(payload),
            WORD_WINDOW => Key::Window(payload),
            _ => return None,
        };
        Some(Mark { key, amount })
    }

    /// Works out the instant an admission on credit was recorded at, from `epoch_end` (before
    /// the ledger looks the mark up; the admission itself does not spend the time).
    pub(crate) fn resolve(&mut self, epoch_end: impl FnOnce(u64) -> Option<Instant>) {
        if let Key::Epoch(epoch) = self.key {
            // No instant (five centuries on): the lookup finds nothing and refunds nothing.
            self.key = epoch_end(epoch).map_or(Key::Id(0), Key::At);
        }
    }
}

impl Ledger {
    pub(crate) fn new(limits: [Option<u64>; 2], interval: Duration, mode: Replenishment) -> Self {
        let mode = match mode {
            Replenishment::Continuous => Mode::Sliding {
                log: VecDeque::new(),
            },
            Replenishment::FixedWindow => Mode::Fixed {
                origin: None,
                window: 0,
                edge: None,
            },
        };
        Ledger {
            limits,
            interval,
            used: [0; 2],
            mode,
        }
    }

    /// Whether neither budget is limited (then the ledger never needs the clock).
    pub(crate) fn is_unlimited(&self) -> bool {
        self.limits == [None, None]
    }

    pub(crate) fn limits(&self) -> [Option<u64>; 2] {
        self.limits
    }

    /// The cost of a job of `tokens` estimated tokens, in the budgets that are tracked.
    pub(crate) fn cost(&self, tokens: u64) -> Amount {
        [
            u64::from(self.limits[REQUESTS].is_some()),
            if self.limits[TOKENS].is_some() {
                tokens
            } else {
                0
            },
        ]
    }

    /// Brings the books up to `now`: what has come back since is no longer counted.
    pub(crate) fn advance(&mut self, now: Instant) {
        match &mut self.mode {
            Mode::Sliding { log } => {
                while let Some(entry) = log.front() {
                    if now < entry.back {
                        break;
                    }
                    for (used, amount) in self.used.iter_mut().zip(entry.amount) {
                        *used -= amount;
                    }
                    log.pop_front();
                }
            }
            Mode::Fixed {
                origin,
                window,
                edge,
            } => {
                if edge.is_some_and(|edge| now < edge) {
                    return;
                }
                let origin = *origin.get_or_insert(now);
                let current = window_index(origin, now, self.interval);
                *edge = Some(window_start(
                    origin,
                    current.saturating_add(1),
                    self.interval,
                ));
                if current > *window {
                    let passed = current - *window;
                    for (used, limit) in self.used.iter_mut().zip(self.limits) {
                        // A debt (use above the limit, after a charge) is carried over.
                        let limit = limit.unwrap_or(0);
                        *used = used.saturating_sub(limit.saturating_mul(passed));
                    }
                    *window = current;
                }
            }
        }
    }

    /// Whether the answer of [`fits`](Self::fits) or the window a use is recorded in could
    /// change between the instant the books were brought up to and `upper`: an entry comes
    /// back by then, or (fixed windows) a window edge falls before it.
    pub(crate) fn unsure_until(&self, upper: Instant, fits: bool) -> bool {
        match &self.mode {
            Mode::Sliding { log } => {
                !fits
                    && log.front().is_some_and(|e| {
                        // (`checked_add`: `saturating_add` would read the clock.)
                        e.at.checked_add(self.interval)
                            .is_some_and(|back| back <= upper)
                    })
            }
            Mode::Fixed { origin, window, .. } => {
                origin.is_none_or(|origin| window_index(origin, upper, self.interval) != *window)
            }
        }
    }

    /// Whether `cost` fits in what is left now (after [`advance`](Self::advance)).
    pub(crate) fn fits(&self, cost: Amount) -> bool {
        (0..2).all(|d| match self.limits[d] {
            None => true,
            Some(limit) => self.used[d].saturating_add(cost[d]) <= limit,
        })
    }

    /// What is left of each budget (after [`advance`](Self::advance)); `None` if unlimited.
    pub(crate) fn left(&self) -> [Option<u64>; 2] {
        [0, 1].map(|d| self.limits[d].map(|limit| limit.saturating_sub(self.used[d])))
    }

    /// The earliest instant at which `cost` fits, if nothing else is taken meanwhile (after
    /// [`advance`](Self::advance)). `cost` must not exceed the limits.
    pub(crate) fn ready_at(&self, now: Instant, cost: Amount) -> Instant {
        if self.fits(cost) {
            return now;
        }
        let at = self.ready_after(now, cost);
        // A cost that does not fit now fits strictly later. Only an instant that saturated
        // (an interval of decades, with a clock that has run for decades) can say otherwise;
        // waking then would find nothing changed, again and again, so wake "never" instead.
        if at > now {
            at
        } else {
            saturating_add(now, crate::time::FAR)
        }
    }

    /// [`ready_at`](Self::ready_at) for a cost that does not fit now.
    fn ready_after(&self, now: Instant, cost: Amount) -> Instant {
        match &self.mode {
            Mode::Sliding { log } => {
                let mut freed = [0u64; 2];
                for entry in log {
                    freed[0] += entry.amount[0];
                    freed[1] += entry.amount[1];
                    let fits = (0..2).all(|d| match self.limits[d] {
                        None => true,
                        Some(limit) => (self.used[d] - freed[d]).saturating_add(cost[d]) <= limit,
                    });
                    if fits {
                        // The instant `advance` takes the entry back at, exactly.
                        return entry.back;
                    }
                }
                // A cost within the limits fits once everything has come back.
                log.back().map_or(now, |last| last.back)
            }
            Mode::Fixed { origin, window, .. } => {
                let origin = origin.unwrap_or(now);
                let windows = (0..2)
                    .filter_map(|d| {
                        let limit = self.limits[d]?;
                        let need = self.used[d].saturating_add(cost[d]);
                        (need > limit).then(|| (need - limit).div_ceil(limit))
                    })
                    .max()
                    .unwrap_or(0);
                window_start(origin, window.saturating_add(windows), self.interval)
            }
        }
    }

    /// `amount`, cut down so that adding it to what is used cannot overflow.
    fn headroom(&self, amount: Amount) -> Amount {
        [0, 1].map(|d| amount[d].min(u64::MAX - self.used[d]))
    }

    /// Records `cost` as used at `now` (after [`advance`](Self::advance)), under identity `id`.
    pub(crate) fn take(&mut self, now: Instant, cost: Amount, id: u64) -> Mark {
        self.add(now, cost, id);
        let key = match self.mode {
            Mode::Fixed { window, .. } => Key::Window(window),
            Mode::Sliding { .. } => Key::Id(id),
        };
        Mark { key, amount: cost }
    }

    /// Records `amount` as used at `now` (a charge after the fact, or a provider's lower
    /// figure); it comes back like any use.
    pub(crate) fn add(&mut self, now: Instant, amount: Amount, id: u64) {
        // What is recorded never takes a total past `u64::MAX`, so the log's entries always
        // sum to exactly `used` (a use that large is far beyond any budget anyway).
        let amount = self.headroom(amount);
        if amount == [0, 0] {
            return;
        }
        self.hold(amount);
        self.record(now, amount, id);
    }

    /// Counts `amount` as used without recording when (credit handed out: what is spent of
    /// it is [`record`](Self::record)ed when it is collected, the rest [`unhold`](Self::unhold)).
    pub(crate) fn hold(&mut self, amount: Amount) {
        for (used, amount) in self.used.iter_mut().zip(amount) {
            *used += amount;
        }
    }

    /// Stops counting `amount` held by [`hold`](Self::hold).
    pub(crate) fn unhold(&mut self, amount: Amount) {
        for (used, amount) in self.used.iter_mut().zip(amount) {
            *used = used.saturating_sub(amount);
        }
    }

    /// Records `amount`, already counted by [`hold`](Self::hold), as used at `now` under
    /// identity `id` (sliding mode; a fixed window needs no record).
    pub(crate) fn record(&mut self, now: Instant, amount: Amount, id: u64) {
        if amount == [0, 0] {
            return;
        }
        if let Mode::Sliding { log } = &mut self.mode {
            match log.back_mut() {
                // Uses recorded at the same instant share an entry.
                Some(last) if last.at == now => {
                    last.id = id;
                    last.amount[0] += amount[0];
                    last.amount[1] += amount[1];
                }
                _ => log.push_back(Entry {
                    at: now,
                    back: now
                        .checked_add(self.interval)
                        .unwrap_or_else(|| saturating_add(now, self.interval)),
                    first_id: id,
                    id,
                    amount,
                }),
            }
        }
    }

    /// Charges `amount` more to reservation `mark`, as if it had been reserved with it: in the
    /// same log entry or window if that is still counted, otherwise as used at `now` (then
    /// `fresh_id` identifies it).
    pub(crate) fn charge(&mut self, now: Instant, mark: &mut Mark, amount: Amount, fresh_id: u64) {
        let amount = self.headroom(amount);
        if amount == [0, 0] {
            return;
        }
        let counted = match &mut self.mode {
            Mode::Sliding { log } => match entry_of(log, mark) {
                Some(index) => {
                    let entry = &mut log[index];
                    entry.amount[0] += amount[0];
                    entry.amount[1] += amount[1];
                    true
                }
                None => false,
            },
            Mode::Fixed { window, .. } => mark.key == Key::Window(*window),
        };
        if counted {
            self.used = [0, 1].map(|d| self.used[d] + amount[d]);
            mark.amount = [0, 1].map(|d| mark.amount[d] + amount[d]);
        } else {
            *mark = self.take(now, amount, fresh_id);
        }
    }

    /// Gives back `amount` of what reservation `mark` recorded, if it is still counted (a
    /// sliding entry still in the last interval; a fixed window still current). Returns what
    /// was actually given back.
    pub(crate) fn refund(&mut self, mark: &mut Mark, amount: Amount) -> Amount {
        let amount = [0, 1].map(|d| amount[d].min(mark.amount[d]));
        let given = match &mut self.mode {
            Mode::Sliding { log } => match entry_of(log, mark) {
                Some(index) => {
                    let entry = &mut log[index];
                    let given = [0, 1].map(|d| amount[d].min(entry.amount[d]));
                    entry.amount[0] -= given[0];
                    entry.amount[1] -= given[1];
                    given
                }
                None => [0; 2],
            },
            Mode::Fixed { window, .. } if mark.key == Key::Window(*window) => amount,
            Mode::Fixed { .. } => [0; 2],
        };
        self.used = [0, 1].map(|d| self.used[d].saturating_sub(given[d]));
        mark.amount = [0, 1].map(|d| mark.amount[d] - amount[d]);
        given
    }

    /// Lowers what is left to at most `remaining` (a provider's own count), by recording the
    /// difference as used at `now`.
    pub(crate) fn lower_to(&mut self, now: Instant, remaining: [Option<u64>; 2], id: u64) {
        let left = self.left();
        let cut = [0, 1].map(|d| match (left[d], remaining[d]) {
            (Some(left), Some(remaining)) => left.saturating_sub(remaining),
            _ => 0,
        });
        self.add(now, cut, id);
    }
}

/// The index of the log entry that holds the uses of the reservation `mark`, if it is still
/// counted.
fn entry_of(log: &VecDeque<Entry>, mark: &Mark) -> Option<usize> {
    let id = match mark.key {
        Key::Id(id) => id,
        // Entries have distinct, increasing instants.
        Key::At(at) => return log.binary_search_by_key(&at, |e| e.at).ok(),
        // Resolved before any lookup; unresolved, it finds nothing (nothing is refunded).
        Key::Epoch(_) => {
            debug_assert!(false, "a mark on credit is resolved before it is looked up");
            return None;
        }
        Key::Window(_) => return None,
    };
    let index = match log.binary_search_by_key(&id, |e| e.id) {
        Ok(index) => index,
        Err(index) => index,
    };
    log.get(index)
        .is_some_and(|e| e.first_id <= id)
        .then_some(index)
}

fn window_index(origin: Instant, now: Instant, interval: Duration) -> u64 {
    let elapsed = now.saturating_duration_since(origin).as_nanos();
    let index = elapsed / interval.as_nanos().max(1);
    u64::try_from(index).unwrap_or(u64::MAX)
}

fn window_start(origin: Instant, index: u64, interval: Duration) -> Instant {
    let offset = interval
        .checked_mul(u32::try_from(index).unwrap_or(u32::MAX))
        .unwrap_or(Duration::MAX);
    saturating_add(origin, offset)
}

#[cfg(test)]
mod tests {
    use super::*;

    const SEC: Duration = Duration::from_secs(1);

    fn sliding(requests: Option<u64>, tokens: Option<u64>) -> Ledger {
        Ledger::new([requests, tokens], 10 * SEC, Replenishment::Continuous)
    }

    fn fixed(requests: Option<u64>, tokens: Option<u64>) -> Ledger {
        Ledger::new([requests, tokens], 10 * SEC, Replenishment::FixedWindow)
    }

    #[test]
    fn sliding_use_comes_back_one_interval_later() {
        let t0 = Instant::now();
        let mut l = sliding(Some(2), Some(100));
        l.advance(t0);
        l.take(t0, l.cost(60), 1);
        l.advance(t0 + 3 * SEC);
        l.take(t0 + 3 * SEC, l.cost(40), 2);
        assert_eq!(l.left(), [Some(0), Some(0)]);
        assert!(!l.fits(l.cost(1)));
        // The first use leaves the window at t0 + 10 s, which frees enough for 50 tokens.
        assert_eq!(l.ready_at(t0 + 3 * SEC, l.cost(50)), t0 + 10 * SEC);
        // 70 tokens need the second use gone too.
        assert_eq!(l.ready_at(t0 + 3 * SEC, l.cost(70)), t0 + 13 * SEC);
        l.advance(t0 + 10 * SEC - Duration::from_nanos(1));
        assert_eq!(l.left(), [Some(0), Some(0)]);
        l.advance(t0 + 10 * SEC);
        assert_eq!(l.left(), [Some(1), Some(60)]);
    }

    #[test]
    fn fixed_window_resets_at_edges_and_carries_debt() {
        let t0 = Instant::now();
        let mut l = fixed(Some(3), Some(100));
        l.advance(t0 + 4 * SEC); // the origin is the first use
        let mark = l.take(t0 + 4 * SEC, l.cost(90), 1);
        assert_eq!(l.ready_at(t0 + 5 * SEC, l.cost(20)), t0 + 14 * SEC);
        // A charge of 150 beyond the reservation: 240 used, 140 of it carried over.
        l.add(t0 + 5 * SEC, [0, 150], 2);
        assert_eq!(l.ready_at(t0 + 5 * SEC, l.cost(100)), t0 + 34 * SEC);
        l.advance(t0 + 14 * SEC);
        assert_eq!(l.left(), [Some(3), Some(0)]);
        // A refund for a window that has passed gives nothing back.
        let mut mark = mark;
        assert_eq!(l.refund(&mut mark, [0, 50]), [0, 0]);
        l.advance(t0 + 24 * SEC);
        assert_eq!(l.left(), [Some(3), Some(60)]);
    }

    #[test]
    fn refunds_are_bounded_by_the_reservation() {
        let t0 = Instant::now();
        for mut l in [sliding(None, Some(100)), fixed(None, Some(100))] {
            l.advance(t0);
            let mut mark = l.take(t0, l.cost(30), 7);
            assert_eq!(l.refund(&mut mark, [5, 10]), [0, 10]);
            assert_eq!(l.left(), [None, Some(80)]);
            assert_eq!(l.refund(&mut mark, [0, 100]), [0, 20]);
            assert_eq!(l.left(), [None, Some(100)]);
            assert_eq!(mark.amount, [0, 0]);
        }
    }

    #[test]
    fn charges_join_their_reservation_and_can_be_refunded() {
        let t0 = Instant::now();
        for mut l in [sliding(None, Some(1000)), fixed(None, Some(1000))] {
            l.advance(t0);
            let mut mark = l.take(t0, l.cost(100), 1);
            l.charge(t0 + SEC, &mut mark, [0, 50], 2);
            assert_eq!(l.left(), [None, Some(850)]);
            assert_eq!(l.refund(&mut mark, [0, 130]), [0, 130]);
            assert_eq!(l.left(), [None, Some(980)]);
            // Once the reservation is no longer counted, a charge is a new use.
            l.advance(t0 + 10 * SEC);
            assert_eq!(l.left(), [None, Some(1000)]);
            l.charge(t0 + 10 * SEC, &mut mark, [0, 70], 3);
            assert_eq!(l.left(), [None, Some(930)]);
            assert_eq!(l.refund(&mut mark, [0, 100]), [0, 70]);
            assert_eq!(l.left(), [None, Some(1000)]);
        }
    }

    #[test]
    fn lowering_to_a_provider_count_only_lowers() {
        let t0 = Instant::now();
        let mut l = sliding(Some(10), Some(1000));
        l.advance(t0);
        l.lower_to(t0, [Some(4), Some(5000)], 1);
        assert_eq!(l.left(), [Some(4), Some(1000)]);
        l.advance(t0 + 10 * SEC);
        assert_eq!(l.left(), [Some(10), Some(1000)]);
    }

    /// Uses recorded at one instant share a log entry; each can still be refunded (up to what
    /// it reserved), charged, and comes back with the others.
    #[test]
    fn uses_at_one_instant_share_an_entry() {
        let t0 = Instant::now();
        let mut l = sliding(Some(10), Some(100));
        l.advance(t0);
        let mut a = l.take(t0, l.cost(30), 1);
        let mut b = l.take(t0, l.cost(20), 2);
        let c = l.take(t0 + SEC, l.cost(10), 3);
        if let Mode::Sliding { log } = &l.mode {
            assert_eq!(log.len(), 2);
        }
        assert_eq!(l.left(), [Some(7), Some(40)]);
        assert_eq!(l.refund(&mut b, [1, 50]), [1, 20]);
        l.charge(t0 + SEC, &mut a, [0, 5], 4);
        assert_eq!(l.left(), [Some(8), Some(55)]);
        assert_eq!(l.ready_at(t0 + SEC, l.cost(60)), t0 + 10 * SEC);
        l.advance(t0 + 10 * SEC);
        assert_eq!(l.left(), [Some(9), Some(90)]);
        // `a` and `b` are gone with their entry; `c` is not.
        assert_eq!(l.refund(&mut a, [0, 35]), [0, 0]);
        let mut c = c;
        assert_eq!(l.refund(&mut c, [0, 10]), [0, 10]);
        assert_eq!(l.left(), [Some(9), Some(100)]);
    }

    #[test]
    fn unlimited_budgets_track_nothing() {
        let l = sliding(None, None);
        assert!(l.is_unlimited());
        assert_eq!(l.cost(500), [0, 0]);
        assert!(l.fits([0, 0]));
    }
}
