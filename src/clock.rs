//! Where the engine's roles read the time: the worker's claims, leases and outcomes, the
//! maintenance services, the limits' budgets and the scheduler's ticks.
//!
//! In production the clock is [`Clock::System`]: statements use the **database's** `now()`
//! (one clock for the whole fleet, whatever the hosts' clocks say), and the scheduler reads the
//! host's clock to know which tick fired. A test injects a [`ManualClock`] instead and moves
//! time with [`ManualClock::advance`]: every statement of a role built with it runs "as if it
//! were" that time, so a test of a retry's backoff, an expired lease, a budget's refill or a
//! cron tick steps the role ([`crate::Worker::work_one`], `run_once`, [`crate::Scheduler::tick`])
//! instead of sleeping until it is due.
//!
//! The clock decides *what is due*. How long the running loops wait between passes (poll,
//! heartbeat, rescue intervals) and a handler's timeout stay real time: a manual clock is for
//! roles a test steps, not for a fleet left running.

use std::{
    sync::{Arc, Mutex},
    time::Duration,
};

use chrono::{DateTime, SubsecRound, Utc};

use crate::queue::Now;

/// The time a role acts at.
#[derive(Debug, Clone, Default)]
pub enum Clock {
    /// The database's `now()` in statements; the host's clock for the scheduler.
    #[default]
    System,
    /// A time the test sets and advances.
    Manual(ManualClock),
}

impl Clock {
    /// What statements take as their `now`: `None` (the database's) for the system clock.
    pub fn now(&self) -> Now {
        match self {
            Self::System => None,
            Self::Manual(m) => Some(m.get()),
        }
    }

    /// The time as a value: the host's clock for the system clock.
    pub fn wall(&self) -> DateTime<Utc> {
        match self {
            Self::System => Utc::now(),
            Self::Manual(m) => m.get(),
        }
    }
}

impl From<ManualClock> for Clock {
    fn from(m: ManualClock) -> Self {
        Self::Manual(m)
    }
}

/// A clock that moves only when told. Clones share the time.
#[derive(Debug, Clone)]
pub struct ManualClock(Arc<Mutex<DateTime<Utc>>>);

impl ManualClock {
    /// A clock reading `at` (to the microsecond, as Postgres keeps time).
    pub fn at(at: DateTime<Utc>) -> Self {
        Self(Arc::new(Mutex::new(at.trunc_subsecs(6))))
    }

    /// A clock reading the host's time now.
    pub fn starting_now() -> Self {
        Self::at(Utc::now())
    }

    /// The time it reads.
    pub fn get(&self) -> DateTime<Utc> {
        *self.0.lock().expect("not poisoned")
    }

    /// Moves the time forward by `d`; returns the new time.
    pub fn advance(&self, d: Duration) -> DateTime<Utc> {
        let mut t = self.0.lock().expect("not poisoned");
        *t += chrono::Duration::from_std(d).expect("a duration a test can advance by");
        *t
    }

    /// Sets the time (forward or back).
    pub fn set(&self, at: DateTime<Utc>) {
        *self.0.lock().expect("not poisoned") = at.trunc_subsecs(6);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_manual_clock_moves_only_when_advanced_and_clones_share_it() {
        let m = ManualClock::at("2030-01-01T00:00:00Z".parse().unwrap());
        let c = Clock::from(m.clone());
        assert_eq!(c.now(), Some("2030-01-01T00:00:00Z".parse().unwrap()));
        m.advance(Duration::from_secs(90));
        assert_eq!(
            c.wall(),
            "2030-01-01T00:01:30Z".parse::<DateTime<Utc>>().unwrap()
        );
    }

    #[test]
    fn the_system_clock_leaves_statements_on_the_database_clock() {
        assert_eq!(Clock::System.now(), None);
    }
}
