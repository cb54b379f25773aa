//! Framework overhead, measured. See `docs/performance.md` for the figures.
//!
//! Single-sender benchmarks run the store on a current-thread tokio runtime (named
//! `current_thread`); the concurrent-senders benchmark uses a multi-thread runtime with two
//! workers (named `multi_thread`).
//!
//! The reducer and single-sender benchmarks measure the benchmark thread's **CPU time**,
//! not wall time: on a shared build machine wall time mostly measures how often other
//! processes preempted us, while a current-thread runtime does all its work — reducer,
//! effect, scheduler — on this one thread, so its CPU time is the cost. The concurrent
//! benchmark spans threads, so it stays on wall time.

use std::hint::black_box;
use std::sync::Arc;
use std::time::Duration;

use cpu_time::ThreadTime;
use criterion::measurement::{Measurement, ValueFormatter, WallTime};
use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};
use reprise_benches::{BenchAction, BenchFeature};
use reprise_core::{Aggregate, Reducer, Store};
use reprise_examples::counter::{
    Counter, CounterAction, CounterEnv, CounterFeature, FactError, NumberFacts,
};
use reprise_examples::order::{Order, OrderCommand};
use reprise_tokio::TokioRuntime;
use tokio::runtime::Runtime as Tokio;

fn current_thread() -> Tokio {
    tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .expect("tokio runtime")
}

fn multi_thread() -> Tokio {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_time()
        .build()
        .expect("tokio runtime")
}

fn store_on(tokio: &Tokio) -> Store<BenchFeature> {
    let runtime = TokioRuntime::from_handle(tokio.handle().clone()).shared();
    Store::builder(BenchFeature, 0, (), runtime).build()
}

/// CPU time of the calling thread, reported in the units wall time uses.
struct ThreadCpuTime;

/// Wall time's formatter (nanoseconds with adaptive units) is what CPU time wants too.
static NANOSECONDS: WallTime = WallTime;

impl Measurement for ThreadCpuTime {
    type Intermediate = ThreadTime;
    type Value = Duration;

    fn start(&self) -> ThreadTime {
        ThreadTime::now()
    }
    fn end(&self, started: ThreadTime) -> Duration {
        started.elapsed()
    }
    fn add(&self, a: &Duration, b: &Duration) -> Duration {
        *a + *b
    }
    fn zero(&self) -> Duration {
        Duration::ZERO
    }
    fn to_f64(&self, value: &Duration) -> f64 {
        value.as_secs_f64() * 1e9
    }
    fn formatter(&self) -> &dyn ValueFormatter {
        NANOSECONDS.formatter()
    }
}

struct NoFacts;

impl NumberFacts for NoFacts {
    fn fact(&self, _: i64) -> reprise_core::BoxFuture<'static, Result<String, FactError>> {
        Box::pin(async { Err(FactError("not benchmarked".into())) })
    }
}

fn reducers<M: Measurement>(c: &mut Criterion<M>) {
    let mut group = c.benchmark_group("reducer");
    let env = CounterEnv {
        facts: Arc::new(NoFacts),
        increment_delay: Duration::from_secs(1),
    };
    let mut counter = Counter::default();
    group.bench_function("counter_increment", |b| {
        // The effect list is consumed by its length: black-boxing the whole inline
        // `Effects` array would measure copying it to the stack instead of the reducer.
        b.iter(|| {
            CounterFeature
                .reduce(&mut counter, black_box(CounterAction::Increment), &env)
                .len()
        });
    });

    // An add and a remove of the same line: the state returns to where it started, so
    // every iteration does the same work. Two decide+apply per iteration.
    let mut order = Order::default();
    order.apply(&reprise_examples::order::OrderEvent::Placed {
        customer: "ada".into(),
    });
    let add = OrderCommand::AddLine {
        sku: "tea".into(),
        quantity: 2,
        unit_price_cents: 350,
    };
    let remove = OrderCommand::RemoveLine { sku: "tea".into() };
    group.throughput(Throughput::Elements(2));
    group.bench_function("order_decide_apply", |b| {
        b.iter(|| {
            for command in [&add, &remove] {
                for event in order.decide(black_box(command)).expect("valid command") {
                    order.apply(&event);
                }
            }
        });
    });
    group.finish();
}

fn sends<M: Measurement>(c: &mut Criterion<M>) {
    let tokio = current_thread();
    let store = store_on(&tokio);
    let mut group = c.benchmark_group("store");
    group.bench_function("send_no_effect/current_thread", |b| {
        b.iter(|| black_box(store.send(BenchAction::Add(1))));
    });
    group.bench_function("send_and_read_state/current_thread", |b| {
        b.iter(|| {
            drop(black_box(store.send(BenchAction::Add(1))));
            black_box(store.with_state(|total| *total))
        });
    });
    group.bench_function("effect_round_trip/current_thread", |b| {
        b.to_async(&tokio)
            .iter(|| store.send(BenchAction::Fetch(1)));
    });
    group.bench_function("parallel_effects_4/current_thread", |b| {
        b.to_async(&tokio)
            .iter(|| store.send(BenchAction::FanOut(4)));
    });
    group.bench_function("timer_zero_delay_round_trip/current_thread", |b| {
        b.to_async(&tokio)
            .iter(|| store.send(BenchAction::After(Duration::ZERO)));
    });
    group.finish();
}

fn concurrent_senders(c: &mut Criterion) {
    const SENDERS: usize = 10;
    let tokio = multi_thread();
    let store = store_on(&tokio);
    let handle = tokio.handle().clone();
    let mut group = c.benchmark_group("store");
    group.bench_function("concurrent_sends_10/multi_thread", |b| {
        b.to_async(&tokio).iter_batched(
            || (store.clone(), handle.clone()),
            |(store, handle)| async move {
                let senders: Vec<_> = (0..SENDERS)
                    .map(|_| {
                        let store = store.clone();
                        handle.spawn(async move { store.send(BenchAction::Add(1)).await })
                    })
                    .collect();
                for sender in senders {
                    sender.await.expect("sender task");
                }
            },
            BatchSize::SmallInput,
        );
    });
    group.finish();
}

criterion_group! {
    name = single_thread;
    config = Criterion::default().with_measurement(ThreadCpuTime);
    targets = reducers, sends
}
criterion_group!(multi_thread_wall_time, concurrent_senders);
criterion_main!(single_thread, multi_thread_wall_time);
