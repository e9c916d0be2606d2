//! Who may use the console, and the sessions that prove it.
//!
//! - **Users** come from `[console.users.<name>]`: a role and an Argon2 hash of the password
//!   (never the password). The role is read from the configuration at every request, so a
//!   removed user or a changed role takes effect at once, sessions or not.
//! - **Sessions** live in `fleet_console_sessions` (this module owns the table): a login
//!   stores the SHA-256 of a random 256-bit token and gives the token to the browser in a
//!   `__Host-` cookie that is `Secure`, `HttpOnly` and `SameSite=Strict`. A session ends at its
//!   absolute expiry (`console.session_ttl`) or at sign-out.
//! - **CSRF**: every state-changing request (anything but GET and HEAD) must carry the
//!   session's synchronizer token, as the form field `csrf` or the `X-CSRF-Token` header; the
//!   login form, before any session exists, carries a token that must match its own cookie.
//!   [`require_csrf`] checks it for every route it wraps, so no handler can forget to.
//! - **Failed logins** are counted in `fleet_console_login_failures` (this module owns it):
//!   per name from an address, per name, and per address for unknown names ([`LoginLimiter`]);
//!   beyond the limits a login is refused with 429 (before any hash is computed). Every
//!   refusal is logged with the reason and the client address, the user name only if it is a
//!   configured one (a mistyped name may be a password or an e-mail address), and never the
//!   password.
//! - A session also ends after `console.session_idle` without a request, and a user has at
//!   most `console.max_sessions_per_user` (a new sign-in ends the oldest).
//! - A state-changing request whose `Sec-Fetch-Site` or `Origin` says it came from another
//!   site is refused (403) beside the CSRF token check.

use std::{
    net::SocketAddr,
    sync::OnceLock,
    time::Duration,
};

use argon2::{
    password_hash::{phc::PasswordHash, PasswordHasher, PasswordVerifier},
    Argon2,
};
use axum::{
    body::Body,
    extract::{ConnectInfo, Query, Request, State},
    http::{header, Method, StatusCode},
    middleware::Next,
    response::{IntoResponse, Redirect, Response},
    Form,
};
use axum_extra::extract::cookie::{Cookie, CookieJar, SameSite};
use chrono::{DateTime, Utc};
use maud::html;
use rand::RngCore;
use serde::Deserialize;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use super::{
    session::Session,
    templates::{self, Nav},
    ConsoleState,
};
use crate::config::ConsoleSettings;

/// The session cookie. `__Host-`: the browser keeps it only if it is `Secure`, has `Path=/`
/// and no `Domain`, so no other host or path can plant or read it.
pub const SESSION_COOKIE: &str = "__Host-fleet_console";
/// The login form's CSRF cookie (double submit: the form must carry the same value).
pub const LOGIN_COOKIE: &str = "__Host-fleet_console_login";
/// The header htmx requests (or scripts) may carry the CSRF token in.
pub const CSRF_HEADER: &str = "x-csrf-token";
/// Largest form the CSRF check reads (the console's forms are a few hundred bytes).
const MAX_FORM_BYTES: usize = 64 * 1024;

/// The Argon2id hash (PHC string) of `password`, with a random salt and the crate's default
/// (OWASP-recommended) cost: what `[console.users.<name>] password_hash` takes.
pub fn hash_password(password: &str) -> anyhow::Result<String> {
    Argon2::default()
        .hash_password(password.as_bytes())
        .map(|h| h.to_string())
        .map_err(|e| anyhow::anyhow!("hashing the password failed: {e}"))
}

/// Whether `password` matches the PHC string `hash` (its own parameters and salt).
fn verify_password(hash: &str, password: &str) -> bool {
    PasswordHash::new(hash)
        .map(|h| {
            Argon2::default()
                .verify_password(password.as_bytes(), &h)
                .is_ok()
        })
        .unwrap_or(false)
}

/// A hash no password matches, verified for unknown users so that a login for a name that
/// does not exist costs as long as one for a name that does.
fn decoy_hash() -> &'static str {
    static DECOY: OnceLock<String> = OnceLock::new();
    DECOY.get_or_init(|| hash_password(&random_hex()).expect("hashing a random password"))
}

