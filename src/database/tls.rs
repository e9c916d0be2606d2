//! TLS to Postgres: libpq's `sslmode` and certificate files, from a URL's query parameters and
//! from settings, applied to the driver's options; and what a failed handshake means, said for
//! the operator who has to fix it.
//!
//! **Precedence.** For one URL, each of `sslmode`, `sslrootcert`, `sslcert` and `sslkey` comes
//! from the URL's own query parameter, else from the settings of its section
//! ([`TlsSettings`]: `[database]`, or a `[databases.*]` entry inheriting `[database]`), else from
//! libpq's environment variables (`PGSSLMODE`, …), else libpq's default (`prefer`).
//!
//! **libpq's rules, kept.** `require` with a CA file checks the certificate against it, as
//! `verify-ca` does (the driver alone would not check it at all). `allow` (plain first, TLS only
//! if refused) is refused. With a CA file, the built-in public roots (webpki's) are trusted as
//! well: a managed database's certificate from a public CA verifies without any file.
//!
//! **Errors never carry the URL** (it may hold a password): only the setting's name, the host
//! and the reason.

use std::{fmt, path::PathBuf};

use sqlx::postgres::{PgConnectOptions, PgSslMode};

use crate::config::{SslMode, TlsSettings};

/// The TLS one connection target uses, resolved.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct TlsInEffect {
    /// The mode in effect (`require` with a CA file is reported as `verify-ca`: that is what
    /// is checked).
    pub mode: SslMode,
    /// The CA file trusted beside the public roots.
    pub root_cert: Option<PathBuf>,
    /// The client certificate presented.
    pub client_cert: Option<PathBuf>,
    /// Where the mode came from: `url`, `settings`, `PGSSLMODE` or `default`.
    pub mode_from: &'static str,
}

impl TlsInEffect {
    /// Whether the server's certificate is checked against a CA.
    pub fn verifies_ca(&self) -> bool {
        matches!(self.mode, SslMode::VerifyCa | SslMode::VerifyFull)
    }
}

impl fmt::Display for TlsInEffect {
    /// `verify-full (CA /etc/fleet/ca.pem, client certificate /etc/fleet/client.pem)`,
    /// `prefer (encrypted if the server offers it; the server is not authenticated)`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.mode)?;
        let mut parts: Vec<String> = Vec::new();
        match self.mode {
            SslMode::Disable => parts.push("plain TCP".into()),
            SslMode::Prefer => parts
                .push("encrypted if the server offers it; the server is not authenticated".into()),
            SslMode::Require => {
                parts.push("encrypted; the server's certificate is not checked".into())
            }
            SslMode::VerifyCa | SslMode::VerifyFull => match &self.root_cert {
                Some(ca) => parts.push(format!("CA {}", ca.display())),
                None => parts.push("public CA roots".into()),
            },
        }
        if let Some(c) = &self.client_cert {
            parts.push(format!("client certificate {}", c.display()));
        }
        write!(f, " ({})", parts.join(", "))
    }
}

/// The `ssl*` query parameters `url` sets itself, by libpq's name (the driver's aliases
/// included).
fn url_parameters(url: &str) -> UrlTls {
    let mut out = UrlTls::default();
    let Some((_, query)) = url.split_once('?') else {
        return out;
    };
    for (k, v) in form_urlencoded::parse(query.as_bytes()) {
        let v = v.into_owned();
        match &*k {
            "sslmode" | "ssl-mode" => out.mode = Some(v),
            "sslrootcert" | "ssl-root-cert" | "ssl-ca" => out.root_cert = Some(v),
            "sslcert" | "ssl-cert" => out.client_cert = Some(v),
            "sslkey" | "ssl-key" => out.client_key = Some(v),
            _ => {}
        }
    }
    out
}

#[derive(Default)]
struct UrlTls {
    mode: Option<String>,
    root_cert: Option<String>,
    client_cert: Option<String>,
    client_key: Option<String>,
}

/// A value and where it came from, for error messages.
struct Sourced {
    path: PathBuf,
    /// `the URL's sslrootcert`, `database.sslrootcert`, `PGSSLROOTCERT`.
    named: String,
}

