//! The fetch loop: the first step of a job's life inside a worker. It claims ready jobs and
//! hands each claim to the [executor](super::executor) as a task of its own.
//!
//! Contract:
//! - it claims only into free capacity (`concurrency + prefetch` minus what is held), in
//!   batches once a quarter of the capacity is free or the worker is idle (the limited kinds
//!   alone also as soon as one of their outcomes is written), and never a kind whose held
//!   claims already fill its per-kind concurrency;
//! - a claim is *held* ([`super::Held`]) from the moment it is returned until the completer
//!   writes its outcome; the heartbeat renews every held lease;
//! - **limited kinds** (fleet-wide or per-key concurrency, rate budgets, fairness) get their
//!   room first, claimed one kind at a time under their limits
//!   ([`crate::queue::job_fetch_limited`]); which kind goes first rotates each round, and a
//!   kind whose budget is empty is not tried again before its next token (at most
//!   [`BUDGET_WAIT_MAX`] later). The rest of the room goes to the plain claim
//!   ([`crate::queue::job_fetch_available_on`]), which runs *before* the limited claims when
//!   the room holds their most beside it ([`limited_reserve`]), so the round's plain jobs do
//!   not wait for the limited claims' round trips (decision 62);
//! - claims run on a [`queue::ClaimSession`] (a pinned session, or one pinned transaction per
//!   round behind a transaction pooler); a failed or timed-out round drops it, so a broken
//!   session is never reused, and a claim that committed in a lost round is rescued after its
//!   lease like a crash's;
//! - while the database does not answer ([`crate::database::health`]) nothing is claimed;
//! - it never claims an external kind (the registry's, run by apalis workers), and, when the
//!   worker is restricted to some kinds (an apalis backend's runtime), nothing else;
//! - it wakes on a `NOTIFY` ([`super::listener`]), a freed slot (the completer), a budget's next
//!   token, or the poll interval.

use std::{
    collections::HashMap,
    sync::{atomic::Ordering, Arc},
    time::Duration,
};

use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::{sync::CancellationToken, task::TaskTracker};

use super::{executor, outcome::Outcome, Held, Shared};
use crate::database::health::FailureStreak;
use crate::queue::{self, ClaimedJob, FetchParams, LimitedFetch};

/// The longest a worker leaves a budget-throttled kind untried, whatever the budget said: a
/// budget's settings can change under it (another binary, a cleared block).
const BUDGET_WAIT_MAX: Duration = Duration::from_secs(1);

/// How often a worker looks for ready rows of its unlimited kinds still filed as limited.
const REFILE_EVERY: Duration = Duration::from_secs(5);

/// What the claims of one worker remember from round to round.
pub(crate) struct Fetcher {
    queues: Option<Vec<String>>,
    limited_names: Vec<String>,
    /// Which limited kind is tried first this round: rotates, so no limited kind takes every
    /// free slot round after round.
    first_limited: usize,
    /// Limited kinds whose budgets were empty at their last claim, and when they next hold a
    /// token: not tried (nor probed for ready jobs) before then.
    budget_wait: HashMap<String, Instant>,
    /// The claims' own connection, opened on first use and dropped (closed) on any error.
    session: Option<queue::ClaimSession>,
    /// Kinds never claimed here: the registry's external kinds (run by apalis workers).
    external: Vec<String>,
    /// The only kinds claimed here, if restricted ([`super::Shared::only_kinds`]).
    only_kinds: Option<Vec<String>>,
}

/// What a round may claim.
pub(crate) struct Room {
    /// Most jobs in all.
    pub free: usize,
    /// Claim the limited kinds alone: less than a quarter of the capacity is free, but a
    /// limited kind's outcome was written since the last round ([`Shared::limited_freed`]).
    pub limited_only: bool,
    /// Kinds whose held claims fill their per-kind concurrency.
    pub skip_kinds: Vec<String>,
    /// Held claims per kind (for the limited kinds' per-kind concurrency).
    pub held_by_kind: HashMap<String, usize>,
}

