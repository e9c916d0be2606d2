//! `data_export`: sends a traveler everything held about them (GDPR arts. 15, 20), worked
//! from its `data_requests` row ([`crate::data_rights`]). In order, each step safe to repeat:
//!
//! 1. **Assemble once.** The account, traveler profiles (passport numbers decrypted: one
//!    `pii.read` audit row per profile, purpose `data_export`, naming the job), cards (brand,
//!    last four, expiry; never a Stripe id), campaigns and consent, bookings with their refunds
//!    and airline changes, messages and the audit trail of their records, as one JSON document
//!    ([`SCHEMA`], docs/data-export.md). It is sealed (AES-256-GCM, the request's id as
//!    associated data) into the request row in the transaction that writes the audit rows; a
//!    re-run finds it and sends the same bytes.
//! 2. **Deliver once**: an email to the account's address with the document attached
//!    (`data-export/{request}`: the outbox row and Resend's idempotency key), docs/decisions.md
//!    53 for why an attachment and not a link.
//! 3. **Done**: the request is completed (counts and size only) and the sealed document
//!    deleted in one transaction, audited `export.delivered`.

use chrono::{DateTime, NaiveDate, Utc};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use sqlx::PgConnection;
use uuid::Uuid;

use crate::data_rights::RequestKind;
use crate::deps::HasDeps;
use crate::pii::Keyring;
use crate::providers::Attachment;
use crate::{audit, data_rights, notify, Job, JobContext, JobError, KindDefaults};

/// Args: the request (ids only).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DataExport {
    /// `data_requests.id` (kind `export`).
    pub request_id: Uuid,
}

/// The document's `schema` field: its shape is docs/data-export.md's, version 1.
pub const SCHEMA: &str = "parker-flight/data-export/v1";

const SUBJECT: &str = "Your Parker Flight data";
const TEXT: &str = "As you asked, attached is a copy of everything Parker Flight holds about \
you: your account, traveler profiles (including passport details), saved cards (brand, last \
four digits and expiry only), flight searches and your consent to charges, bookings with their \
refunds and schedule changes, the messages we sent you, and a record of what was done with \
your data and why.\n\nThe file is JSON, readable by any text editor and by other services. \
Keep it safe: it contains your passport number.";

impl Job for DataExport {
    const KIND: &'static str = "data_export";

    fn defaults() -> KindDefaults {
        data_rights::job_defaults()
    }

    async fn run(self, ctx: JobContext) -> Result<(), JobError> {
        let request = self.request_id;
        // 1. Assemble once, sealed into the request.
        let keyring = ctx.deps()?.keyring_for(&ctx.db).await?;
        let mut tx = ctx.db.begin().await?;
        let Some(r) = data_rights::open_for_job(&mut tx, request, RequestKind::Export).await?
        else {
            return Ok(()); // delivered by an earlier run, or cancelled by an erasure
        };
        let (version, sealed) = match data_rights::document(&mut *tx, request).await? {
            Some(stored) => stored,
            None => {
                let Some(doc) = assemble(&mut tx, &keyring, &r, ctx.job_id).await? else {
                    let outcome = json!({"account_gone": true});
                    data_rights::complete(&mut *tx, request, &outcome).await?;
                    tx.commit().await?;
                    return Ok(());
                };
                let text = serde_json::to_string_pretty(&doc).map_err(JobError::fatal)?;
                let sealed = keyring.encrypt(request, &text)?;
                data_rights::store_document(&mut *tx, request, &sealed)
                    .await?
                    .ok_or_else(|| JobError::retryable("the request closed meanwhile"))?
            }
        };
        tx.commit().await?;
        let document = keyring.decrypt(request, version, &sealed)?;
        let counts = counts_of(document.expose());

        // 2. Deliver once.
        let attachment = Attachment {
            filename: format!(
                "parker-flight-data-{}.json",
                r.requested_at.format("%Y-%m-%d")
            ),
            content_type: "application/json".into(),
            content: document.expose().as_bytes().to_vec(),
        };
        drop(document);
        let key = format!("data-export/{request}");
        if let Err(e) = notify::send_once_with(
            &ctx.db,
            ctx.deps()?.email()?,
            r.user_id,
            "data-export",
            &key,
            SUBJECT,
            TEXT,
            vec![attachment],
        )
        .await
        {
            data_rights::set_waiting(&ctx.db, request, Some("email_unavailable")).await?;
            return Err(e);
        }

        // 3. Done: the sealed copy goes.
        let mut tx = ctx.db.begin().await?;
        let outcome = json!({"bytes": sealed.len(), "counts": counts});
        if data_rights::complete(&mut *tx, request, &outcome).await? {
            audit::record(
                &mut *tx,
                "fleet",
                "export.delivered",
                "data_request",
                Some(&request.to_string()),
                &json!({
                    "user_id": r.user_id, "job_id": ctx.job_id, "source": r.source,
                    "requested_by": r.requested_by, "outcome": outcome,
                }),
            )
            .await?;
        }
        tx.commit().await?;
        tracing::info!(data_request.id = %request, job.id = ctx.job_id, "data export delivered");
        Ok(())
    }
}

