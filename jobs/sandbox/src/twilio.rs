//! Twilio Programmable Messaging: create and list Messages
//! (`/2010-04-01/Accounts/{AccountSid}/Messages.json`), with Twilio's Basic authentication,
//! validation codes, test-credential magic numbers and error shape.
//!
//! Twilio has no idempotency key on Message create: every accepted POST creates a Message, so a
//! client that is unsure whether one was created lists the recipient's Messages of the day
//! before sending again. Phone numbers and bodies are never logged; only SIDs and counts are.

use axum::{
    body::Bytes,
    extract::{Path, RawQuery, State},
    http::{HeaderMap, StatusCode},
    response::Response,
    routing::get,
    Router,
};
use chrono::{NaiveDate, Utc};
use serde_json::{json, Value};

use crate::{
    handle::Sandbox,
    state::{Counters, State as SandboxState},
    twilio_objects::{
        is_e164, is_sid, new_sid, NewMessage, TwilioError, TwilioMessage, API_VERSION, MAGIC_FROM,
        MAGIC_TO, MAX_BODY_CHARS,
    },
    util::{basic_auth, json_response, parse_form},
};

pub(crate) fn routes() -> Router<Sandbox> {
    Router::new().route(
        "/2010-04-01/Accounts/{account_sid}/Messages.json",
        get(list_messages).post(create_message),
    )
}

fn respond(status: StatusCode, body: &Value) -> Response {
    json_response(status, serde_json::to_vec(body).expect("json serializes"))
}

fn error_response(e: &TwilioError) -> Response {
    respond(
        StatusCode::from_u16(e.status).unwrap_or(StatusCode::BAD_REQUEST),
        &e.body(),
    )
}

/// What every request gets during an outage ([`crate::Sandbox::set_outage`]): 429 → 20429
/// "Too Many Requests"; 503 → 20503 "Service unavailable"; any other server error → 20500
/// "Internal Server Error".
pub(crate) fn outage_response(status: StatusCode) -> Response {
    let (code, message) = match status.as_u16() {
        429 => (20429, "Too Many Requests"),
        503 => (20503, "Service unavailable"),
        _ => (20500, "Internal Server Error"),
    };
    error_response(&TwilioError::new(status.as_u16(), code, message))
}

/// HTTP Basic: the username is the path's Account SID (`AC` + 32 hex), or an API key SID
/// (`SK` + 32 hex) while the path still names the account; the password (Auth Token or API key
/// secret) is not empty. Anything else is Twilio's 401 20003.
fn authenticate(headers: &HeaderMap, account_sid: &str) -> Result<(), TwilioError> {
    let ok = is_sid("AC", account_sid)
        && basic_auth(headers).is_some_and(|(user, password)| {
            (user == account_sid || is_sid("SK", &user)) && !password.is_empty()
        });
    if ok {
        Ok(())
    } else {
        Err(TwilioError::new(401, 20003, "Authenticate"))
    }
}

/// The first value of `key`, unless it is empty (Twilio treats `To=` like no `To`).
fn param<'a>(form: &'a [(String, String)], key: &str) -> Option<&'a str> {
    form.iter()
        .find(|(k, _)| k == key)
        .map(|(_, v)| v.as_str())
        .filter(|v| !v.is_empty())
}

/// `POST /2010-04-01/Accounts/{AccountSid}/Messages.json`.
async fn create_message(
    State(sb): State<Sandbox>,
    Path(account_sid): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    match create(&sb, &account_sid, &headers, &body) {
        Ok(message) => {
            tracing::info!(sms.sid = %message["sid"].as_str().unwrap_or_default(), "sandbox sms created");
            respond(StatusCode::CREATED, &message)
        }
        Err(e) => {
            sb.lock().counters.sms_refused += 1;
            tracing::debug!(twilio.code = ?e.code, "sandbox sms refused");
            error_response(&e)
        }
    }
}

