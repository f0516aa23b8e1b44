//! Shared by the `extsync bench` commands: service settings from the
//! environment, a scratch database and topics (with what killed runs left
//! of theirs), peak memory.

use std::time::Duration;

use anyhow::Context;
use rdkafka::ClientConfig;
use rdkafka::admin::{AdminClient, AdminOptions};
use rdkafka::client::DefaultClientContext;
use tokio_postgres::NoTls;

/// A required setting printed by `dev/services env`.
pub fn env(name: &str) -> anyhow::Result<String> {
    std::env::var(name)
        .with_context(|| format!("{name} is not set: run `eval \"$(dev/services env)\"` first"))
}

pub async fn connect(url: &str) -> anyhow::Result<tokio_postgres::Client> {
    let (client, conn) = tokio_postgres::connect(url, NoTls)
        .await
        .context("connecting to PostgreSQL")?;
    tokio::spawn(conn);
    Ok(client)
}

/// Deletes the topics whose names start with `tag.`.
pub async fn delete_topics(brokers: &str, tag: &str) -> anyhow::Result<()> {
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .create()?;
    let md = admin
        .inner()
        .fetch_metadata(None, Duration::from_secs(10))?;
    let names: Vec<String> = md
        .topics()
        .iter()
        .map(|t| t.name().to_string())
        .filter(|n| n.starts_with(&format!("{tag}.")))
        .collect();
    let refs: Vec<&str> = names.iter().map(String::as_str).collect();
    if !refs.is_empty() {
        admin.delete_topics(&refs, &AdminOptions::new()).await?;
    }
    Ok(())
}

/// Drops what earlier runs of a bench left when they were killed before
/// their clean-up: each scratch database named `<prefix>…` that nothing is
/// connected to, the replication slots in it (which hold WAL for as long
/// as they exist), and its topics. Returns the databases dropped.
pub async fn clear_leftovers(
    admin: &tokio_postgres::Client,
    brokers: &str,
    prefix: &str,
) -> anyhow::Result<Vec<String>> {
    let rows = admin
        .query(
            "SELECT d.datname FROM pg_database d
              WHERE starts_with(d.datname, $1)
                AND NOT EXISTS (SELECT 1 FROM pg_stat_activity a WHERE a.datname = d.datname)
                AND NOT EXISTS (SELECT 1 FROM pg_replication_slots s WHERE s.database = d.datname AND s.active)",
            &[&prefix],
        )
        .await
        .context("listing earlier bench databases")?;
    let mut dropped = Vec::new();
    for r in rows {
        let name: String = r.get(0);
        admin
            .execute(
                "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots WHERE database = $1 AND NOT active",
                &[&name],
            )
            .await
            .with_context(|| format!("dropping the slots of {name}"))?;
        admin
            .batch_execute(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
            .await
            .with_context(|| format!("dropping {name}"))?;
        delete_topics(brokers, &name).await?;
        dropped.push(name);
    }
    Ok(dropped)
}

/// `url` with its database replaced by `db`.
pub fn with_database(url: &str, db: &str) -> String {
    let (base, query) = url
        .split_once('?')
        .map_or((url, None), |(b, q)| (b, Some(q)));
    let cut = base.rfind('/').map_or(base.len(), |i| i);
    format!(
        "{}/{db}{}",
        &base[..cut],
        query.map(|q| format!("?{q}")).unwrap_or_default()
    )
}

/// Peak resident set size of this process, in MB.
pub fn peak_rss_mb() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse::<f64>().ok())
        })
        .map_or(0.0, |kb| kb / 1024.0)
}

/// The value at quantile `q` (0..=1) of sorted `values`.
pub fn quantile(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    sorted[((sorted.len() - 1) as f64 * q).round() as usize]
}
