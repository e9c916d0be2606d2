//! Stripe's objects as the sandbox keeps them, and their complete wire JSON.
//!
//! Every field of the `PaymentIntent`, `Refund` and `Charge` structs generated in
//! `async-stripe-shared` 1.0.0-rc.10 is emitted (nullable ones as `null`), so strict
//! deserializers accept the output; where Stripe's documented example shows an object
//! (`amount_details`, `fraud_details`), so does the sandbox. `tests/contracts.rs` checks the
//! output against the documented examples in `tests/contracts/stripe/`.

use std::collections::BTreeMap;

use serde_json::{json, Value};

#[derive(Debug, Clone)]
pub(crate) struct PaymentIntent {
    pub id: String,
    pub amount: i64,
    pub amount_capturable: i64,
    pub amount_received: i64,
    /// Minor units refunded so far (not a PaymentIntent field; lives on the charge).
    pub amount_refunded: i64,
    pub currency: String,
    pub customer: Option<String>,
    pub payment_method: Option<String>,
    pub payment_method_types: Vec<String>,
    pub status: &'static str,
    pub capture_method: String,
    pub confirmation_method: String,
    pub metadata: BTreeMap<String, String>,
    pub created: i64,
    pub latest_charge: Option<String>,
    pub last_payment_error: Option<Value>,
    pub next_action: Option<Value>,
    pub canceled_at: Option<i64>,
    pub cancellation_reason: Option<String>,
    pub description: Option<String>,
    pub receipt_email: Option<String>,
    pub statement_descriptor: Option<String>,
    pub statement_descriptor_suffix: Option<String>,
    pub setup_future_usage: Option<String>,
    pub client_secret: String,
}

impl PaymentIntent {
    pub(crate) fn to_json(&self) -> Value {
        let mut j = json!({
            "id": self.id,
            "object": "payment_intent",
            "allowed_payment_method_types": null,
            "amount": self.amount,
            "amount_capturable": self.amount_capturable,
            // As in Stripe's example for a card PaymentIntent.
            "amount_details": {"tip": {}},
            "amount_received": self.amount_received,
            "application": null,
            "application_fee_amount": null,
            "automatic_payment_methods": null,
            "canceled_at": self.canceled_at,
            "cancellation_reason": self.cancellation_reason,
            "capture_method": self.capture_method,
            "client_secret": self.client_secret,
            "confirmation_method": self.confirmation_method,
            "created": self.created,
            "currency": self.currency,
            "customer": self.customer,
            "customer_account": null,
            "description": self.description,
            "excluded_payment_method_types": null,
            "hooks": null,
            "invoice": null,
            "last_payment_error": self.last_payment_error,
            "latest_charge": self.latest_charge,
            "livemode": false,
        });
        merge(
            &mut j,
            json!({
                "managed_payments": null,
                "metadata": self.metadata,
                "next_action": self.next_action,
                "on_behalf_of": null,
                "payment_details": null,
                "payment_method": self.payment_method,
                "payment_method_configuration_details": null,
                "payment_method_options": null,
                "payment_method_types": self.payment_method_types,
            "payment_record": null,
                "presentment_details": null,
                "processing": null,
                "receipt_email": self.receipt_email,
                "review": null,
                "setup_future_usage": self.setup_future_usage,
                "shipping": null,
                "source": null,
                "statement_descriptor": self.statement_descriptor,
                "statement_descriptor_suffix": self.statement_descriptor_suffix,
                "status": self.status,
                "transfer_data": null,
                "transfer_group": null,
            }),
        );
        j
    }

