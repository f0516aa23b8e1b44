//! `extsync bench capture`: the same WAL read by `pg_recvlogical` (the floor:
//! pgoutput decoding in the walsender, bytes to /dev/null) and by capture
//! (decode, encode, Kafka acks=all until every event is acknowledged).
//!
//! ```text
//!  preload S rows ─► capture: initial snapshot (snapshot_rows_per_s), slot A at LSN L
//!  slot B (pg_recvlogical) at L ─► N mixed changes, 1–100 rows per transaction ─► end E
//!  time pg_recvlogical B → /dev/null until E  vs  capture A → Kafka until E acknowledged
//!  optional: one transaction of --big-tx rows through capture; peak RSS over all of it
//! ```
//!
//! Reads `EXTSYNC_PG_URL`, `EXTSYNC_KAFKA_BROKERS` and `EXTSYNC_PG_BINDIR`
//! (`eval "$(dev/services env)"`). Works in a fresh database it drops at the end.

use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use extsync::capture;
use tokio_util::sync::CancellationToken;

use super::common::{clear_leftovers, connect, delete_topics, env, peak_rss_mb, with_database};

#[derive(clap::Args)]
pub struct Args {
    /// Row changes in the streamed workload (inserts, updates, deletes).
    #[arg(long, default_value_t = 500_000)]
    pub changes: u64,
    /// Rows present before capture starts (measured by the initial snapshot).
    #[arg(long, default_value_t = 500_000)]
    pub snapshot_rows: u64,
    /// Rows of one extra single transaction sent through capture (0: skip).
    #[arg(long, default_value_t = 0)]
    pub big_tx: u64,
}

const ROW: &str = "md5(g::text), g * 1.5, 'active', repeat(md5(g::text), 3), now()";

async fn end_lsn(c: &tokio_postgres::Client) -> anyhow::Result<(String, u64)> {
    let lsn: String = c
        .query_one("SELECT pg_current_wal_insert_lsn()::text", &[])
        .await?
        .get(0);
    let n = capture::parse_lsn(&lsn).context("parsing an LSN")?;
    Ok((lsn, n))
}

pub async fn run(args: Args) -> anyhow::Result<()> {
    let admin_url = env("EXTSYNC_PG_URL")?;
    let brokers = env("EXTSYNC_KAFKA_BROKERS")?;
    let bindir = env("EXTSYNC_PG_BINDIR")?;
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_secs();
    let tag = format!("bench_capture_{}_{}", std::process::id(), secs % 100_000);
    let admin = connect(&admin_url).await?;
    for name in clear_leftovers(&admin, &brokers, "bench_capture_").await? {
        eprintln!("dropped {name}, left by an earlier run that was stopped before its clean-up");
    }
    admin
        .batch_execute(&format!("CREATE DATABASE {tag}"))
        .await?;
    let url = with_database(&admin_url, &tag);
    let result = bench(&args, &url, &brokers, &bindir, &tag).await;
    let c = connect(&url).await?;
    for slot in [format!("{tag}_x"), format!("{tag}_r")] {
        let _ = c
            .execute(
                "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots WHERE slot_name = $1",
                &[&slot],
            )
            .await;
    }
    drop(c);
    let _ = admin
        .batch_execute(&format!("DROP DATABASE {tag} WITH (FORCE)"))
        .await;
    let deleted = delete_topics(&brokers, &tag).await;
    let line = result?;
    if let Err(e) = deleted {
        eprintln!("note: could not delete the bench topics: {e:#}");
    }
    println!("{line}");
    Ok(())
}

/// The database side of one run: the connection, the publication capture
/// reads and the pipeline capture runs.
struct Setup {
    client: tokio_postgres::Client,
    url: String,
    publication: String,
    pipeline: extsync::config::Pipeline,
}

