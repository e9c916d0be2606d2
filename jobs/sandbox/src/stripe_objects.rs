//! Stripe's objects as the sandbox keeps them, and their complete wire JSON.
//!
//! Every field of the `PaymentIntent`, `Refund`, `Charge`, `PaymentMethod`, `Customer` and
//! `DeletedCustomer` structs generated in `async-stripe-shared` 1.0.0-rc.10 is emitted
//! (nullable ones as `null`), so strict deserializers accept the output; where Stripe's
//! documented example shows an object (`amount_details`, `fraud_details`, `invoice_settings`),
//! so does the sandbox. `tests/contracts.rs` checks the PaymentIntent, Refund and Charge against
//! the documented examples in `tests/contracts/stripe/`; `tests/sandbox.rs` checks the key sets
//! of the PaymentMethod, Customer and deleted customer against rc.10's structs.

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

/// The PaymentMethod types of rc.10's `PaymentMethod` other than `card`, each a nullable field
/// of its own: always `null` here (the sandbox's PaymentMethods are cards).
const NON_CARD_TYPES: [&str; 58] = [
    "acss_debit",
    "affirm",
    "afterpay_clearpay",
    "alipay",
    "alma",
    "amazon_pay",
    "au_becs_debit",
    "bacs_debit",
    "bancontact",
    "billie",
    "bizum",
    "blik",
    "boleto",
    "card_present",
    "cashapp",
    "crypto",
    "custom",
    "customer_balance",
    "eps",
    "fpx",
    "giropay",
    "grabpay",
    "ideal",
    "interac_present",
    "kakao_pay",
    "klarna",
    "konbini",
    "kr_card",
    "link",
    "mb_way",
    "mobilepay",
    "multibanco",
    "naver_pay",
    "nz_bank_account",
    "oxxo",
    "p24",
    "pay_by_bank",
    "payco",
    "paynow",
    "paypal",
    "paypay",
    "payto",
    "pix",
    "promptpay",
    "revolut_pay",
    "samsung_pay",
    "satispay",
    "scalapay",
    "sepa_debit",
    "sequra",
    "sofort",
    "sunbit",
    "swish",
    "twint",
    "upi",
    "us_bank_account",
    "wechat_pay",
    "zip",
];

/// The last four digits of the test card behind one of Stripe's test PaymentMethods
/// (docs.stripe.com/testing), ignoring a `__<suffix>`; `4242` for every other `pm_…`.
fn test_card_last4(payment_method: &str) -> &'static str {
    match payment_method.split("__").next().unwrap_or(payment_method) {
        "pm_card_chargeDeclined" | "pm_card_visa_chargeDeclined" => "0002",
        "pm_card_chargeDeclinedInsufficientFunds" => "9995",
        "pm_card_chargeDeclinedExpiredCard" => "0069",
        "pm_card_authenticationRequired" => "3184",
        "pm_card_threeDSecureRequired" => "3220",
        _ => "4242",
    }
}

/// 16 hex digits derived from `seed`: stable per id, like Stripe's card fingerprints and
/// invoice prefixes (the values are the sandbox's own).
fn stable_hex(seed: &str) -> String {
    use sha2::{Digest, Sha256};
    hex::encode(&Sha256::digest(seed.as_bytes())[..8])
}

/// A saved card as the sandbox knows it. PaymentMethods are implicit: every `pm_…` id is a
/// card attached to a customer until it is detached.
#[derive(Debug, Clone)]
pub(crate) struct PaymentMethod {
    pub id: String,
    /// When the sandbox first saw it (on a PaymentIntent, or when it was first read).
    pub created: i64,
    /// The customer it is attached to, as far as the sandbox knows (the last PaymentIntent
    /// that named both); `None` once detached, or when no PaymentIntent named a customer.
    pub customer: Option<String>,
}

impl PaymentMethod {
    /// The complete PaymentMethod: every field of rc.10's `PaymentMethod` (nullable ones as
    /// `null`), a Visa card shaped like the one in Stripe's detach example
    /// (docs.stripe.com/api/payment_methods/detach).
    pub(crate) fn to_json(&self) -> Value {
        let exp_year = i64::from(chrono::Datelike::year(&chrono::Utc::now())) + 2;
        let mut j = json!({
            "id": self.id,
            "object": "payment_method",
            "allow_redisplay": "unspecified",
            "billing_details": {
                "address": {
                    "city": null,
                    "country": null,
                    "line1": null,
                    "line2": null,
                    "postal_code": null,
                    "state": null,
                },
                "email": null,
                "name": null,
                "phone": null,
                "tax_id": null,
            },
            "card": {
                "brand": "visa",
                "checks": {
                    "address_line1_check": null,
                    "address_postal_code_check": null,
                    "cvc_check": "pass",
                },
                "country": "US",
                "description": null,
                "display_brand": "visa",
                "exp_month": 12,
                "exp_year": exp_year,
                "fingerprint": stable_hex(&format!("card:{}", self.id)),
                "funding": "credit",
                "generated_from": null,
                "iin": null,
                "issuer": null,
                "last4": test_card_last4(&self.id),
                "networks": {"available": ["visa"], "preferred": null},
                "regulated_status": "unregulated",
                "three_d_secure_usage": {"supported": true},
                "wallet": null,
            },
            "created": self.created,
            "customer": self.customer,
            "customer_account": null,
            "livemode": false,
            "metadata": {},
            "radar_options": null,
            "type": "card",
        });
        if let Value::Object(o) = &mut j {
            for rail in NON_CARD_TYPES {
                o.insert(rail.to_owned(), Value::Null);
            }
        }
        j
    }
}

/// A customer as the sandbox knows it: customers are implicit, so only its id and when the
/// sandbox first saw it. The sandbox keeps no name, email or address.
#[derive(Debug, Clone)]
pub(crate) struct Customer {
    pub id: String,
    pub created: i64,
}

impl Customer {
    /// The complete Customer object: every field of rc.10's `Customer` (nullable ones and the
    /// includable lists as `null`), the values of Stripe's example
    /// (docs.stripe.com/api/customers/object) where the sandbox has none. `customer.deleted`
    /// carries it as it was before the deletion (no `deleted` key).
    pub(crate) fn to_json(&self) -> Value {
        let prefix = stable_hex(&format!("customer:{}", self.id))[..8].to_ascii_uppercase();
        json!({
            "id": self.id,
            "object": "customer",
            "address": null,
            "balance": 0,
            "business_name": null,
            "cash_balance": null,
            "created": self.created,
            "currency": null,
            "customer_account": null,
            "default_source": null,
            "delinquent": false,
            "description": null,
            "discount": null,
            "email": null,
            "individual_name": null,
            "invoice_credit_balance": null,
            "invoice_prefix": prefix,
            "invoice_settings": {
                "custom_fields": null,
                "default_payment_method": null,
                "footer": null,
                "rendering_options": null,
            },
            "livemode": false,
            "metadata": {},
            "name": null,
            "next_invoice_sequence": 1,
            "phone": null,
            "preferred_locales": [],
            "shipping": null,
            "sources": null,
            "subscriptions": null,
            "tax": null,
            "tax_exempt": "none",
            "tax_ids": null,
            "test_clock": null,
        })
    }

    /// What `DELETE /v1/customers/{id}` answers: rc.10's `DeletedCustomer`, the example's
    /// three keys (docs.stripe.com/api/customers/delete).
    pub(crate) fn deleted_json(id: &str) -> Value {
        json!({"id": id, "object": "customer", "deleted": true})
    }
}
