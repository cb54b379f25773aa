//! The store counts every action in `reprise_actions_total{store, action}`, and registers
//! each counter once per store and action name rather than once per send (building a
//! metrics key costs more than the rest of a send; see `docs/performance.md`).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use metrics::{Counter, Gauge, Histogram, Key, KeyName, Metadata, Recorder, SharedString, Unit};
use parking_lot::Mutex;
use reprise_core::testing::TestRuntime;
use reprise_core::{Effects, Reducer, SharedRuntime, Store, effects};

/// Records counter registrations and values; gauges and histograms are not under test.
#[derive(Default)]
struct Recording {
    registrations: Mutex<Vec<String>>,
    counters: Mutex<BTreeMap<String, Arc<AtomicU64>>>,
}

impl Recording {
    fn counter(&self, name: &str) -> u64 {
        self.counters
            .lock()
            .get(name)
            .map_or(0, |c| c.load(Ordering::Relaxed))
    }
}

fn describe(key: &Key) -> String {
    let labels: Vec<String> = key
        .labels()
        .map(|l| format!("{}={}", l.key(), l.value()))
        .collect();
    format!("{}{{{}}}", key.name(), labels.join(","))
}

impl Recorder for Recording {
    fn describe_counter(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
    fn describe_gauge(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
    fn describe_histogram(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}

    fn register_counter(&self, key: &Key, _: &Metadata<'_>) -> Counter {
        let name = describe(key);
        self.registrations.lock().push(name.clone());
        Counter::from_arc(Arc::clone(self.counters.lock().entry(name).or_default()))
    }

    fn register_gauge(&self, _: &Key, _: &Metadata<'_>) -> Gauge {
        Gauge::noop()
    }

    fn register_histogram(&self, _: &Key, _: &Metadata<'_>) -> Histogram {
        Histogram::noop()
    }
}

#[derive(Debug)]
struct Light;

#[derive(Debug)]
enum Switch {
    On,
    Off,
}

impl Reducer for Light {
    type State = bool;
    type Action = Switch;
    type Env = ();

    fn reduce(&self, on: &mut bool, action: Switch, (): &()) -> Effects<Switch> {
        *on = matches!(action, Switch::On);
        effects![]
    }

    fn action_name(&self, action: &Switch) -> &'static str {
        match action {
            Switch::On => "On",
            Switch::Off => "Off",
        }
    }
}

#[test]
fn every_action_is_counted_and_each_counter_registered_once() {
    let recording = Recording::default();
    metrics::with_local_recorder(&recording, || {
        let runtime: SharedRuntime = TestRuntime::shared(1);
        let hall = Store::builder(Light, false, (), Arc::clone(&runtime))
            .name("hall")
            .build();
        let porch = Store::builder(Light, false, (), runtime)
            .name("porch")
            .build();
        for _ in 0..100 {
            drop(hall.send(Switch::On));
            drop(hall.send(Switch::Off));
        }
        drop(porch.send(Switch::On));
    });
    assert_eq!(
        recording.counter("reprise_actions_total{store=hall,action=On}"),
        100
    );
    assert_eq!(
        recording.counter("reprise_actions_total{store=hall,action=Off}"),
        100
    );
    assert_eq!(
        recording.counter("reprise_actions_total{store=porch,action=On}"),
        1
    );
    let mut registered = recording.registrations.lock().clone();
    registered.sort();
    assert_eq!(
        registered,
        [
            "reprise_actions_total{store=hall,action=Off}",
            "reprise_actions_total{store=hall,action=On}",
            "reprise_actions_total{store=porch,action=On}",
        ]
    );
}
