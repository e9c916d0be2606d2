-- Parker Flight's domain tables (BRIEF §2). `audit_log` lives in 20261121000002.
--
-- What the database enforces here: value domains (status lists, ISO/IATA codes, money > 0,
-- card expiry), ownership (a campaign's card and traveler profile belong to the campaign's
-- user), the booking saga's step order (§4: hold before order, order before capture; a failed
-- booking holds no money), at most one live booking per campaign, no booking above the
-- campaign's max_price or in another currency, and at most one email per dedupe key.
--
-- Deletion and GDPR erasure. Deleting a `users` row erases the person:
--   users ──CASCADE──> traveler_profiles, payment_methods, campaigns, notifications
--   campaigns ──SET NULL──> bookings.campaign_id   (the booking is detached, not deleted)
-- Bookings and refunds are accounting records of real charges, kept for their legal retention
-- period (GDPR art. 17(3)(b)); once detached they carry no personal data. The database makes
-- the erasure refuse to run while it would lose money or leave PII behind:
--   * a booking still in flight (pending / authorized) cannot be detached, so `DELETE FROM
--     users` fails until its saga has finished;
--   * a detached booking must have no pnr and no flight_details, so the erasure job first
--     scrubs those on the user's bookings, then deletes the user, then writes an audit row.
-- Removing one card or one traveler profile sets the reference on the user's campaigns to
-- NULL (ON DELETE SET NULL (col), PostgreSQL 15); the saga's step 1 checks "card present"
-- and moves the campaign to action_required. (A CHECK "active ⇒ card present" would make
-- the outcome of deleting a user depend on the firing order of the cascades, so there is none.)
--
-- Timestamps are timestamptz; updated_at is set by the application (no triggers besides the
-- max-price guard on bookings).

-- ─── users ────────────────────────────────────────────────────────────────────────────────
CREATE TABLE users (
    id         uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    email      text NOT NULL CHECK (length(email) BETWEEN 3 AND 320 AND position('@' IN email) > 1),
    created_at timestamptz NOT NULL DEFAULT now()
);

-- One account per address, whatever its case.
CREATE UNIQUE INDEX users_email_lower_key ON users (lower(email));

-- ─── traveler_profiles ────────────────────────────────────────────────────────────────────
-- The passport number is never stored in plaintext: passport_number_enc is AES-256-GCM
-- (jobs::pii: nonce(12) || ciphertext || tag(16), the row id as associated data) and
-- encryption_key_version names the FLEET_PII_KEYS key that sealed every *_enc column of the
-- row. The rotation backfill walks rows by id and re-seals those below the newest version.
-- The retention purge erases a profile by deleting the row.
CREATE TABLE traveler_profiles (
    id                          uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    -- Personal data of the user: goes with the user.
    user_id                     uuid NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    full_name                   text NOT NULL CHECK (length(full_name) BETWEEN 1 AND 200),
    date_of_birth               date CHECK (date_of_birth >= DATE '1900-01-01'),
    gender                      char(1) CHECK (gender IN ('M', 'F', 'X')),
    email                       text CHECK (length(email) BETWEEN 3 AND 320 AND position('@' IN email) > 1),
    -- E.164, as Duffel requires for passengers.
    phone                       text CHECK (phone ~ '^\+[1-9][0-9]{6,14}$'),
    passport_number_enc         bytea CHECK (octet_length(passport_number_enc) > 12 + 16),
    -- ISO 3166-1 alpha-2.
    passport_country            char(2) CHECK (passport_country ~ '^[A-Z]{2}$'),
    passport_expiry             date,
    encryption_key_version      integer CHECK (encryption_key_version >= 1),
    -- 0..100, recomputed by the completeness backfill.
    profile_completeness_score  integer NOT NULL DEFAULT 0
                                CHECK (profile_completeness_score BETWEEN 0 AND 100),
    created_at                  timestamptz NOT NULL DEFAULT now(),
    updated_at                  timestamptz NOT NULL DEFAULT now(),
    -- Ciphertext is unreadable without knowing which key sealed it.
    CONSTRAINT traveler_profiles_ciphertext_has_key_version
        CHECK (passport_number_enc IS NULL OR encryption_key_version IS NOT NULL),
    -- Target of campaigns' (user_id, traveler_profile_id) ownership key; also serves
    -- "profiles of a user" and the cascade from users.
    CONSTRAINT traveler_profiles_user_id_id_key UNIQUE (user_id, id)
);

