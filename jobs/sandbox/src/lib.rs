//! The provider sandbox: a stateful, in-memory stand-in for the subset of **Stripe**, **Duffel**,
//! **Resend**, **Twilio** and **AWS KMS** that the fleet's clients use, served over loopback
//! HTTP by one axum server.
//!
//! Paths and shapes follow the real APIs, so a client only changes its base URL. The sandbox is a
//! test double, but a faithful one: state transitions are validated, unknown ids are 404s in the
//! provider's own error shape, idempotency keys behave as the provider documents, and
//! [`Counters`] let a test prove that nothing was charged, booked, emailed or texted twice.
//!
//! # Stripe (`/v1/...`, form-encoded bodies, `Authorization: Bearer sk_test_…`)
//! - `POST /v1/payment_intents`, `GET /v1/payment_intents/{id}`,
//!   `POST /v1/payment_intents/{id}/capture`, `POST /v1/payment_intents/{id}/cancel`
//! - `POST /v1/refunds`, `GET /v1/refunds/{id}`
//! - `DELETE /v1/customers/{id}`, `POST /v1/payment_methods/{id}/detach`,
//!   `GET /v1/payment_methods/{id}` (an account erasure's calls, see below)
//! - `Idempotency-Key` on every POST, scoped per API key: same key and same parameters replay
//!   the stored response byte for byte (same status, header `Idempotent-Replayed: true`); same
//!   key with other parameters → 400 `idempotency_error`; a key whose first request is still
//!   running → 409 `idempotency_key_in_use`. As in Stripe, validation failures (400
//!   `parameter_missing`, `parameter_invalid_integer`, or a `param` with no `code` for a value
//!   outside its enum) and 409s are not stored; 402 declines are.
//! - Card scenarios by payment method id, ignoring a `__<suffix>` (any other `pm_…` succeeds
//!   like `pm_card_visa`):
//!
//! | payment method | result of an off-session confirm |
//! |---|---|
//! | `pm_card_visa` | `requires_capture` (manual capture) or `succeeded` |
//! | `pm_card_chargeDeclined` | 402 `card_error` `card_declined` / `generic_decline` |
//! | `pm_card_chargeDeclinedInsufficientFunds` | 402 `card_declined` / `insufficient_funds` |
//! | `pm_card_chargeDeclinedExpiredCard` | 402 `expired_card` |
//! | `pm_card_authenticationRequired` | 402 `authentication_required` |
//!
//! Every decline still creates the PaymentIntent (status `requires_payment_method`, with
//! `last_payment_error`) and returns it inside the error, which is what Stripe does for an
//! `off_session=true` confirm: authentication cannot happen off session, so the intent does not
//! stop in `requires_action`, it fails back to `requires_payment_method`.
//!
//! **Erasure: detaching saved cards and deleting the customer.** Customers and cards are
//! implicit: every `cus_…` id is a customer and every `pm_…` id a card attached to one, until
//! it is deleted or detached.
//! - `POST /v1/payment_methods/{id}/detach` → 200 with the complete PaymentMethod,
//!   `customer: null`, and `payment_method.detached` whose `data.previous_attributes.customer`
//!   is the customer a PaymentIntent last named with the card (`null` if none did). It goes
//!   through the idempotency pipeline like every POST: the same key replays the 200. Detaching
//!   again with another key (or none) → 400 `invalid_request_error`, no `code`, "The payment
//!   method you provided is not attached to a customer so detachment is impossible." (not
//!   stored under the key); an id that is not `pm_…` → 404 `resource_missing`
//!   `No such PaymentMethod: '…'`, `param: "payment_method"`. `GET /v1/payment_methods/{id}`
//!   reads the card (`customer: null` once detached).
//! - `DELETE /v1/customers/{id}` → 200 `{"id", "object": "customer", "deleted": true}` and
//!   `customer.deleted` around the complete Customer as it was. Stripe says an idempotency key
//!   on a DELETE "has no effect", so none is kept: deleting again, whatever the key → 404
//!   `resource_missing` `No such customer: '…'`, `param: "id"` (as for an id that is not
//!   `cus_…`). Deleting a customer does not detach its cards (Stripe does not document that it
//!   does): detach each first.
//! - A PaymentIntent naming a deleted customer → 400 `resource_missing`
//!   `No such customer: '…'`, `param: "customer"`; naming a detached card → 400
//!   `invalid_request_error` without `code` ("… or was detached from a Customer. It may not be
//!   used again. …"). Neither creates a PaymentIntent.
//! - A Stripe outage answers these routes like every other Stripe route, before anything is
//!   done (nothing detached or deleted, no result kept under the key).
//! - [`Counters`]: `customers_deleted`, `payment_methods_detached` (operations performed, at
//!   most once per object; replays, refusals and outages do not count). Reads:
//!   [`Sandbox::stripe_customer_deleted`], [`Sandbox::stripe_payment_method_detached`],
//!   [`Sandbox::stripe_payment_method_detached_from`].
//!
//! Which of these answers Stripe documents and which are the sandbox's own is listed in
//! docs/sandbox.md ("Erasure: what Stripe documents and what is ours").
//!
//! # Duffel (`/air/...`, JSON in `{"data": …}`, `Authorization: Bearer duffel_test_…`, `Duffel-Version: v2`)
//! - `POST /air/offer_requests[?return_offers=false]`, `GET /air/offer_requests/{id}`
//! - `GET /air/offers?offer_request_id=…[&sort=total_amount|-total_amount][&limit=…&after=…]`,
//!   `GET /air/offers/{id}` (lists page as Duffel's do: `limit` 1–200, default 50, `meta.after`
//!   the next page's cursor)
//! - `POST /air/orders`, `GET /air/orders/{id}`, `GET /air/orders?…` (see below)
//! - `POST /air/order_cancellations`, `GET /air/order_cancellations/{id}`,
//!   `POST /air/order_cancellations/{id}/actions/confirm`
//! - `GET /air/airline_initiated_changes?order_id=ord_…`,
//!   `POST /air/airline_initiated_changes/{id}/actions/accept`,
//!   `PATCH /air/airline_initiated_changes/{id}` (airline-initiated changes, see below)
//!
//! Fares are **deterministic**: the same (seed, slices, passenger count, cabin) always yields the
//! same 3–5 offers with the same carriers, times and prices (ids are fresh per request, as in
//! Duffel). Offers expire 30 minutes after the request.
//!
//! Duffel has no idempotency key, so a second `POST /air/orders` for an offer that already has an
//! order is refused with 422 `order_creation_already_attempted`. **Reconciliation lookup (a
//! sandbox extension)**: `GET /air/orders` accepts any of `offer_id=off_…`,
//! `booking_reference=…` and `metadata[KEY]=VALUE` (e.g. `metadata[booking_id]=…`); all given
//! filters must match. Each order also carries an `offer_id` field.
//!
//! **Airline-initiated changes (AIC).** The sandbox plays the airline:
//! [`Sandbox::airline_change`] or `POST /_sandbox/orders/{id}/airline_change
//! {"shift_minutes": 90}` moves every flight of an order and records a change (`aic_…`) in
//! Duffel's documented shape — `id`, `order_id`, `removed` (the order's slices as it served
//! them), `added` (the same slices with new `sli_`/`seg_` ids and every `departing_at` /
//! `arriving_at` moved by `shift_minutes`), `available_actions` (default
//! `["accept","cancel","change"]`), `action_taken` and `action_taken_at` (null while open),
//! `created_at`, `updated_at`, `travel_agent_ticket: null`. The order's `slices` become `added`
//! and its `airline_initiated_changes` list its changes, oldest first, as they stand. The change
//! is announced with `order.airline_initiated_change_detected` (v2: `data.object` is
//! `{"id": <order>, "aic_id": <change>}`, `idempotency_key` the change's id) unless
//! `"deliver": false`. Then, as in Duffel:
//! - `GET /air/airline_initiated_changes?order_id=…` → `{"data": [AIC, …]}` oldest first, `[]`
//!   for an unknown order; a missing `order_id` → 422 `validation_required`, one that is not
//!   `ord_` + letters and digits → 422 `validation_format`. Not paginated.
//! - `POST …/{id}/actions/accept` (no body) → `{"data": AIC}` with `action_taken: "accepted"`,
//!   `action_taken_at` = `updated_at` = now and `available_actions: []`.
//! - `PATCH …/{id}` `{"data": {"action_taken": "accepted" | "cancelled" | "changed"}}` → the
//!   same for a change whose `available_actions` hold `update`; only the change is recorded,
//!   the order is left as it is.
//! - Confirming the order's cancellation marks each of its open changes `cancelled`.
//!
//! Duffel has no idempotency key here either: an action on a change already actioned → 422
//! `invalid_state_error` `airline_initiated_change_already_actioned`; an action not in
//! `available_actions` → 422 `validation_error` `airline_initiated_change_action_not_available`;
//! an unknown change → 404 `not_found`. Both 422 codes are the sandbox's own (Duffel documents
//! none), as is emptying `available_actions` once a change is actioned. Duffel documents **no
//! deadline** for acting on a change and no outcome when nobody acts: the sandbox has none, a
//! change stays open until it is actioned or its order is cancelled. The routes get the same
//! authentication, outage and latency handling as every Duffel route, and the order's route
//! scenario's 429s (`rate_limited`). [`Counters`]: `airline_changes_created`,
//! `airline_change_accepts` and `airline_change_accepts_by_id` (changes moved to `accepted`, by
//! the accept action or an update; at most once each).
//!
//! Scenarios are chosen per route (`ORIGIN-DESTINATION` of the first slice), settable with
//! [`Sandbox::set_scenario`] or `POST /_sandbox/scenarios {"route":"LHR-JFK","scenario":"slow"}`.
//! Default table (every other route is `normal`):
//!
//! | route | scenario | effect |
//! |---|---|---|
//! | `LHR-CDG` | `price_rises` | `GET /air/offers/{id}` returns a total ~8 % above the search; the order must pay the new total |
//! | `LHR-AMS` | `offer_gone` | re-read → 404 `offer_no_longer_available`; order → 422 same code |
//! | `LHR-DUB` | `insufficient_balance` | order → 422 `insufficient_balance` |
//! | `LHR-MAD` | `price_changed` | order → 422 `price_changed` |
//! | `LHR-FRA` | `rate_limited` | the first [`SandboxConfig::rate_limit_burst`] requests for the route → 429 |
//! | `LHR-BCN` | `server_error` | order → 500, no order created |
//! | `LHR-LIS` | `slow` | order response delayed by [`SandboxConfig::slow_ms`] |
//! | `LHR-ZRH` | `order_created_then_500` | the order **is** created, but the response is a 500 |
//!
//! A 429 carries `ratelimit-limit`, `ratelimit-remaining: 0` and `ratelimit-reset` (an HTTP date
//! a few seconds ahead).
//!
//! # Resend (`POST /emails`, `Authorization: Bearer re_…`)
//! `Idempotency-Key` (kept for the sandbox's lifetime, Resend keeps 24 h): same key and same
//! payload → the same `{"id"}` again and the email is **not** sent (nor counted) twice; same key
//! with another payload → 409 `invalid_idempotent_request`, Resend's documented error name.
//! Errors use Resend's shape `{"statusCode", "message", "name"}` with the documented statuses
//! (invalid JSON → 400 `validation_error`, a missing field → 422 `missing_required_field`,
//! an over-long key → 400 `invalid_idempotency_key`).
//!
//! # Twilio (`/2010-04-01/Accounts/{AccountSid}/Messages.json`, form-encoded, HTTP Basic)
//! Programmable Messaging as Twilio's OpenAPI spec (`twilio/twilio-oai`,
//! `spec/json/twilio_api_v2010.json`) and its error pages document it:
//! - `POST /2010-04-01/Accounts/{AccountSid}/Messages.json` with `To` (E.164), `From` or
//!   `MessagingServiceSid`, and `Body` → **201** with the Message resource, exactly the fields
//!   of the spec's `create` example: `sid` (`SM` + 32 hex), `account_sid`, `api_version`,
//!   `body`, `to`, `from` (null when a Messaging Service picks the sender),
//!   `messaging_service_sid`, `status` (`queued`; `accepted` with a Messaging Service),
//!   `direction: "outbound-api"`, `num_segments` and `num_media` as strings, `date_created` /
//!   `date_sent` / `date_updated` in RFC 2822 (`Thu, 24 Aug 2023 05:01:45 +0000`),
//!   `error_code`, `error_message`, `price`, `price_unit` null, `uri`, `subresource_uris.media`.
//!   Twilio has **no idempotency key** here: every accepted POST is another Message.
//! - `GET /2010-04-01/Accounts/{AccountSid}/Messages.json?To=…&DateSent=YYYY-MM-DD` (also
//!   `From`, `DateSent<` / `DateSent>` for on-or-before / on-or-after, `PageSize` 1–1000,
//!   default 50, and the `PageToken` of a page uri) → the account's Messages matching every
//!   filter, **newest first**, in Twilio's list envelope: `messages`, `page`, `page_size`,
//!   `start`, `end`, `uri`, `first_page_uri`, `next_page_uri`, `previous_page_uri` (null at
//!   either end). `DateSent` compares the UTC day of `date_sent`.
//! - Authentication: Basic, the username the path's Account SID (`AC` + 32 hex) or an API key
//!   SID (`SK` + 32 hex), the password (Auth Token or key secret) not empty; else 401 code
//!   20003. Accounts are isolated: each lists only its own Messages.
//!
//! Errors are Twilio's `{"code", "message", "more_info": "https://www.twilio.com/docs/errors/NNNNN",
//! "status"}`; a refused create makes no Message:
//!
//! | request | answer |
//! |---|---|
//! | no Basic credentials, wrong username, empty password, malformed `AccountSid` | 401 `20003` |
//! | `To` missing or empty | 400 `21604` |
//! | `To` not `^\+[1-9][0-9]{1,14}$`, or equal to `From` | 400 `21211` |
//! | neither `From` nor `MessagingServiceSid` (or one not `MG` + 32 hex) | 400 `21603` |
//! | `Body` missing or empty | 400 `21602` (`21619` with a Messaging Service and no `From`) |
//! | `Body` over 1,600 characters | 400 `21617` |
//!
//! Twilio's test-credential **magic numbers** (twilio.com/docs/iam/test-credentials), honoured
//! with any credentials: `To` `+15005550001` → 400 `21211` (invalid), `+15005550002` → `21612`
//! (cannot route), `+15005550003` → `21408` (no international permission), `+15005550004` →
//! `21610` (unsubscribed / blocked), `+15005550009` → `21614` (not a mobile); `From`
//! `+15005550001` → `21212`, `+15005550007` → `21606`, `+15005550008` → `21611` (queue full).
//! Every other valid number succeeds (`+15005550006` is the documented good sender). What the
//! sandbox chooses where Twilio is silent is listed in docs/sandbox.md. [`Counters`]:
//! `sms_created`, `sms_by_to`, `sms_refused` (4xx answers to creates).
//!
//! # AWS KMS (`POST /`, awsJson1_1, `X-Amz-Target: TrentService.<Operation>`, SigV4)
//! The fleet's own `aws-sdk-kms` client, with the sandbox's base URL as `endpoint_url`, wraps and
//! unwraps its PII data keys here. Requests are `POST /` with `Content-Type:
//! application/x-amz-json-1.1` and an `Authorization: AWS4-HMAC-SHA256 Credential=…` header
//! (required, signature not verified: else 400 `UnrecognizedClientException`); blobs are base64
//! JSON strings; errors are `{"__type": "<Name>", "message": "…"}` with a fresh
//! `x-amzn-RequestId`. Served operations (any other target → 400 `UnknownOperationException`):
//! - `GenerateDataKey` `{KeyId, KeySpec: AES_256|AES_128 | NumberOfBytes: 1–1024,
//!   EncryptionContext?}` → `{CiphertextBlob, Plaintext (random), KeyId (the key ARN),
//!   KeyMaterialId}`
//! - `Decrypt` `{CiphertextBlob, KeyId?, EncryptionContext?, EncryptionAlgorithm?}` →
//!   `{Plaintext, KeyId, EncryptionAlgorithm: "SYMMETRIC_DEFAULT", KeyMaterialId}`
//! - `Encrypt` `{KeyId, Plaintext (1–4096 bytes), EncryptionContext?}` → `{CiphertextBlob,
//!   KeyId, EncryptionAlgorithm}`
//! - `ReEncrypt` `{CiphertextBlob, SourceKeyId?, SourceEncryptionContext?, DestinationKeyId,
//!   DestinationEncryptionContext?}` → `{CiphertextBlob, SourceKeyId, KeyId,
//!   SourceEncryptionAlgorithm, DestinationEncryptionAlgorithm, SourceKeyMaterialId,
//!   DestinationKeyMaterialId}`
//!
//! One symmetric key: alias [`KMS_KEY_ALIAS`] (`alias/parker-kms-key`), key id [`KMS_KEY_ID`],
//! ARN [`KMS_KEY_ARN`] (`arn:aws:kms:eu-west-1:111122223333:key/…`); `KeyId` may be the alias,
//! the alias ARN, the key id or the key ARN, and anything else is 400 `NotFoundException`.
//! Blobs are AES-256-GCM under random key material that never leaves the sandbox, bound to the
//! encryption context compared as a map (the SDK sends it in HashMap order), in the sandbox's
//! own format (see the `kms_objects` module): a wrong or missing context, an altered blob or
//! one another sandbox made → 400 `InvalidCiphertextException`; a `KeyId` naming another key
//! than the blob's → 400 `IncorrectKeyException`. [`Sandbox::rotate_kms_key_material`] plays
//! AWS's automatic rotation (new material for new wraps, old blobs still decrypt);
//! [`Sandbox::set_kms_fault`] injects a [`KmsFault`] into every KMS call until cleared
//! (Throttling → 400 `ThrottlingException` "Rate exceeded", Outage → 500
//! `KMSInternalException`, AccessDenied → 400 `AccessDeniedException` naming the permission),
//! and a faulted call does nothing. [`Counters`]: `kms_generate_data_key`, `kms_decrypt`,
//! `kms_encrypt`, `kms_re_encrypt` (200s), `kms_refused` (every error answer, faults included).
//! Logs carry operations and key-material indexes, never plaintexts, blobs or contexts. Which
//! statuses are AWS-documented and which are ours is listed in docs/sandbox.md.
//!
//! # Webhooks
//! With [`SandboxConfig::webhook`] set, state changes are delivered as signed events (spawned
//! task, up to [`WEBHOOK_ATTEMPTS`] attempts with exponential backoff on non-2xx):
//! Stripe `payment_intent.amount_capturable_updated|succeeded|payment_failed|canceled`,
//! `charge.refunded`, `customer.deleted` and `payment_method.detached` with `Stripe-Signature`; Duffel `order.created`,
//! `order_cancellation.confirmed` and `order.airline_initiated_change_detected` with
//! `X-Duffel-Signature`. Both headers are
//! `t=<unix>,v1=<hex HMAC-SHA256(secret, "{t}.{raw body}")>`, see [`webhooks`]. Arbitrary events
//! can be emitted through `POST /_sandbox/webhooks/stripe` and `POST /_sandbox/webhooks/duffel`
//! with `{"type": "...", "object": {...}}`.
//!
//! Events have the providers' documented delivered shapes, checked against the documented
//! examples in `tests/contracts/` by `tests/contracts.rs`: a Stripe Event (`id`,
//! `object: "event"`, `api_version`, `created`, `data.object`, `livemode`, `pending_webhooks`,
//! `request`, `type`; `payment_method.detached` also has `data.previous_attributes`); a Duffel
//! event with every field at the top level (`id`, `api_version`, `type`, `data.object`,
//! `live_mode`, `idempotency_key` = the related object's id, `created_at`,
//! `identity_organisation_id`) — only Duffel's API *responses* are wrapped in `{"data": …}`. A synchronous order refusal is answered, not also announced: Duffel sends
//! `order.creation_failed` only after a 202, which the sandbox does not simulate.
//!
//! # Outages
//! `POST /_sandbox/outages {"provider": "stripe", "seconds": 120, "status": 503}` (or
//! [`Sandbox::set_outage`]) takes one provider (`stripe`, `duffel`, `resend` or `twilio`) down
//! from now for `seconds` (at most a day; `0` ends it at once): every API request to it is
//! answered with `status` (500 when absent; 500, 502, 503 or 504, and for `twilio` also 429) in
//! the provider's own error shape — Stripe's `{"error": {"type": "api_error", …}}`, Duffel's
//! `api_error` / `internal_server_error`, Resend's `internal_server_error`, Twilio's
//! `{"code", "message", "more_info", "status"}` with code 20429 "Too Many Requests" for a 429
//! (Twilio: such a request "is never processed"), 20503 for a 503 and 20500 for the other
//! server errors — **before** the request is handled, so nothing is created or changed and Stripe keeps no idempotent result for the key (the same key succeeds once the
//! outage is over, as Stripe documents for requests that did not start executing). The other
//! providers and the `/_sandbox` endpoints keep answering. `GET /_sandbox/outages` lists each
//! provider with `down`, `status` and `seconds_left`; `outage_responses` in the counters counts
//! the refused requests per provider. This is the incident drill's Stripe outage
//! (docs/runbooks/replay-after-outage.md).
//!
//! # Admin
//! `GET /_sandbox/counters` ([`Counters`] as JSON), `POST /_sandbox/scenarios`,
//! `GET|POST /_sandbox/outages`, `POST /_sandbox/refunds/{id}/settle` ([`Sandbox::settle_refund`]),
//! `POST /_sandbox/orders/{id}/airline_change` ([`Sandbox::airline_change`]),
//! `POST /_sandbox/webhooks/{stripe,duffel}`, `GET /_sandbox/kms`,
//! `POST /_sandbox/kms/fault {"fault": "throttling"|"outage"|"access_denied"|null}`
//! ([`Sandbox::set_kms_fault`]), `POST /_sandbox/kms/rotate`
//! ([`Sandbox::rotate_kms_key_material`]).
//!
//! Logs carry ids only: never names, emails, phone numbers, message bodies or identity
//! documents.