/// 32 random bytes as 64 hex digits.
fn random_hex() -> String {
    let mut b = [0u8; 32];
    rand::rngs::OsRng.fill_bytes(&mut b);
    hex::encode(b)
}

fn sha256(token: &str) -> Vec<u8> {
    Sha256::digest(token.as_bytes()).to_vec()
}

fn same(a: &str, b: &str) -> bool {
    a.len() == b.len() && bool::from(a.as_bytes().ct_eq(b.as_bytes()))
}

// ─── the sessions table ─────────────────────────────────────────────────────────────────────

/// ConsoleSessionInsert: a session for `user` until `expires_at`, stored by its token's hash.
async fn session_insert(
    conn: impl sqlx::PgExecutor<'_>,
    token: &str,
    user: &str,
    csrf: &str,
    ttl: Duration,
) -> Result<DateTime<Utc>, sqlx::Error> {
    sqlx::query_scalar(
        "INSERT INTO fleet_console_sessions (token_sha256, username, csrf_token, expires_at)
         VALUES ($1, $2, $3, now() + $4 * interval '1 millisecond')
         RETURNING expires_at",
    )
    .bind(sha256(token))
    .bind(user)
    .bind(csrf)
    .bind(ttl.as_millis() as i64)
    .fetch_one(conn)
    .await
}

/// ConsoleSessionGet: the user and CSRF token of the session of `token`, unless it expired or
/// saw no request for `idle`; a request marks it seen (written at most once a minute, so a page
/// that refreshes every two seconds does not write a row each time).
async fn session_get(
    db: &jobs::Db,
    token: &str,
    idle: Duration,
) -> Result<Option<(String, String)>, sqlx::Error> {
    let hash = sha256(token);
    let row: Option<(String, String, bool)> = sqlx::query_as(
        "SELECT username, csrf_token, last_seen_at < now() - interval '1 minute'
         FROM fleet_console_sessions
         WHERE token_sha256 = $1 AND expires_at > now()
           AND last_seen_at > now() - $2 * interval '1 millisecond'",
    )
    .bind(&hash)
    .bind(idle.as_millis() as i64)
    .fetch_optional(db)
    .await?;
    let Some((user, csrf, stale)) = row else {
        return Ok(None);
    };
    if stale {
        sqlx::query("UPDATE fleet_console_sessions SET last_seen_at = now() WHERE token_sha256 = $1")
            .bind(&hash)
            .execute(db)
            .await?;
    }
    Ok(Some((user, csrf)))
}

/// ConsoleSessionCap: ends `user`'s oldest sessions so that at most `keep` remain (before a new
/// sign-in adds one).
async fn session_cap(
    conn: impl sqlx::PgExecutor<'_>,
    user: &str,
    keep: u32,
) -> Result<u64, sqlx::Error> {
    let r = sqlx::query(
        "DELETE FROM fleet_console_sessions s
         WHERE s.username = $1 AND s.token_sha256 NOT IN (
             SELECT token_sha256 FROM fleet_console_sessions
             WHERE username = $1 ORDER BY created_at DESC, token_sha256 LIMIT $2)",
    )
    .bind(user)
    .bind(i64::from(keep))
    .execute(conn)
    .await?;
    Ok(r.rows_affected())
}

/// ConsoleSessionDelete: ends the session of `token` (sign-out).
async fn session_delete(conn: impl sqlx::PgExecutor<'_>, token: &str) -> Result<(), sqlx::Error> {
    sqlx::query("DELETE FROM fleet_console_sessions WHERE token_sha256 = $1")
        .bind(sha256(token))
        .execute(conn)
        .await?;
    Ok(())
}

/// ConsoleSessionDeleteExpired: forgets sessions past their expiry (run at each login).
async fn session_delete_expired(conn: impl sqlx::PgExecutor<'_>) -> Result<u64, sqlx::Error> {
    let r = sqlx::query("DELETE FROM fleet_console_sessions WHERE expires_at <= now()")
        .execute(conn)
        .await?;
    Ok(r.rows_affected())
}

// ─── failed logins ──────────────────────────────────────────────────────────────────────────

