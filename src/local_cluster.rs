//! Throwaway Postgres clusters on loopback for tests and benchmarks that need a server of their
//! own: a primary, and hot standbys of it made with `pg_basebackup -R` (streaming
//! replication). Each lives in a fresh directory under the system temp directory, on a free
//! port, and is stopped and deleted when dropped.
//!
//! `initdb` and `postgres` refuse to run as root: when the process is root (as CI is), every
//! server command runs as the unprivileged `postgres` user (`runuser -u postgres --`), as the
//! shared throwaway cluster of [`crate::database`] does. The primary trusts loopback, for
//! replication too (`initdb --auth=trust` writes `host replication all 127.0.0.1/32 trust`),
//! and runs with `wal_level=replica`; durability is off (`fsync=off`): these are scratch data.

use std::{path::PathBuf, process::Command};

use anyhow::{bail, Context};

use crate::database::scratch::chown_to_postgres;
#[cfg(feature = "testkit")]
use {
    crate::database::scratch::{initdb_args, postgres_bindir},
    std::path::Path,
};

/// A Postgres server this process started; stopped (fast) and deleted on drop.
#[cfg(feature = "testkit")]
pub struct LocalCluster {
    /// Its port on 127.0.0.1 (and on `[::1]` when [`ClusterConfig::ipv6`] is set).
    pub port: u16,
    root: PathBuf,
    bin: PathBuf,
    as_root: bool,
    running: bool,
    config: ClusterConfig,
}

/// What a cluster is started with beyond the defaults (tests of TLS, limits, roles).
#[derive(Debug, Clone, Default)]
#[cfg(feature = "testkit")]
pub struct ClusterConfig {
    /// `-c name=value` server settings, after the defaults (so they win).
    pub settings: Vec<(String, String)>,
    /// `pg_hba.conf` lines put before initdb's own (the first match wins).
    pub hba: Vec<String>,
    /// Files written into the data directory before the start, owned by the server's user,
    /// mode 0600 (certificates and keys): `(name, contents)`.
    pub files: Vec<(String, Vec<u8>)>,
    /// Listen on `[::1]` as well as 127.0.0.1.
    pub ipv6: bool,
}

#[cfg(feature = "testkit")]
impl LocalCluster {
    /// `initdb` in a fresh directory, then start it as a primary that accepts replication.
    pub fn start_primary(label: &str) -> anyhow::Result<Self> {
        Self::start_configured(label, ClusterConfig::default())
    }

    /// Like [`LocalCluster::start_primary`], with `config`'s files, `pg_hba.conf` lines and
    /// settings.
    pub fn start_configured(label: &str, config: ClusterConfig) -> anyhow::Result<Self> {
        let mut c = Self::prepare(label)?;
        c.config = config;
        let data = c.data();
        c.run("initdb", &initdb_args(path_str(&data)?))?;
        if !c.config.hba.is_empty() {
            let hba = data.join("pg_hba.conf");
            let initdb_own = std::fs::read_to_string(&hba).context("reading pg_hba.conf")?;
            let mut text = c.config.hba.join("\n");
            text.push('\n');
            text.push_str(&initdb_own);
            std::fs::write(&hba, text).context("writing pg_hba.conf")?;
        }
        for (name, contents) in c.config.files.clone() {
            c.write_file(&name, &contents)?;
        }
        c.first_start()?;
        Ok(c)
    }

