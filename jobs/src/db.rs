//! The database handle every role and handler uses: a connection pool, and how its
//! connections reach Postgres.
//!
//! **Behind a transaction-mode pooler** (PgBouncer `pool_mode = transaction`, Supabase's
//! Supavisor on port 6543) a client's statements reach one server connection only within a
//! transaction: between transactions the pooler hands the server connection to other clients.
//! Three things follow, and [`Db`] does them so no caller has to remember:
//! - **No named prepared statements.** A named statement stays on the server connection it
//!   was prepared on, where the next client would find it (or miss it). The pool of a pooled
//!   [`Db`] has its statement cache off, which makes the driver use the unnamed statement.
//! - **Every statement inside a transaction.** The driver parses a statement in one round
//!   trip and binds it in a second; outside a transaction the pooler may send the two to
//!   different server connections. A statement run on the handle itself (`&db` as an
//!   executor) therefore runs in a transaction of its own (`BEGIN`, it, `COMMIT`), and the
//!   handle lends no connection outside a transaction: there is no `acquire`.
//! - **No session state.** `SET`, `LISTEN`, session advisory locks and temporary tables would
//!   reach whoever gets the server connection next. Work that needs a session asks for one
//!   ([`Db::session_pool`]): a direct connection (`database.direct_url`) when one is
//!   configured, else none, and the caller does without (the worker polls instead of
//!   listening, and claims in a transaction).
//!
//! A pool whose connections are sessions (a direct connection, or a session-mode pooler) is
//! used as it always was: `&db` delegates to the pool.
//!
//! **Every statement on the handle is bounded** ([`Db::with_statement_timeout`]): a statement
//! that gets no answer in time fails with an I/O error of kind `TimedOut`, and its connection
//! is closed rather than reused (its state is unknown). A network that drops packets without a
//! reset would otherwise hold a caller for as long as TCP retransmits.

use std::{fmt, sync::Arc, time::Duration};

use futures::{future::BoxFuture, stream::BoxStream, StreamExt, TryStreamExt};
use sqlx::{
    pool::PoolConnection,
    postgres::{PgQueryResult, PgRow},
    Either, Execute, Executor, PgPool, Postgres, Transaction,
};

/// What a [`Db`]'s URL reaches.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Pooler {
    /// Postgres itself: each client connection is a session.
    None,
    /// A pooler in session mode: each client connection is a session, as with `None`.
    Session,
    /// A pooler in transaction mode: a session lasts one transaction.
    Transaction,
}

impl Pooler {
    /// The setting's spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::None => "none",
            Self::Session => "session",
            Self::Transaction => "transaction",
        }
    }
}

/// A handle on one database: a pool, how it reaches Postgres ([`Pooler`]), a pool of real
/// sessions for the work that needs one, and the bound on each statement. Cheap to clone.
#[derive(Clone)]
pub struct Db {
    inner: Arc<Inner>,
}

struct Inner {
    pool: PgPool,
    pooler: Pooler,
    /// Connections that are sessions: the pool itself unless it is behind a transaction
    /// pooler; then the direct connection's pool, if one is configured.
    session: Option<PgPool>,
    statement_timeout: Option<Duration>,
    health: Arc<Health>,
}

/// Whether the database answers, as this process last saw it: one value per database a process
/// uses, shared by every clone of its [`Db`]. A health monitor (the engine's
/// `database::health`) sets it; the worker stops claiming while it is down, its loops stop
/// logging each failed statement, `/readyz` answers 503, and the rescuer waits a lease after it
/// comes back before it takes any lease back (other workers' heartbeats renew theirs first).
#[derive(Debug)]
pub struct Health {
    state: tokio::sync::watch::Sender<HealthState>,
}

/// A [`Health`] reading.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct HealthState {
    /// The last check got an answer.
    pub up: bool,
    /// When `up` last changed (or the process started).
    pub since: std::time::Instant,
    /// How many times it went down.
    pub outages: u64,
}

impl HealthState {
    /// Whether the database answers and has for at least `grace` since it last came back
    /// from an outage (at once when it never had one).
    pub fn up_for_at_least(&self, grace: Duration) -> bool {
        self.up && (self.outages == 0 || self.since.elapsed() >= grace)
    }
}

impl Default for Health {
    fn default() -> Self {
        Self {
            state: tokio::sync::watch::channel(HealthState {
                up: true,
                since: std::time::Instant::now(),
                outages: 0,
            })
            .0,
        }
    }
}

impl Health {
    /// The last reading.
    pub fn get(&self) -> HealthState {
        *self.state.borrow()
    }