/// Failed sign-ins, counted in `fleet_console_login_failures` (this module owns the table), so
/// every `serve` process shares them and a restart forgets none. Within `window`, a sign-in is
/// refused before any hash is computed when
/// - **this name from this address** failed `max` times: one person's typos lock out only
///   themselves, never a colleague behind the same proxy or SSH tunnel;
/// - **this name from anywhere** failed `4 × max` times: a password guessed from many
///   addresses (an attacker can lock a name out this way; the limit is higher for it);
/// - **this address, for names that are not users'**, failed `4 × max` times: names guessed
///   from one address. A configured user's failures never count here, so they block no one
///   else.
///
/// Hand-written rather than `governor`: a login limiter must ask "is this key over its
/// failures?" without spending a cell (successful logins must not count), which governor's
/// keyed limiter cannot do (docs/decisions.md 25).
pub struct LoginLimiter {
    max: i64,
    window: Duration,
}

/// Why the limiter refuses a sign-in (logged, never shown: the page says only "too many").
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Throttled {
    NameFromAddress,
    Name,
    Address,
}

impl Throttled {
    fn as_str(self) -> &'static str {
        match self {
            Self::NameFromAddress => "too many failures for this name from this address",
            Self::Name => "too many failures for this name",
            Self::Address => "too many failures for unknown names from this address",
        }
    }
}

/// How many times `max` a name from anywhere, or an address for unknown names, may fail.
const WIDER_LIMIT: i64 = 4;

impl LoginLimiter {
    /// At most `max` failures per name and address within `window` (see the type).
    pub fn new(max: u32, window: Duration) -> Self {
        Self {
            max: i64::from(max),
            window,
        }
    }

    /// ConsoleLoginThrottled: whether a sign-in as `user` (a configured user's name or not)
    /// from `address` is refused now.
    async fn throttled(
        &self,
        conn: impl sqlx::PgExecutor<'_>,
        user: &str,
        known_user: bool,
        address: std::net::IpAddr,
    ) -> Result<Option<Throttled>, sqlx::Error> {
        let (pair, name, unknown_from_address): (i64, i64, i64) = sqlx::query_as(
            "SELECT count(*) FILTER (WHERE user_sha256 = $1 AND address = $2::inet),
                    count(*) FILTER (WHERE user_sha256 = $1),
                    count(*) FILTER (WHERE address = $2::inet AND NOT known_user)
             FROM fleet_console_login_failures
             WHERE failed_at > now() - $3 * interval '1 millisecond'
               AND (user_sha256 = $1 OR address = $2::inet)",
        )
        .bind(sha256(user))
        .bind(address.to_string())
        .bind(self.window.as_millis() as i64)
        .fetch_one(conn)
        .await?;
        Ok(if pair >= self.max {
            Some(Throttled::NameFromAddress)
        } else if name >= WIDER_LIMIT * self.max {
            Some(Throttled::Name)
        } else if !known_user && unknown_from_address >= WIDER_LIMIT * self.max {
            Some(Throttled::Address)
        } else {
            None
        })
    }

    /// ConsoleLoginFailed: counts one failed sign-in, and forgets failures older than a day
    /// (beyond any window a configuration allows to matter).
    async fn failed(
        &self,
        db: &jobs::Db,
        user: &str,
        address: std::net::IpAddr,
        known_user: bool,
    ) -> Result<(), sqlx::Error> {
        sqlx::query(
            "WITH forget AS (
                 DELETE FROM fleet_console_login_failures
                 WHERE failed_at < now() - greatest($4 * interval '1 millisecond', interval '1 day'))
             INSERT INTO fleet_console_login_failures (user_sha256, address, known_user)
             VALUES ($1, $2::inet, $3)",
        )
        .bind(sha256(user))
        .bind(address.to_string())
        .bind(known_user)
        .bind(self.window.as_millis() as i64)
        .execute(db)
        .await?;
        Ok(())
    }
}

// ─── middleware ─────────────────────────────────────────────────────────────────────────────

