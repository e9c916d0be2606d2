//! Split by function (docs/scaling.md): a kind's jobs can live in a database of their own
//! (`[databases.<name>] kinds = [...]`) while every other kind and every domain table stay in
//! the main database. Two scratch databases on the test server stand for the two Postgres.

mod common;

use std::{sync::Arc, time::Duration};

use common::{db, fast_settings, job_count, wait_until, BIN};
use fleet::{enqueue::Routes, queue, Queue, Registry, Worker};
use jobs::{Job, JobContext, JobError, NewJob};
use serde::{Deserialize, Serialize};
use sqlx::{Connection, PgPool};
use tokio_util::sync::CancellationToken;

/// Stands for `campaign_search`: lives in the second database; in one transaction on the main
/// database (its handler's pool) it writes a domain row and enqueues a [`Booking`] there.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Search {
    campaign: u32,
}

impl Job for Search {
    const KIND: &'static str = "test.search";
    async fn run(self, ctx: JobContext) -> Result<(), JobError> {
        let mut tx = ctx.db.begin().await?;
        jobs::audit::record(
            &mut *tx,
            "test",
            "search.matched",
            "campaign",
            Some(&self.campaign.to_string()),
            &serde_json::json!({}),
        )
        .await?;
        let booking = NewJob::of(&Booking {
            campaign: self.campaign,
        })
        .map_err(JobError::fatal)?
        .key(format!("booking:{}", self.campaign));
        ctx.enqueuer.enqueue_many(&mut tx, vec![booking]).await?;
        tx.commit().await?;
        Ok(())
    }
}

/// Stands for `booking_attempt`: lives in the main database, beside the domain tables.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Booking {
    campaign: u32,
}

impl Job for Booking {
    const KIND: &'static str = "test.booking";
    async fn run(self, _ctx: JobContext) -> Result<(), JobError> {
        Ok(())
    }
}

fn registry() -> Arc<Registry> {
    let mut r = Registry::default();
    r.register::<Search>().register::<Booking>();
    Arc::new(r)
}

fn routed(main: &PgPool, search: &PgPool, registry: Arc<Registry>) -> Queue {
    let mut routes = Routes::new("main");
    routes.insert(Search::KIND, "search", search.clone().into());
    Queue::new(main.clone(), registry).with_routes(routes)
}

async fn count_audit(pool: &PgPool) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM audit_log WHERE action = 'search.matched'")
        .fetch_one(pool)
        .await
        .unwrap()
}

async fn states(pool: &PgPool, kind: &str) -> Vec<String> {
    let mut conn = pool.acquire().await.unwrap();
    let f = queue::JobFilter {
        kind: Some(kind.to_owned()),
        ..Default::default()
    };
    queue::job_list(&mut *conn, &f, 100, None)
        .await
        .unwrap()
        .into_iter()
        .map(|j| j.state)
        .collect()
}

#[tokio::test]
async fn a_kind_homed_in_a_second_database_is_claimed_there_and_its_follow_up_commits_beside_the_main_databases_domain_write(
) {
    let (main, search) = (db().await, db().await);
    let registry = registry();
    let q = routed(&main.pool, &search.pool, registry.clone());
    for campaign in 0..5 {
        q.enqueue(&Search { campaign }, None).await.unwrap();
    }
    assert_eq!(
        job_count(&search.pool).await,
        5,
        "searches live in the search database"
    );
    assert_eq!(job_count(&main.pool).await, 0);

    let stop = CancellationToken::new();
    let workers: Vec<_> =
        [("main", &main.pool), ("search", &search.pool)]
            .into_iter()
            .map(|(name, pool)| {
                let w = Worker::new(pool.clone(), registry.clone(), fast_settings())
                    .serving_database(name, main.pool.clone().into(), q.clone());
                tokio::spawn(w.run(stop.clone()))
            })
            .collect();
    wait_until(
        Duration::from_secs(20),
        "every booking completed",
        || async {
            let b = states(&main.pool, Booking::KIND).await;
            b.len() == 5 && b.iter().all(|s| s == "completed")
        },
    )
    .await;
    stop.cancel();
    for w in workers {
        w.await.unwrap();
    }
    let s = states(&search.pool, Search::KIND).await;
    assert!(s.len() == 5 && s.iter().all(|s| s == "completed"), "{s:?}");
    assert!(states(&main.pool, Search::KIND).await.is_empty());
    assert!(states(&search.pool, Booking::KIND).await.is_empty());
    assert_eq!(
        count_audit(&main.pool).await,
        5,
        "handlers write the main database"
    );
    assert_eq!(count_audit(&search.pool).await, 0);
    // A parent id means a job of the child's own database: not recorded across databases.
    let mut conn = main.pool.acquire().await.unwrap();
    let bookings = queue::job_list(
        &mut *conn,
        &queue::JobFilter {
            kind: Some(Booking::KIND.into()),
            ..Default::default()
        },
        10,
        None,
    )
    .await
    .unwrap();
    for b in bookings {
        let j = queue::job_get(&mut *conn, b.id).await.unwrap().unwrap();
        assert_eq!(
            j.parent_id, None,
            "job {} has a parent from another database",
            j.id
        );
    }
}