    /// Whether the database answered at the last check.
    pub fn is_up(&self) -> bool {
        self.state.borrow().up
    }

    /// Records a check; returns whether it changed the state.
    pub fn set(&self, up: bool) -> bool {
        self.state.send_if_modified(|s| {
            if s.up == up {
                return false;
            }
            *s = HealthState {
                up,
                since: std::time::Instant::now(),
                outages: s.outages + u64::from(!up),
            };
            true
        })
    }

    /// Waits until the database answers again (at once if it does).
    pub async fn wait_up(&self) {
        let mut rx = self.state.subscribe();
        let _ = rx.wait_for(|s| s.up).await;
    }
}

impl fmt::Debug for Db {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Db")
            .field("pooler", &self.inner.pooler)
            .field("session", &self.inner.session.is_some())
            .field("statement_timeout", &self.inner.statement_timeout)
            .finish_non_exhaustive()
    }
}

impl From<PgPool> for Db {
    /// A pool whose connections are sessions (a direct connection or a session pooler), with
    /// no bound on statements.
    fn from(pool: PgPool) -> Self {
        Self::direct(pool)
    }
}

impl Db {
    /// A pool whose connections are sessions: a direct connection to Postgres (`pooler`
    /// [`Pooler::None`]; [`Db::through_session_pooler`] says [`Pooler::Session`]).
    pub fn direct(pool: PgPool) -> Self {
        Self {
            inner: Arc::new(Inner {
                session: Some(pool.clone()),
                pool,
                pooler: Pooler::None,
                statement_timeout: None,
                health: Arc::default(),
            }),
        }
    }

    /// A pool behind a transaction-mode pooler; `session` is a pool of direct connections for
    /// the work that needs a session, if the deployment allows one. The pool's connections
    /// must have been opened with the statement cache off (`statement_cache_capacity(0)`).
    pub fn behind_transaction_pooler(pool: PgPool, session: Option<PgPool>) -> Self {
        Self {
            inner: Arc::new(Inner {
                pool,
                pooler: Pooler::Transaction,
                session,
                statement_timeout: None,
                health: Arc::default(),
            }),
        }
    }

    /// This handle, failing any statement run on it that has no answer within `timeout`
    /// (`None`: no bound).
    pub fn with_statement_timeout(self, timeout: Option<Duration>) -> Self {
        let i = &self.inner;
        Self {
            inner: Arc::new(Inner {
                pool: i.pool.clone(),
                pooler: i.pooler,
                session: i.session.clone(),
                statement_timeout: timeout,
                health: i.health.clone(),
            }),
        }
    }

    /// This handle, saying its sessions come through a session-mode pooler (what `pooler()`
    /// reports; nothing else changes).
    pub fn through_session_pooler(self) -> Self {
        let i = &self.inner;
        Self {
            inner: Arc::new(Inner {
                pool: i.pool.clone(),
                pooler: if i.pooler == Pooler::None {
                    Pooler::Session
                } else {
                    i.pooler
                },
                session: i.session.clone(),
                statement_timeout: i.statement_timeout,
                health: i.health.clone(),
            }),
        }
    }

    /// Whether the database answers, as this process last saw it.
    pub fn health(&self) -> &Health {
        &self.inner.health
    }

    /// What the pool's URL reaches.
    pub fn pooler(&self) -> Pooler {
        self.inner.pooler
    }

    /// Whether statements go through a transaction-mode pooler.
    pub fn through_transaction_pooler(&self) -> bool {
        self.inner.pooler == Pooler::Transaction
    }

    /// A pool whose connections are sessions (for `LISTEN`, session settings, session
    /// advisory locks), or `None` behind a transaction pooler with no direct connection.
    pub fn session_pool(&self) -> Option<&PgPool> {
        self.inner.session.as_ref()
    }

    /// The bound on each statement run on the handle.
    pub fn statement_timeout(&self) -> Option<Duration> {
        self.inner.statement_timeout
    }