/// Lets a request through only with a live session of a configured user, which it puts in
/// the request's extensions. Otherwise: a page load is sent to the login page (with where it
/// was going), an htmx request is told to go there, anything else is 401.
pub async fn require_session(
    State(st): State<ConsoleState>,
    jar: CookieJar,
    mut req: Request,
    next: Next,
) -> Response {
    match session_of(&st, &jar).await {
        Ok(Some(s)) => {
            req.extensions_mut().insert(s);
            next.run(req).await
        }
        Ok(None) => refuse_unauthenticated(&req),
        Err(e) => {
            tracing::error!(error = %e, "console: reading the session failed");
            templates::error_page(
                StatusCode::SERVICE_UNAVAILABLE,
                "the database did not answer; try again",
                None,
            )
        }
    }
}

async fn session_of(st: &ConsoleState, jar: &CookieJar) -> Result<Option<Session>, sqlx::Error> {
    let Some(token) = jar.get(SESSION_COOKIE).map(|c| c.value().to_owned()) else {
        return Ok(None);
    };
    if token.len() != 64 {
        return Ok(None);
    }
    let Some((user, csrf)) = session_get(&st.db, &token, st.settings.session_idle).await? else {
        return Ok(None);
    };
    // The configuration decides, now: a removed user's sessions are dead.
    Ok(st.settings.users.get(&user).map(|u| Session {
        user,
        role: u.role,
        csrf,
    }))
}

fn refuse_unauthenticated(req: &Request) -> Response {
    let to = login_url(req.uri().path_and_query().map(|p| p.as_str()));
    if req.headers().contains_key("hx-request") {
        return (StatusCode::UNAUTHORIZED, [("hx-redirect", to)]).into_response();
    }
    if req.method() == Method::GET || req.method() == Method::HEAD {
        return Redirect::to(&to).into_response();
    }
    templates::error_page(
        StatusCode::UNAUTHORIZED,
        "sign in first: this request carries no valid session",
        None,
    )
}

fn login_url(next: Option<&str>) -> String {
    match next.and_then(sign_in_target).filter(|n| n != "/ui/") {
        Some(n) => format!(
            "/ui/login?next={}",
            form_urlencoded::byte_serialize(n.as_bytes()).collect::<String>()
        ),
        None => "/ui/login".to_owned(),
    }
}

/// A path of the console (never another site: `//host` and `/\host` are refused), with no
/// control character (a CR or LF cannot go into a `Location` header).
fn is_local_path(p: &str) -> bool {
    p.starts_with("/ui/")
        && !p.starts_with("//")
        && !p.contains('\\')
        && !p.contains("://")
        && !p.chars().any(char::is_control)
}

/// Where signing in may lead, from a `next`: a console page, or `None` (the overview). A live
/// fragment that htmx polls (its session ran out while the page was open) is not a page: the
/// page it belongs to is taken instead.
fn sign_in_target(next: &str) -> Option<String> {
    if !is_local_path(next) {
        return None;
    }
    let path = next.split_once('?').map_or(next, |(p, _)| p);
    Some(match LIVE_FRAGMENTS.iter().find(|(f, _)| *f == path) {
        Some((_, page)) => (*page).to_owned(),
        None => next.to_owned(),
    })
}

/// The fragments htmx refreshes, and the page each belongs to.
const LIVE_FRAGMENTS: [(&str, &str); 1] = [("/ui/overview/live", "/ui/")];