    /// The PaymentIntent's latest charge as a complete Charge object (for `charge.*` events).
    pub(crate) fn charge_json(&self, refunds: &[&Refund]) -> Value {
        let captured = self.amount_received > 0;
        let failed = self.last_payment_error.is_some() && self.status == "requires_payment_method";
        let failure_code = self
            .last_payment_error
            .as_ref()
            .and_then(|e| e.get("code").cloned());
        let failure_message = self
            .last_payment_error
            .as_ref()
            .and_then(|e| e.get("message").cloned());
        let mut j = json!({
            "id": self.latest_charge,
            "object": "charge",
            "amount": self.amount,
            "amount_captured": self.amount_received,
            "amount_refunded": self.amount_refunded,
            "application": null,
            "application_fee": null,
            "application_fee_amount": null,
            "authorization_code": null,
            "balance_transaction": if captured { Value::from(format!("txn_{}", &self.id[3..])) } else { Value::Null },
            "billing_details": {"address": null, "email": null, "name": null, "phone": null, "tax_id": null},
            "calculated_statement_descriptor": "PARKER FLIGHT",
            "captured": captured,
            "created": self.created,
            "currency": self.currency,
            "customer": self.customer,
            "description": self.description,
            "disputed": false,
            "failure_balance_transaction": null,
            "failure_code": if failed { failure_code } else { None },
            "failure_message": if failed { failure_message } else { None },
            "fraud_details": {},
            "level3": null,
            "livemode": false,
            "metadata": self.metadata,
        });
        merge(
            &mut j,
            json!({
                "on_behalf_of": null,
                "outcome": null,
                "paid": !failed,
                "payment_intent": self.id,
                "payment_method": self.payment_method,
                "payment_method_details": null,
                "presentment_details": null,
                "radar_options": null,
                "receipt_email": self.receipt_email,
                "receipt_number": null,
                "receipt_url": null,
                "refunded": captured && self.amount_refunded >= self.amount_received,
                "refunds": {
                    "object": "list",
                    "data": refunds.iter().map(|r| r.to_json()).collect::<Vec<_>>(),
                    "has_more": false,
                    "url": format!("/v1/charges/{}/refunds", self.latest_charge.as_deref().unwrap_or("")),
                },
                "review": null,
                "shipping": null,
                "source": null,
                "source_transfer": null,
                "statement_descriptor": self.statement_descriptor,
                "statement_descriptor_suffix": self.statement_descriptor_suffix,
                "status": if failed { "failed" } else { "succeeded" },
                "transfer": null,
                "transfer_data": null,
                "transfer_group": null,
            }),
        );
        j
    }
}

/// Adds `extra`'s fields to `base` (both objects); splits big `json!` literals, which would
/// otherwise exceed the macro recursion limit.
fn merge(base: &mut Value, extra: Value) {
    if let (Value::Object(b), Value::Object(e)) = (base, extra) {
        b.extend(e);
    }
}

#[derive(Debug, Clone)]
pub(crate) struct Refund {
    pub id: String,
    pub amount: i64,
    pub charge: Option<String>,
    pub created: i64,
    pub currency: String,
    pub metadata: BTreeMap<String, String>,
    pub payment_intent: String,
    pub customer: Option<String>,
    pub payment_method: Option<String>,
    pub reason: Option<String>,
    pub status: &'static str,
    pub balance_transaction: String,
    /// Set when the refund failed (`expired_or_canceled_card`, `lost_or_stolen_card`, …).
    pub failure_reason: Option<String>,
}

impl Refund {
    pub(crate) fn to_json(&self) -> Value {
        json!({
            "id": self.id,
            "object": "refund",
            "amount": self.amount,
            "balance_transaction": self.balance_transaction,
            "charge": self.charge,
            "created": self.created,
            "currency": self.currency,
            "customer": self.customer,
            "customer_account": null,
            "description": null,
            "destination_details": null,
            "failure_balance_transaction": null,
            "failure_reason": self.failure_reason,
            "instructions_email": null,
            "metadata": self.metadata,
            "next_action": null,
            "payment_intent": self.payment_intent,
            "payment_method": self.payment_method,
            "pending_reason": null,
            "presentment_details": null,
            "reason": self.reason,
            "receipt_number": null,
            "source_transfer_reversal": null,
            "status": self.status,
            "transfer_reversal": null,
        })
    }
}