    /// A transaction. Its statements are not bounded by the handle (a transaction may
    /// legitimately run long); the caller bounds the whole of it where it must.
    pub async fn begin(&self) -> Result<Transaction<'static, Postgres>, sqlx::Error> {
        self.inner.pool.begin().await
    }

    /// A connection of the pool for several statements that each commit on their own, when
    /// the pool's connections are sessions; `None` behind a transaction pooler (use
    /// [`Db::begin`]: outside a transaction its statements would wander between server
    /// connections).
    pub async fn acquire_session(&self) -> Option<Result<PoolConnection<Postgres>, sqlx::Error>> {
        match self.inner.pooler {
            Pooler::None | Pooler::Session => Some(self.inner.pool.acquire().await),
            Pooler::Transaction => None,
        }
    }

    /// The pool's size limit (for sizing decisions, never for statements).
    pub fn max_connections(&self) -> u32 {
        self.inner.pool.options().get_max_connections()
    }

    /// Closes the pool (and the session pool): waits for lent connections to come back.
    pub async fn close(&self) {
        self.inner.pool.close().await;
        if let Some(s) = &self.inner.session {
            s.close().await;
        }
    }

    /// The pool itself, for what takes a pool and runs no statement on it of its own (a
    /// migrator that locks with a session, a listener): only valid when
    /// [`Db::through_transaction_pooler`] is false.
    pub fn session_independent_pool(&self) -> &PgPool {
        &self.inner.pool
    }

    /// Runs `query` on a connection of the pool: as it is, or inside a transaction of its own
    /// behind a transaction pooler; bounded by the statement timeout, the connection closed
    /// (not reused) when the bound is hit. `many`: every result, else the first row.
    async fn run<'q, E>(&self, query: E, many: bool) -> Result<Output, sqlx::Error>
    where
        E: 'q + Execute<'q, Postgres>,
    {
        let mut conn = self.inner.pool.acquire().await?;
        let pooled = self.through_transaction_pooler();
        let unit = async {
            if pooled {
                let mut tx = sqlx::Connection::begin(&mut *conn).await?;
                let out = statement(&mut tx, query, many).await?;
                tx.commit().await?;
                Ok(out)
            } else {
                statement(&mut conn, query, many).await
            }
        };
        match self.inner.statement_timeout {
            None => unit.await,
            Some(limit) => match tokio::time::timeout(limit, unit).await {
                Ok(r) => r,
                Err(_) => {
                    conn.close_on_drop();
                    Err(sqlx::Error::Io(std::io::Error::new(
                        std::io::ErrorKind::TimedOut,
                        format!(
                            "no answer from the database within {} (database.statement_timeout)",
                            humantime::format_duration(limit)
                        ),
                    )))
                }
            },
        }
    }
}

/// What a statement run on the handle gave.
enum Output {
    Many(Vec<Either<PgQueryResult, PgRow>>),
    One(Option<PgRow>),
}

async fn statement<'q, E>(
    c: &mut sqlx::PgConnection,
    query: E,
    many: bool,
) -> Result<Output, sqlx::Error>
where
    E: 'q + Execute<'q, Postgres>,
{
    Ok(if many {
        Output::Many(c.fetch_many(query).try_collect().await?)
    } else {
        Output::One(c.fetch_optional(query).await?)
    })
}

impl<'c> Executor<'c> for &'c Db {
    type Database = Postgres;

    /// Collects the whole result before yielding it: behind a transaction pooler the
    /// transaction must commit before anyone sees a row (a commit that fails un-happens them),
    /// and a bound applies to the whole statement.
    fn fetch_many<'e, 'q: 'e, E>(
        self,
        query: E,
    ) -> BoxStream<'e, Result<Either<PgQueryResult, PgRow>, sqlx::Error>>
    where
        'c: 'e,
        E: 'q + Execute<'q, Postgres>,
    {
        let db = self.clone();
        futures::stream::once(async move {
            match db.run(query, true).await? {
                Output::Many(items) => Ok::<_, sqlx::Error>(items),
                Output::One(_) => unreachable!("asked for every result"),
            }
        })
        .map_ok(|items| futures::stream::iter(items.into_iter().map(Ok)))
        .try_flatten()
        .boxed()
    }

    fn fetch_optional<'e, 'q: 'e, E>(
        self,
        query: E,
    ) -> BoxFuture<'e, Result<Option<PgRow>, sqlx::Error>>
    where
        'c: 'e,
        E: 'q + Execute<'q, Postgres>,
    {
        let db = self.clone();
        Box::pin(async move {
            match db.run(query, false).await? {
                Output::One(row) => Ok(row),
                Output::Many(_) => unreachable!("asked for one row"),
            }
        })
    }

    fn prepare_with<'e>(
        self,
        sql: sqlx::SqlStr,
        parameters: &'e [sqlx::postgres::PgTypeInfo],
    ) -> BoxFuture<'e, Result<sqlx::postgres::PgStatement, sqlx::Error>>
    where
        'c: 'e,
    {
        (&self.inner.pool).prepare_with(sql, parameters)
    }

    #[doc(hidden)]
    fn describe<'e>(
        self,
        sql: sqlx::SqlStr,
    ) -> BoxFuture<'e, Result<sqlx::Describe<Postgres>, sqlx::Error>>
    where
        'c: 'e,
    {
        (&self.inner.pool).describe(sql)
    }
}