/// Refuses (403) a state-changing request that does not carry its session's CSRF token, as
/// the form field `csrf` or the `X-CSRF-Token` header. Runs after [`require_session`].
pub async fn require_csrf(req: Request, next: Next) -> Response {
    if matches!(*req.method(), Method::GET | Method::HEAD) {
        return next.run(req).await;
    }
    if let Some(why) = cross_site(&req) {
        tracing::warn!(path = %req.uri().path(), reason = why, "console: a cross-site request was refused");
        return templates::error_page(
            StatusCode::FORBIDDEN,
            "this request came from another site: act from the console's own pages",
            req.extensions().get::<Session>(),
        );
    }
    let Some(session) = req.extensions().get::<Session>().cloned() else {
        return templates::error_page(StatusCode::UNAUTHORIZED, "sign in first", None);
    };
    let (parts, body) = req.into_parts();
    let bytes = match axum::body::to_bytes(body, MAX_FORM_BYTES).await {
        Ok(b) => b,
        Err(_) => {
            return templates::error_page(
                StatusCode::PAYLOAD_TOO_LARGE,
                "the form is larger than the console accepts",
                Some(&session),
            )
        }
    };
    let from_header = parts
        .headers
        .get(CSRF_HEADER)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let from_form = || {
        form_urlencoded::parse(&bytes)
            .find(|(k, _)| k == "csrf")
            .map(|(_, v)| v.into_owned())
    };
    let given = from_header.or_else(from_form).unwrap_or_default();
    if !same(&given, &session.csrf) {
        tracing::warn!(
            user = %session.user,
            path = %parts.uri.path(),
            "console: a state-changing request without its CSRF token was refused"
        );
        return templates::error_page(
            StatusCode::FORBIDDEN,
            "this request does not carry the page's CSRF token: reload the page and try again",
            Some(&session),
        );
    }
    next.run(Request::from_parts(parts, Body::from(bytes)))
        .await
}

/// Why a state-changing request is refused as cross-site, beside its CSRF token: a browser's
/// `Sec-Fetch-Site` that is neither `same-origin` nor `none`, or an `Origin` (other than
/// `null`) whose host is not the `Host` the request was sent to. A request without either
/// header (a script, an old browser) is left to the token.
fn cross_site(req: &Request) -> Option<&'static str> {
    let h = req.headers();
    if let Some(site) = h.get("sec-fetch-site").and_then(|v| v.to_str().ok()) {
        if !matches!(site, "same-origin" | "none") {
            return Some("sec-fetch-site");
        }
    }
    let origin = h.get(header::ORIGIN)?.to_str().ok()?;
    // A browser sends `Origin: null` on a form post from a page whose referrer policy is
    // `no-referrer` (the console's own): that says nothing about the site; Sec-Fetch-Site did.
    if origin == "null" {
        return None;
    }
    let host = h.get(header::HOST).and_then(|v| v.to_str().ok());
    let origin_host = origin.split_once("://").map(|(_, rest)| rest);
    (origin_host.is_none() || origin_host != host).then_some("origin")
}

/// Lets only operators through (the action routes); a viewer gets 403.
pub async fn require_operator(req: Request, next: Next) -> Response {
    match req.extensions().get::<Session>() {
        Some(s) if s.can_act() => next.run(req).await,
        Some(s) => {
            let s = s.clone();
            tracing::warn!(user = %s.user, path = %req.uri().path(), "console: a viewer tried to act");
            templates::error_page(
                StatusCode::FORBIDDEN,
                "your role is viewer: only operators can act",
                Some(&s),
            )
        }
        None => templates::error_page(StatusCode::UNAUTHORIZED, "sign in first", None),
    }
}

/// Security headers on every console response: a strict CSP (scripts and styles from the
/// console only; no framing), no sniffing, no referrer, and no caching of pages.
pub async fn security_headers(req: Request, next: Next) -> Response {
    let is_asset = req.uri().path().starts_with("/ui/static/");
    let mut res = next.run(req).await;
    let h = res.headers_mut();
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        header::HeaderValue::from_static(
            "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; \
             connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
        ),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        header::HeaderValue::from_static("nosniff"),
    );
    h.insert(
        header::REFERRER_POLICY,
        header::HeaderValue::from_static("no-referrer"),
    );
    h.insert(
        header::X_FRAME_OPTIONS,
        header::HeaderValue::from_static("DENY"),
    );
    if !is_asset {
        h.insert(
            header::CACHE_CONTROL,
            header::HeaderValue::from_static("no-store"),
        );
    }
    res
}

// ─── login and sign-out ─────────────────────────────────────────────────────────────────────

/// `?next=` of the login page.
#[derive(Debug, Deserialize)]
pub struct LoginQuery {
    next: Option<String>,
}

