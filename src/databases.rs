//! The fleet's databases, past one Postgres (docs/scaling.md):
//!
//! - the **main** database (`[database]`): every domain table, and the jobs of every kind not
//!   named elsewhere: the money kinds stay beside the rows they change, so a handler's
//!   follow-up job commits in the same transaction as its domain write;
//! - each **`[databases.<name>]`** database: the jobs of the kinds it names (split by
//!   function, e.g. the high-volume campaign search fan-out). Their handlers still read and
//!   write domain tables in the main database;
//! - each may have a **read replica** (`read_url`, a hot standby): operator reads go there
//!   ([`Database::reads`]); writes, operator actions and the claim never do.
//!
//! **Invariants.** A kind's jobs live in exactly one database ([`Databases::home_of`]): its
//! idempotency keys, pause switch and drain are that database's. A job enqueued for a kind of
//! another database than the caller's connection commits on its own, before the caller's
//! transaction does, so it must carry an idempotency key (the engine refuses it otherwise:
//! `Queue::enqueue_many_in`); a retry of the caller then meets the held key instead of
//! creating a second job, and its handler re-reads the domain state it acts on.

use std::{collections::HashMap, time::Duration, time::Instant};

use jobs::{Db, Pooler};
use serde::Serialize;
use sqlx::Row;

use crate::{
    config::{Settings, MAIN_DATABASE},
    database::{self, DatabaseError},
};

/// Connections of a read pool: operator reads are few and short.
const READ_POOL_SIZE: u32 = 4;

/// One of the fleet's databases.
#[derive(Clone)]
pub struct Database {
    /// `main`, or the `[databases.<name>]` name.
    pub name: String,
    /// The primary: writes, the claim, operator actions.
    pub db: Db,
    /// Operator reads: the replica when `read_url` is set, else the primary.
    pub reads: Db,
    /// `host:port/database as user` of the replica, when there is one (never a password).
    pub replica: Option<String>,
}

impl Database {
    /// A database with no replica (reads on the primary).
    pub fn primary_only(name: &str, db: impl Into<Db>) -> Self {
        let db = db.into();
        Self {
            name: name.to_owned(),
            reads: db.clone(),
            db,
            replica: None,
        }
    }

    /// How far the replica is behind, or `None` without a replica.
    pub async fn replica_lag(&self) -> Result<Option<ReplicaLag>, sqlx::Error> {
        if self.replica.is_none() {
            return Ok(None);
        }
        replica_lag(&self.db, &self.reads, LAG_PROBE_BUDGET)
            .await
            .map(Some)
    }
}

/// The main database and every `[databases.*]` one, with the home of every kind.
#[derive(Clone)]
pub struct Databases {
    /// The main database.
    pub main: Database,
    /// The `[databases.*]` databases, by name.
    pub others: Vec<Database>,
    /// kind → index in `others`; a kind not here lives in `main`.
    homes: HashMap<String, usize>,
}

impl Databases {
    /// Only `main` (tests, benchmarks, one database).
    pub fn single(main: Database) -> Self {
        Self {
            main,
            others: Vec::new(),
            homes: HashMap::new(),
        }
    }

    /// Connects to every configured database, `main` being `main_pool` (already checked by
    /// the caller), each `[databases.*]` one checked the same way (its schema must fit this
    /// binary), and the read replicas (lazily: a replica that is down fails the reads that
    /// need it, naming it, never the start of a role).
    pub async fn connect(settings: &Settings, main_db: Db) -> Result<Self, DatabaseError> {
        let db = &settings.database;
        let main = Database::primary_only(MAIN_DATABASE, main_db).with_replica(
            database::Endpoint::main_reads(db)?,
            db.pooler,
            db.connect_timeout,
        );
        let mut others = Vec::new();
        let mut homes = HashMap::new();
        for (name, extra) in &settings.databases {
            let reach = database::Reach::of(name, extra, db)?;
            let opened = reach.open().await?;
            database::require_schema(&opened).await?;
            let d = Database::primary_only(name, opened).with_replica(
                database::Endpoint::reads_of(name, extra, db)?,
                reach.pooler,
                db.connect_timeout,
            );
            for k in &extra.kinds {
                homes.insert(k.clone(), others.len());
            }
            others.push(d);
        }
        Ok(Self {
            main,
            others,
            homes,
        })
    }

    /// Every database, `main` first.
    pub fn all(&self) -> impl Iterator<Item = &Database> {
        std::iter::once(&self.main).chain(self.others.iter())
    }

    /// The database named `name` (`main` or a `[databases.*]` name).
    pub fn get(&self, name: &str) -> Option<&Database> {
        self.all().find(|d| d.name == name)
    }

    /// The names of every database, `main` first.
    pub fn names(&self) -> Vec<String> {
        self.all().map(|d| d.name.clone()).collect()
    }

