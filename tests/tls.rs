//! TLS to Postgres against a server of the test's own: certificates from a CA the test makes
//! (rcgen), a server that refuses plain TCP, a user that must present a client certificate.
//! Every connection goes to 127.0.0.1, [::1] or `localhost`.

mod common;

use std::{path::PathBuf, process::Command, time::Duration, time::Instant};

use fleet::{
    config::{SslMode, TlsSettings},
    database::{self, DatabaseError, Endpoint},
    testkit::{ClusterConfig, LocalCluster},
};
use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair, KeyUsagePurpose,
    SanType,
};

/// A CA of the test's own, and what it signed.
struct Ca {
    issuer: CertifiedIssuer<'static, KeyPair>,
}

impl Ca {
    fn new(name: &str) -> Self {
        let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
        p.distinguished_name.push(DnType::CommonName, name);
        p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        p.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        Self {
            issuer: CertifiedIssuer::self_signed(p, KeyPair::generate().unwrap()).unwrap(),
        }
    }

    fn pem(&self) -> String {
        self.issuer.pem()
    }

    /// A certificate for `sans` (DNS names or IP addresses) or, with `cn`, a client
    /// certificate for that user; `expired` makes one that ended yesterday.
    fn sign(&self, sans: &[&str], cn: Option<&str>, expired: bool) -> (String, String) {
        let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
        p.subject_alt_names = sans
            .iter()
            .map(|s| match s.parse::<std::net::IpAddr>() {
                Ok(ip) => SanType::IpAddress(ip),
                Err(_) => SanType::DnsName((*s).try_into().unwrap()),
            })
            .collect();
        if let Some(cn) = cn {
            p.distinguished_name.push(DnType::CommonName, cn);
        }
        if expired {
            let now = time::OffsetDateTime::now_utc();
            p.not_before = now - time::Duration::days(30);
            p.not_after = now - time::Duration::days(1);
        }
        let key = KeyPair::generate().unwrap();
        let cert = p.signed_by(&key, &*self.issuer).unwrap();
        (cert.pem(), key.serialize_pem())
    }
}

/// Files for the client, in a directory of the test's own (removed on drop).
struct ClientFiles {
    dir: PathBuf,
}

impl ClientFiles {
    fn new() -> Self {
        let dir = std::env::temp_dir().join(format!(
            "fleet-tls-client-{}-{}",
            std::process::id(),
            &uuid::Uuid::new_v4().simple().to_string()[..8]
        ));
        std::fs::create_dir_all(&dir).unwrap();
        Self { dir }
    }

    fn write(&self, name: &str, contents: &str) -> PathBuf {
        use std::os::unix::fs::PermissionsExt;
        let p = self.dir.join(name);
        std::fs::write(&p, contents).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600)).unwrap();
        p
    }
}