async fn bench(
    args: &Args,
    url: &str,
    brokers: &str,
    bindir: &str,
    tag: &str,
) -> anyhow::Result<String> {
    let setup = load_rows(args, url, brokers, tag).await?;
    let snapshot_per_s = initial_snapshot(args, &setup).await?;

    let recv_slot = format!("{tag}_r");
    setup
        .client
        .execute(
            "SELECT pg_create_logical_replication_slot($1, 'pgoutput')",
            &[&recv_slot],
        )
        .await?;
    let (end_text, end) = write_workload(args, &setup).await?;
    let recv_per_s = floor(args, &setup, bindir, &recv_slot, &end_text).await?;
    let ext_per_s = through_capture(args, &setup, end).await?;
    let big = big_transaction(args, &setup).await?;

    let mut line = serde_json::json!({
        "bench": "capture",
        "changes": args.changes,
        "pg_recvlogical_per_s": recv_per_s.round(),
        "extsync_per_s": ext_per_s.round(),
        "ratio": (ext_per_s / recv_per_s * 1000.0).round() / 1000.0,
        "snapshot_rows_per_s": snapshot_per_s.round(),
        "peak_rss_mb": (peak_rss_mb() * 10.0).round() / 10.0,
    });
    if let Some(per_s) = big {
        line["big_tx_rows"] = args.big_tx.into();
        line["big_tx_per_s"] = per_s.round().into();
    }
    Ok(line.to_string())
}

/// Creates the table with `--snapshot-rows` rows and its publication.
async fn load_rows(args: &Args, url: &str, brokers: &str, tag: &str) -> anyhow::Result<Setup> {
    let c = connect(url).await?;
    let s = args.snapshot_rows as i64;
    c.batch_execute(&format!(
        "CREATE TABLE bench_rows (id bigint PRIMARY KEY, account text, amount numeric(12,2), status text, note text, updated_at timestamptz);
         INSERT INTO bench_rows SELECT g, {ROW} FROM generate_series(1, {s}) g;"
    ))
    .await
    .context("loading the snapshot rows")?;
    c.batch_execute("VACUUM ANALYZE bench_rows").await?;
    let publication = format!("{tag}_pub");
    c.batch_execute(&format!(
        "CREATE PUBLICATION {publication} FOR TABLE bench_rows"
    ))
    .await?;
    let inflight: u64 = std::env::var("EXTSYNC_BENCH_IN_FLIGHT")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(32 << 20);
    let yaml = format!(
        "name: bench\npostgres:\n  url: {url}\n  tables: [public.bench_rows]\n  publication: {publication}\n  slot: {tag}_x\n  heartbeatSecs: 1\n  maxInFlightBytes: {inflight}\nkafka:\n  brokers: {brokers}\n  topicPrefix: {tag}\ntelemetry:\n  metricsAddress: \"\"\n"
    );
    let pipeline =
        extsync::config::parse_str(&yaml, "bench.yaml").map_err(|e| anyhow::anyhow!("{e}"))?;
    Ok(Setup {
        client: c,
        url: url.to_string(),
        publication,
        pipeline,
    })
}

/// Capture's initial snapshot (which creates its slot), then a stop; rows/s.
async fn initial_snapshot(args: &Args, setup: &Setup) -> anyhow::Result<f64> {
    eprintln!("snapshot: {} rows", args.snapshot_rows);
    let summary = capture::run_until(&setup.pipeline, CancellationToken::new(), Some(1)).await?;
    if summary.snapshot_rows != args.snapshot_rows {
        bail!(
            "snapshot produced {} rows, expected {}",
            summary.snapshot_rows,
            args.snapshot_rows
        );
    }
    let per_s = summary.snapshot_rows as f64 / summary.snapshot_time.as_secs_f64();
    eprintln!("snapshot: {per_s:.0} rows/s");
    Ok(per_s)
}

