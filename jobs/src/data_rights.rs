//! Travelers' data-rights requests — erasure of an account and export of what is held about it
//! (GDPR arts. 15, 17, 20) — and the one owner of `data_requests` (migration …021) and of the
//! deletion of `users` rows.
//!
//! A request comes from an operator (`fleet traveler erase|export`, the console: dry run, then
//! confirmed, audited) or from the product (a signed `POST /webhooks/product`, docs/decisions.md
//! 53). [`open`] records it and enqueues its job in one transaction:
//! - one open request per traveler and kind (a unique index): asking again while one is open
//!   returns it and its job (the job's key is the request's), whoever asks;
//! - the product's retries of one request (its `external_id`) find the first row, open or done;
//! - an unknown traveler, or one already erased, is refused with that reason and writes nothing.
//!
//! The jobs ([`crate::kinds::account_erasure`], [`crate::kinds::data_export`]) move the request
//! to `completed` in the transaction that finishes their work, and note what they wait on
//! (`waiting_on`) meanwhile. Every open request is due 30 days after it was made; operators
//! see open requests and their age against that deadline ([`list_open`]).

use chrono::{DateTime, Utc};
use serde::Serialize;
use serde_json::{json, Value};
use sqlx::{PgConnection, PgExecutor};
use uuid::Uuid;

use crate::{audit, Db, Enqueuer, JobError, NewJob};

/// What a traveler asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum RequestKind {
    /// Erase the account (art. 17).
    Erasure,
    /// Send them everything held about them (arts. 15, 20).
    Export,
}

impl RequestKind {
    /// `data_requests.kind`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Erasure => "erasure",
            Self::Export => "export",
        }
    }
}

impl std::str::FromStr for RequestKind {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "erasure" => Ok(Self::Erasure),
            "export" => Ok(Self::Export),
            other => Err(format!("unknown request kind {other:?}: erasure or export")),
        }
    }
}

/// Who asked.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Source {
    /// An operator, by name.
    Operator,
    /// The product, on the traveler's behalf (a signed request).
    Product,
}

impl Source {
    fn as_str(self) -> &'static str {
        match self {
            Self::Operator => "operator",
            Self::Product => "product",
        }
    }
}

/// A `data_requests` row: ids, codes, times and counts; never personal data.
#[derive(Debug, Clone, Serialize, sqlx::FromRow)]
pub struct DataRequest {
    /// The request.
    pub id: Uuid,
    /// `erasure` or `export`.
    pub kind: String,
    /// The traveler (kept after an erasure: the record that it happened).
    pub user_id: Uuid,
    /// `operator` or `product`.
    pub source: String,
    /// The operator's name, or `product`.
    pub requested_by: String,
    /// The product's own request id.
    pub external_id: Option<String>,
    /// `open`, `completed` or `cancelled`.
    pub status: String,
    /// When it was made.
    pub requested_at: DateTime<Utc>,
    /// The law's deadline (30 days on).
    pub due_at: DateTime<Utc>,
    /// Why an open request is not done yet (a code).
    pub waiting_on: Option<String>,
    /// When it was done.
    pub completed_at: Option<DateTime<Utc>>,
    /// What was done (counts).
    pub outcome: Option<Value>,
}

const COLUMNS: &str = "id, kind, user_id, source, requested_by, external_id, status, \
                       requested_at, due_at, waiting_on, completed_at, outcome";

/// The job key of request `id`: the one job that works it.
pub fn job_key(kind: RequestKind, id: Uuid) -> String {
    format!("data_request:{}:{id}", kind.as_str())
}

/// Why a request was not opened.
#[derive(Debug, thiserror::Error)]
pub enum RequestRefused {
    /// No account with that id.
    #[error("no traveler {0}: no account has this id")]
    UnknownTraveler(Uuid),
    /// The account was erased already (the completed erasure is the record).
    #[error(
        "traveler {user_id} was erased on {at} (request {request}): nothing is held to {what}"
    )]
    AlreadyErased {
        /// The traveler.
        user_id: Uuid,
        /// The completed erasure request.
        request: Uuid,
        /// When.
        at: String,
        /// `erase` or `export`.
        what: &'static str,
    },
    /// The product reused its request id for another traveler or kind.
    #[error("request id {0:?} was already used for another traveler or kind")]
    ExternalIdReused(String),
    /// The database or the enqueue failed.
    #[error(transparent)]
    Failed(#[from] JobError),
}