/// Checks the request in this order (Twilio documents none): authentication; `To` present
/// (21604) and E.164 (21211); a sender, `From` or a `MessagingServiceSid` shaped `MG` + 32 hex
/// (21603); a `Body` (21602, or 21619 with a Messaging Service and no `From`) of at most 1,600
/// characters (21617); `To` ≠ `From` (21211); the magic senders, then the magic recipients.
/// Only then is a Message created.
fn create(
    sb: &Sandbox,
    account_sid: &str,
    headers: &HeaderMap,
    body: &[u8],
) -> Result<Value, TwilioError> {
    authenticate(headers, account_sid)?;
    // Only form bodies carry parameters (a JSON body has no `To`: Twilio's 21604 page names
    // "not formatted as application/x-www-form-urlencoded" as a cause).
    let form = parse_form(&String::from_utf8_lossy(body));
    let Some(to) = param(&form, "To") else {
        return Err(TwilioError::new(
            400,
            21604,
            "A 'To' phone number is required.",
        ));
    };
    if !is_e164(to) {
        return Err(invalid_to(to));
    }
    let from = param(&form, "From");
    let service = param(&form, "MessagingServiceSid");
    if service.is_some_and(|s| !is_sid("MG", s)) || (from.is_none() && service.is_none()) {
        return Err(TwilioError::new(
            400,
            21603,
            "A 'From' or 'MessagingServiceSid' parameter is required to send a message",
        ));
    }
    let Some(text) = param(&form, "Body") else {
        return Err(if service.is_some() && from.is_none() {
            TwilioError::new(
                400,
                21619,
                "A Message Body, Media URL or Content SID is required",
            )
        } else {
            TwilioError::new(400, 21602, "Message body is required.")
        });
    };
    if text.chars().count() > MAX_BODY_CHARS {
        return Err(TwilioError::new(
            400,
            21617,
            "The concatenated message body exceeds the 1600 character limit.",
        ));
    }
    if from == Some(to) {
        return Err(invalid_to(to));
    }
    if let Some(from) = from {
        if let Some((_, code, message)) = MAGIC_FROM.iter().find(|(n, ..)| *n == from) {
            return Err(TwilioError::new(400, *code, *message));
        }
    }
    if let Some((_, code, message)) = MAGIC_TO.iter().find(|(n, ..)| *n == to) {
        return Err(if *code == 21211 {
            invalid_to(to)
        } else {
            TwilioError::new(400, *code, *message)
        });
    }

    let mut st = sb.lock();
    let default_service_sid = st
        .twilio_default_services
        .entry(account_sid.to_string())
        .or_insert_with(|| new_sid("MG"))
        .clone();
    let message = NewMessage {
        account_sid,
        to,
        from,
        body: text,
        messaging_service_sid: service,
        default_service_sid: &default_service_sid,
    }
    .create(Utc::now());
    let json = message.json.clone();
    st.twilio_messages.push(message);
    st.counters.sms_created += 1;
    Counters::bump(&mut st.counters.sms_by_to, to);
    Ok(json)
}

/// 21211 in the words of Twilio's documented example.
fn invalid_to(to: &str) -> TwilioError {
    TwilioError::new(
        400,
        21211,
        format!("The 'To' number {to} is not a valid phone number."),
    )
}

/// The default and the largest `PageSize` (Twilio: "The default is 50, and the maximum is
/// 1000").
const DEFAULT_PAGE_SIZE: usize = 50;
const MAX_PAGE_SIZE: usize = 1000;

/// The filters and page a list request asks for.
struct ListQuery {
    to: Option<String>,
    from: Option<String>,
    /// `DateSent=` (that day), `DateSent<=` (on or before), `DateSent>=` (on or after).
    on: Option<NaiveDate>,
    on_or_before: Option<NaiveDate>,
    on_or_after: Option<NaiveDate>,
    page_size: usize,
    page: usize,
    token: Option<PageToken>,
}

/// Where a page starts: `PA<sid>` the page after the Message `sid` (what `next_page_uri`
/// carries), `PB<sid>` the page before it (`previous_page_uri`). Twilio's tokens are opaque;
/// these only look like them.
enum PageToken {
    After(String),
    Before(String),
}

impl PageToken {
    fn encode(&self) -> String {
        match self {
            PageToken::After(sid) => format!("PA{sid}"),
            PageToken::Before(sid) => format!("PB{sid}"),
        }
    }

    fn parse(s: &str) -> Option<PageToken> {
        if let Some(sid) = s.strip_prefix("PA") {
            is_sid("SM", sid).then(|| PageToken::After(sid.to_string()))
        } else {
            let sid = s.strip_prefix("PB")?;
            is_sid("SM", sid).then(|| PageToken::Before(sid.to_string()))
        }
    }
}

/// `YYYY-MM-DD`, the one `DateSent` format the sandbox reads.
fn date(key: &str, v: &str) -> Result<NaiveDate, TwilioError> {
    (v.len() == 10)
        .then(|| NaiveDate::parse_from_str(v, "%Y-%m-%d").ok())
        .flatten()
        .ok_or_else(|| {
            TwilioError::bad_request(format!(
                "{key} must be a date written YYYY-MM-DD (the only format the sandbox reads), not {v:?}"
            ))
        })
}

impl ListQuery {
    fn parse(query: &str) -> Result<ListQuery, TwilioError> {
        let form = parse_form(query);
        let get = |k: &str| param(&form, k);
        let page_size = match get("PageSize") {
            None => DEFAULT_PAGE_SIZE,
            Some(v) => v
                .parse::<usize>()
                .ok()
                .filter(|n| (1..=MAX_PAGE_SIZE).contains(n))
                .ok_or_else(|| {
                    TwilioError::bad_request(format!(
                        "PageSize must be a whole number from 1 to {MAX_PAGE_SIZE}, not {v:?}"
                    ))
                })?,
        };
        let page = match get("Page") {
            None => 0,
            Some(v) => v.parse::<usize>().map_err(|_| {
                TwilioError::bad_request(format!("Page must be a whole number, not {v:?}"))
            })?,
        };
        let token = match get("PageToken") {
            None => None,
            Some(v) => Some(PageToken::parse(v).ok_or_else(|| {
                TwilioError::bad_request(format!("PageToken {v:?} is not one this API gave"))
            })?),
        };
        Ok(ListQuery {
            to: get("To").map(str::to_string),
            from: get("From").map(str::to_string),
            on: get("DateSent").map(|v| date("DateSent", v)).transpose()?,
            on_or_before: get("DateSent<").map(|v| date("DateSent<", v)).transpose()?,
            on_or_after: get("DateSent>").map(|v| date("DateSent>", v)).transpose()?,
            page_size,
            page,
            token,
        })
    }