#[tokio::test]
async fn a_job_for_another_database_beside_a_transaction_needs_a_key_and_a_retry_finds_the_job_it_made(
) {
    let (main, search) = (db().await, db().await);
    let q = routed(&main.pool, &search.pool, registry());
    let mut conn = main.pool.acquire().await.unwrap();

    let mut tx = conn.begin().await.unwrap();
    let unkeyed = NewJob::of(&Search { campaign: 1 }).unwrap();
    let e = q
        .enqueue_many_in(&mut tx, vec![unkeyed])
        .await
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("\"search\"") && e.contains("needs an idempotency key"),
        "{e}"
    );
    assert_eq!(job_count(&search.pool).await, 0, "nothing written");

    // Keyed, it commits on its own: the caller's rollback does not undo it, and the caller's
    // retry meets the held key instead of making a second search.
    let keyed = || {
        NewJob::of(&Search { campaign: 1 })
            .unwrap()
            .key("search:1:w1")
    };
    let first = q.enqueue_many_in(&mut tx, vec![keyed()]).await.unwrap();
    tx.rollback().await.unwrap();
    assert_eq!(job_count(&search.pool).await, 1);
    let mut tx = conn.begin().await.unwrap();
    let again = q.enqueue_many_in(&mut tx, vec![keyed()]).await.unwrap();
    tx.commit().await.unwrap();
    assert!(
        again[0].duplicate && again[0].id == first[0].id,
        "{again:?}"
    );
    assert_eq!(job_count(&search.pool).await, 1);
    assert_eq!(job_count(&main.pool).await, 0);

    // Without a caller transaction no key is needed; a mixed batch keeps its input order.
    let out = q
        .enqueue_many(vec![
            NewJob::of(&Booking { campaign: 2 }).unwrap(),
            NewJob::of(&Search { campaign: 2 }).unwrap(),
        ])
        .await
        .unwrap();
    assert_eq!(job_count(&main.pool).await, 1);
    assert_eq!(job_count(&search.pool).await, 2);
    let mut c = search.pool.acquire().await.unwrap();
    assert_eq!(
        queue::job_get(&mut *c, out[1].id)
            .await
            .unwrap()
            .unwrap()
            .kind,
        Search::KIND
    );
}

#[tokio::test]
async fn operator_commands_act_on_the_database_a_kind_lives_in() {
    let (main, search) = (db().await, db().await);
    let fleet = |args: &[&str]| {
        let mut c = std::process::Command::new(BIN);
        for (k, _) in std::env::vars().filter(|(k, _)| k.starts_with("FLEET_DATABASE")) {
            c.env_remove(k);
        }
        c.args(args)
            .env("DATABASE_URL", &main.url)
            .env("FLEET_DATABASES__SEARCH__URL", &search.url)
            .env("FLEET_DATABASES__SEARCH__KINDS", "campaign_search")
            .env("RUST_LOG", "warn")
            .env("USER", "ops-test")
            .output()
            .unwrap()
    };
    let out = fleet(&["queue", "pause", "campaign_search"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("--database search"), "{err}");
    let out = fleet(&["queue", "--database", "search", "pause", "campaign_search"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut conn = search.pool.acquire().await.unwrap();
    let paused = queue::kind_list_paused(&mut *conn).await.unwrap();
    assert!(paused.iter().any(|p| p.kind == "campaign_search"));
    let out = fleet(&["queue", "stats"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("database main") && text.contains("database search"),
        "{text}"
    );
    let out = fleet(&["queue", "--database", "elsewhere", "stats"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("main, search"));
}