impl From<sqlx::Error> for RequestRefused {
    fn from(e: sqlx::Error) -> Self {
        Self::Failed(e.into())
    }
}

/// What an erasure would do now, for the dry run and the console's preview (counts only).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct ErasurePreview {
    /// Campaigns still searching or waiting on the traveler, to be cancelled first.
    pub campaigns_to_cancel: i64,
    /// Every campaign of the account (deleted with it).
    pub campaigns: i64,
    /// Sagas in flight: the erasure waits until they finish.
    pub bookings_in_flight: i64,
    /// Refunds owed or on their way: the erasure waits until they settle.
    pub refunds_unsettled: i64,
    /// Saved cards to detach at Stripe.
    pub cards_to_detach: i64,
    /// Stripe customers to delete.
    pub customers_to_delete: i64,
    /// Traveler profiles (passport, names) to delete.
    pub profiles: i64,
    /// Bookings kept as accounting records, their PNR and itinerary removed.
    pub bookings_kept: i64,
    /// Messages in the outbox (deleted).
    pub notifications: i64,
}

/// DataRequestErasurePreview: [`ErasurePreview`] of user `user_id`, read on `conn`.
pub async fn erasure_preview(
    conn: &mut PgConnection,
    user_id: Uuid,
) -> Result<ErasurePreview, sqlx::Error> {
    let money = crate::booking::money_still_moving_of_user(&mut *conn, user_id).await?;
    let (to_cancel, campaigns, cards, customers, profiles, bookings, notifications): (
        i64,
        i64,
        i64,
        i64,
        i64,
        i64,
        i64,
    ) = sqlx::query_as(
        "SELECT
            (SELECT count(*) FROM campaigns WHERE user_id = $1
             AND status IN ('active', 'paused', 'action_required')),
            (SELECT count(*) FROM campaigns WHERE user_id = $1),
            (SELECT count(*) FROM payment_methods WHERE user_id = $1),
            (SELECT count(DISTINCT stripe_customer_id) FROM payment_methods WHERE user_id = $1),
            (SELECT count(*) FROM traveler_profiles WHERE user_id = $1),
            (SELECT count(*) FROM bookings b JOIN campaigns c ON c.id = b.campaign_id
             WHERE c.user_id = $1),
            (SELECT count(*) FROM notifications WHERE user_id = $1)",
    )
    .bind(user_id)
    .fetch_one(&mut *conn)
    .await?;
    Ok(ErasurePreview {
        campaigns_to_cancel: to_cancel,
        campaigns,
        bookings_in_flight: money.bookings_in_flight,
        refunds_unsettled: money.refunds_unsettled,
        cards_to_detach: cards,
        customers_to_delete: customers,
        profiles,
        bookings_kept: bookings,
        notifications,
    })
}

/// A request as [`open`] left it.
#[derive(Debug, Clone, Serialize)]
pub struct Opened {
    /// The request (`None` on a dry run that would open a new one).
    pub request_id: Option<Uuid>,
    /// Its job (`None` on such a dry run).
    pub job_id: Option<i64>,
    /// The request was open already (or the product's id was seen): nothing was added.
    pub duplicate: bool,
    /// `open`, `completed` or `cancelled` (a product retry of a finished request).
    pub status: String,
    /// The traveler.
    pub user_id: Uuid,
    /// `erasure` or `export`.
    pub kind: RequestKind,
    /// What the erasure would do now (erasures only).
    pub preview: Option<ErasurePreview>,
}

/// Who asks, and how.
#[derive(Debug, Clone)]
pub struct Asker<'a> {
    /// Operator or product.
    pub source: Source,
    /// The operator's name, or `product`.
    pub name: &'a str,
    /// The product's request id.
    pub external_id: Option<&'a str>,
}