/// `GET /ui/login`: the form, with a fresh login CSRF token in a cookie and a hidden field; a
/// signed-in user is sent on instead.
pub async fn login_page(
    State(st): State<ConsoleState>,
    jar: CookieJar,
    Query(q): Query<LoginQuery>,
) -> Response {
    // Signed in already: straight to where the link was going.
    if let Ok(Some(_)) = session_of(&st, &jar).await {
        let to = q.next.as_deref().and_then(sign_in_target);
        return Redirect::to(to.as_deref().unwrap_or("/ui/")).into_response();
    }
    login_form(&st, jar, q.next.as_deref(), StatusCode::OK, None)
}

fn login_form(
    st: &ConsoleState,
    jar: CookieJar,
    next: Option<&str>,
    status: StatusCode,
    problem: Option<&str>,
) -> Response {
    let token = random_hex();
    let cookie = secure_cookie(LOGIN_COOKIE, token.clone(), Duration::from_secs(900));
    let no_users = st.settings.users.is_empty();
    let body = html! {
        div.login {
            h1 { "Sign in to the fleet console" }
            @if no_users {
                (templates::notice("warn", "No users are configured.", html! {
                    "Nobody can sign in until " code { "[console.users.<name>]" }
                    " has a role and a password hash (" code { "fleet console hash-password" } ")."
                }))
            }
            @if let Some(p) = problem {
                (templates::notice("error", "Not signed in:", html! { (p) }))
            }
            form method="post" action="/ui/login" {
                input type="hidden" name="csrf" value=(token);
                @if let Some(n) = next.and_then(sign_in_target) {
                    input type="hidden" name="next" value=(n);
                }
                div.field {
                    label for="username" { "User name" }
                    input #username type="text" name="username" autocomplete="username" required autofocus;
                }
                div.field {
                    label for="password" { "Password" }
                    input #password type="password" name="password" autocomplete="current-password" required;
                }
                button.primary type="submit" { "Sign in" }
            }
        }
    };
    (
        status,
        jar.add(cookie),
        templates::page("Sign in", None, Nav::None, body),
    )
        .into_response()
}