impl Fetcher {
    pub(crate) fn new(s: &Shared) -> Self {
        Self {
            queues: (!s.cfg.queues.is_empty()).then(|| s.cfg.queues.clone()),
            limited_names: s.limited.iter().map(|l| l.kind.clone()).collect(),
            first_limited: 0,
            budget_wait: HashMap::new(),
            session: None,
            external: s.registry.external_kinds(),
            only_kinds: s.only_kinds.clone(),
        }
    }

    /// Drops the claim session (the database went away: a new one is opened when it is back).
    fn reset(&mut self) {
        self.session = None;
    }

    /// When the next throttled kind holds a token again, if any waits.
    fn next_token(&self) -> Option<Instant> {
        self.budget_wait.values().min().copied()
    }

    /// One round of claims into `room`, the limited kinds' room first; returns how many jobs it
    /// claimed. Each claim's jobs are handed to `take` once they are the worker's: at once
    /// for a claim that committed on its own (a session of its own), at the end of the round
    /// for a round's transaction. So a round's first claim does not wait for the others' round
    /// trips to start its jobs. Bounded like every engine statement: on a timeout the session
    /// is dropped (closed) mid-round, and what was handed over is held as any claim is.
    pub(crate) async fn claim(
        &mut self,
        s: &Shared,
        room: &Room,
        take: &mut (dyn FnMut(Vec<ClaimedJob>) + Send),
    ) -> Result<usize, sqlx::Error> {
        self.first_limited = self.first_limited.wrapping_add(1);
        let now = Instant::now();
        self.budget_wait.retain(|_, until| *until > now);
        let due: Vec<String> = self
            .limited_names
            .iter()
            .filter(|k| !self.budget_wait.contains_key(*k) && !room.skip_kinds.contains(k))
            .cloned()
            .collect();
        if room.limited_only && due.is_empty() {
            return Ok(0);
        }
        // Taken out for the round and put back only when it succeeds: a failed round drops
        // (closes) it.
        let taken = self.session.take();
        let mut waits = Vec::new();
        // Claims handed to `take` before the round ended.
        let mut handed = 0;
        let round = async {
            let mut session = match taken {
                Some(c) => c,
                None => queue::ClaimSession::open(&s.db).await?,
            };
            // Claimed and not yet handed over.
            let mut jobs = Vec::new();
            // The plain claim goes first when the room holds the limited kinds' reserve beside
            // it: the plain jobs of the round (most of them) start without waiting for the
            // limited claims' round trips, and the limited kinds still get all the room they
            // could use.
            let reserve = if room.limited_only {
                None
            } else {
                limited_reserve(s, room, &due)
            };
            let plain_first = reserve.filter(|r| *r < room.free);
            let mut plain_full = false;
            if let Some(reserve) = plain_first {
                let limit = room.free - reserve;
                let got = self.claim_plain(s, &mut session, room, limit).await?;
                plain_full = got.len() >= limit;
                if session.commits_each_claim() {
                    handed += got.len();
                    take(got);
                } else {
                    jobs.extend(got);
                }
            }
            if !due.is_empty() {
                let left = room.free - handed;
                self.claim_limited(s, &mut session, room, left, &due, &mut jobs, &mut waits)
                    .await?;
            }
            // The plain claim (again, if it filled the room left to it and the limited kinds
            // did not use all of theirs).
            let rest = room.free.saturating_sub(handed + jobs.len());
            if rest > 0 && !room.limited_only && (plain_first.is_none() || plain_full) {
                jobs.extend(self.claim_plain(s, &mut session, room, rest).await?);
            }
            // Claims count once the round's transaction (if any) has committed.
            let kept = session.end_round().await?;
            Ok::<_, sqlx::Error>((jobs, kept))
        };
        // The claim session is a connection of its own, outside the handle's bound.
        let fetched = match s.db.statement_timeout() {
            None => round.await,
            Some(limit) => tokio::time::timeout(limit, round)
                .await
                .unwrap_or_else(|_| {
                    Err(sqlx::Error::Io(std::io::Error::new(
                        std::io::ErrorKind::TimedOut,
                        "no answer to the claim within database.statement_timeout",
                    )))
                }),
        };
        let (jobs, kept) = fetched?;
        self.session = kept;
        for (kind, wait) in waits {
            self.budget_wait
                .insert(kind, Instant::now() + wait.min(BUDGET_WAIT_MAX));
        }
        let n = handed + jobs.len();
        if !jobs.is_empty() {
            take(jobs);
        }
        Ok(n)
    }