/// How many of each record the document holds (for the request's outcome; no values).
fn counts_of(text: &str) -> Value {
    let Ok(doc) = serde_json::from_str::<Value>(text) else {
        return json!({});
    };
    let n = |k: &str| doc[k].as_array().map_or(0, Vec::len);
    json!({
        "traveler_profiles": n("traveler_profiles"), "payment_methods": n("payment_methods"),
        "campaigns": n("campaigns"), "bookings": n("bookings"),
        "notifications": n("notifications"), "activity": n("activity"),
    })
}

#[derive(sqlx::FromRow)]
struct ProfileRow {
    id: Uuid,
    full_name: String,
    date_of_birth: Option<NaiveDate>,
    gender: Option<String>,
    email: Option<String>,
    phone: Option<String>,
    passport_number_enc: Option<Vec<u8>>,
    encryption_key_version: Option<i32>,
    passport_country: Option<String>,
    passport_expiry: Option<NaiveDate>,
    created_at: DateTime<Utc>,
    updated_at: DateTime<Utc>,
}

/// The export document of request `r` (docs/data-export.md), read on `tx`; each passport
/// opened is audited on `tx`. `None`: the account is gone.
pub async fn assemble(
    tx: &mut PgConnection,
    keyring: &Keyring,
    r: &data_rights::DataRequest,
    job_id: i64,
) -> Result<Option<Value>, JobError> {
    let user = r.user_id;
    let account: Option<Value> = sqlx::query_scalar(
        "SELECT jsonb_build_object('id', id, 'email', email, 'phone', phone,
                'notification_preferences', notification_preferences, 'created_at', created_at)
         FROM users WHERE id = $1",
    )
    .bind(user)
    .fetch_optional(&mut *tx)
    .await?;
    let Some(account) = account else {
        return Ok(None);
    };
    let rows: Vec<ProfileRow> = sqlx::query_as(
        "SELECT id, full_name, date_of_birth, gender::text AS gender, email, phone,
                passport_number_enc, encryption_key_version,
                passport_country::text AS passport_country, passport_expiry, created_at,
                updated_at
         FROM traveler_profiles WHERE user_id = $1 ORDER BY created_at, id",
    )
    .bind(user)
    .fetch_all(&mut *tx)
    .await?;
    let mut profiles = Vec::with_capacity(rows.len());
    for p in rows {
        let passport_number = match (&p.passport_number_enc, p.encryption_key_version) {
            (Some(bytes), Some(version)) => {
                let number = keyring.decrypt(p.id, version, bytes)?;
                let read = audit::PiiRead {
                    purpose: "data_export",
                    job_id: Some(job_id),
                    shown_on: ("traveler_profile", p.id),
                };
                audit::pii_read(&mut *tx, p.id, read).await?;
                Some(number.expose().to_owned())
            }
            _ => None,
        };
        profiles.push(json!({
            "id": p.id, "full_name": p.full_name, "date_of_birth": p.date_of_birth,
            "gender": p.gender, "email": p.email, "phone": p.phone,
            "passport_number": passport_number, "passport_country": p.passport_country,
            "passport_expiry": p.passport_expiry, "created_at": p.created_at,
            "updated_at": p.updated_at,
        }));
    }
    let (cards, campaigns, bookings, notifications, activity): (Value, Value, Value, Value, Value) =
        sqlx::query_as(EXPORT_SQL)
            .bind(user)
            .bind(r.id.to_string())
            .fetch_one(&mut *tx)
            .await?;
    let consent: Vec<Value> = campaigns
        .as_array()
        .into_iter()
        .flatten()
        .map(|c| json!({"campaign_id": c["id"], "consent_at": c["consent_at"]}))
        .collect();
    Ok(Some(json!({
        "schema": SCHEMA,
        "request_id": r.id,
        "requested_at": r.requested_at,
        "generated_at": Utc::now(),
        "account": account,
        "traveler_profiles": profiles,
        "payment_methods": cards,
        "campaigns": campaigns,
        "consent": consent,
        "bookings": bookings,
        "notifications": notifications,
        "activity": activity,
    })))
}