    /// The database `kind`'s jobs live in.
    pub fn home_of(&self, kind: &str) -> &Database {
        match self.homes.get(kind) {
            Some(&i) => &self.others[i],
            None => &self.main,
        }
    }

    /// Each kind whose jobs live in a `[databases.*]` database, with that database.
    pub fn homes(&self) -> impl Iterator<Item = (&str, &Database)> {
        self.homes
            .iter()
            .map(|(kind, &i)| (kind.as_str(), &self.others[i]))
    }
}

impl Database {
    fn with_replica(
        mut self,
        endpoint: Option<database::Endpoint>,
        pooler: Pooler,
        timeout: Duration,
    ) -> Self {
        let Some(mut endpoint) = endpoint else {
            return self;
        };
        if pooler == Pooler::Transaction {
            endpoint.options = endpoint
                .options
                .statement_cache_capacity(0)
                .extra_float_digits(None);
        }
        tracing::info!(database = %self.name, setting = %endpoint.setting,
            target = %endpoint.target(), tls = %endpoint.tls,
            "operator reads go to a read replica (connected on first use)");
        self.replica = Some(endpoint.target());
        let pool = crate::database::pool_options()
            .max_connections(READ_POOL_SIZE)
            .acquire_timeout(timeout)
            .connect_lazy_with(endpoint.options);
        self.reads = match pooler {
            Pooler::Transaction => Db::behind_transaction_pooler(pool, None),
            _ => Db::direct(pool),
        }
        .with_statement_timeout(self.db.statement_timeout());
        self
    }
}

/// How long a lag probe waits for the replica to replay what the primary had flushed.
pub const LAG_PROBE_BUDGET: Duration = Duration::from_secs(1);

/// How far a read replica is behind its primary.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ReplicaLag {
    /// Seconds behind: 0 when the replica had already replayed everything the primary had
    /// flushed when asked; else how long it took to get there (to ~10 ms), or, past the probe's
    /// budget, the time since it last replayed a transaction. `None` when not known (the
    /// server is not a standby, or has replayed no transaction since it started).
    pub seconds: Option<f64>,
    /// WAL bytes the replica had still to replay at the last look (0 when caught up).
    pub bytes_behind: i64,
    /// Whether the read server is a standby at all (`pg_is_in_recovery()`); `false` means
    /// `read_url` points at a primary.
    pub is_standby: bool,
}

/// ReplicaLag: compares LSNs rather than `now() - pg_last_xact_replay_timestamp()`, which
/// grows without bound on an idle primary (nothing to replay, so no new replay timestamp).
/// Reads the primary's flushed WAL position, then polls the replica until it has replayed
/// past it (a caught-up replica answers at the first look: lag 0), for at most `budget`.
pub async fn replica_lag(
    primary: &Db,
    replica: &Db,
    budget: Duration,
) -> Result<ReplicaLag, sqlx::Error> {
    let target: String = sqlx::query_scalar("SELECT pg_current_wal_flush_lsn()::text")
        .fetch_one(primary)
        .await?;
    let began = Instant::now();
    let mut first = true;
    loop {
        let r = sqlx::query(
            "SELECT pg_is_in_recovery(),
                    coalesce(pg_wal_lsn_diff($1::pg_lsn, pg_last_wal_replay_lsn()), 0)::float8,
                    EXTRACT(EPOCH FROM now() - pg_last_xact_replay_timestamp())::float8",
        )
        .bind(&target)
        .fetch_one(replica)
        .await?;
        let is_standby: bool = r.get(0);
        let behind: f64 = r.get(1);
        let since_replay: Option<f64> = r.get(2);
        if !is_standby {
            return Ok(ReplicaLag {
                seconds: None,
                bytes_behind: 0,
                is_standby,
            });
        }
        if behind <= 0.0 {
            let seconds = if first {
                0.0
            } else {
                began.elapsed().as_secs_f64()
            };
            return Ok(ReplicaLag {
                seconds: Some(seconds),
                bytes_behind: 0,
                is_standby,
            });
        }
        if began.elapsed() >= budget {
            let waited = began.elapsed().as_secs_f64();
            return Ok(ReplicaLag {
                seconds: since_replay.map(|s| s.max(waited)),
                bytes_behind: behind as i64,
                is_standby,
            });
        }
        first = false;
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

impl ReplicaLag {
    /// `0.012 s behind`, `≥ 3.4 s behind (1.2 MB to replay)`, for people.
    pub fn describe(&self) -> String {
        if !self.is_standby {
            return "not a standby: read_url points at a primary".to_owned();
        }
        match self.seconds {
            None => "lag unknown (no transaction replayed yet)".to_owned(),
            Some(s) if self.bytes_behind == 0 => format!("{s:.3} s behind"),
            Some(s) => format!(
                "at least {s:.1} s behind ({} KiB of WAL still to replay)",
                self.bytes_behind / 1024
            ),
        }
    }
}