-- ─── payment_methods ──────────────────────────────────────────────────────────────────────
-- Stripe tokens only (PCI SAQ-A): the id patterns admit Stripe ids, never a card number.
CREATE TABLE payment_methods (
    id                        uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    -- The user's cards: go with the user (the Stripe customer is deleted by the erasure job).
    user_id                   uuid NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    stripe_customer_id        text NOT NULL CHECK (stripe_customer_id ~ '^cus_[A-Za-z0-9_]+$'),
    stripe_payment_method_id  text NOT NULL UNIQUE
                              CHECK (stripe_payment_method_id ~ '^pm_[A-Za-z0-9_]+$'),
    brand                     text CHECK (length(brand) BETWEEN 1 AND 32),
    last4                     char(4) CHECK (last4 ~ '^[0-9]{4}$'),
    exp_month                 smallint NOT NULL CHECK (exp_month BETWEEN 1 AND 12),
    exp_year                  smallint NOT NULL CHECK (exp_year BETWEEN 2000 AND 2200),
    is_default                boolean NOT NULL DEFAULT false,
    created_at                timestamptz NOT NULL DEFAULT now(),
    -- Target of campaigns' (user_id, payment_method_id) ownership key; also serves the
    -- cascade from users.
    CONSTRAINT payment_methods_user_id_id_key UNIQUE (user_id, id)
);

-- At most one default card per user.
CREATE UNIQUE INDEX payment_methods_one_default_per_user_idx
    ON payment_methods (user_id) WHERE is_default;

-- CardExpiryDue (daily reminder): cards expiring by a given month.
CREATE INDEX payment_methods_expiry_idx ON payment_methods (exp_year, exp_month);

-- ─── campaigns ────────────────────────────────────────────────────────────────────────────
CREATE TABLE campaigns (
    id                    uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    -- The user's campaigns: go with the user (their bookings are detached, see the header).
    user_id               uuid NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    -- NULL once the profile / card is removed; the saga then stops at step 1.
    traveler_profile_id   uuid,
    payment_method_id     uuid,
    -- IATA airport or city codes.
    origin                char(3) NOT NULL CHECK (origin ~ '^[A-Z]{3}$'),
    destination           char(3) NOT NULL CHECK (destination ~ '^[A-Z]{3}$'),
    departure_date_start  date NOT NULL,
    departure_date_end    date NOT NULL,
    -- Both NULL for a one-way trip.
    return_date_start     date,
    return_date_end       date,
    max_price             numeric(10, 2) NOT NULL CHECK (max_price > 0),
    -- ISO 4217.
    currency              char(3) NOT NULL CHECK (currency ~ '^[A-Z]{3}$'),
    -- Duffel's cabin classes.
    cabin_class           text NOT NULL DEFAULT 'economy'
                          CHECK (cabin_class IN ('economy', 'premium_economy', 'business', 'first')),
    status                text NOT NULL DEFAULT 'active'
                          CHECK (status IN ('active', 'paused', 'booked', 'completed', 'cancelled',
                                            'expired', 'action_required')),
    -- When the user agreed to off-session charges (SCA/PSD2); required before any charge.
    consent_at            timestamptz,
    -- When the scan next enqueues a search; required while active.
    next_search_at        timestamptz,
    -- End of the campaign: at most 12 months (366 days) after creation.
    expires_at            timestamptz NOT NULL,
    created_at            timestamptz NOT NULL DEFAULT now(),
    updated_at            timestamptz NOT NULL DEFAULT now(),
    -- The profile and card must be the campaign owner's: a campaign can never charge another
    -- user's card. Removing one sets only that column to NULL.
    CONSTRAINT campaigns_traveler_profile_of_user_fkey
        FOREIGN KEY (user_id, traveler_profile_id) REFERENCES traveler_profiles (user_id, id)
        ON DELETE SET NULL (traveler_profile_id),
    CONSTRAINT campaigns_payment_method_of_user_fkey
        FOREIGN KEY (user_id, payment_method_id) REFERENCES payment_methods (user_id, id)
        ON DELETE SET NULL (payment_method_id),
    CONSTRAINT campaigns_route_differs CHECK (origin <> destination),
    CONSTRAINT campaigns_departure_window_ordered
        CHECK (departure_date_end >= departure_date_start),
    CONSTRAINT campaigns_return_window_complete
        CHECK ((return_date_start IS NULL) = (return_date_end IS NULL)),
    CONSTRAINT campaigns_return_window_ordered
        CHECK (return_date_end >= return_date_start AND return_date_start >= departure_date_start),
    CONSTRAINT campaigns_at_most_twelve_months
        CHECK (expires_at > created_at AND expires_at - created_at <= interval '366 days'),
    -- An active campaign may be charged at any moment: it needs consent, and a next search
    -- time or the scan would never pick it up.
    CONSTRAINT campaigns_active_has_consent CHECK (status <> 'active' OR consent_at IS NOT NULL),
    CONSTRAINT campaigns_active_has_next_search
        CHECK (status <> 'active' OR next_search_at IS NOT NULL),
    -- Target of bookings' (campaign_id, currency) key: a booking is in its campaign's currency.
    CONSTRAINT campaigns_id_currency_key UNIQUE (id, currency)
);