    /// A plain claim of up to `limit` jobs on the round's session.
    async fn claim_plain(
        &self,
        s: &Shared,
        session: &mut queue::ClaimSession,
        room: &Room,
        limit: usize,
    ) -> Result<Vec<ClaimedJob>, sqlx::Error> {
        let skip_kinds = if self.external.is_empty() {
            std::borrow::Cow::Borrowed(&room.skip_kinds)
        } else {
            std::borrow::Cow::Owned([&room.skip_kinds[..], &self.external[..]].concat())
        };
        queue::job_fetch_available_on(
            session,
            &FetchParams {
                queues: self.queues.as_deref(),
                skip_kinds: &skip_kinds,
                only_kinds: self.only_kinds.as_deref(),
                limited_kinds: &self.limited_names,
                limit: limit as i64,
                owner: &s.worker_id,
                lease: s.cfg.lease,
                now: s.clock.now(),
            },
        )
        .await
    }

    /// The limited kinds' claims of a round, each under its fleet-wide limits. They are
    /// claimed into prefetch like the others: a prefetched claim is `running`, so it counts
    /// against the limit (and has spent its token): prefetch can hold slots back, never exceed
    /// a limit. How long it holds them back is bounded by the executor, which starts a limited
    /// claim ahead of the prefetched plain ones. They share `left` (the round's room less what
    /// was handed over) with what `jobs` holds. A kind whose budget is empty is reported in
    /// `waits` with its next token.
    #[allow(clippy::too_many_arguments)]
    async fn claim_limited(
        &self,
        s: &Shared,
        session: &mut queue::ClaimSession,
        room: &Room,
        left: usize,
        due: &[String],
        jobs: &mut Vec<ClaimedJob>,
        waits: &mut Vec<(String, Duration)>,
    ) -> Result<(), sqlx::Error> {
        // One due kind that spends no budget is claimed without the probe: its claim of
        // nothing costs the same probe plus an advisory lock, and writes nothing. A kind that
        // spends a budget keeps the probe: its claim locks the budget's row, which other
        // workers' claims wait on.
        let unprobed = due.len() == 1
            && s.limited
                .iter()
                .any(|l| l.kind == due[0] && l.budgets.is_empty());
        let ready = if unprobed {
            due.to_vec()
        } else {
            queue::kind_list_ready(session.conn(), due, self.queues.as_deref()).await?
        };
        let n = s.limited.len();
        for i in 0..n {
            let l = &s.limited[(self.first_limited + i) % n];
            if !ready.contains(&l.kind) {
                continue;
            }
            let mut free = left.saturating_sub(jobs.len());
            if let Some(here) = kind_room_here(s, room, &l.kind) {
                free = free.min(here);
            }
            if free == 0 {
                continue;
            }
            let got = queue::job_fetch_limited(
                session.conn(),
                &LimitedFetch {
                    kind: &l.kind,
                    queues: self.queues.as_deref(),
                    global_concurrency: l.global_concurrency,
                    key_concurrency: l.key_concurrency,
                    budgets: &l.budgets,
                    limit: free as i64,
                    owner: &s.worker_id,
                    lease: s.cfg.lease,
                    now: s.clock.now(),
                },
            )
            .await?;
            if let Some(w) = got.budget_wait {
                waits.push((l.kind.clone(), w));
            }
            jobs.extend(got.jobs);
        }
        Ok(())
    }
}

