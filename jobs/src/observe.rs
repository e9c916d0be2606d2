//! What the domain tells the engine's metrics about money: how bookings end, which card
//! declines, which disputes open. The domain cannot see the engine, so the engine installs a
//! [`MoneyObserver`] when a worker starts ([`set_money_observer`]); without one nothing is
//! observed.
//!
//! Invariant: a signal is sent after the transaction that made it true has committed, by the
//! run whose guarded update moved the row. A re-run (a retry, a crash recovery, a replay)
//! finds the row moved and says nothing, so each booking's outcome is counted once; a crash
//! between the commit and the signal loses that one count (metrics are not the ledger:
//! `fleet report` and the console's Money page read the database).

use std::sync::OnceLock;

/// Receives the domain's money signals. Labels it is given are bounded: outcomes are three
/// words, reasons are failure codes (`^[a-z0-9_.]{1,100}$`, see
/// [`crate::booking::failure_code`]), decline codes pass [`label`].
pub trait MoneyObserver: Send + Sync {
    /// A booking reached a final state: `outcome` is `ticketed`, `failed` (no order, hold
    /// voided or never taken) or `cancelled` (an order existed and was not kept); `reason` is
    /// the failure code, `none` when ticketed. `seconds` runs from the booking's creation (the
    /// attempt's first step, right after the fare was found) to this outcome;
    /// `payment_intents` is how many PaymentIntents the booking created (0 when it failed
    /// before the hold, else 1: the key `booking:{id}:pi` and the unique column allow no
    /// second).
    fn booking_finished(
        &self,
        outcome: &'static str,
        reason: &str,
        seconds: f64,
        payment_intents: u32,
    );
    /// Stripe declined a card hold: `code` is Stripe's `decline_code` (`insufficient_funds`,
    /// …) when it gave one, else ours (`card_declined`, `authentication_required`).
    fn card_declined(&self, code: &str);
    /// A dispute (chargeback) was opened on a charge of ours (`charge.dispute.created`).
    fn dispute_opened(&self);
}

static OBSERVER: OnceLock<Box<dyn MoneyObserver>> = OnceLock::new();

/// Installs the process's money observer (the first one wins; later calls return false).
pub fn set_money_observer(o: Box<dyn MoneyObserver>) -> bool {
    OBSERVER.set(o).is_ok()
}

/// The installed observer, if any.
pub(crate) fn money() -> Option<&'static dyn MoneyObserver> {
    OBSERVER.get().map(|b| b.as_ref())
}

/// `s` as a metric label: itself when it is 1..=40 of `[a-z0-9_]` (a provider's code), else
/// `other`, so a provider cannot grow a series per value or put text in a label.
pub fn label(s: &str) -> &str {
    let ok = (1..=40).contains(&s.len())
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_');
    if ok {
        s
    } else {
        "other"
    }
}

#[cfg(test)]
mod tests {
    use super::label;

    #[test]
    fn labels_are_provider_codes_or_other() {
        assert_eq!(label("insufficient_funds"), "insufficient_funds");
        assert_eq!(label("do_not_honor"), "do_not_honor");
        assert_eq!(label(""), "other");
        assert_eq!(label("Jane Doe"), "other");
        assert_eq!(label("card{declined}"), "other");
        assert_eq!(label(&"a".repeat(41)), "other");
    }
}