/// Resolves the TLS of the URL of `setting` (its query parameters win over `settings`), checks
/// the files it names, and applies it to `opts` (parsed from that URL). `section` names the
/// settings' section in errors (`database`, `databases.search`).
pub(crate) fn apply(
    setting: &str,
    section: &str,
    url: &str,
    settings: &TlsSettings,
    opts: PgConnectOptions,
) -> Result<(PgConnectOptions, TlsInEffect), String> {
    let own = url_parameters(url);
    let env = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
    let (mode, mode_from) = match (&own.mode, settings.sslmode, env("PGSSLMODE")) {
        (Some(m), _, _) => (
            m.parse::<SslMode>()
                .map_err(|e| format!("{setting}: the URL's sslmode: {e}"))?,
            "url",
        ),
        (None, Some(m), _) => (m, "settings"),
        (None, None, Some(m)) => (
            m.parse::<SslMode>()
                .map_err(|e| format!("PGSSLMODE: {e}"))?,
            "PGSSLMODE",
        ),
        (None, None, None) => (SslMode::Prefer, "default"),
    };
    let pick = |own: &Option<String>, set: &Option<PathBuf>, key: &str, var: &str| {
        if let Some(p) = own {
            Some(Sourced {
                path: PathBuf::from(p),
                named: format!("the {key} of {setting}"),
            })
        } else if let Some(p) = set {
            Some(Sourced {
                path: p.clone(),
                named: format!("{section}.{key}"),
            })
        } else {
            env(var).map(|p| Sourced {
                path: PathBuf::from(p),
                named: var.to_owned(),
            })
        }
    };
    let root = pick(
        &own.root_cert,
        &settings.sslrootcert,
        "sslrootcert",
        "PGSSLROOTCERT",
    );
    let cert = pick(&own.client_cert, &settings.sslcert, "sslcert", "PGSSLCERT");
    let key = pick(&own.client_key, &settings.sslkey, "sslkey", "PGSSLKEY");
    // libpq: `require` with a root certificate verifies the chain (not the name).
    let mode = if mode == SslMode::Require && root.is_some() {
        SslMode::VerifyCa
    } else {
        mode
    };
    let mut opts = opts.ssl_mode(match mode {
        SslMode::Disable => PgSslMode::Disable,
        SslMode::Prefer => PgSslMode::Prefer,
        SslMode::Require => PgSslMode::Require,
        SslMode::VerifyCa => PgSslMode::VerifyCa,
        SslMode::VerifyFull => PgSslMode::VerifyFull,
    });
    if mode != SslMode::Disable {
        if let Some(r) = &root {
            check_pem(r, "CERTIFICATE")?;
            opts = opts.ssl_root_cert(&r.path);
        }
        match (&cert, &key) {
            (Some(c), Some(k)) => {
                check_pem(c, "CERTIFICATE")?;
                check_pem(k, "PRIVATE KEY")?;
                warn_if_key_is_shared(k);
                opts = opts.ssl_client_cert(&c.path).ssl_client_key(&k.path);
            }
            (None, None) => {}
            (Some(c), None) => {
                return Err(format!(
                    "{} is set but no sslkey: a client certificate needs its private key",
                    c.named
                ))
            }
            (None, Some(k)) => {
                return Err(format!(
                    "{} is set but no sslcert: a private key needs its client certificate",
                    k.named
                ))
            }
        }
    }
    let tls = TlsInEffect {
        mode,
        root_cert: root.filter(|_| mode != SslMode::Disable).map(|r| r.path),
        client_cert: cert.filter(|_| mode != SslMode::Disable).map(|c| c.path),
        mode_from,
    };
    Ok((opts, tls))
}

/// The file of `s` can be read and holds a PEM block whose label contains `label`.
fn check_pem(s: &Sourced, label: &str) -> Result<(), String> {
    let text = std::fs::read(&s.path)
        .map_err(|e| format!("{} {} cannot be read: {e}", s.named, s.path.display()))?;
    let text = String::from_utf8_lossy(&text);
    let has = text
        .lines()
        .any(|l| l.starts_with("-----BEGIN ") && l.contains(label));
    if !has {
        return Err(format!(
            "{} {} holds no PEM {label} block",
            s.named,
            s.path.display()
        ));
    }
    Ok(())
}

/// libpq refuses a private key that others can read; we say so and go on (secrets mounted
/// by orchestrators are often 0644 inside a private directory).
fn warn_if_key_is_shared(k: &Sourced) {
    use std::os::unix::fs::PermissionsExt;
    if let Ok(m) = std::fs::metadata(&k.path) {
        if m.permissions().mode() & 0o077 != 0 {
            tracing::warn!(
                file = %k.path.display(),
                mode = format!("{:o}", m.permissions().mode() & 0o777),
                "{} can be read by other users than its owner: make it 0600",
                k.named
            );
        }
    }
}