/// The most the `due` limited kinds can claim in one round here: for each, the rest of its
/// per-kind concurrency in this worker, else its fleet-wide concurrency (the smaller, if it
/// has both). `None` when a due kind has neither (a per-key limit or a budget alone bounds it
/// only in the claim): the limited kinds are then claimed first, as they always were.
fn limited_reserve(s: &Shared, room: &Room, due: &[String]) -> Option<usize> {
    let mut reserve = 0;
    for kind in due {
        let global = s
            .limited
            .iter()
            .find(|l| &l.kind == kind)
            .and_then(|l| l.global_concurrency)
            .map(|g| g.max(0) as usize);
        reserve += match (kind_room_here(s, room, kind), global) {
            (Some(h), Some(g)) => h.min(g),
            (Some(n), None) | (None, Some(n)) => n,
            (None, None) => return None,
        };
    }
    Some(reserve)
}

/// The rest of `kind`'s per-kind concurrency in this worker (`None`: it has none).
fn kind_room_here(s: &Shared, room: &Room, kind: &str) -> Option<usize> {
    let c = s.registry.settings(kind)?.concurrency?;
    Some(c.saturating_sub(room.held_by_kind.get(kind).copied().unwrap_or(0)))
}

/// Makes `jobs` held by this worker (before anything can run them).
pub(crate) fn hold(s: &Shared, jobs: &[ClaimedJob]) {
    s.counters
        .claimed
        .fetch_add(jobs.len() as u64, Ordering::Relaxed);
    let mut held = s.held.lock().unwrap();
    for j in jobs {
        held.insert(
            j.id,
            Held {
                claim_seq: j.claim_seq,
                kind: j.kind.clone(),
                cancel: s.hard_stop.child_token(),
                outcome_queued: false,
            },
        );
    }
}

/// Claims jobs until `shutdown`; spawns one task per claim onto `tasks`, which runs it
/// ([`executor::execute`]) and hands its outcome to the completer through `outcomes`.
pub(crate) async fn run(
    s: Arc<Shared>,
    outcomes: mpsc::UnboundedSender<Outcome>,
    tasks: &TaskTracker,
    shutdown: CancellationToken,
) {
    let capacity = s.cfg.concurrency + s.cfg.prefetch;
    // Refetch once a quarter of the capacity is free (or the worker is idle): fewer, fuller
    // claims under load, no wait when idle.
    let threshold = (capacity / 4).max(1);
    let mut fetcher = Fetcher::new(&s);
    // This worker's kinds without a limit: ready rows of theirs still filed as limited (the
    // kind had a limit when they were enqueued) are re-filed for the plain claim, at start
    // and then every REFILE_EVERY.
    let unlimited_names: Vec<String> = s
        .registry
        .kind_names()
        .into_iter()
        .filter(|k| !fetcher.limited_names.contains(k) && !fetcher.external.contains(k))
        .collect();
    let mut refile_due = Instant::now();
    let mut db_backoff = Duration::from_millis(100);
    let mut fetch_failures = FailureStreak::new("fetching jobs failed");
    let mut refile_failures = FailureStreak::new("re-filing ready jobs failed");
    loop {
        if shutdown.is_cancelled() {
            return;
        }
        if !s.db.health().is_up() {
            // The monitor said so once; nothing is claimed until the database answers (the
            // claims a round would start could not be run to an outcome anyway).
            fetcher.reset();
            tokio::select! {
                _ = s.db.health().wait_up() => {}
                _ = shutdown.cancelled() => return,
            }
            continue;
        }
        if Instant::now() >= refile_due && !unlimited_names.is_empty() {
            match refile_unlimited(&s, &unlimited_names).await {
                Ok(0) => refile_failures.succeeded(),
                Ok(n) => {
                    refile_failures.succeeded();
                    tracing::info!(
                        jobs = n,
                        "re-filed ready jobs of kinds without a limit here for the plain claim"
                    )
                }
                Err(e) => refile_failures.failed(&s.db, &e),
            }
            refile_due = Instant::now() + REFILE_EVERY;
        }
        let room = room(&s, capacity, threshold);
        if room.free > 0 {
            // Each claim's jobs are held, then started, as soon as they are the worker's.
            let mut start = |jobs: Vec<ClaimedJob>| {
                hold(&s, &jobs);
                for j in jobs {
                    let s = s.clone();
                    let outcomes = outcomes.clone();
                    tasks.spawn(async move {
                        let outcome = executor::execute(s, j).await;
                        // The receiver lives until every job task has finished.
                        let _ = outcomes.send(outcome);
                    });
                }
            };
            let round = std::time::Instant::now();
            let claimed = fetcher.claim(&s, &room, &mut start).await;
            crate::metrics::metrics()
                .claim_round_seconds
                .observe(round.elapsed().as_secs_f64());
            match claimed {
                Ok(n) => {
                    fetch_failures.succeeded();
                    db_backoff = Duration::from_millis(100);
                    if n == room.free {
                        // A full batch: there is probably more.
                        continue;
                    }
                }
                Err(e) => {
                    fetch_failures.failed(&s.db, &e);
                    tokio::select! {
                        _ = tokio::time::sleep(db_backoff) => {}
                        _ = shutdown.cancelled() => return,
                    }
                    db_backoff = (db_backoff * 2).min(Duration::from_secs(5));
                    continue;
                }
            }
        }
        // A kind waiting for a token is tried again as soon as one is due.
        let poll = Instant::now() + s.cfg.poll_interval;
        let wake_at = fetcher.next_token().map_or(poll, |t| t.min(poll));
        tokio::select! {
            _ = s.wake.notified() => {}
            _ = tokio::time::sleep_until(wake_at) => {}
            _ = shutdown.cancelled() => return,
        }
    }
}

