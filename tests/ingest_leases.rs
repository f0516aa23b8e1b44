//! Ingest leases against a real PostgreSQL: one process at a time holds each
//! job, a lost connection frees its jobs for another process, and pipelines
//! with different topic prefixes never share a job.

mod support;

use extsync::ingest::lease::Leases;
use support::TestDb;

/// Ends the sessions holding advisory locks in `db`: the connection of the
/// process that holds the leases, as a crash or a network cut would.
async fn sever_lease_holders(db: &TestDb) -> i64 {
    db.client()
        .await
        .query_one(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_locks
              WHERE locktype = 'advisory' AND granted
                AND database = (SELECT oid FROM pg_database WHERE datname = $1)",
            &[&db.name],
        )
        .await
        .unwrap()
        .get(0)
}

#[tokio::test]
async fn one_process_holds_a_job_until_its_connection_goes() {
    let db = TestDb::create().await;
    let (a, b) = (Leases::new(&db.url, "p1"), Leases::new(&db.url, "p1"));
    let (a_poll, b_poll) = (a.lease("poll sf Account"), b.lease("poll sf Account"));

    assert!(a_poll.held().await, "a free job is taken");
    assert!(a_poll.held().await, "and kept");
    assert!(!b_poll.held().await, "one holder at a time");

    // The first process's connection goes (only it holds a lock): its job
    // is free for the second.
    assert_eq!(sever_lease_holders(&db).await, 1);
    let mut taken = false;
    for _ in 0..50 {
        if b_poll.held().await {
            taken = true;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert!(taken, "the second process takes the freed job");
    assert!(
        !a_poll.held().await,
        "the first, connected again, finds it held"
    );
    assert!(b_poll.held().await);

    let (a_stream, b_stream) = (
        a.lease("stream sf /data/ChangeEvents"),
        b.lease("stream sf /data/ChangeEvents"),
    );
    assert!(a_stream.held().await, "each job on its own");
    assert!(!b_stream.held().await);
    let other = Leases::new(&db.url, "p2").lease("poll sf Account");
    assert!(
        other.held().await,
        "another pipeline's job of the same name is its own"
    );
}