/// DataRequestOpen: opens a `kind` request for traveler `user_id` as `asker` and enqueues its job
/// (through `enqueuer`, in the same transaction), audited `erasure.requested` /
/// `export.requested`; or returns the request already open (or the one the product's id names).
/// With `dry_run` everything is rolled back and the report says what would happen.
pub async fn open(
    db: &Db,
    enqueuer: &dyn Enqueuer,
    kind: RequestKind,
    user_id: Uuid,
    asker: &Asker<'_>,
    dry_run: bool,
) -> Result<Opened, RequestRefused> {
    let mut tx = db.begin().await?;
    if let Some(ext) = asker.external_id {
        let seen: Option<DataRequest> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
            "SELECT {COLUMNS} FROM data_requests WHERE external_id = $1"
        )))
        .bind(ext)
        .fetch_optional(&mut *tx)
        .await?;
        if let Some(r) = seen {
            if r.user_id != user_id || r.kind != kind.as_str() {
                return Err(RequestRefused::ExternalIdReused(ext.to_owned()));
            }
            return Ok(Opened {
                request_id: Some(r.id),
                job_id: None,
                duplicate: true,
                status: r.status,
                user_id,
                kind,
                preview: None,
            });
        }
    }
    // The account row, locked against a concurrent erasure's delete until this commits.
    let exists: Option<i32> = sqlx::query_scalar("SELECT 1 FROM users WHERE id = $1 FOR SHARE")
        .bind(user_id)
        .fetch_optional(&mut *tx)
        .await?;
    if exists.is_none() {
        let erased: Option<(Uuid, DateTime<Utc>)> = sqlx::query_as(
            "SELECT id, completed_at FROM data_requests
             WHERE user_id = $1 AND kind = 'erasure' AND status = 'completed'
             ORDER BY completed_at DESC LIMIT 1",
        )
        .bind(user_id)
        .fetch_optional(&mut *tx)
        .await?;
        return Err(match erased {
            Some((request, at)) => RequestRefused::AlreadyErased {
                user_id,
                request,
                at: at.format("%Y-%m-%d").to_string(),
                what: match kind {
                    RequestKind::Erasure => "erase",
                    RequestKind::Export => "export",
                },
            },
            None => RequestRefused::UnknownTraveler(user_id),
        });
    }
    let preview = match kind {
        RequestKind::Erasure => Some(erasure_preview(&mut tx, user_id).await?),
        RequestKind::Export => None,
    };
    let inserted: Option<Uuid> = sqlx::query_scalar(
        "INSERT INTO data_requests (kind, user_id, source, requested_by, external_id)
         VALUES ($1, $2, $3, $4, $5)
         ON CONFLICT (user_id, kind) WHERE status = 'open' DO NOTHING
         RETURNING id",
    )
    .bind(kind.as_str())
    .bind(user_id)
    .bind(asker.source.as_str())
    .bind(asker.name)
    .bind(asker.external_id)
    .fetch_optional(&mut *tx)
    .await?;
    // A request already open is being worked: what it would do "now" is not what it will do.
    let preview = if inserted.is_some() { preview } else { None };
    let (request_id, duplicate) = match inserted {
        Some(id) => (id, false),
        None => {
            let id: Uuid = sqlx::query_scalar(
                "SELECT id FROM data_requests WHERE user_id = $1 AND kind = $2 AND status = 'open'",
            )
            .bind(user_id)
            .bind(kind.as_str())
            .fetch_one(&mut *tx)
            .await?;
            (id, true)
        }
    };
    let job = match kind {
        RequestKind::Erasure => {
            NewJob::of(&crate::kinds::account_erasure::AccountErasure { request_id })
        }
        RequestKind::Export => NewJob::of(&crate::kinds::data_export::DataExport { request_id }),
    }
    .map_err(JobError::fatal)?
    .key(job_key(kind, request_id));
    let enqueued = enqueuer
        .enqueue_many(&mut tx, vec![job])
        .await
        .map_err(JobError::from)?;
    let job_id = enqueued[0].id;
    if dry_run {
        tx.rollback().await?;
        return Ok(Opened {
            request_id: duplicate.then_some(request_id),
            job_id: duplicate.then_some(job_id),
            duplicate,
            status: "open".into(),
            user_id,
            kind,
            preview,
        });
    }
    if !duplicate {
        audit::record(
            &mut *tx,
            asker.name,
            match kind {
                RequestKind::Erasure => "erasure.requested",
                RequestKind::Export => "export.requested",
            },
            "data_request",
            Some(&request_id.to_string()),
            &json!({
                "user_id": user_id, "source": asker.source.as_str(), "job_id": job_id,
                "external_id": asker.external_id, "preview": preview,
            }),
        )
        .await?;
    }
    tx.commit().await?;
    Ok(Opened {
        request_id: Some(request_id),
        job_id: Some(job_id),
        duplicate,
        status: "open".into(),
        user_id,
        kind,
        preview,
    })
}

