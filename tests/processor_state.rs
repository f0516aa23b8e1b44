//! Record state between batches: a batch's states are visible to the next
//! batch before they are saved, and `settled` waits for the save.

mod support;

use std::time::Duration;

use extsync::processor::state::{RecordKey, RecordState, StateStore};
use support::TestDb;

fn key(id: &str) -> RecordKey {
    RecordKey {
        integration: "sf".into(),
        entity: "accounts".into(),
        billing_id: id.into(),
    }
}

fn linked(external_id: &str) -> RecordState {
    RecordState {
        external_id: Some(external_id.into()),
        ..RecordState::default()
    }
}

async fn store(db: &TestDb, capacity: u64) -> StateStore {
    let client = extsync::store::open(&db.url, "test")
        .await
        .expect("migrations");
    StateStore::new(client, capacity)
}

#[tokio::test]
async fn remembered_states_are_read_before_they_are_saved_even_when_evicted() {
    let db = TestDb::create().await;
    // A cache that keeps nothing: reads must fall back to the unsaved states.
    let state = store(&db, 0).await;
    let unsaved = state.remember(vec![(key("1"), linked("001A"))]).await;
    assert!(state.is_unsaved(&key("1")));

    let read = state.load_many(&[key("1")]).await.expect("load");
    assert_eq!(read[0].external_id.as_deref(), Some("001A"));
    let fresh = store(&db, 100).await;
    let durable = fresh.load_many(&[key("1")]).await.expect("load");
    assert_eq!(
        durable[0].external_id, None,
        "nothing is written before save"
    );

    state.save(&unsaved).await.expect("save");
    assert!(!state.is_unsaved(&key("1")));
    let fresh = store(&db, 100).await;
    let durable = fresh.load_many(&[key("1")]).await.expect("load");
    assert_eq!(durable[0].external_id.as_deref(), Some("001A"));
    assert_eq!(
        fresh
            .billing_id_of("sf", "accounts", "001A")
            .await
            .expect("link"),
        Some("1".to_string())
    );
}

#[tokio::test]
async fn settled_waits_until_every_remembered_batch_is_saved_or_dropped() {
    let db = TestDb::create().await;
    let state = store(&db, 100).await;
    tokio::time::timeout(Duration::from_secs(1), state.settled())
        .await
        .expect("nothing remembered: settled at once");

    let first = state.remember(vec![(key("1"), linked("001A"))]).await;
    let second = state.remember(vec![(key("2"), linked("001B"))]).await;
    assert!(
        tokio::time::timeout(Duration::from_millis(200), state.settled())
            .await
            .is_err(),
        "two batches are unsaved"
    );
    state.save(&first).await.expect("save");
    drop(first);
    assert!(
        tokio::time::timeout(Duration::from_millis(200), state.settled())
            .await
            .is_err(),
        "the second batch is still unsaved"
    );
    drop(second);
    tokio::time::timeout(Duration::from_secs(1), state.settled())
        .await
        .expect("a dropped batch no longer holds settled back");
}

#[tokio::test]
async fn a_newer_state_stays_unsaved_when_an_older_save_finishes() {
    let db = TestDb::create().await;
    let state = store(&db, 0).await;
    let older = state.remember(vec![(key("1"), linked("001A"))]).await;
    let newer = state.remember(vec![(key("1"), linked("001B"))]).await;
    state.save(&older).await.expect("save");
    assert!(
        state.is_unsaved(&key("1")),
        "the newer state is not saved yet"
    );
    let read = state.load_many(&[key("1")]).await.expect("load");
    assert_eq!(read[0].external_id.as_deref(), Some("001B"));
    state.save(&newer).await.expect("save");
    assert!(!state.is_unsaved(&key("1")));
}

#[tokio::test]
async fn settling_waits_for_the_batches_remembered_before_not_for_later_ones() {
    let db = TestDb::create().await;
    let state = store(&db, 100).await;
    let first = state.remember(vec![(key("1"), linked("001A"))]).await;
    let settling = {
        let state = state.clone();
        tokio::spawn(async move { state.settled().await })
    };
    tokio::time::sleep(Duration::from_millis(50)).await;
    // A batch remembered meanwhile (another part of the processor).
    let second = state.remember(vec![(key("2"), linked("001B"))]).await;
    assert!(
        !settling.is_finished(),
        "settled before the batch remembered first was saved"
    );
    state.save(&first).await.expect("save");
    drop(first);
    tokio::time::timeout(Duration::from_secs(5), settling)
        .await
        .expect("settled once the batch remembered before was saved, the later one still open")
        .unwrap();
    assert!(state.is_unsaved(&key("2")));
    drop(second);
}