/// The room this round has: nothing until a quarter of `capacity` is free (unless idle),
/// except for the limited kinds right after one of their outcomes was written.
///
/// Why the exception: a limited kind's fleet-wide slot is free again only once its outcome
/// is written, and only a claim round fills it. Waiting for a quarter of the capacity adds
/// that wait to every limited job's cycle, and a kind held to a few slots fleet-wide runs at
/// most slots ÷ cycle jobs a second: behind a worker full of plain claims, its slots sit idle
/// (decision 60). The plain kinds keep the threshold: batching their claims is what saves
/// round trips.
fn room(s: &Shared, capacity: usize, threshold: usize) -> Room {
    let held = s.held.lock().unwrap();
    let mut held_by_kind: HashMap<String, usize> = HashMap::new();
    if !s.limited.is_empty() {
        for h in held.values() {
            *held_by_kind.entry(h.kind.clone()).or_default() += 1;
        }
    }
    let free = capacity.saturating_sub(held.len());
    let enough = held.is_empty() || free >= threshold;
    // Taken either way: a full round claims the limited kinds first too.
    let limited_freed = s.limited_freed.swap(false, Ordering::AcqRel);
    let limited_only = !enough && limited_freed && free > 0;
    Room {
        free: if enough || limited_only { free } else { 0 },
        limited_only,
        skip_kinds: if held.is_empty() || !(enough || limited_only) {
            Vec::new()
        } else {
            kinds_at_limit(s, &held)
        },
        held_by_kind,
    }
}

/// Re-files, in batches, the ready rows of `kinds` still filed as limited.
async fn refile_unlimited(s: &Shared, kinds: &[String]) -> Result<u64, sqlx::Error> {
    const BATCH: i64 = 1_000;
    let mut total = 0;
    loop {
        let n = queue::job_refile_unlimited(&s.db, kinds, BATCH).await?;
        total += n;
        if n < BATCH as u64 {
            return Ok(total);
        }
    }
}

/// Kinds whose held claims already fill their per-kind concurrency.
fn kinds_at_limit(s: &Shared, held: &HashMap<i64, Held>) -> Vec<String> {
    if s.kind_slots.is_empty() {
        return Vec::new();
    }
    let mut counts: HashMap<&str, usize> = HashMap::new();
    for h in held.values() {
        *counts.entry(h.kind.as_str()).or_default() += 1;
    }
    counts
        .into_iter()
        .filter(|(k, n)| {
            s.registry
                .settings(k)
                .and_then(|st| st.concurrency)
                .is_some_and(|limit| *n >= limit)
        })
        .map(|(k, _)| k.to_owned())
        .collect()
}
