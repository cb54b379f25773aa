//! # reprise-chaos
//!
//! Named fault plans: the vocabulary people use to talk about a run ("checkout passes
//! 10,000 seeds of `partition-storm`"). A plan is data ([`FaultPlan`]), so the same name
//! means the same faults to the simulator, to `reprise list`, to a failure report's
//! reproduction command, and later to the real-infrastructure runner (which maps the
//! network faults onto a TCP proxy).
//!
//! Each plan isolates one family of faults on purpose: a failure under `slow-payments` points
//! at timeout handling, a failure under `duplicate-storm` at idempotency. `swarm` mixes them,
//! drawing a different mix for every seed (swarm testing), and is the default for sweeps.
//!
//! The outage plans (`payment-outage`, `carrier-outage`) take one external service down for
//! seconds at a time — longer than a caller's whole retry ladder, so its circuit breaker
//! has to open — and are stored as JSON under `src/plans/`, so that the scenarios' tests
//! (which do not depend on this crate) run the very same plan the CLI names.
//!
//! Dependency names used here (`payment-provider`, `carrier`) follow the checkout scenario
//! in `reprise-scenarios`. The simulator refuses, with a typed error, a plan that targets a
//! node or dependency the scenario does not have, so a misspelt target cannot silently
//! turn a chaos run into a calm one.

use reprise_sim::plan::{
    BusFaults, DependencyFaults, Direction, Fault, FaultPlan, FaultSpec, Peer, PlanError,
    StoreFaults,
};

/// A named plan with a one-line description for `reprise list`.
#[derive(Clone, Debug)]
pub struct NamedPlan {
    pub name: &'static str,
    pub description: &'static str,
    pub plan: FaultPlan,
}

/// Every named plan, in the order `reprise list` shows them.
#[must_use]
pub fn all() -> Vec<NamedPlan> {
    vec![
        NamedPlan {
            name: "calm",
            description: "no faults: the baseline every scenario must pass",
            plan: FaultPlan::calm(),
        },
        NamedPlan {
            name: "swarm",
            description: "each seed draws its own mix of every fault family (swarm testing)",
            plan: FaultPlan::swarm(),
        },
        NamedPlan {
            name: "partition-storm",
            description: "frequent partitions between nodes and the store, bus and services, both ways and one-way",
            plan: partition_storm(),
        },
        NamedPlan {
            name: "crash-loop",
            description: "nodes crash and restart repeatedly; volatile state and in-flight work are lost",
            plan: crash_loop(),
        },
        NamedPlan {
            name: "slow-payments",
            description: "the payment gateway is slow, flaky, loses responses and goes down for whole windows",
            plan: slow_payments(),
        },
        NamedPlan {
            name: "payment-outage",
            description: "the payment provider goes down for 3-6 s at a time (longer than the retry ladder): breakers open, commands are dead-lettered, an operator redelivers them after the heal",
            plan: payment_outage(),
        },
        NamedPlan {
            name: "carrier-outage",
            description: "the carrier goes down for 3-6 s at a time: shipments cannot be registered, sagas compensate, dead letters are redelivered after the heal",
            plan: carrier_outage(),
        },
        NamedPlan {
            name: "flaky-store",
            description: "event-store latency, transient errors, timeouts and commit-unknown appends",
            plan: flaky_store(),
        },
        NamedPlan {
            name: "relay-split-brain",
            description: "the relay's lease is lost while publishing and the old leader keeps publishing for up to 400 ms (two leaders), BUGGIFY widens the host's risky windows, saga nodes crash",
            plan: stored(RELAY_SPLIT_BRAIN_JSON),
        },
        NamedPlan {
            name: "duplicate-storm",
            description: "the bus duplicates, delays and reorders deliveries, loses commits and rebalances",
            plan: duplicate_storm(),
        },
    ]
}

/// The plan called `name`, or a plan read from a JSON file when `name` ends in `.json`.
///
/// # Errors
/// An unknown name (listing the known ones), an unreadable file or an invalid plan.
pub fn by_name(name: &str) -> Result<FaultPlan, PlanError> {
    if std::path::Path::new(name)
        .extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("json"))
    {
        let text =
            std::fs::read_to_string(name).map_err(|e| PlanError::Parse(format!("{name}: {e}")))?;
        return FaultPlan::from_json(&text);
    }
    all()
        .into_iter()
        .find(|p| p.name == name)
        .map(|p| p.plan)
        .ok_or_else(|| PlanError::Invalid {
            fault: "plan",
            message: format!("unknown plan {name:?}; known plans: {}", names().join(", ")),
        })
}

/// The names of every plan.
#[must_use]
pub fn names() -> Vec<&'static str> {
    all().into_iter().map(|p| p.name).collect()
}

