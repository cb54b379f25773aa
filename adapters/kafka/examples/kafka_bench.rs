//! Benchmark for the Kafka event bus: publish throughput (batches awaited to the last
//! delivery report, `acks=all`, idempotent) and publish → consumed latency through a
//! consumer group, with percentiles from `hdrhistogram`.
//!
//! ```text
//! eval "$(scripts/kafka.sh)"
//! cargo run -p reprise-kafka --release --example kafka-bench -- --messages 20000
//! # librdkafka tuning goes through KAFKA_PROPERTIES, e.g. for latency:
//! KAFKA_PROPERTIES='linger.ms=0;fetch.wait.max.ms=10' cargo run -p reprise-kafka --release --example kafka-bench
//! ```
//!
//! Every run uses fresh topics and a fresh group (`bench-<pid>-<nanos>-…`), so it never reads
//! another run's messages. Runs are bounded by `--messages` and `--latency-samples`, and each
//! wait by the group join budget.

// A load generator measures wall-clock time and runs on tokio by design.
#![allow(clippy::disallowed_methods, clippy::disallowed_types)]

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use clap::Parser;
use hdrhistogram::Histogram;
use reprise_core::Payload;
use reprise_core::event_bus::{EventBus, Headers, OutgoingMessage, header};
use reprise_kafka::{KafkaConfig, KafkaEventBus};

#[derive(Parser, Debug)]
#[command(about = "Publish throughput and publish→consumed latency of the reprise Kafka bus")]
struct Args {
    /// Messages published in the throughput phase.
    #[arg(long, default_value_t = 20_000)]
    messages: u64,
    /// Messages per `publish` call in the throughput phase.
    #[arg(long, default_value_t = 500)]
    batch: u64,
    /// Distinct keys (streams) the messages are spread over.
    #[arg(long, default_value_t = 64)]
    keys: u64,
    /// Partitions of the benchmark topics.
    #[arg(long, default_value_t = 4)]
    partitions: u32,
    /// Payload size in bytes (JSON text).
    #[arg(long, default_value_t = 256)]
    payload_bytes: usize,
    /// Round trips measured in the latency phase (one message in flight at a time).
    #[arg(long, default_value_t = 500)]
    latency_samples: u64,
    /// Consumer group session timeout, in milliseconds.
    #[arg(long, default_value_t = 6000)]
    session_timeout_ms: u64,
    /// Consumer group heartbeat interval, in milliseconds.
    #[arg(long, default_value_t = 500)]
    heartbeat_interval_ms: u64,
}

fn message(topic: &str, key: u64, seq: u64, payload: &str) -> OutgoingMessage {
    OutgoingMessage {
        topic: topic.into(),
        key: format!("stream-{key}").into(),
        payload: Payload::from_json_text(payload),
        headers: Headers::default()
            .with(header::EVENT_ID, seq.to_string())
            .with(header::EVENT_TYPE, "Benchmarked"),
    }
}

fn report(name: &str, h: &Histogram<u64>) {
    println!(
        "{name:<28} n={:<6} p50={:>8.2} ms  p99={:>8.2} ms  max={:>8.2} ms",
        h.len(),
        h.value_at_quantile(0.50) as f64 / 1000.0,
        h.value_at_quantile(0.99) as f64 / 1000.0,
        h.max() as f64 / 1000.0,
    );
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args = Args::parse();
    if args.batch == 0 || args.keys == 0 || args.partitions == 0 {
        return Err("--batch, --keys and --partitions must be positive".into());
    }
    let config = KafkaConfig::from_env()?
        .client_id("reprise-kafka-bench")
        .group_timing(
            Duration::from_millis(args.session_timeout_ms),
            Duration::from_millis(args.heartbeat_interval_ms),
        );
    let budget = config.group_join_budget();
    println!(
        "broker {} | extra librdkafka properties {:?}",
        config.bootstrap_servers, config.properties
    );
    let bus = KafkaEventBus::new(config)?;
    bus.check_connection().await?;

    let nanos = SystemTime::now().duration_since(UNIX_EPOCH)?.as_nanos();
    let ns = format!("bench-{}-{nanos}-", std::process::id());
    let (throughput_topic, latency_topic) = (format!("{ns}throughput"), format!("{ns}latency"));
    bus.create_topic(&throughput_topic, args.partitions, 1)
        .await?;
    bus.create_topic(&latency_topic, args.partitions, 1).await?;
    let payload = format!(
        r#"{{"pad":"{}"}}"#,
        "x".repeat(args.payload_bytes.saturating_sub(10))
    );

    // Throughput: sequential batches, each awaited to its last delivery report.
    let mut batch_ms = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3)?;
    let started = Instant::now();
    let mut sent = 0;
    while sent < args.messages {
        let n = args.batch.min(args.messages - sent);
        let batch = (sent..sent + n)
            .map(|i| message(&throughput_topic, i % args.keys, i, &payload))
            .collect();
        let t = Instant::now();
        bus.publish(batch).await?;
        batch_ms.record(u64::try_from(t.elapsed().as_micros()).unwrap_or(u64::MAX))?;
        sent += n;
    }
    let elapsed = started.elapsed();
    println!(
        "publish throughput           {} msgs of {} B in {:.2} s = {:.0} msgs/s (batches of {})",
        args.messages,
        payload.len(),
        elapsed.as_secs_f64(),
        args.messages as f64 / elapsed.as_secs_f64(),
        args.batch
    );
    report("publish batch duration", &batch_ms);

    // Latency: one message in flight; from `publish` to `next()` returning it.
    let mut sub = bus
        .subscribe(&format!("{ns}group"), &[&latency_topic])
        .await?;
    let join = Instant::now();
    bus.publish(vec![message(&latency_topic, 0, 0, &payload)])
        .await?;
    let warm = tokio::time::timeout(budget, sub.next())
        .await
        .map_err(|_| "no message within the group join budget")??;
    sub.ack(&warm);
    println!(
        "group join + first message   {:.2} s",
        join.elapsed().as_secs_f64()
    );
    let mut publish_ack = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3)?;
    let mut end_to_end = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3)?;
    for seq in 1..=args.latency_samples {
        let t = Instant::now();
        bus.publish(vec![message(
            &latency_topic,
            seq % args.keys,
            seq,
            &payload,
        )])
        .await?;
        publish_ack.record(u64::try_from(t.elapsed().as_micros()).unwrap_or(u64::MAX))?;
        let d = tokio::time::timeout(budget, sub.next())
            .await
            .map_err(|_| "a published message was not consumed in time")??;
        end_to_end.record(u64::try_from(t.elapsed().as_micros()).unwrap_or(u64::MAX))?;
        if d.headers.get(header::EVENT_ID) != Some(seq.to_string().as_str()) {
            return Err(format!("expected message {seq}, got {}", d.coordinates()).into());
        }
        sub.ack(&d);
        if seq % 100 == 0 {
            sub.commit().await?;
        }
    }
    sub.commit().await?;
    report("publish → delivery report", &publish_ack);
    report("publish → consumed", &end_to_end);
    Ok(())
}