-- CampaignScanDue: status = 'active' AND next_search_at <= now(), oldest first.
CREATE INDEX campaigns_scan_due_idx ON campaigns (next_search_at) WHERE status = 'active';

-- The user's campaigns (and the cascade from users).
CREATE INDEX campaigns_user_id_idx ON campaigns (user_id);

-- Campaigns charging a card (card-expiry reminder; SET NULL when the card is removed).
CREATE INDEX campaigns_payment_method_id_idx ON campaigns (payment_method_id)
    WHERE payment_method_id IS NOT NULL;

-- Campaigns of a profile (retention purge; SET NULL when the profile is removed).
CREATE INDEX campaigns_traveler_profile_id_idx ON campaigns (traveler_profile_id)
    WHERE traveler_profile_id IS NOT NULL;

-- ─── bookings ─────────────────────────────────────────────────────────────────────────────
-- One row per booking attempt of the saga (BRIEF §4). Each step records its outcome here
-- before the next step runs, so a re-run after a crash resumes and never repeats a step.
--   pending     row created (its id keys the Stripe idempotency keys booking:{id}:…)
--   authorized  PaymentIntent is requires_capture: a hold exists
--   ticketed    Duffel order created and the hold captured
--   failed      no trip and no money held or taken (hold voided or never placed)
--   cancelled   order cancelled after it was created
--   refunded    captured money refunded
CREATE TABLE bookings (
    id                        uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    -- NULL only once the campaign's user was erased (see the header and
    -- bookings_detached_is_final_and_scrubbed).
    campaign_id               uuid,
    duffel_offer_id           text NOT NULL CHECK (duffel_offer_id ~ '^off_[A-Za-z0-9_]+$'),
    -- Set when the order exists (POST /air/orders answered, or found by reconciliation).
    duffel_order_id           text UNIQUE CHECK (duffel_order_id ~ '^ord_[A-Za-z0-9_]+$'),
    -- Set as soon as Stripe returns the PaymentIntent (step 3).
    stripe_payment_intent_id  text UNIQUE CHECK (stripe_payment_intent_id ~ '^pi_[A-Za-z0-9_]+$'),
    -- Airline booking reference; personal data, scrubbed on erasure.
    pnr                       text CHECK (length(pnr) BETWEEN 1 AND 16),
    -- The offer total = the amount held and charged; never above the campaign's max_price
    -- (trigger bookings_within_max_price).
    total_amount              numeric(10, 2) NOT NULL CHECK (total_amount > 0),
    currency                  char(3) NOT NULL CHECK (currency ~ '^[A-Z]{3}$'),
    status                    text NOT NULL DEFAULT 'pending'
                              CHECK (status IN ('pending', 'authorized', 'ticketed', 'failed',
                                                'cancelled', 'refunded')),
    -- Itinerary for the confirmation email; personal data, scrubbed on erasure.
    flight_details            jsonb CHECK (jsonb_typeof(flight_details) = 'object'),

    -- Step 2: the offer was re-read and is still available within max_price.
    offer_checked_at          timestamptz,
    -- Step 3: last PaymentIntent status seen (API response or webhook).
    payment_intent_status     text CHECK (payment_intent_status IN (
                                  'requires_payment_method', 'requires_confirmation',
                                  'requires_action', 'processing', 'requires_capture',
                                  'succeeded', 'canceled')),
    -- Step 3: the PaymentIntent reached requires_capture — a hold on the card exists from here.
    authorized_at             timestamptz,
    -- Step 4: set BEFORE POST /air/orders and committed. Duffel has no idempotency key, so a
    -- re-run that finds this set (and no duffel_order_id) reconciles, never re-POSTs.
    order_attempted_at        timestamptz,
    -- Step 4: the order exists (set together with duffel_order_id).
    ordered_at                timestamptz,
    -- Step 5: the hold was captured (money taken).
    captured_at               timestamptz,
    -- Step 6: the hold was cancelled (voided) at Stripe.
    canceled_at               timestamptz,
    -- Why the attempt failed, a provider or saga code, never free text with PII: e.g.
    -- offer_no_longer_available, price_above_max, card_declined, authentication_required,
    -- price_changed, insufficient_balance.
    failure_code              text CHECK (failure_code ~ '^[a-z0-9_.]{1,100}$'),
    created_at                timestamptz NOT NULL DEFAULT now(),
    updated_at                timestamptz NOT NULL DEFAULT now(),

    -- A booking is in its campaign's currency; erasing the campaign detaches the booking.
    CONSTRAINT bookings_campaign_currency_fkey
        FOREIGN KEY (campaign_id, currency) REFERENCES campaigns (id, currency)
        ON DELETE SET NULL (campaign_id),
    -- Detaching happens only when the saga is over and the personal data is gone.
    CONSTRAINT bookings_detached_is_final_and_scrubbed
        CHECK (campaign_id IS NOT NULL
               OR (status IN ('ticketed', 'failed', 'cancelled', 'refunded')
                   AND pnr IS NULL AND flight_details IS NULL)),
    -- The saga's order: hold (3) before order (4) before capture (5).
    CONSTRAINT bookings_hold_has_payment_intent
        CHECK (authorized_at IS NULL OR stripe_payment_intent_id IS NOT NULL),
    CONSTRAINT bookings_order_only_after_hold
        CHECK (order_attempted_at IS NULL OR authorized_at IS NOT NULL),
    CONSTRAINT bookings_order_id_iff_ordered
        CHECK ((duffel_order_id IS NULL) = (ordered_at IS NULL)),
    CONSTRAINT bookings_ordered_only_after_attempt
        CHECK (ordered_at IS NULL OR order_attempted_at IS NOT NULL),
    CONSTRAINT bookings_capture_only_after_order
        CHECK (captured_at IS NULL OR ordered_at IS NOT NULL),
    -- A PaymentIntent is either captured or cancelled, never both.
    CONSTRAINT bookings_captured_xor_canceled
        CHECK (captured_at IS NULL OR canceled_at IS NULL),
    -- States and the facts they stand for.
    CONSTRAINT bookings_authorized_has_hold
        CHECK (status <> 'authorized' OR authorized_at IS NOT NULL),
    CONSTRAINT bookings_ticketed_is_ordered_and_captured
        CHECK (status <> 'ticketed' OR (ordered_at IS NOT NULL AND captured_at IS NOT NULL)),
    CONSTRAINT bookings_refunded_was_captured
        CHECK (status <> 'refunded' OR captured_at IS NOT NULL),
    -- Captured money belongs to a ticketed booking, or one being cancelled/refunded (§6).
    CONSTRAINT bookings_captured_is_not_pending_or_failed
        CHECK (captured_at IS NULL OR status IN ('ticketed', 'cancelled', 'refunded')),
    -- Every uncaptured hold on a failed or cancelled booking is voided (§6).
    CONSTRAINT bookings_over_holds_nothing
        CHECK (status NOT IN ('failed', 'cancelled')
               OR captured_at IS NOT NULL OR authorized_at IS NULL OR canceled_at IS NOT NULL),
    -- A failed attempt never created an order (an order that fails later is cancelled).
    CONSTRAINT bookings_failed_has_no_order CHECK (status <> 'failed' OR ordered_at IS NULL),
    -- Target of refunds' (booking_id, currency) key.
    CONSTRAINT bookings_id_currency_key UNIQUE (id, currency)
);

