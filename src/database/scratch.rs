//! Scratch databases and the server they are made on, for the demo, the benchmarks and the
//! tests: not the roles' path to a database (they take an explicit one, [`super`]).
//!
//! Resolution order ([`resolve_server_url`]): `DATABASE_URL`; else the configured
//! `database_url`; else the local server at `127.0.0.1:5432` (user `postgres`); else a
//! throwaway cluster the fleet starts itself under the system temp directory (as the
//! unprivileged `postgres` user when running as root, since `initdb` refuses root). The
//! throwaway cluster is reused by later runs and shared by concurrent processes (a file lock
//! serialises its creation).

use std::{
    path::{Path, PathBuf},
    process::Command,
    str::FromStr,
    sync::atomic::{AtomicU32, Ordering},
    time::Duration,
};

use anyhow::{bail, Context};
use jobs::Db;
use sqlx::{postgres::PgConnectOptions, AssertSqlSafe, Connection, PgConnection, PgPool};
use tokio::sync::OnceCell;

use super::{connect, migrate};

/// The local server tried when no URL is configured (demo, bench, tests). Plain TCP: it is
/// loopback, and the figures in docs/benchmarks.md were measured without TLS.
pub const LOCAL_SERVER_URL: &str = "postgres://postgres@127.0.0.1:5432/postgres?sslmode=disable";

/// Port of the throwaway cluster.
const THROWAWAY_PORT: u16 = 55439;

/// Resolves the server URL to use (see the module docs). `configured` is the settings'
/// `database_url`, which `DATABASE_URL` overrides.
pub async fn resolve_server_url(configured: Option<&str>) -> anyhow::Result<String> {
    if let Ok(url) = std::env::var("DATABASE_URL") {
        if !url.is_empty() {
            return Ok(url);
        }
    }
    if let Some(url) = configured {
        return Ok(url.to_owned());
    }
    if answers(LOCAL_SERVER_URL).await {
        return Ok(LOCAL_SERVER_URL.to_owned());
    }
    tracing::info!("no DATABASE_URL and no server at 127.0.0.1:5432: starting a throwaway cluster");
    let url = tokio::task::spawn_blocking(ensure_throwaway_cluster)
        .await
        .context("throwaway cluster task")??;
    Ok(url)
}

async fn answers(url: &str) -> bool {
    let Ok(opts) = PgConnectOptions::from_str(url) else {
        return false;
    };
    matches!(
        tokio::time::timeout(Duration::from_secs(3), PgConnection::connect_with(&opts)).await,
        Ok(Ok(_))
    )
}

/// `url` with its database name replaced by `db`.
pub fn url_with_database(url: &str, db: &str) -> String {
    let (base, query) = match url.split_once('?') {
        Some((b, q)) => (b, Some(q)),
        None => (url, None),
    };
    // postgres://user@host:port/dbname — the path starts at the first '/' after "//".
    let after_scheme = base.find("//").map(|i| i + 2).unwrap_or(0);
    let host_end = base[after_scheme..]
        .find('/')
        .map(|i| i + after_scheme)
        .unwrap_or(base.len());
    let mut out = format!("{}/{}", &base[..host_end], db);
    if let Some(q) = query {
        out.push('?');
        out.push_str(q);
    }
    out
}

/// Creates a database named `name` on the server at `server_url`, migrated.
pub async fn create_database(server_url: &str, name: &str) -> anyhow::Result<String> {
    validate_db_name(name)?;
    let mut admin = PgConnection::connect(&url_with_database(server_url, "postgres"))
        .await
        .context("connecting to the server's postgres database")?;
    sqlx::query(AssertSqlSafe(format!("CREATE DATABASE \"{name}\"")))
        .execute(&mut admin)
        .await
        .with_context(|| format!("creating database {name}"))?;
    let url = url_with_database(server_url, name);
    let pool = connect(&url, 2).await?;
    migrate(&pool).await?;
    pool.close().await;
    Ok(url)
}

/// Drops database `name` (terminating its connections).
pub async fn drop_database(server_url: &str, name: &str) -> anyhow::Result<()> {
    validate_db_name(name)?;
    let mut admin = PgConnection::connect(&url_with_database(server_url, "postgres")).await?;
    sqlx::query(AssertSqlSafe(format!(
        "DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)"
    )))
    .execute(&mut admin)
    .await?;
    Ok(())
}

fn validate_db_name(name: &str) -> anyhow::Result<()> {
    if name.is_empty()
        || name.len() > 63
        || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
    {
        bail!("database name {name:?} must be 1..=63 of [A-Za-z0-9_]");
    }
    Ok(())
}

