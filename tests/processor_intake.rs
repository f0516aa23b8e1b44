//! Taking a batch (`extsync::processor::intake::next_batch`) may race
//! other work: however often that work wins, every message is taken once,
//! in order. Real Kafka.
mod support;

use std::time::{Duration, Instant};

use extsync::processor::handover::Ownership;
use extsync::processor::intake::{MAX_BATCH, next_batch};
use rdkafka::Message;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};
use support::TestKafka;
use tokio_util::sync::CancellationToken;

const MESSAGES: usize = 4 * MAX_BATCH;

/// Spends more than a task's cooperative budget (128 units) over two polls.
async fn busy_work() {
    for _ in 0..200 {
        tokio::task::consume_budget().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_are_taken_once_and_in_order_while_other_work_races_the_wait() {
    let kafka = TestKafka::new();
    let topic = kafka.create_topic("intake", 1).await;
    let consumer: StreamConsumer<Ownership> = kafka
        .config()
        .set("group.id", support::unique("intake"))
        .set("auto.offset.reset", "earliest")
        .set("enable.auto.commit", "false")
        .create_with_context(Ownership::default())
        .unwrap();
    consumer.subscribe(&[&topic]).unwrap();
    // Messages arrive in small bursts while the loop takes them, so the
    // loop often finds fewer ready than a full batch.
    let producer: FutureProducer = kafka.config().set("linger.ms", "0").create().unwrap();
    let to = topic.clone();
    let sending = tokio::spawn(async move {
        for burst in 0..MESSAGES / 10 {
            for i in burst * 10..(burst + 1) * 10 {
                let payload = i.to_string();
                producer
                    .send_result(FutureRecord::<(), _>::to(&to).payload(&payload))
                    .unwrap();
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        producer.flush(Duration::from_secs(30)).unwrap();
    });
    let stop = CancellationToken::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    let (mut taken, mut batches, mut interrupted) = (Vec::new(), 0, 0);
    while taken.len() < MESSAGES && Instant::now() < deadline {
        // Work that often finishes first, as a part does, and that leaves
        // little of the task's cooperative budget (as a busy loop does).
        tokio::select! {
            next = next_batch(&consumer, &stop) => {
                let batch = next.unwrap().unwrap();
                assert!(batch.len() <= MAX_BATCH, "a batch of {}", batch.len());
                taken.extend(batch.iter().map(|m| m.offset()));
                batches += 1;
            }
            _ = busy_work() => interrupted += 1,
        }
    }
    sending.await.unwrap();
    let expected: Vec<i64> = (0..MESSAGES as i64).collect();
    assert_eq!(
        taken.len(),
        MESSAGES,
        "{} of {MESSAGES} messages taken ({batches} batches, {interrupted} waits interrupted)",
        taken.len()
    );
    assert_eq!(taken, expected, "offsets taken in order, each once");
    assert!(
        batches < MESSAGES,
        "the messages fetched behind a first one are taken with it"
    );
}
