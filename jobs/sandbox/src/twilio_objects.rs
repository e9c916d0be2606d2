//! Twilio Programmable Messaging objects and rules: the Message resource as the 2010-04-01 API
//! serves it (`components.schemas["api.v2010.account.message"]` of Twilio's OpenAPI spec,
//! `twilio/twilio-oai` `spec/json/twilio_api_v2010.json`), Twilio's error body, and the pure
//! checks the sandbox applies (E.164, SIDs, segments, the test-credential magic numbers).

use chrono::{DateTime, Utc};
use serde_json::{json, Value};

/// The API version in every path and in each Message's `api_version`.
pub(crate) const API_VERSION: &str = "2010-04-01";

/// The longest `Body` Twilio takes, in characters (error 21617 above it).
pub(crate) const MAX_BODY_CHARS: usize = 1600;

/// One Message, as stored: what the list filters on, and the resource as served.
#[derive(Debug, Clone)]
pub(crate) struct TwilioMessage {
    /// The account it was created under (the path's `AccountSid`).
    pub account_sid: String,
    /// `SM…`.
    pub sid: String,
    /// The recipient, as sent.
    pub to: String,
    /// The sender, `None` when a Messaging Service was to pick one.
    pub from: Option<String>,
    /// `date_sent`: the `DateSent` filters compare its UTC date.
    pub date_sent: DateTime<Utc>,
    /// The Message resource.
    pub json: Value,
}

/// A refusal in Twilio's error shape, `{"code", "message", "more_info", "status"}`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct TwilioError {
    /// HTTP status (also the body's `status`).
    pub status: u16,
    /// Twilio's error code; `None` for the sandbox's own refusals of a parameter Twilio
    /// documents no code for (the body then has no `code` and no `more_info`, which Twilio's
    /// error page allows: "when available, a Twilio-specific `code` and `more_info`").
    pub code: Option<u32>,
    /// Human text.
    pub message: String,
}

impl TwilioError {
    pub(crate) fn new(status: u16, code: u32, message: impl Into<String>) -> Self {
        Self {
            status,
            code: Some(code),
            message: message.into(),
        }
    }

    /// A 400 with no Twilio code (see [`TwilioError::code`]).
    pub(crate) fn bad_request(message: impl Into<String>) -> Self {
        Self {
            status: 400,
            code: None,
            message: message.into(),
        }
    }

    /// The error body.
    pub(crate) fn body(&self) -> Value {
        match self.code {
            Some(code) => json!({
                "code": code,
                "message": self.message,
                "more_info": format!("https://www.twilio.com/docs/errors/{code}"),
                "status": self.status,
            }),
            None => json!({ "message": self.message, "status": self.status }),
        }
    }
}

/// A `To` of Twilio's test-credential magic numbers
/// (twilio.com/docs/iam/test-credentials#test-sms-messages): the code each is refused with and
/// the table's description. Every other valid `To` succeeds.
pub(crate) const MAGIC_TO: [(&str, u32, &str); 5] = [
    ("+15005550001", 21211, "This phone number is invalid."),
    ("+15005550002", 21612, "Twilio cannot route to this number."),
    (
        "+15005550003",
        21408,
        "Your account doesn't have the international permissions necessary to SMS this number.",
    ),
    (
        "+15005550004",
        21610,
        "Attempt to send to unsubscribed recipient",
    ),
    (
        "+15005550009",
        21614,
        "'To' number is not a valid mobile number",
    ),
];

/// A `From` of the same table that is refused. `+15005550006` ("passes all validation") and
/// every other sender are accepted (the table's "All Others → 21606" is a test-credentials
/// rule; the sandbox stands in for live credentials too).
pub(crate) const MAGIC_FROM: [(&str, u32, &str); 3] = [
    ("+15005550001", 21212, "Invalid 'From' Phone Number"),
    (
        "+15005550007",
        21606,
        "The 'From' phone number provided is not a valid message-capable Twilio phone number for this destination/account",
    ),
    (
        "+15005550008",
        21611,
        "This 'From' number has exceeded the maximum number of queued messages",
    ),
];