/// DataRequestLoad: request `id`, locked `FOR UPDATE` when `lock`.
pub async fn load(
    conn: &mut PgConnection,
    id: Uuid,
    lock: bool,
) -> Result<Option<DataRequest>, sqlx::Error> {
    let sql = if lock {
        format!("SELECT {COLUMNS} FROM data_requests WHERE id = $1 FOR UPDATE")
    } else {
        format!("SELECT {COLUMNS} FROM data_requests WHERE id = $1")
    };
    sqlx::query_as(sqlx::AssertSqlSafe(sql))
        .bind(id)
        .fetch_optional(conn)
        .await
}

/// A request's job starts here: request `id`, locked on `tx`, if it is still open. A request of
/// another kind, or none, is the job's fatal error (its args are wrong); a finished one is
/// `None` (an earlier run finished it, or an erasure cancelled an export): nothing to do.
pub async fn open_for_job(
    tx: &mut PgConnection,
    id: Uuid,
    kind: RequestKind,
) -> Result<Option<DataRequest>, JobError> {
    let Some(r) = load(tx, id, true).await? else {
        return Err(JobError::fatal(format!("no data request {id}")));
    };
    if r.kind != kind.as_str() {
        return Err(JobError::fatal(format!(
            "data request {id} is an {}, not an {}",
            r.kind,
            kind.as_str()
        )));
    }
    Ok((r.status == "open").then_some(r))
}

/// The code defaults of a request's job: a provider or email outage is retried for about a
/// day (30 attempts, backoff up to an hour) before the job is dead and replayable, inside the
/// 30-day deadline; waiting on money snoozes without using attempts.
pub fn job_defaults() -> crate::KindDefaults {
    crate::KindDefaults {
        max_attempts: 30,
        backoff_base: std::time::Duration::from_secs(30),
        backoff_cap: std::time::Duration::from_secs(3600),
        timeout: std::time::Duration::from_secs(300),
        ..crate::KindDefaults::default()
    }
}

/// DataRequestsOpen: open requests, oldest first (the console and `fleet traveler requests`).
pub async fn list_open(db: &Db, limit: i64) -> Result<Vec<DataRequest>, sqlx::Error> {
    sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT {COLUMNS} FROM data_requests WHERE status = 'open'
         ORDER BY requested_at, id LIMIT $1"
    )))
    .bind(limit)
    .fetch_all(db)
    .await
}

/// DataRequestGauges: per kind (`erasure`, `export`, both always listed), how many requests
/// are open and the age in seconds of the oldest (0 when none), for the metrics snapshot
/// (`fleet_data_requests_open`, `fleet_data_request_oldest_open_seconds`).
pub async fn open_gauges(db: &Db) -> Result<Vec<(String, i64, f64)>, sqlx::Error> {
    sqlx::query_as(
        "SELECT k.kind, count(r.id),
                coalesce(extract(epoch FROM now() - min(r.requested_at)), 0)::float8
         FROM (VALUES ('erasure'), ('export')) AS k(kind)
         LEFT JOIN data_requests r ON r.kind = k.kind AND r.status = 'open'
         GROUP BY k.kind ORDER BY k.kind",
    )
    .fetch_all(db)
    .await
}

/// DataRequestsOfUser: every request of traveler `user_id`, newest first.
pub async fn of_user(db: &Db, user_id: Uuid) -> Result<Vec<DataRequest>, sqlx::Error> {
    sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT {COLUMNS} FROM data_requests WHERE user_id = $1 ORDER BY requested_at DESC, id"
    )))
    .bind(user_id)
    .fetch_all(db)
    .await
}