/// What a failed TLS handshake means, or `None` when `e` is not about TLS. Never names
/// anything but the host, the files and the certificates' names and dates.
pub(crate) fn explain(e: &sqlx::Error, host: &str, tls: &TlsInEffect) -> Option<String> {
    let rustls_error = match e {
        sqlx::Error::Tls(inner) => inner.downcast_ref::<rustls::Error>(),
        sqlx::Error::Io(io) => io.get_ref().and_then(|i| i.downcast_ref::<rustls::Error>()),
        _ => None,
    };
    let mode = tls.mode;
    let Some(err) = rustls_error else {
        return match e {
            sqlx::Error::Tls(inner) => {
                let text = inner.to_string();
                Some(if text.contains("server does not support TLS") {
                    format!(
                        "TLS ({mode}): the server at {host} does not offer TLS; it must, or \
                         sslmode must be prefer or disable"
                    )
                } else {
                    format!("TLS ({mode}): {text}")
                })
            }
            _ => None,
        };
    };
    use rustls::{AlertDescription as A, CertificateError as C, Error as E};
    let trusted = match &tls.root_cert {
        Some(ca) => format!("the CA in {} or a public root", ca.display()),
        None => "a public root (no sslrootcert is set)".to_owned(),
    };
    let why = match err {
        E::InvalidCertificate(C::UnknownIssuer) => format!(
            "the server's certificate is not signed by a trusted CA: it must chain to {trusted}"
        ),
        E::InvalidCertificate(C::NotValidForName) => format!(
            "the server's certificate is not issued for {host}: connect by a name it lists, or use \
             sslmode=verify-ca"
        ),
        E::InvalidCertificate(C::NotValidForNameContext { presented, .. }) => format!(
            "the server's certificate is not issued for {host} (it names {}): connect by a name \
             it lists, or use sslmode=verify-ca",
            presented
                .iter()
                .map(|n| plain_name(n))
                .collect::<Vec<_>>()
                .join(", ")
        ),
        E::InvalidCertificate(C::Expired) => "the server's certificate has expired".to_owned(),
        E::InvalidCertificate(C::ExpiredContext { not_after, .. }) => format!(
            "the server's certificate expired at {}",
            unix_time(not_after.as_secs())
        ),
        E::InvalidCertificate(C::NotValidYet) => {
            "the server's certificate is not valid yet".to_owned()
        }
        E::InvalidCertificate(C::NotValidYetContext { not_before, .. }) => format!(
            "the server's certificate is not valid before {}",
            unix_time(not_before.as_secs())
        ),
        E::InvalidCertificate(C::BadSignature) => {
            "the server's certificate has a bad signature".to_owned()
        }
        E::InvalidCertificate(C::Revoked) => "the server's certificate is revoked".to_owned(),
        E::InvalidCertificate(other) => format!("the server's certificate is refused: {other:?}"),
        E::AlertReceived(A::CertificateRequired) | E::AlertReceived(A::HandshakeFailure)
            if tls.client_cert.is_none() =>
        {
            "the server requires a client certificate: set sslcert and sslkey".to_owned()
        }
        E::AlertReceived(
            a @ (A::BadCertificate
            | A::UnknownCA
            | A::CertificateExpired
            | A::CertificateRevoked
            | A::CertificateUnknown
            | A::UnsupportedCertificate
            | A::AccessDenied),
        ) => format!("the server refused our client certificate ({a:?})"),
        other => other.to_string(),
    };
    Some(format!("TLS ({mode}): {why}"))
}

/// `localhost` for rustls's `DnsName("localhost")`, `::1` for `IpAddress(0::1)`.
fn plain_name(presented: &str) -> String {
    let inner = presented
        .split_once('(')
        .and_then(|(_, rest)| rest.strip_suffix(')'))
        .unwrap_or(presented)
        .trim_matches('"');
    match inner.parse::<std::net::IpAddr>() {
        Ok(ip) => ip.to_string(),
        Err(_) => inner.to_owned(),
    }
}