/// `^\+[1-9][0-9]{1,14}$`: E.164 as Twilio's glossary states it (a `+`, at most 15 digits, no
/// leading 0).
pub(crate) fn is_e164(s: &str) -> bool {
    let Some(digits) = s.strip_prefix('+') else {
        return false;
    };
    (2..=15).contains(&digits.len())
        && digits.bytes().all(|b| b.is_ascii_digit())
        && !digits.starts_with('0')
}

/// `^{prefix}[0-9a-fA-F]{32}$`: the shape of Twilio's SIDs (`AC…`, `MG…`, `SK…`).
pub(crate) fn is_sid(prefix: &str, s: &str) -> bool {
    s.strip_prefix(prefix)
        .is_some_and(|hex| hex.len() == 32 && hex.bytes().all(|b| b.is_ascii_hexdigit()))
}

/// `prefix` + 32 lower-case hex digits, fresh.
pub(crate) fn new_sid(prefix: &str) -> String {
    format!("{prefix}{}", uuid::Uuid::new_v4().simple())
}

/// RFC 2822 in UTC, as Twilio writes `date_created`: `Thu, 24 Aug 2023 05:01:45 +0000`.
pub(crate) fn rfc2822(t: DateTime<Utc>) -> String {
    t.format("%a, %d %b %Y %H:%M:%S +0000").to_string()
}

/// The GSM 03.38 default alphabet (without the escape character).
const GSM7_BASIC: &str = "@£$¥èéùìòÇ\nØø\rÅåΔ_ΦΓΛΩΠΨΣΘΞÆæßÉ !\"#¤%&'()*+,-./0123456789:;<=>?\
¡ABCDEFGHIJKLMNOPQRSTUVWXYZÄÖÑÜ§¿abcdefghijklmnopqrstuvwxyzäöñüà";
/// Its extension table: each takes two septets (escape + character).
const GSM7_EXTENDED: &str = "^{}\\[~]|€\u{000C}";

/// How many SMS segments `body` takes. Twilio's spec: more than 160 GSM-7 characters (or 70
/// UCS-2 ones) are segmented; each segment of a concatenated message then holds 153 GSM-7
/// septets or 67 UCS-2 code units (the 7 or 6 bytes of the concatenation header, the sandbox's
/// arithmetic). A body with any character outside GSM-7 is UCS-2 throughout.
pub(crate) fn num_segments(body: &str) -> u64 {
    let gsm7: Option<u64> = body.chars().try_fold(0u64, |n, c| {
        if GSM7_BASIC.contains(c) {
            Some(n + 1)
        } else if GSM7_EXTENDED.contains(c) {
            Some(n + 2)
        } else {
            None
        }
    });
    let (units, single, per_segment) = match gsm7 {
        Some(septets) => (septets, 160, 153),
        None => (body.encode_utf16().count() as u64, 70, 67),
    };
    if units <= single {
        1
    } else {
        units.div_ceil(per_segment)
    }
}

/// What a new Message is made of.
pub(crate) struct NewMessage<'a> {
    pub account_sid: &'a str,
    pub to: &'a str,
    pub from: Option<&'a str>,
    pub body: &'a str,
    /// The request's `MessagingServiceSid`, if it named one.
    pub messaging_service_sid: Option<&'a str>,
    /// The account's default `MG…`, used when the request named no Messaging Service.
    pub default_service_sid: &'a str,
}