impl Drop for ClientFiles {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A server with TLS on, a certificate from `ca` for `localhost` and `::1` (not for
/// 127.0.0.1), plain TCP refused, and user `certuser` admitted by client certificate only.
fn tls_server(ca: &Ca) -> LocalCluster {
    let (cert, key) = ca.sign(&["localhost", "::1"], None, false);
    let config = ClusterConfig {
        settings: vec![
            ("ssl".into(), "on".into()),
            ("ssl_cert_file".into(), "server.crt".into()),
            ("ssl_key_file".into(), "server.key".into()),
            ("ssl_ca_file".into(), "ca.crt".into()),
        ],
        hba: vec![
            "hostnossl all all 127.0.0.1/32 reject".into(),
            "hostnossl all all ::1/128 reject".into(),
            "hostssl all certuser 127.0.0.1/32 cert".into(),
            "hostssl all certuser ::1/128 cert".into(),
        ],
        files: vec![
            ("server.crt".into(), cert.into_bytes()),
            ("server.key".into(), key.into_bytes()),
            ("ca.crt".into(), ca.pem().into_bytes()),
        ],
        ipv6: true,
    };
    LocalCluster::start_configured("tls", config).expect("a TLS server")
}

fn tls(mode: SslMode, root: Option<&PathBuf>) -> TlsSettings {
    TlsSettings {
        sslmode: Some(mode),
        sslrootcert: root.cloned(),
        ..Default::default()
    }
}

const TIMEOUT: Duration = Duration::from_secs(5);

/// Connects to `url` with `settings`; on failure, the error's text, checked to come within the
/// connect timeout and to hold no password.
async fn try_connect(url: &str, settings: &TlsSettings) -> Result<sqlx::PgPool, String> {
    let started = Instant::now();
    let r = async {
        let e = Endpoint::parse("database.url", "database", url, settings)?;
        database::connect_endpoint(&e, 2, TIMEOUT).await
    }
    .await;
    match r {
        Ok(p) => Ok(p),
        Err(e) => {
            let text = e.to_string();
            assert!(
                started.elapsed() < TIMEOUT + Duration::from_secs(1),
                "a refusal comes within the connect timeout: {text}"
            );
            assert!(!text.contains("pw-never-printed"), "no password: {text}");
            assert!(
                matches!(e, DatabaseError::Unreachable { .. }),
                "an unreachable database, not a configuration error: {text}"
            );
            Err(text)
        }
    }
}

async fn on_tls(pool: &sqlx::PgPool) -> bool {
    sqlx::query_scalar("SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()")
        .fetch_one(pool)
        .await
        .unwrap()
}

#[tokio::test]
async fn verify_full_connects_by_name_and_refuses_a_wrong_ca_host_or_expired_certificate_saying_why(
) {
    let ca = Ca::new("fleet test CA");
    let other = Ca::new("someone else's CA");
    let mut server = tls_server(&ca);
    let files = ClientFiles::new();
    let ca_file = files.write("ca.pem", &ca.pem());
    let other_file = files.write("other.pem", &other.pem());
    let port = server.port;
    let by_name = format!("postgres://postgres:pw-never-printed@localhost:{port}/postgres");
    let by_ip = format!("postgres://postgres:pw-never-printed@127.0.0.1:{port}/postgres");

    let pool = try_connect(&by_name, &tls(SslMode::VerifyFull, Some(&ca_file)))
        .await
        .expect("verify-full by the certificate's name");
    assert!(on_tls(&pool).await, "the session is encrypted");
    pool.close().await;

    let e = try_connect(&by_name, &tls(SslMode::VerifyFull, Some(&other_file)))
        .await
        .unwrap_err();
    assert!(
        e.contains(&format!("localhost:{port}"))
            && e.contains("not signed by a trusted CA")
            && e.contains("other.pem"),
        "a wrong CA names the host and the reason: {e}"
    );

    let e = try_connect(&by_ip, &tls(SslMode::VerifyFull, Some(&ca_file)))
        .await
        .unwrap_err();
    assert!(
        e.contains(&format!("127.0.0.1:{port}"))
            && e.contains("not issued for 127.0.0.1")
            && e.contains("localhost"),
        "a host-name mismatch names the host and what the certificate names: {e}"
    );

    // verify-ca checks the chain but not the name; require checks nothing without a CA file,
    // and (libpq's rule) the chain with one.
    let pool = try_connect(&by_ip, &tls(SslMode::VerifyCa, Some(&ca_file)))
        .await
        .expect("verify-ca ignores the name");
    pool.close().await;
    let pool = try_connect(&by_ip, &tls(SslMode::Require, None))
        .await
        .expect("require without a CA");
    assert!(on_tls(&pool).await);
    pool.close().await;
    let e = try_connect(&by_ip, &tls(SslMode::Require, Some(&other_file)))
        .await
        .unwrap_err();
    assert!(e.contains("not signed by a trusted CA"), "{e}");

    // The server refuses plain TCP, and says so.
    let e = try_connect(&by_ip, &tls(SslMode::Disable, None))
        .await
        .unwrap_err();
    assert!(e.contains("no encryption"), "{e}");

    // The certificate expires: swapped in and reloaded, it is refused with its date.
    let (cert, key) = ca.sign(&["localhost", "::1"], None, true);
    server.write_file("server.crt", cert.as_bytes()).unwrap();
    server.write_file("server.key", key.as_bytes()).unwrap();
    server.reload().unwrap();
    // The reload is asynchronous (a signal to the postmaster): try until it took.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let e = loop {
        match try_connect(&by_name, &tls(SslMode::VerifyFull, Some(&ca_file))).await {
            Err(e) => break e,
            Ok(_) if std::time::Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(50)).await
            }
            Ok(_) => panic!("the expired certificate was never served"),
        }
    };
    assert!(
        e.contains("certificate expired at") && e.contains("UTC"),
        "an expired certificate is named with its date: {e}"
    );
    server.stop().unwrap();
}

#[tokio::test]
async fn a_client_certificate_admits_its_user_and_its_absence_is_named() {
    let ca = Ca::new("fleet test CA");
    let mut server = tls_server(&ca);
    {
        let admin = try_connect(&server.url("postgres"), &tls(SslMode::Require, None))
            .await
            .unwrap();
        sqlx::query("CREATE ROLE certuser LOGIN")
            .execute(&admin)
            .await
            .unwrap();
        admin.close().await;
    }
    let files = ClientFiles::new();
    let ca_file = files.write("ca.pem", &ca.pem());
    let (cert, key) = ca.sign(&[], Some("certuser"), false);
    let cert_file = files.write("client.crt", &cert);
    let key_file = files.write("client.key", &key);
    // IPv6 as well: the certificate names ::1, and the URL brackets it.
    let url = format!("postgres://certuser@[::1]:{}/postgres", server.port);

    let e = try_connect(&url, &tls(SslMode::VerifyFull, Some(&ca_file)))
        .await
        .unwrap_err();
    assert!(
        e.contains(&format!("[::1]:{}", server.port)) && e.contains("certificate"),
        "no client certificate: refused, saying so: {e}"
    );
    let with_cert = TlsSettings {
        sslmode: Some(SslMode::VerifyFull),
        sslrootcert: Some(ca_file.clone()),
        sslcert: Some(cert_file.clone()),
        sslkey: Some(key_file.clone()),
    };
    let pool = try_connect(&url, &with_cert)
        .await
        .expect("admitted by its certificate");
    let who: String = sqlx::query_scalar("SELECT current_user")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(who, "certuser");
    assert!(on_tls(&pool).await);
    pool.close().await;

    // The same through the URL's own parameters, which win over the settings.
    let url = format!(
        "{url}?sslmode=verify-full&sslrootcert={}&sslcert={}&sslkey={}",
        ca_file.display(),
        cert_file.display(),
        key_file.display()
    );
    let pool = try_connect(&url, &tls(SslMode::Disable, None))
        .await
        .expect("the URL's TLS parameters");
    pool.close().await;
    server.stop().unwrap();
}

