-- Airline-initiated changes (issue 20): the airline moved a flight of a booked order. Duffel
-- detects it (`order.airline_initiated_change_detected`), the `airline_change` job records it
-- here with the legs before and after, refreshes the booking's itinerary and tells the
-- traveler once; an operator accepts it or cancels and refunds before `respond_by`, else the
-- `airline_change_action` job accepts it at the deadline (docs/decisions.md 50).
-- Owned by jobs/src/airline_change.rs.
CREATE TABLE airline_changes (
    -- Duffel's id.
    id                   text PRIMARY KEY CHECK (id ~ '^aic_[A-Za-z0-9_]+$'),
    booking_id           uuid NOT NULL REFERENCES bookings (id),
    order_id             text NOT NULL CHECK (order_id ~ '^ord_[A-Za-z0-9_]+$'),
    -- The legs before and after (origin, destination, local departure and arrival, segment
    -- count: the shape of bookings.flight_details' slices). Personal data (a traveler's
    -- itinerary): set to NULL on erasure, like flight_details.
    removed              jsonb CHECK (jsonb_typeof(removed) = 'array'),
    added                jsonb CHECK (jsonb_typeof(added) = 'array'),
    -- What Duffel lets us do through the API (accept, cancel, change, update).
    available_actions    text[] NOT NULL DEFAULT '{}',
    -- open until someone acts; then Duffel's action_taken.
    status               text NOT NULL DEFAULT 'open'
                         CHECK (status IN ('open', 'accepted', 'cancelled', 'changed')),
    -- Who decided: an operator's name, `fleet:deadline` (accepted by default), or `duffel`
    -- (found already actioned at Duffel, e.g. in its dashboard).
    decided_by           text CHECK (length(decided_by) BETWEEN 1 AND 200),
    -- The action asked for, recorded before the call: Duffel has no idempotency key, so a
    -- re-run that finds it set lists the order's changes before acting again.
    action_requested     text CHECK (action_requested IN ('accept', 'cancel')),
    action_requested_at  timestamptz,
    action_taken_at      timestamptz,
    -- When Duffel detected the change, and the deadline we act by.
    detected_at          timestamptz NOT NULL,
    respond_by           timestamptz NOT NULL,
    created_at           timestamptz NOT NULL DEFAULT now(),
    updated_at           timestamptz NOT NULL DEFAULT now(),
    CHECK ((status = 'open') = (decided_by IS NULL))
);

-- AirlineChangesOfBooking: the booking page's and the operator commands' lookup.
CREATE INDEX airline_changes_booking_idx ON airline_changes (booking_id, detected_at);
-- AirlineChangesOpen: the console's open changes, nearest deadline first.
CREATE INDEX airline_changes_open_idx ON airline_changes (respond_by) WHERE status = 'open';