    /// Writes `name` into the data directory (mode 0600, owned by the server's user): a
    /// certificate to swap in before [`LocalCluster::reload`].
    pub fn write_file(&self, name: &str, contents: &[u8]) -> anyhow::Result<()> {
        use std::os::unix::fs::PermissionsExt;
        let path = self.data().join(name);
        std::fs::write(&path, contents).with_context(|| format!("writing {}", path.display()))?;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))?;
        if self.as_root {
            chown_to_postgres(&path)?;
        }
        Ok(())
    }

    /// Makes the server re-read its configuration files and certificates (`pg_ctl reload`).
    pub fn reload(&self) -> anyhow::Result<()> {
        let data = self.data();
        self.run("pg_ctl", &["-D", path_str(&data)?, "reload"])
    }

    /// Starts a server stopped by [`LocalCluster::stop`] again, on the same port.
    pub fn restart(&mut self) -> anyhow::Result<()> {
        if self.running {
            return Ok(());
        }
        self.start()
    }

    /// A hot standby of `primary`: `pg_basebackup -R` (which writes `standby.signal` and
    /// `primary_conninfo`) from it, then start it on a port of its own. It replays the
    /// primary's WAL as it streams in and answers read-only queries.
    pub fn start_standby_of(primary: &LocalCluster, label: &str) -> anyhow::Result<Self> {
        let mut c = Self::prepare(label)?;
        let data = c.data();
        let port = primary.port.to_string();
        c.run(
            "pg_basebackup",
            &[
                "-h",
                "127.0.0.1",
                "-p",
                &port,
                "-U",
                "postgres",
                "-D",
                path_str(&data)?,
                "-R",
                "-X",
                "stream",
                "--checkpoint=fast",
                "--no-sync",
            ],
        )?;
        c.first_start()?;
        Ok(c)
    }

    /// The URL of database `db` on this server (user `postgres`, trust).
    pub fn url(&self, db: &str) -> String {
        format!("postgres://postgres@127.0.0.1:{}/{db}", self.port)
    }

    /// Stops the server (fast shutdown); the directory stays until drop.
    pub fn stop(&mut self) -> anyhow::Result<()> {
        if !self.running {
            return Ok(());
        }
        let data = self.data();
        self.run(
            "pg_ctl",
            &["-D", path_str(&data)?, "-m", "fast", "-w", "stop"],
        )?;
        self.running = false;
        Ok(())
    }

    fn prepare(label: &str) -> anyhow::Result<Self> {
        let root = std::env::temp_dir().join(format!(
            "fleet-cluster-{label}-{}-{}",
            std::process::id(),
            &uuid::Uuid::new_v4().simple().to_string()[..8]
        ));
        std::fs::create_dir_all(&root).with_context(|| format!("creating {}", root.display()))?;
        let as_root = unsafe { libc::geteuid() } == 0;
        if as_root {
            chown_to_postgres(&root)?;
        }
        Ok(Self {
            port: free_port()?,
            root,
            bin: postgres_bindir()?,
            as_root,
            running: false,
            config: ClusterConfig::default(),
        })
    }

    fn data(&self) -> PathBuf {
        self.root.join("data")
    }

    /// The first start: a port free when chosen may be taken by the time the server binds it
    /// (another test's server, or a connection's), so on that failure it takes another port,
    /// up to four times. Nothing has been handed this cluster's URL yet.
    fn first_start(&mut self) -> anyhow::Result<()> {
        let mut retries = 0;
        loop {
            match self.start() {
                Err(e) if retries < 4 && format!("{e:#}").contains("could not bind") => {
                    retries += 1;
                    self.port = free_port()?;
                }
                done => return done,
            }
        }
    }

    fn start(&mut self) -> anyhow::Result<()> {
        let data = self.data();
        let log = self.root.join("postgres.log");
        let listen = if self.config.ipv6 {
            "127.0.0.1,::1"
        } else {
            "127.0.0.1"
        };
        let mut opts = format!(
            "-p {} -k {} -c listen_addresses={listen} -c max_connections=60 -c fsync=off \
             -c wal_level=replica -c max_wal_senders=5 -c hot_standby=on \
             -c wal_receiver_status_interval=1s",
            self.port,
            path_str(&self.root)?
        );
        for (k, v) in &self.config.settings {
            opts.push_str(&format!(" -c {k}={v}"));
        }
        let started = self.run(
            "pg_ctl",
            &[
                "-D",
                path_str(&data)?,
                "-o",
                &opts,
                "-l",
                path_str(&log)?,
                "-w",
                "-t",
                "30",
                "start",
            ],
        );
        if let Err(e) = started {
            let tail = std::fs::read_to_string(&log).unwrap_or_default();
            let tail: Vec<&str> = tail.lines().rev().take(15).collect();
            let tail: Vec<&str> = tail.into_iter().rev().collect();
            bail!(
                "{e:#}\nserver log ({}):\n{}",
                log.display(),
                tail.join("\n")
            );
        }
        self.running = true;
        Ok(())
    }

    /// Runs a server tool (as `postgres` when we are root), failing with its output.
    fn run(&self, tool: &str, args: &[&str]) -> anyhow::Result<()> {
        let exe = self.bin.join(tool);
        let mut c = if self.as_root {
            let mut c = Command::new("runuser");
            c.args(["-u", "postgres", "--"]).arg(&exe);
            c
        } else {
            Command::new(&exe)
        };
        // The tools' own cwd must be readable by the postgres user.
        let out = c
            .args(args)
            .current_dir(&self.root)
            .output()
            .with_context(|| format!("running {}", exe.display()))?;
        if !out.status.success() {
            bail!(
                "{tool} failed ({}): {}{}",
                out.status,
                String::from_utf8_lossy(&out.stderr).trim(),
                String::from_utf8_lossy(&out.stdout).trim()
            );
        }
        Ok(())
    }
}