/// Everything but the account and the profiles, as five JSON arrays, for user `$1` (`$2`: the
/// request, whose own trail is part of the activity).
const EXPORT_SQL: &str = "
WITH c AS (SELECT * FROM campaigns WHERE user_id = $1),
     b AS (SELECT b.* FROM bookings b JOIN c ON c.id = b.campaign_id),
     mine(resource_type, resource_id) AS (
         SELECT 'campaign', id::text FROM c
         UNION ALL SELECT 'booking', id::text FROM b
         UNION ALL SELECT 'traveler_profile', id::text FROM traveler_profiles WHERE user_id = $1
         UNION ALL SELECT 'payment_method', id::text FROM payment_methods WHERE user_id = $1
         UNION ALL SELECT 'data_request', id::text FROM data_requests WHERE user_id = $1
         UNION ALL SELECT 'data_request', $2)
SELECT
  (SELECT coalesce(jsonb_agg(jsonb_build_object(
       'id', id, 'brand', brand, 'last4', last4, 'exp_month', exp_month, 'exp_year', exp_year,
       'is_default', is_default, 'created_at', created_at, 'detached_at', detached_at)
       ORDER BY created_at, id), '[]'::jsonb)
   FROM payment_methods WHERE user_id = $1),
  (SELECT coalesce(jsonb_agg(jsonb_build_object(
       'id', id, 'traveler_profile_id', traveler_profile_id,
       'payment_method_id', payment_method_id, 'origin', origin, 'destination', destination,
       'departure_date_start', departure_date_start, 'departure_date_end', departure_date_end,
       'return_date_start', return_date_start, 'return_date_end', return_date_end,
       'max_price', max_price::text, 'currency', currency, 'cabin_class', cabin_class,
       'status', status, 'consent_at', consent_at, 'expires_at', expires_at,
       'created_at', created_at, 'updated_at', updated_at)
       ORDER BY created_at, id), '[]'::jsonb)
   FROM c),
  (SELECT coalesce(jsonb_agg(jsonb_build_object(
       'id', b.id, 'campaign_id', b.campaign_id, 'status', b.status,
       'total_amount', b.total_amount::text, 'currency', b.currency, 'pnr', b.pnr,
       'flight_details', b.flight_details, 'failure_code', b.failure_code,
       'created_at', b.created_at, 'updated_at', b.updated_at,
       'refunds', (SELECT coalesce(jsonb_agg(jsonb_build_object(
            'id', r.id, 'amount', r.amount::text, 'currency', r.currency, 'reason', r.reason,
            'status', r.status, 'created_at', r.created_at, 'updated_at', r.updated_at)
            ORDER BY r.created_at, r.id), '[]'::jsonb)
           FROM refunds r WHERE r.booking_id = b.id),
       'airline_changes', (SELECT coalesce(jsonb_agg(jsonb_build_object(
            'id', a.id, 'status', a.status, 'legs_before', a.removed, 'legs_after', a.added,
            'detected_at', a.detected_at, 'respond_by', a.respond_by,
            'decided_by', CASE WHEN a.decided_by IS NULL THEN NULL
                               WHEN a.decided_by IN ('fleet:deadline', 'duffel')
                               THEN a.decided_by ELSE 'operator' END)
            ORDER BY a.detected_at, a.id), '[]'::jsonb)
           FROM airline_changes a WHERE a.booking_id = b.id))
       ORDER BY b.created_at, b.id), '[]'::jsonb)
   FROM b),
  (SELECT coalesce(jsonb_agg(jsonb_build_object(
       'kind', kind, 'channel', channel, 'created_at', created_at, 'sent_at', sent_at,
       'failed_at', failed_at, 'failure_code', failure_code)
       ORDER BY created_at, id), '[]'::jsonb)
   FROM notifications WHERE user_id = $1),
  (SELECT coalesce(jsonb_agg(jsonb_build_object(
       'at', l.created_at, 'action', l.action, 'by',
       CASE WHEN l.actor LIKE 'fleet%' OR l.actor = 'product' THEN l.actor ELSE 'operator' END,
       'resource_type', l.resource_type, 'resource_id', l.resource_id,
       'reason', l.metadata->>'reason', 'purpose', l.metadata->>'purpose')
       ORDER BY l.created_at, l.id), '[]'::jsonb)
   FROM audit_log l
   WHERE (l.resource_type, l.resource_id) IN (SELECT DISTINCT resource_type, resource_id FROM mine))";