/// Starts (or reuses) the throwaway cluster; returns its server URL.
fn ensure_throwaway_cluster() -> anyhow::Result<String> {
    let root = std::env::temp_dir().join("fleet-throwaway-pg");
    let data = root.join("data");
    let url = format!("postgres://postgres@127.0.0.1:{THROWAWAY_PORT}/postgres?sslmode=disable");
    std::fs::create_dir_all(&root)?;
    let running_as_root = unsafe { libc::geteuid() } == 0;
    let lock = std::fs::File::create(root.join("lock"))?;
    // Serialise creation across processes (tests run in parallel).
    use std::os::unix::io::AsRawFd;
    if unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_EX) } != 0 {
        bail!("locking {}", root.display());
    }
    let bin = postgres_bindir()?;
    if running_as_root {
        chown_to_postgres(&root)?;
    }
    if !data.join("PG_VERSION").exists() {
        let status = as_postgres(
            running_as_root,
            &bin.join("initdb"),
            &initdb_args(path_str(&data)?),
        )?;
        if !status {
            bail!(
                "initdb failed for the throwaway cluster in {}",
                data.display()
            );
        }
    }
    let pg_ctl = bin.join("pg_ctl");
    let is_up = as_postgres(
        running_as_root,
        &pg_ctl,
        &["-D", path_str(&data)?, "status"],
    )?;
    if !is_up {
        let opts = format!(
            "-p {THROWAWAY_PORT} -k {} -c listen_addresses=127.0.0.1 -c max_connections=300",
            path_str(&root)?
        );
        let log = root.join("postgres.log");
        let ok = as_postgres(
            running_as_root,
            &pg_ctl,
            &[
                "-D",
                path_str(&data)?,
                "-o",
                &opts,
                "-l",
                path_str(&log)?,
                "-w",
                "start",
            ],
        )?;
        if !ok {
            bail!("the throwaway cluster did not start; see {}", log.display());
        }
    }
    Ok(url)
}

fn path_str(p: &Path) -> anyhow::Result<&str> {
    p.to_str().context("non-UTF-8 temp path")
}

/// The directory of `initdb`, `pg_ctl`, `pg_basebackup`: `pg_config --bindir`, else the
/// newest `/usr/lib/postgresql/*/bin`.
pub(crate) fn postgres_bindir() -> anyhow::Result<PathBuf> {
    if let Ok(out) = Command::new("pg_config").arg("--bindir").output() {
        let dir = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
        if dir.join("initdb").exists() {
            return Ok(dir);
        }
    }
    let mut candidates: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .map(|rd| {
            rd.filter_map(|e| e.ok())
                .map(|e| e.path().join("bin"))
                .collect()
        })
        .unwrap_or_default();
    candidates.sort();
    candidates
        .into_iter()
        .rev()
        .find(|d| d.join("initdb").exists())
        .context(
            "no Postgres server answers and no initdb was found: set DATABASE_URL, or install \
             PostgreSQL (e.g. `apt-get install postgresql`)",
        )
}

pub(crate) fn chown_to_postgres(dir: &Path) -> anyhow::Result<()> {
    let status = Command::new("chown")
        .args(["-R", "postgres:postgres"])
        .arg(dir)
        .status()
        .context("chown of the throwaway cluster directory")?;
    if !status.success() {
        bail!(
            "chown postgres {} failed (is there a postgres user?)",
            dir.display()
        );
    }
    Ok(())
}

/// Runs `cmd args` — as the `postgres` user when we are root — and reports success.
fn as_postgres(as_root: bool, cmd: &Path, args: &[&str]) -> anyhow::Result<bool> {
    let mut c = if as_root {
        let mut c = Command::new("runuser");
        c.args(["-u", "postgres", "--"]).arg(cmd);
        c
    } else {
        Command::new(cmd)
    };
    let out = c
        .args(args)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .with_context(|| format!("running {}", cmd.display()))?;
    Ok(out.success())
}

// ─── scratch databases: demo, bench and tests ──────────────────────────────────────────────

static SERVER: OnceCell<String> = OnceCell::const_new();
static COUNTER: AtomicU32 = AtomicU32::new(0);

/// The server scratch databases are made on (resolved once per process: `DATABASE_URL`,
/// else the local server, else a throwaway cluster). For demo, bench and tests only.
pub async fn server_url() -> String {
    SERVER
        .get_or_init(|| async {
            resolve_server_url(None)
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
        let url = create_database(&server, &name).await?;
        let pool = connect(&url, 30).await?;
        Ok(Self {
            url,
            pool,
            name,
            server,
        })
    }
}

impl ScratchDb {
    /// Its pool as a [`Db`] (its connections are sessions).
    pub fn db(&self) -> Db {
        Db::direct(self.pool.clone())
    }

    /// The database's name.
    pub fn name(&self) -> &str {
        &self.name
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
                let _ = rt.block_on(drop_database(&server, &name));
            }
        })
        .join();
    }
}

/// `initdb`'s arguments for a scratch cluster in `data`: superuser `postgres`, trust auth on
/// loopback, UTF-8, no fsync at init (the cluster is thrown away).
pub(crate) fn initdb_args(data: &str) -> [&str; 8] {
    [
        "-D",
        data,
        "-U",
        "postgres",
        "--auth=trust",
        "--no-sync",
        "-E",
        "UTF8",
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn url_with_database_replaces_only_the_database() {
        assert_eq!(
            url_with_database("postgres://u:p@h:5432/postgres", "x"),
            "postgres://u:p@h:5432/x"
        );
        assert_eq!(url_with_database("postgres://h", "x"), "postgres://h/x");
        assert_eq!(
            url_with_database("postgres://h/db?sslmode=disable", "x"),
            "postgres://h/x?sslmode=disable"
        );
    }

    #[test]
    fn database_names_are_validated() {
        assert!(validate_db_name("fleet_test_1").is_ok());
        assert!(validate_db_name("x\"; DROP").is_err());
        assert!(validate_db_name("").is_err());
    }
}
