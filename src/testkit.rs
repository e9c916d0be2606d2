//! Scratch databases for integration tests and benchmarks: each gets its own freshly
//! migrated database on the resolved server, dropped when the guard goes away.

use std::sync::atomic::{AtomicU32, Ordering};

use sqlx::PgPool;
use tokio::sync::OnceCell;

use crate::database;

static SERVER: OnceCell<String> = OnceCell::const_new();
static COUNTER: AtomicU32 = AtomicU32::new(0);

/// The server URL tests use (resolved once per process).
pub async fn server_url() -> String {
    SERVER
        .get_or_init(|| async {
            database::resolve_server_url(None)
                .await
                .expect("no Postgres server could be found or started")
        })
        .await
        .clone()
}

/// A uniquely named, migrated database that is dropped on `Drop`.
pub struct ScratchDb {
    /// Its URL (for child processes).
    pub url: String,
    /// A pool on it.
    pub pool: PgPool,
    name: String,
    server: String,
}

impl ScratchDb {
    /// Creates `"{prefix}_{pid}_{n}_{rand}"`.
    pub async fn new(prefix: &str) -> anyhow::Result<Self> {
        let server = server_url().await;
        let name = format!(
            "{prefix}_{}_{}_{}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed),
            &uuid::Uuid::new_v4().simple().to_string()[..6]
        );
        let url = database::create_database(&server, &name).await?;
        let pool = database::connect(&url, 30).await?;
        Ok(Self {
            url,
            pool,
            name,
            server,
        })
    }
}

impl Drop for ScratchDb {
    fn drop(&mut self) {
        let (server, name) = (self.server.clone(), self.name.clone());
        // Drop runs inside an async context: drop the database from a thread of its own.
        let _ = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build();
            if let Ok(rt) = rt {
                let _ = rt.block_on(database::drop_database(&server, &name));
            }
        })
        .join();
    }
}

/// A test keyring (two versions, v2 newest).
pub const TEST_PII_KEYS: &str = "v2:QUJDREVGR0hJSktMTU5PUFFSU1RVVldYWVphYmNkZWY=,v1:MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY=";

/// Handler dependencies whose provider clients (the real ones) point at the sandbox at
/// `sandbox_url` (e.g. `RunningSandbox::base_url`), with the test keyring.
pub fn sandbox_deps(sandbox_url: &str) -> anyhow::Result<jobs::Deps> {
    use jobs::providers::{
        ApiKey, DuffelClient, DuffelConfig, EmailConfig, ResendClient, StripeConfig, StripePayments,
    };
    use std::sync::Arc;
    let stripe = StripeConfig {
        base_url: sandbox_url.to_owned(),
        secret_key: ApiKey::new("sk_test_fleet"),
        ..StripeConfig::default()
    };
    let duffel = DuffelConfig {
        base_url: sandbox_url.to_owned(),
        access_token: ApiKey::new("duffel_test_fleet"),
        ..DuffelConfig::default()
    };
    let email = EmailConfig {
        base_url: sandbox_url.to_owned(),
        api_key: ApiKey::new("re_test_fleet"),
        from: "Parker Flight <bookings@parkerflight.example>".into(),
        ..EmailConfig::default()
    };
    Ok(jobs::Deps {
        keyring: Some(Arc::new(jobs::pii::Keyring::parse(TEST_PII_KEYS)?)),
        payments: Some(Arc::new(
            StripePayments::new(&stripe).map_err(|e| anyhow::anyhow!(e.0))?,
        )),
        flights: Some(Arc::new(
            DuffelClient::new(&duffel).map_err(|e| anyhow::anyhow!(e.0))?,
        )),
        email: Some(Arc::new(
            ResendClient::new(&email).map_err(|e| anyhow::anyhow!(e.0))?,
        )),
    })
}