#[cfg(feature = "testkit")]
impl Drop for LocalCluster {
    fn drop(&mut self) {
        if self.running {
            let data = self.data();
            if let Ok(d) = path_str(&data) {
                let _ = self.run("pg_ctl", &["-D", d, "-m", "immediate", "-w", "stop"]);
            }
        }
        let _ = std::fs::remove_dir_all(&self.root);
    }
}

#[cfg(feature = "testkit")]
fn path_str(p: &Path) -> anyhow::Result<&str> {
    p.to_str().context("non-UTF-8 temp path")
}

/// A loopback port nobody listens on right now, below the kernel's ephemeral range: a port the
/// kernel hands out (`bind(:0)`) is the kind it also gives the next outgoing connection, which
/// may then hold it when the server binds (seen in CI: `could not bind IPv4 address
/// "127.0.0.1": Address already in use`). Falls back to a kernel-chosen port if none below is
/// free.
fn free_port() -> anyhow::Result<u16> {
    const LOWEST: u32 = 10_000;
    let ephemeral_from = ephemeral_ports_from().unwrap_or(32_768);
    if ephemeral_from > LOWEST + 1_000 && ephemeral_from <= 65_536 {
        for _ in 0..100 {
            let r = (uuid::Uuid::new_v4().as_u128() % u128::from(ephemeral_from - LOWEST)) as u32;
            let port = (LOWEST + r) as u16;
            if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
                return Ok(port);
            }
        }
    }
    let l = std::net::TcpListener::bind("127.0.0.1:0").context("finding a free port")?;
    Ok(l.local_addr()?.port())
}

/// The first port of the kernel's ephemeral range (what it gives outgoing connections), if
/// it says.
fn ephemeral_ports_from() -> Option<u32> {
    std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// A PgBouncer (Debian's `pgbouncer`) this process started on a free loopback port in front of
/// a server, trusting the listed users (the server authenticates nothing either: tests only);
/// killed and its directory deleted on drop. Like the clusters it runs as `postgres` when the
/// process is root (PgBouncer refuses root).
pub struct PgBouncer {
    /// Its port on 127.0.0.1.
    pub port: u16,
    root: PathBuf,
    child: Option<std::process::Child>,
}

/// How a [`PgBouncer`] pools.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PoolMode {
    /// A server connection per client connection, for the client's whole session.
    Session,
    /// A server connection per transaction.
    Transaction,
}

impl PgBouncer {
    /// The `pgbouncer` executable: `PGBOUNCER`, else on the `PATH`, else Debian's
    /// `/usr/sbin/pgbouncer`; `None` when there is none.
    pub fn executable() -> Option<PathBuf> {
        if let Some(p) = std::env::var_os("PGBOUNCER") {
            return Some(PathBuf::from(p));
        }
        let on_path = std::env::var_os("PATH").and_then(|paths| {
            std::env::split_paths(&paths)
                .map(|d| d.join("pgbouncer"))
                .find(|p| p.is_file())
        });
        on_path.or_else(|| {
            let debian = PathBuf::from("/usr/sbin/pgbouncer");
            debian.is_file().then_some(debian)
        })
    }