/// `--changes` mixed changes, 1–100 rows per transaction; the LSN they end at.
async fn write_workload(args: &Args, setup: &Setup) -> anyhow::Result<(String, u64)> {
    eprintln!("workload: {} changes", args.changes);
    let started = Instant::now();
    setup
        .client
        .batch_execute(&format!(
            "DO $$
         DECLARE done bigint := 0; next_id bigint := {s} + 1; k int; r float8; n bigint; victim bigint;
         BEGIN
           PERFORM setseed(0.42);
           WHILE done < {target} LOOP
             k := 1 + floor(random() * 100)::int;
             FOR i IN 1..k LOOP
               EXIT WHEN done >= {target};
               r := random();
               victim := 1 + floor(random() * (next_id - 1))::bigint;
               IF r < 0.5 THEN
                 INSERT INTO bench_rows SELECT g, {ROW} FROM (SELECT next_id AS g) x;
                 next_id := next_id + 1; n := 1;
               ELSIF r < 0.85 THEN
                 UPDATE bench_rows SET amount = amount + 1, status = 'updated', updated_at = now()
                  WHERE id = victim;
                 GET DIAGNOSTICS n = ROW_COUNT;
               ELSE
                 DELETE FROM bench_rows WHERE id = victim;
                 GET DIAGNOSTICS n = ROW_COUNT;
               END IF;
               done := done + n;
             END LOOP;
             COMMIT;
           END LOOP;
           PERFORM set_config('extsync_bench.end', pg_current_wal_insert_lsn()::text, false);
         END $$;",
            s = args.snapshot_rows,
            target = args.changes
        ))
        .await
        .context("writing the workload")?;
    let (end_text, end) = end_lsn(&setup.client).await?;
    eprintln!(
        "workload: written in {:.1}s, ends at {end_text}",
        started.elapsed().as_secs_f64()
    );
    Ok((end_text, end))
}

/// The floor: `pg_recvlogical` reads `slot` to /dev/null up to `end`; changes/s.
async fn floor(
    args: &Args,
    setup: &Setup,
    bindir: &str,
    slot: &str,
    end: &str,
) -> anyhow::Result<f64> {
    let started = Instant::now();
    let status = tokio::process::Command::new(format!("{bindir}/pg_recvlogical"))
        .args([
            "-d",
            &setup.url,
            "--slot",
            slot,
            "--start",
            "-E",
            end,
            "-f",
            "/dev/null",
            "-s",
            "1",
        ])
        .args([
            "-o",
            "proto_version=1",
            "-o",
            &format!("publication_names={}", setup.publication),
        ])
        .status()
        .await
        .context("running pg_recvlogical")?;
    let secs = started.elapsed().as_secs_f64();
    if !status.success() {
        bail!("pg_recvlogical failed: {status}");
    }
    setup
        .client
        .execute("SELECT pg_drop_replication_slot($1)", &[&slot])
        .await?;
    let per_s = args.changes as f64 / secs;
    eprintln!("pg_recvlogical: {secs:.2}s, {per_s:.0} changes/s");
    Ok(per_s)
}

/// Capture → Kafka until everything up to `end` is acknowledged; changes/s.
async fn through_capture(args: &Args, setup: &Setup, end: u64) -> anyhow::Result<f64> {
    let started = Instant::now();
    tokio::time::timeout(
        Duration::from_secs(1800),
        capture::run_until(&setup.pipeline, CancellationToken::new(), Some(end)),
    )
    .await
    .context("capture did not finish within 30 minutes")??;
    let secs = started.elapsed().as_secs_f64();
    let per_s = args.changes as f64 / secs;
    eprintln!(
        "extsync: {secs:.2}s, {per_s:.0} changes/s (peak RSS so far {:.0} MB)",
        peak_rss_mb()
    );
    Ok(per_s)
}

/// One transaction of `--big-tx` rows through capture; rows/s (`None` when
/// `--big-tx` is 0).
async fn big_transaction(args: &Args, setup: &Setup) -> anyhow::Result<Option<f64>> {
    if args.big_tx == 0 {
        return Ok(None);
    }
    let from = args.snapshot_rows as i64 + 10_000_000;
    setup
        .client
        .batch_execute(&format!(
            "INSERT INTO bench_rows SELECT g, {ROW} FROM generate_series({from}, {to}) g",
            to = from + args.big_tx as i64 - 1
        ))
        .await?;
    let (_, end) = end_lsn(&setup.client).await?;
    let started = Instant::now();
    capture::run_until(&setup.pipeline, CancellationToken::new(), Some(end)).await?;
    let secs = started.elapsed().as_secs_f64();
    eprintln!("one transaction of {} rows: {secs:.2}s", args.big_tx);
    Ok(Some(args.big_tx as f64 / secs))
}