/// `fleet` with `env`; its (exit code, stdout, stderr).
fn fleet(env: &[(&str, String)], args: &[&str]) -> (i32, String, String) {
    let mut c = Command::new(common::BIN);
    c.args(args)
        .env_remove("DATABASE_URL")
        .env("RUST_LOG", "info");
    for (k, v) in env {
        c.env(k, v);
    }
    let out = c.output().expect("run fleet");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test]
async fn the_binary_migrates_over_verify_full_and_says_which_tls_is_in_effect() {
    let ca = Ca::new("fleet test CA");
    let other = Ca::new("someone else's CA");
    let mut server = tls_server(&ca);
    let files = ClientFiles::new();
    let ca_file = files.write("ca.pem", &ca.pem());
    let other_file = files.write("other.pem", &other.pem());
    let url = format!(
        "postgres://postgres:pw-never-printed@localhost:{}/postgres",
        server.port
    );
    let env = vec![
        ("DATABASE_URL", url.clone()),
        ("FLEET_DATABASE__SSLMODE", "verify-full".to_owned()),
        ("FLEET_DATABASE__SSLROOTCERT", ca_file.display().to_string()),
        ("FLEET_PII_KEYS", common::TEST_PII_KEYS.to_owned()),
    ];

    let (code, out, err) = fleet(&env, &["config", "show", "--json"]);
    assert_eq!(code, 0, "{err}");
    assert!(!out.contains("pw-never-printed"), "{out}");
    let shown: serde_json::Value = serde_json::from_str(&out).unwrap();
    let main = &shown["connections"][0];
    assert_eq!(main["setting"], "DATABASE_URL", "{main}");
    assert_eq!(
        main["target"],
        format!("localhost:{}/postgres as postgres", server.port),
        "{main}"
    );
    assert_eq!(main["tls"]["mode"], "verify-full", "{main}");
    assert_eq!(
        main["tls"]["root_cert"],
        ca_file.display().to_string(),
        "{main}"
    );
    // A read replica and a [databases.*] entry inherit [database]'s TLS; the URL's own
    // sslmode wins.
    let mut more = env.clone();
    more.push(("DATABASE_READ_URL", url.clone()));
    more.push((
        "FLEET_DATABASES__SEARCH__URL",
        format!("{url}?sslmode=require"),
    ));
    more.push((
        "FLEET_DATABASES__SEARCH__KINDS",
        "campaign_search".to_owned(),
    ));
    let (code, out, err) = fleet(&more, &["config", "show", "--json"]);
    assert_eq!(code, 0, "{err}");
    let shown: serde_json::Value = serde_json::from_str(&out).unwrap();
    let modes: Vec<(String, String)> = shown["connections"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            (
                c["setting"].as_str().unwrap().to_owned(),
                c["tls"]["mode"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    assert_eq!(
        modes,
        [
            ("DATABASE_URL".into(), "verify-full".into()),
            ("DATABASE_READ_URL".into(), "verify-full".into()),
            // require with the inherited CA file checks the chain (libpq's rule).
            ("databases.search.url".into(), "verify-ca".into()),
        ]
    );
    let (code, out, _) = fleet(&env, &["config", "show"]);
    assert_eq!(code, 0);
    assert!(
        out.contains("TLS in effect") && out.contains("verify-full"),
        "{out}"
    );

    let (code, out, err) = fleet(&env, &["migrate"]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        err.contains("connected to the database") && err.contains("verify-full"),
        "the start-up log says which TLS is in effect: {err}"
    );
    assert!(!err.contains("pw-never-printed"), "{err}");

    let mut wrong = env.clone();
    wrong[2] = (
        "FLEET_DATABASE__SSLROOTCERT",
        other_file.display().to_string(),
    );
    let (code, out, err) = fleet(&wrong, &["migrate", "--status"]);
    assert_eq!(code, 3, "an unusable database exits 3: {out}{err}");
    assert!(
        err.contains(&format!("localhost:{}", server.port))
            && err.contains("not signed by a trusted CA"),
        "{err}"
    );
    assert!(!err.contains("pw-never-printed"), "{err}");

    // A missing CA file is a configuration error (exit 2) naming the setting.
    let mut missing = env.clone();
    missing[2] = (
        "FLEET_DATABASE__SSLROOTCERT",
        "/nonexistent/ca.pem".to_owned(),
    );
    let (code, _, err) = fleet(&missing, &["migrate", "--status"]);
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains("database.sslrootcert") && err.contains("/nonexistent/ca.pem"),
        "{err}"
    );
    server.stop().unwrap();
}