    /// Starts one in `mode` in front of the server at `127.0.0.1:server_port`, admitting
    /// `users`, with at most `pool_size` server connections per database and user, and
    /// `extra` lines added to its `[pgbouncer]` section.
    pub fn start(
        server_port: u16,
        mode: PoolMode,
        users: &[&str],
        pool_size: u32,
        extra: &[&str],
    ) -> anyhow::Result<Self> {
        let exe = Self::executable().context(
            "no pgbouncer (set PGBOUNCER, or `apt-get install pgbouncer`; .ci/run does)",
        )?;
        let root = std::env::temp_dir().join(format!(
            "fleet-pgbouncer-{}-{}",
            std::process::id(),
            &uuid::Uuid::new_v4().simple().to_string()[..8]
        ));
        std::fs::create_dir_all(&root)?;
        let port = free_port()?;
        let userlist: String = users.iter().map(|u| format!("\"{u}\" \"\"\n")).collect();
        std::fs::write(root.join("userlist.txt"), userlist)?;
        let mode = match mode {
            PoolMode::Session => "session",
            PoolMode::Transaction => "transaction",
        };
        let ini = format!(
            "[databases]\n* = host=127.0.0.1 port={server_port}\n\n[pgbouncer]\n\
             listen_addr = 127.0.0.1\nlisten_port = {port}\nunix_socket_dir =\n\
             auth_type = trust\nauth_file = {root}/userlist.txt\npool_mode = {mode}\n\
             max_client_conn = 1000\ndefault_pool_size = {pool_size}\n\
             ignore_startup_parameters = extra_float_digits\n\
             logfile = {root}/pgbouncer.log\npidfile = {root}/pgbouncer.pid\n{}\n",
            extra.join("\n"),
            root = root.display(),
        );
        std::fs::write(root.join("pgbouncer.ini"), ini)?;
        let as_root = unsafe { libc::geteuid() } == 0;
        if as_root {
            chown_to_postgres(&root)?;
        }
        let mut cmd = if as_root {
            let mut c = Command::new("runuser");
            c.args(["-u", "postgres", "--"]).arg(&exe);
            c
        } else {
            Command::new(&exe)
        };
        let child = cmd
            .arg(root.join("pgbouncer.ini"))
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .with_context(|| format!("starting {}", exe.display()))?;
        let me = Self {
            port,
            root,
            child: Some(child),
        };
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            if std::time::Instant::now() > deadline {
                bail!("pgbouncer did not listen within 10s; log:\n{}", me.log());
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        Ok(me)
    }

    /// The URL of database `db` through it, as `user`.
    pub fn url(&self, user: &str, db: &str) -> String {
        format!("postgres://{user}@127.0.0.1:{}/{db}", self.port)
    }

    /// Its log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.root.join("pgbouncer.log")).unwrap_or_default()
    }
}

impl Drop for PgBouncer {
    fn drop(&mut self) {
        // Killing `runuser` would leave pgbouncer running: kill pgbouncer itself, by its pid
        // file.
        if let Ok(pid) = std::fs::read_to_string(self.root.join("pgbouncer.pid")) {
            if let Ok(pid) = pid.trim().parse::<libc::pid_t>() {
                unsafe { libc::kill(pid, libc::SIGKILL) };
            }
        }
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        let _ = std::fs::remove_dir_all(&self.root);
    }
}

#[cfg(all(test, feature = "testkit"))]
mod tests {
    use super::*;

    /// A first start whose port was taken after it was chosen starts on another one.
    #[test]
    fn a_first_start_takes_another_port_when_its_own_was_taken_meanwhile() {
        let mut c = LocalCluster::prepare("port-taken").unwrap();
        let data = c.data();
        c.run("initdb", &initdb_args(path_str(&data).unwrap()))
            .unwrap();
        let chosen = c.port;
        let _taken = std::net::TcpListener::bind(("127.0.0.1", chosen)).unwrap();
        c.first_start().unwrap();
        assert_ne!(c.port, chosen);
        assert!(std::net::TcpStream::connect(("127.0.0.1", c.port)).is_ok());
    }

    /// Ports are chosen below the kernel's ephemeral range, which outgoing connections use.
    #[test]
    fn a_free_port_is_below_the_ephemeral_range() {
        let from = ephemeral_ports_from().expect("the kernel's ephemeral range");
        for _ in 0..20 {
            let p = u32::from(free_port().unwrap());
            assert!((10_000..from).contains(&p), "{p} is not below {from}");
        }
    }
}