-- At most one booking per campaign that is not a definite failure: one trip, one live charge,
-- ever. Failed attempts (no order, hold voided) stay as history and the campaign searches
-- again (§4 step 6), which a plain UNIQUE (campaign_id) would forbid.
CREATE UNIQUE INDEX bookings_one_per_campaign_idx
    ON bookings (campaign_id) WHERE status <> 'failed';

-- BookingInFlight (sweeper and invariant checks): sagas not yet finished, oldest first.
CREATE INDEX bookings_in_flight_idx
    ON bookings (created_at) WHERE status IN ('pending', 'authorized');

-- No booking above its campaign's max_price (§6), checked whenever a booking's amount or
-- campaign is written. The saga holds the campaign row locked while it creates the booking,
-- so the limit cannot change underneath it.
CREATE FUNCTION bookings_within_max_price() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
    limit_price numeric(10, 2);
BEGIN
    IF NEW.campaign_id IS NULL THEN
        RETURN NEW;
    END IF;
    SELECT max_price INTO limit_price FROM campaigns WHERE id = NEW.campaign_id;
    IF limit_price IS NOT NULL AND NEW.total_amount > limit_price THEN
        RAISE EXCEPTION 'booking % total_amount exceeds its campaign''s max_price', NEW.id
            USING ERRCODE = 'check_violation',
                  CONSTRAINT = 'bookings_within_max_price';
    END IF;
    RETURN NEW;