fn unix_time(secs: u64) -> String {
    chrono::DateTime::from_timestamp(secs as i64, 0)
        .map(|t| t.format("%Y-%m-%d %H:%M:%S UTC").to_string())
        .unwrap_or_else(|| format!("{secs} (unix time)"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::str::FromStr;

    fn resolve(url: &str, s: &TlsSettings) -> Result<TlsInEffect, String> {
        let opts = PgConnectOptions::from_str(url).unwrap();
        apply("database.url", "database", url, s, opts).map(|(_, t)| t)
    }

    fn pem_file(label: &str) -> PathBuf {
        let p = std::env::temp_dir().join(format!(
            "fleet-tls-test-{}-{}.pem",
            std::process::id(),
            uuid::Uuid::new_v4().simple()
        ));
        std::fs::write(
            &p,
            format!("-----BEGIN {label}-----\nAAAA\n-----END {label}-----\n"),
        )
        .unwrap();
        p
    }

    #[test]
    fn the_url_wins_over_settings_and_settings_over_the_default() {
        let s = TlsSettings {
            sslmode: Some(SslMode::VerifyFull),
            ..Default::default()
        };
        let t = resolve("postgres://h/db?sslmode=require", &s).unwrap();
        assert_eq!((t.mode, t.mode_from), (SslMode::Require, "url"));
        let t = resolve("postgres://h/db", &s).unwrap();
        assert_eq!((t.mode, t.mode_from), (SslMode::VerifyFull, "settings"));
        if std::env::var_os("PGSSLMODE").is_none() {
            let t = resolve("postgres://h/db", &TlsSettings::default()).unwrap();
            assert_eq!((t.mode, t.mode_from), (SslMode::Prefer, "default"));
        }
    }

    #[test]
    fn require_with_a_ca_file_checks_the_chain_as_libpq_does() {
        let ca = pem_file("CERTIFICATE");
        let s = TlsSettings {
            sslmode: Some(SslMode::Require),
            sslrootcert: Some(ca.clone()),
            ..Default::default()
        };
        let t = resolve("postgres://h/db", &s).unwrap();
        assert_eq!(t.mode, SslMode::VerifyCa);
        assert!(t.to_string().contains(&ca.display().to_string()), "{t}");
    }

    #[test]
    fn a_missing_or_wrong_file_is_named_with_where_it_came_from() {
        let s = TlsSettings {
            sslmode: Some(SslMode::VerifyFull),
            sslrootcert: Some("/nonexistent/ca.pem".into()),
            ..Default::default()
        };
        let e = resolve("postgres://u:secret@h/db", &s).unwrap_err();
        assert!(
            e.contains("database.sslrootcert") && e.contains("/nonexistent/ca.pem"),
            "{e}"
        );
        assert!(!e.contains("secret"), "{e}");
        let key = pem_file("PRIVATE KEY");
        let e = resolve(
            &format!("postgres://h/db?sslrootcert={}", key.display()),
            &TlsSettings::default(),
        )
        .unwrap_err();
        assert!(
            e.contains("the sslrootcert of database.url") && e.contains("no PEM CERTIFICATE"),
            "{e}"
        );
    }

    #[test]
    fn a_client_certificate_needs_its_key_and_allow_is_refused() {
        let s = TlsSettings {
            sslcert: Some(pem_file("CERTIFICATE")),
            ..Default::default()
        };
        let e = resolve("postgres://h/db?sslmode=verify-full", &s).unwrap_err();
        assert!(
            e.contains("database.sslcert") && e.contains("sslkey"),
            "{e}"
        );
        let e = resolve("postgres://h/db?sslmode=allow", &TlsSettings::default()).unwrap_err();
        assert!(e.contains("not supported"), "{e}");
    }

    #[test]
    fn names_a_certificate_presents_are_said_plainly() {
        assert_eq!(plain_name("DnsName(\"localhost\")"), "localhost");
        assert_eq!(plain_name("IpAddress(0::1)"), "::1");
        assert_eq!(plain_name("IpAddress(127.0.0.1)"), "127.0.0.1");
        assert_eq!(plain_name("odd"), "odd");
    }

    #[test]
    fn disable_ignores_certificate_files() {
        let s = TlsSettings {
            sslrootcert: Some("/nonexistent/ca.pem".into()),
            ..Default::default()
        };
        let t = resolve("postgres://h/db?sslmode=disable", &s).unwrap();
        assert_eq!(t.mode, SslMode::Disable);
        assert_eq!(t.root_cert, None);
    }
}