    fn matches(&self, account_sid: &str, m: &TwilioMessage) -> bool {
        let day = m.date_sent.date_naive();
        m.account_sid == account_sid
            && self.to.as_ref().is_none_or(|to| *to == m.to)
            && self
                .from
                .as_ref()
                .is_none_or(|f| m.from.as_ref() == Some(f))
            && self.on.is_none_or(|d| day == d)
            && self.on_or_before.is_none_or(|d| day <= d)
            && self.on_or_after.is_none_or(|d| day >= d)
    }

    /// The list path with the filters, `PageSize` and `Page` (and a token), in the order and
    /// encoding of Twilio's `readFullPage1` example.
    fn uri(&self, account_sid: &str, page: usize, token: Option<&PageToken>) -> String {
        let mut q = form_urlencoded::Serializer::new(String::new());
        let date = |d: NaiveDate| d.format("%Y-%m-%d").to_string();
        if let Some(to) = &self.to {
            q.append_pair("To", to);
        }
        if let Some(from) = &self.from {
            q.append_pair("From", from);
        }
        for (key, d) in [
            ("DateSent", self.on),
            ("DateSent<", self.on_or_before),
            ("DateSent>", self.on_or_after),
        ] {
            if let Some(d) = d {
                q.append_pair(key, &date(d));
            }
        }
        q.append_pair("PageSize", &self.page_size.to_string());
        q.append_pair("Page", &page.to_string());
        if let Some(t) = token {
            q.append_pair("PageToken", &t.encode());
        }
        format!(
            "/{API_VERSION}/Accounts/{account_sid}/Messages.json?{}",
            q.finish()
        )
    }
}

/// `GET /2010-04-01/Accounts/{AccountSid}/Messages.json`: the account's Messages that match
/// every filter given, newest first, one page of them in Twilio's list envelope.
async fn list_messages(
    State(sb): State<Sandbox>,
    Path(account_sid): Path<String>,
    headers: HeaderMap,
    RawQuery(query): RawQuery,
) -> Response {
    let result = authenticate(&headers, &account_sid)
        .and_then(|()| ListQuery::parse(query.as_deref().unwrap_or("")))
        .and_then(|q| list_page(&sb.lock(), &account_sid, &q));
    match result {
        Ok(page) => respond(StatusCode::OK, &page),
        Err(e) => error_response(&e),
    }
}

fn list_page(st: &SandboxState, account_sid: &str, q: &ListQuery) -> Result<Value, TwilioError> {
    // Stored oldest first, so newest first is the reverse (created under one lock, in order).
    let matching: Vec<&TwilioMessage> = st
        .twilio_messages
        .iter()
        .rev()
        .filter(|m| q.matches(account_sid, m))
        .collect();
    let position = |sid: &str| {
        matching.iter().position(|m| m.sid == sid).ok_or_else(|| {
            TwilioError::bad_request(format!(
                "PageToken names {sid}, which is not among the Messages listed"
            ))
        })
    };
    let (from, to) = match &q.token {
        None => (0, q.page_size.min(matching.len())),
        Some(PageToken::After(sid)) => {
            let start = position(sid)? + 1;
            (start, (start + q.page_size).min(matching.len()))
        }
        Some(PageToken::Before(sid)) => {
            let end = position(sid)?;
            (end.saturating_sub(q.page_size), end)
        }
    };
    let page = &matching[from..to];
    let next = (to < matching.len())
        .then(|| page.last())
        .flatten()
        .map(|m| {
            q.uri(
                account_sid,
                q.page + 1,
                Some(&PageToken::After(m.sid.clone())),
            )
        });
    let previous = (from > 0).then(|| page.first()).flatten().map(|m| {
        q.uri(
            account_sid,
            q.page.saturating_sub(1),
            Some(&PageToken::Before(m.sid.clone())),
        )
    });
    let start = q.page * q.page_size;
    Ok(json!({
        "end": start + page.len().saturating_sub(1),
        "first_page_uri": q.uri(account_sid, 0, None),
        "next_page_uri": next,
        "page": q.page,
        "page_size": q.page_size,
        "previous_page_uri": previous,
        "start": start,
        "uri": q.uri(account_sid, q.page, q.token.as_ref()),
        "messages": page.iter().map(|m| m.json.clone()).collect::<Vec<_>>(),
    }))
}
