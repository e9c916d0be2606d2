//! The domain's invariants (docs/domain.md §6) as queries: each returns the ids that violate it.
//! `fleet check` runs these beside the queue's own checks and exits 1 on any violation.
//! Violations name ids only, never personal data.

use serde::Serialize;
use sqlx::PgConnection;

/// One violated invariant and the rows that break it.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Violation {
    /// The invariant, as docs/domain.md §6 words it.
    pub invariant: &'static str,
    /// Offending row ids (at most 100).
    pub ids: Vec<String>,
}

/// (invariant, query returning offending ids as text).
const CHECKS: &[(&str, &str)] = &[
    (
        "a campaign has at most one booking",
        "SELECT campaign_id::text FROM bookings WHERE campaign_id IS NOT NULL AND status <> 'failed'
         GROUP BY campaign_id HAVING count(*) > 1 LIMIT 100",
    ),
    (
        "no charge exceeds the campaign's max_price",
        "SELECT b.id::text FROM bookings b JOIN campaigns c ON c.id = b.campaign_id
         WHERE b.authorized_at IS NOT NULL AND b.total_amount > c.max_price LIMIT 100",
    ),
    (
        "every captured PaymentIntent belongs to a ticketed booking or has a refund",
        "SELECT b.id::text FROM bookings b
         WHERE b.captured_at IS NOT NULL AND b.status <> 'ticketed'
           AND NOT EXISTS (SELECT 1 FROM refunds r WHERE r.booking_id = b.id
                           AND r.status IN ('pending', 'requires_action', 'succeeded'))
         LIMIT 100",
    ),
    (
        "every uncaptured hold on a failed booking is cancelled",
        "SELECT id::text FROM bookings
         WHERE status IN ('failed', 'cancelled') AND authorized_at IS NOT NULL
           AND captured_at IS NULL AND canceled_at IS NULL LIMIT 100",
    ),
    (
        "an erased traveler has no personal data left",
        "SELECT r.user_id::text FROM data_requests r
         WHERE r.kind = 'erasure' AND r.status = 'completed'
           AND (EXISTS (SELECT 1 FROM users u WHERE u.id = r.user_id)
                OR EXISTS (SELECT 1 FROM traveler_profiles p WHERE p.user_id = r.user_id)
                OR EXISTS (SELECT 1 FROM payment_methods m WHERE m.user_id = r.user_id)
                OR EXISTS (SELECT 1 FROM campaigns c WHERE c.user_id = r.user_id)
                OR EXISTS (SELECT 1 FROM notifications n WHERE n.user_id = r.user_id)
                OR EXISTS (SELECT 1 FROM data_requests e WHERE e.user_id = r.user_id
                           AND e.document_enc IS NOT NULL))
         UNION ALL
         SELECT 'booking ' || b.id::text FROM bookings b
         WHERE b.campaign_id IS NULL AND (b.pnr IS NOT NULL OR b.flight_details IS NOT NULL)
         UNION ALL
         SELECT 'airline_change ' || a.id FROM airline_changes a JOIN bookings b ON b.id = a.booking_id
         WHERE b.campaign_id IS NULL AND (a.removed IS NOT NULL OR a.added IS NOT NULL)
         LIMIT 100",
    ),
    (
        "no email is sent twice for the same dedupe key",
        "SELECT dedupe_key FROM notifications WHERE sent_at IS NOT NULL
         GROUP BY dedupe_key HAVING count(*) > 1 LIMIT 100",
    ),
];

/// Runs every domain check.
pub async fn check(conn: &mut PgConnection) -> Result<Vec<Violation>, sqlx::Error> {
    let mut out = Vec::new();
    for (invariant, sql) in CHECKS {
        let ids: Vec<String> = sqlx::query_scalar(*sql).fetch_all(&mut *conn).await?;
        if !ids.is_empty() {
            out.push(Violation { invariant, ids });
        }
    }
    Ok(out)
}
