-- The campaign scan at 100,000+ due campaigns (issue 12, "Domain scale"). jobs/src/campaign.rs
-- owns these indexes with the table.
--
-- CampaignScanDue walks due campaigns in (next_search_at, id) keyset order, one batch per
-- statement. On the old single-column index the row comparison `(next_search_at, id) > cursor`
-- could only bound next_search_at, so every batch re-read (and re-sorted by id) every due
-- campaign from the cursor's time on: quadratic when many campaigns share a window start (a
-- bulk import, a seeded bench). On (next_search_at, id) the comparison is the index bound and
-- each batch reads only its own rows.
CREATE INDEX campaigns_scan_due_keyset_idx ON campaigns (next_search_at, id) WHERE status = 'active';
DROP INDEX campaigns_scan_due_idx;

-- CampaignExpireEnded (the scan's first step, every tick): live campaigns past their end.
-- Without it every scan read the whole table to find the few that just ended.
CREATE INDEX campaigns_expire_ended_idx ON campaigns (expires_at)
    WHERE status IN ('active', 'paused', 'action_required');

-- Additive for every reader: a binary that predates this migration finds its statements served
-- by these indexes (next_search_at is their first column), so it is safe to roll back over.