#![warn(missing_docs)]

// Each module only uses modules of the layers below its own, so no two import each other:
//   server
//   admin, stripe, duffel (and its child duffel::aic), resend, twilio, kms
//   read, webhooks
//   handle
//   state
//   scenarios, stripe_objects, duffel_objects, twilio_objects, kms_objects, config, util
// This file only declares the modules and re-exports the public items; nothing imports from it.
mod admin;
mod config;
mod duffel;
mod duffel_objects;
mod handle;
mod kms;
mod kms_objects;
mod read;
mod resend;
pub mod scenarios;
mod server;
mod state;
mod stripe;
mod stripe_objects;
mod twilio;
mod twilio_objects;
mod util;
pub mod webhooks;

pub use config::{LatencyRange, SandboxConfig, WebhookTarget};
pub use handle::Sandbox;
pub use kms_objects::{
    KmsFault, KMS_ACCOUNT, KMS_KEY_ALIAS, KMS_KEY_ALIAS_ARN, KMS_KEY_ARN, KMS_KEY_ID, KMS_REGION,
};
pub use scenarios::Scenario;
pub use server::RunningSandbox;
pub use state::Counters;
pub use webhooks::{
    duffel_signature_header, sign_payload, stripe_signature_header, WEBHOOK_ATTEMPTS,
};