END
$$;

CREATE TRIGGER bookings_within_max_price
    BEFORE INSERT OR UPDATE OF campaign_id, total_amount ON bookings
    FOR EACH ROW EXECUTE FUNCTION bookings_within_max_price();

-- ─── refunds ──────────────────────────────────────────────────────────────────────────────
CREATE TABLE refunds (
    id                uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    -- Refunds are accounting records of their booking: a booking with refunds cannot be
    -- deleted (bookings are only detached by erasure; see the header).
    booking_id        uuid NOT NULL,
    -- Set when Stripe returns the refund; the compensation job may record its intent first.
    stripe_refund_id  text UNIQUE CHECK (stripe_refund_id ~ '^(re|pyr)_[A-Za-z0-9_]+$'),
    amount            numeric(10, 2) NOT NULL CHECK (amount > 0),
    currency          char(3) NOT NULL CHECK (currency ~ '^[A-Z]{3}$'),
    -- A code, never free text with PII: e.g. order_failed, order_cancelled, operator.
    reason            text NOT NULL CHECK (reason ~ '^[a-z0-9_.]{1,100}$'),
    -- Stripe's refund statuses.
    status            text NOT NULL DEFAULT 'pending'
                      CHECK (status IN ('pending', 'requires_action', 'succeeded', 'failed',
                                        'canceled')),
    created_at        timestamptz NOT NULL DEFAULT now(),
    updated_at        timestamptz NOT NULL DEFAULT now(),
    -- A refund is in its booking's currency.
    CONSTRAINT refunds_booking_currency_fkey
        FOREIGN KEY (booking_id, currency) REFERENCES bookings (id, currency) ON DELETE RESTRICT
);

CREATE INDEX refunds_booking_id_idx ON refunds (booking_id);

-- ─── notifications ────────────────────────────────────────────────────────────────────────
-- Outbox of emails. The row is claimed (INSERT … ON CONFLICT (dedupe_key) DO NOTHING) before
-- sending with Idempotency-Key = dedupe_key, and marked sent after: no email twice per key.
-- No address or content here: the user row holds the address.
CREATE TABLE notifications (
    id                   uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    -- The user's mail history: goes with the user.
    user_id              uuid NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    kind                 text NOT NULL CHECK (kind ~ '^[a-z0-9_.-]{1,100}$'),
    -- e.g. card-expiry/{pm_id}/{yyyy-mm}, booking-confirmed/{booking_id}; ids only, no PII.
    dedupe_key           text NOT NULL UNIQUE CHECK (length(dedupe_key) BETWEEN 1 AND 512),
    provider_message_id  text CHECK (length(provider_message_id) BETWEEN 1 AND 200),
    created_at           timestamptz NOT NULL DEFAULT now(),
    sent_at              timestamptz,
    CONSTRAINT notifications_sent_has_message_id
        CHECK ((sent_at IS NULL) = (provider_message_id IS NULL))
);

CREATE INDEX notifications_user_id_idx ON notifications (user_id);

-- ─── webhook_events ───────────────────────────────────────────────────────────────────────
-- Dedupe of provider webhooks (delivered at least once, unordered). No payload is stored:
-- provider objects may carry PII; the handler re-reads what it needs by id.
CREATE TABLE webhook_events (
    provider      text NOT NULL CHECK (provider IN ('stripe', 'duffel')),
    event_id      text NOT NULL CHECK (length(event_id) BETWEEN 1 AND 255),
    type          text NOT NULL CHECK (length(type) BETWEEN 1 AND 255),
    received_at   timestamptz NOT NULL DEFAULT now(),
    processed_at  timestamptz,
    PRIMARY KEY (provider, event_id),
    CONSTRAINT webhook_events_processed_after_received
        CHECK (processed_at IS NULL OR processed_at >= received_at)
);

-- WebhookEventPurge (retention): oldest first.
CREATE INDEX webhook_events_received_at_idx ON webhook_events (received_at);

-- WebhookEventUnprocessed: events received but not handled yet.
CREATE INDEX webhook_events_unprocessed_idx
    ON webhook_events (received_at) WHERE processed_at IS NULL;