fn partition_storm() -> FaultPlan {
    let partition = |peer: Peer, direction: Direction| {
        FaultSpec::new(Fault::Partition {
            peer,
            direction,
            per_tick_probability: 0.08,
            min_duration_ms: 200,
            max_duration_ms: 3_000,
        })
    };
    FaultPlan::named("partition-storm")
        .with(partition(Peer::EventStore, Direction::Both))
        .with(partition(Peer::EventBus, Direction::Both))
        .with(partition(Peer::AnyDependency, Direction::Outbound))
        .with(partition(Peer::Any, Direction::Inbound))
}

fn crash_loop() -> FaultPlan {
    FaultPlan::named("crash-loop")
        .with(FaultSpec::new(Fault::Crash {
            per_tick_probability: 0.05,
            min_downtime_ms: 100,
            max_downtime_ms: 5_000,
        }))
        .with(FaultSpec::new(Fault::Pause {
            per_tick_probability: 0.02,
            min_duration_ms: 100,
            max_duration_ms: 2_000,
        }))
}

fn slow_payments() -> FaultPlan {
    let payments = || Some("payment-provider".to_owned());
    FaultPlan::named("slow-payments")
        .with(FaultSpec::new(Fault::Dependency {
            dependency: payments(),
            faults: DependencyFaults {
                slowdown_factor: 20.0,
                error_probability: 0.1,
                response_lost_probability: 0.05,
            },
        }))
        .with(FaultSpec::new(Fault::DependencyOutage {
            dependency: payments(),
            per_tick_probability: 0.03,
            min_duration_ms: 1_000,
            max_duration_ms: 20_000,
        }))
}

/// The JSON of the `payment-outage` plan (see the crate docs for why JSON).
pub const PAYMENT_OUTAGE_JSON: &str = include_str!("plans/payment-outage.json");
/// The JSON of the `carrier-outage` plan.
pub const CARRIER_OUTAGE_JSON: &str = include_str!("plans/carrier-outage.json");
/// The JSON of the `relay-split-brain` plan.
pub const RELAY_SPLIT_BRAIN_JSON: &str = include_str!("plans/relay-split-brain.json");

fn stored(json: &str) -> FaultPlan {
    FaultPlan::from_json(json).expect("the stored plans are valid (tested)")
}

fn payment_outage() -> FaultPlan {
    stored(PAYMENT_OUTAGE_JSON)
}

fn carrier_outage() -> FaultPlan {
    stored(CARRIER_OUTAGE_JSON)
}

fn flaky_store() -> FaultPlan {
    FaultPlan::named("flaky-store").with(FaultSpec::new(Fault::Store(StoreFaults {
        extra_latency_max_ms: 100,
        transient_probability: 0.05,
        timeout_probability: 0.03,
        commit_unknown_probability: 0.05,
    })))
}

fn duplicate_storm() -> FaultPlan {
    FaultPlan::named("duplicate-storm")
        .with(FaultSpec::new(Fault::Bus(BusFaults {
            delivery_delay_max_ms: 200,
            duplicate_probability: 0.25,
            reorder_probability: 0.2,
            publish_error_probability: 0.0,
            publish_ack_lost_probability: 0.05,
            commit_lost_probability: 0.2,
        })))
        .with(FaultSpec::new(Fault::Rebalance {
            per_tick_probability: 0.05,
        }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_named_plan_is_valid_and_carries_its_own_name() {
        for named in all() {
            named
                .plan
                .validate()
                .unwrap_or_else(|e| panic!("plan {}: {e}", named.name));
            assert_eq!(
                named.plan.name, named.name,
                "a plan's name must be the name that reproduces it"
            );
        }
    }

    #[test]
    fn outage_plans_take_one_service_down_for_longer_than_a_retry_ladder() {
        for (plan, service) in [
            (payment_outage(), "payment-provider"),
            (carrier_outage(), "carrier"),
        ] {
            plan.validate().unwrap();
            let [spec] = plan.specs.as_slice() else {
                panic!("{}: one outage spec", plan.name);
            };
            let Fault::DependencyOutage {
                dependency,
                min_duration_ms,
                ..
            } = &spec.fault
            else {
                panic!("{}: {:?}", plan.name, spec.fault);
            };
            assert_eq!(dependency.as_deref(), Some(service));
            // The checkout's retry ladder ends within 1.5 s (reprise-scenarios,
            // `checkout::resilience`): an outage must outlast it for the breaker to open.
            assert!(*min_duration_ms >= 3_000, "{}", plan.name);
        }
    }

    #[test]
    fn names_are_unique() {
        let mut names = names();
        let count = names.len();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), count);
    }

    #[test]
    fn unknown_plans_are_a_clear_error() {
        let err = by_name("hurricane").unwrap_err().to_string();
        assert!(
            err.contains("unknown plan") && err.contains("partition-storm"),
            "{err}"
        );
    }

    #[test]
    fn plans_round_trip_through_json_files() {
        let dir = std::env::temp_dir().join(format!("reprise-chaos-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("storm.json");
        std::fs::write(&path, partition_storm().to_json()).unwrap();
        assert_eq!(by_name(path.to_str().unwrap()).unwrap(), partition_storm());
        std::fs::remove_dir_all(dir).unwrap();
    }
}