fn secure_cookie(name: &'static str, value: String, max_age: Duration) -> Cookie<'static> {
    Cookie::build((name, value))
        .path("/")
        .secure(true)
        .http_only(true)
        .same_site(SameSite::Strict)
        .max_age(time::Duration::seconds(max_age.as_secs() as i64))
        .build()
}

/// The login form as posted.
#[derive(Deserialize)]
pub struct LoginForm {
    username: String,
    password: String,
    #[serde(default)]
    csrf: String,
    next: Option<String>,
}

/// `POST /ui/login`: checks the form's CSRF token, the failure budget, then the password;
/// on success starts a session and goes where the user was going.
pub async fn login(
    State(st): State<ConsoleState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    jar: CookieJar,
    Form(f): Form<LoginForm>,
) -> Response {
    let next = f.next.clone();
    let next = next.as_deref();
    let cookie_token = jar.get(LOGIN_COOKIE).map(|c| c.value().to_owned());
    if !cookie_token.is_some_and(|t| same(&t, &f.csrf)) {
        tracing::warn!(client = %peer.ip(), "console: a login without its CSRF token was refused");
        return login_form(
            &st,
            jar,
            next,
            StatusCode::FORBIDDEN,
            Some("the form had expired; try again"),
        );
    }
    let user = f.username.trim().to_owned();
    let known = st.settings.users.get(&user);
    // Never log a name that is not a user's: it may be a password typed in the wrong field.
    let logged_user = if known.is_some() {
        user.as_str()
    } else {
        "(not a user)"
    };
    let throttled = match st
        .limiter
        .throttled(&st.db, &user, known.is_some(), peer.ip())
        .await
    {
        Ok(t) => t,
        Err(e) => {
            tracing::error!(error = %e, "console: reading failed sign-ins failed");
            return templates::error_page(
                StatusCode::SERVICE_UNAVAILABLE,
                "the database did not answer; try again",
                None,
            );
        }
    };
    if let Some(why) = throttled {
        tracing::warn!(user = logged_user, client = %peer.ip(), reason = why.as_str(),
            "console: login refused");
        return login_form(
            &st,
            jar,
            next,
            StatusCode::TOO_MANY_REQUESTS,
            Some("too many failed sign-ins; wait a few minutes and try again"),
        );
    }
    let hash = known.map(|u| u.password_hash.expose().to_owned());
    let password = f.password;
    let ok = tokio::task::spawn_blocking(move || {
        let matched = verify_password(hash.as_deref().unwrap_or_else(|| decoy_hash()), &password);
        matched && hash.is_some()
    })
    .await
    .unwrap_or(false);
    if !ok {
        if let Err(e) = st
            .limiter
            .failed(&st.db, &user, peer.ip(), known.is_some())
            .await
        {
            tracing::error!(error = %e, "console: counting a failed sign-in failed");
        }
        tracing::warn!(user = logged_user, client = %peer.ip(), reason = "wrong user name or password",
            "console: login refused");
        return login_form(
            &st,
            jar,
            next,
            StatusCode::UNAUTHORIZED,
            Some("wrong user name or password"),
        );
    }
    match start_session(&st, &user).await {
        Ok(token) => {
            tracing::info!(user = %user, client = %peer.ip(), "console: signed in");
            let to = next
                .and_then(sign_in_target)
                .unwrap_or_else(|| "/ui/".to_owned());
            let jar = jar
                .remove(Cookie::build(LOGIN_COOKIE).path("/"))
                .add(secure_cookie(
                    SESSION_COOKIE,
                    token,
                    st.settings.session_ttl,
                ));
            (jar, Redirect::to(&to)).into_response()
        }
        Err(e) => {
            tracing::error!(error = %e, "console: starting a session failed");
            templates::error_page(
                StatusCode::SERVICE_UNAVAILABLE,
                "the database did not answer; try again",
                None,
            )
        }
    }
}

async fn start_session(st: &ConsoleState, user: &str) -> Result<String, sqlx::Error> {
    let token = random_hex();
    session_delete_expired(&st.db).await?;
    // The new one makes `max_sessions_per_user`.
    session_cap(&st.db, user, st.settings.max_sessions_per_user - 1).await?;
    session_insert(&st.db, &token, user, &random_hex(), st.settings.session_ttl).await?;
    Ok(token)
}

/// `POST /ui/logout` (CSRF-checked like every POST): ends the session.
pub async fn logout(State(st): State<ConsoleState>, jar: CookieJar) -> Response {
    if let Some(token) = jar.get(SESSION_COOKIE).map(|c| c.value().to_owned()) {
        if let Err(e) = session_delete(&st.db, &token).await {
            tracing::error!(error = %e, "console: ending a session failed");
        }
    }
    let jar = jar.remove(Cookie::build(SESSION_COOKIE).path("/"));
    (jar, Redirect::to("/ui/login")).into_response()
}

/// The settings' users as the limiter's configuration.
pub fn limiter_for(s: &ConsoleSettings) -> LoginLimiter {
    LoginLimiter::new(s.login_max_failures, s.login_window)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_hash_verifies_its_password_only() {
        let h = hash_password("correct horse").unwrap();
        assert!(h.starts_with("$argon2id$"), "{h}");
        assert!(verify_password(&h, "correct horse"));
        assert!(!verify_password(&h, "correct hors"));
        assert!(!verify_password("not a hash", "correct horse"));
    }

    #[test]
    fn only_console_paths_are_followed_after_login() {
        assert!(is_local_path("/ui/jobs?kind=x"));
        for bad in [
            "//evil.example/ui/",
            "https://evil.example/",
            "/ui/\\evil",
            "/metrics",
            "/ui/jobs\r\nx",
            "/ui/jobs\nSet-Cookie: a=b",
        ] {
            assert!(!is_local_path(bad), "{bad}");
            assert_eq!(sign_in_target(bad), None, "{bad}");
        }
    }

    #[test]
    fn signing_in_leads_to_the_page_of_a_live_fragment_not_the_fragment() {
        assert_eq!(sign_in_target("/ui/overview/live").as_deref(), Some("/ui/"));
        assert_eq!(
            sign_in_target("/ui/jobs?kind=x").as_deref(),
            Some("/ui/jobs?kind=x")
        );
        assert_eq!(login_url(Some("/ui/overview/live")), "/ui/login");
    }
}