/// DataRequestWaiting: an open request notes why it is not done (`None`: nothing now).
pub async fn set_waiting(
    conn: impl PgExecutor<'_>,
    id: Uuid,
    waiting_on: Option<&str>,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "UPDATE data_requests SET waiting_on = $2, updated_at = now()
         WHERE id = $1 AND status = 'open' AND waiting_on IS DISTINCT FROM $2",
    )
    .bind(id)
    .bind(waiting_on)
    .execute(conn)
    .await?;
    Ok(())
}

/// DataRequestComplete: an open request is done, with `outcome` (counts only); an export's
/// sealed document goes. Returns whether it moved (false: done before, a re-run).
pub async fn complete(
    conn: impl PgExecutor<'_>,
    id: Uuid,
    outcome: &Value,
) -> Result<bool, sqlx::Error> {
    let r = sqlx::query(
        "UPDATE data_requests SET status = 'completed', completed_at = now(), waiting_on = NULL,
                outcome = $2, document_enc = NULL, encryption_key_version = NULL,
                updated_at = now()
         WHERE id = $1 AND status = 'open'",
    )
    .bind(id)
    .bind(outcome)
    .execute(conn)
    .await?;
    Ok(r.rows_affected() == 1)
}

/// DataRequestCancelExportsOfUser: the traveler's open export is cancelled (their account is
/// being erased: nothing will be left to send). Returns how many.
pub async fn cancel_open_exports_of(
    conn: impl PgExecutor<'_>,
    user_id: Uuid,
) -> Result<u64, sqlx::Error> {
    let r = sqlx::query(
        "UPDATE data_requests SET status = 'cancelled', completed_at = now(), waiting_on = NULL,
                outcome = '{\"superseded_by\": \"erasure\"}', document_enc = NULL,
                encryption_key_version = NULL, updated_at = now()
         WHERE user_id = $1 AND kind = 'export' AND status = 'open'",
    )
    .bind(user_id)
    .execute(conn)
    .await?;
    Ok(r.rows_affected())
}

/// DataRequestStoreDocument: an open export's assembled document, sealed, kept until it is
/// delivered. Only the first one is kept (a re-run delivers the same bytes); returns the
/// stored `(key_version, bytes)`.
pub async fn store_document(
    conn: impl PgExecutor<'_>,
    id: Uuid,
    sealed: &crate::pii::Sealed,
) -> Result<Option<(i32, Vec<u8>)>, sqlx::Error> {
    sqlx::query_as(
        "UPDATE data_requests
         SET document_enc = coalesce(document_enc, $2),
             encryption_key_version = coalesce(encryption_key_version, $3), updated_at = now()
         WHERE id = $1 AND status = 'open'
         RETURNING encryption_key_version, document_enc",
    )
    .bind(id)
    .bind(&sealed.bytes)
    .bind(sealed.key_version)
    .fetch_optional(conn)
    .await
}

/// DataRequestDocument: the sealed document of an open export, if assembled.
pub async fn document(
    conn: impl PgExecutor<'_>,
    id: Uuid,
) -> Result<Option<(i32, Vec<u8>)>, sqlx::Error> {
    let row: Option<(Option<i32>, Option<Vec<u8>>)> = sqlx::query_as(
        "SELECT encryption_key_version, document_enc FROM data_requests
         WHERE id = $1 AND status = 'open'",
    )
    .bind(id)
    .fetch_optional(conn)
    .await?;
    Ok(row.and_then(|(v, b)| Some((v?, b?))))
}

/// UserDelete: deletes user `user_id`'s row, and with it (foreign keys) their profiles, cards,
/// campaigns and outbox; their bookings are detached (the schema refuses unless their
/// personal data is scrubbed and no saga is in flight). The erasure job is the only caller.
/// Returns whether a row went.
pub async fn delete_user(conn: &mut PgConnection, user_id: Uuid) -> Result<bool, sqlx::Error> {
    let r = sqlx::query("DELETE FROM users WHERE id = $1")
        .bind(user_id)
        .execute(conn)
        .await?;
    Ok(r.rows_affected() == 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_kinds_parse_and_name_their_job_key() {
        assert_eq!("erasure".parse::<RequestKind>(), Ok(RequestKind::Erasure));
        assert!("delete"
            .parse::<RequestKind>()
            .unwrap_err()
            .contains("erasure or export"));
        let id = Uuid::nil();
        assert_eq!(
            job_key(RequestKind::Export, id),
            format!("data_request:export:{id}")
        );
    }
}