impl NewMessage<'_> {
    /// The stored Message, created `now`, with exactly the fields of the spec's `create`
    /// example: `status` `queued` (or `accepted` with a Messaging Service, as Twilio's
    /// status guide says), `error_code`/`error_message`/`price`/`price_unit` null, dates in
    /// RFC 2822 with `date_sent` = `date_created` (as in the example), counts as strings.
    pub(crate) fn create(&self, now: DateTime<Utc>) -> TwilioMessage {
        let sid = new_sid("SM");
        let date = rfc2822(now);
        let uri = format!(
            "/{API_VERSION}/Accounts/{}/Messages/{sid}.json",
            self.account_sid
        );
        let media = format!(
            "/{API_VERSION}/Accounts/{}/Messages/{sid}/Media.json",
            self.account_sid
        );
        let via_service = self.messaging_service_sid.is_some();
        // "For messages sent via a Messaging Service, `num_segments` is initially `0`, since a
        // sender hasn't yet been assigned": only when the service is to pick the sender.
        let segments = if via_service && self.from.is_none() {
            0
        } else {
            num_segments(self.body)
        };
        let json = json!({
            "account_sid": self.account_sid,
            "api_version": API_VERSION,
            "body": self.body,
            "date_created": date,
            "date_sent": date,
            "date_updated": date,
            "direction": "outbound-api",
            "error_code": null,
            "error_message": null,
            "from": self.from,
            "num_media": "0",
            "num_segments": segments.to_string(),
            "price": null,
            "price_unit": null,
            "messaging_service_sid": self.messaging_service_sid.unwrap_or(self.default_service_sid),
            "sid": sid,
            "status": if via_service { "accepted" } else { "queued" },
            "subresource_uris": { "media": media },
            "to": self.to,
            "uri": uri,
        });
        TwilioMessage {
            account_sid: self.account_sid.to_string(),
            sid,
            to: self.to.to_string(),
            from: self.from.map(str::to_string),
            date_sent: now,
            json,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn e164_is_a_plus_then_2_to_15_digits_not_starting_with_0() {
        for ok in ["+14155552671", "+15005550006", "+12", "+123456789012345"] {
            assert!(is_e164(ok), "{ok}");
        }
        for bad in [
            "14155552671",
            "+1",
            "+1234567890123456",
            "+04155552671",
            " 14155552671",
            "+1 415 555 2671",
            "+1-415",
            "whatsapp:+14155552671",
            "",
        ] {
            assert!(!is_e164(bad), "{bad}");
        }
    }

    #[test]
    fn sids_are_a_prefix_and_32_hex_digits() {
        let sid = new_sid("SM");
        assert!(is_sid("SM", &sid), "{sid}");
        assert!(is_sid("AC", "ACaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"));
        assert!(is_sid("AC", "ACAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA"));
        assert!(!is_sid("AC", "ACaaaa"));
        assert!(!is_sid("AC", "ACgggggggggggggggggggggggggggggggg"));
        assert!(!is_sid("AC", "SKaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"));
    }

    #[test]
    fn dates_are_rfc_2822_in_utc_as_in_twilios_example() {
        let t = DateTime::parse_from_rfc3339("2023-08-24T05:01:45Z")
            .unwrap()
            .with_timezone(&Utc);
        assert_eq!(rfc2822(t), "Thu, 24 Aug 2023 05:01:45 +0000");
        assert_eq!(
            DateTime::parse_from_rfc2822(&rfc2822(t)).unwrap(),
            t.fixed_offset()
        );
    }

    #[test]
    fn segments_follow_gsm7_and_ucs2_limits() {
        assert_eq!(GSM7_BASIC.chars().count(), 127);
        assert_eq!(num_segments("Your flight is booked"), 1);
        assert_eq!(num_segments(&"a".repeat(160)), 1);
        assert_eq!(num_segments(&"a".repeat(161)), 2);
        assert_eq!(num_segments(&"a".repeat(306)), 2);
        assert_eq!(num_segments(&"a".repeat(307)), 3);
        // Extension characters take two septets.
        assert_eq!(num_segments(&"€".repeat(80)), 1);
        assert_eq!(num_segments(&"€".repeat(81)), 2);
        // One character outside GSM-7 makes the whole body UCS-2.
        assert_eq!(num_segments(&format!("{}👍", "a".repeat(68))), 1);
        assert_eq!(num_segments(&format!("{}👍", "a".repeat(69))), 2);
        assert_eq!(num_segments(&"é".repeat(160)), 1, "é is in GSM-7");
    }

    #[test]
    fn errors_have_twilios_shape_or_no_code_at_all() {
        let e = TwilioError::new(
            400,
            21211,
            "The 'To' number 123 is not a valid phone number.",
        );
        assert_eq!(
            e.body(),
            json!({
                "code": 21211,
                "message": "The 'To' number 123 is not a valid phone number.",
                "more_info": "https://www.twilio.com/docs/errors/21211",
                "status": 400
            })
        );
        assert_eq!(
            TwilioError::bad_request("PageSize must be 1 to 1000").body(),
            json!({"message": "PageSize must be 1 to 1000", "status": 400})
        );
    }
}
