//! Drill plans: which faults, when, for how long — data, like the simulator's plans, so a
//! report can list exactly what was done and a name means the same thing every time.
//!
//! Where a drill means what a simulator plan means, it says so
//! ([`DrillPlan::simulator_plan`]): `process-kill` is the real-world `crash-loop`,
//! `network` the real-world `partition-storm`, `postgres-restart` the real-world
//! `flaky-store`, `provider-outage` the real-world `payment-outage`. A seed that fails one
//! of those in the simulator is the first thing to try when the drill fails (and the
//! other way round).
//!
//! Faults never overlap: each heals before the next begins, so a report can say which
//! fault a symptom followed. (`full` changes faults every 25 s; each lasts at most 20 s.)

use std::time::Duration;

use serde::Serialize;

use crate::proxy::{Direction, LinkFault};

/// A connection the drill's proxies sit on.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Link {
    /// The replicas ↔ PostgreSQL.
    Postgres,
    /// The replicas ↔ the broker (bootstrap and advertised address).
    Broker,
    /// The replicas → the payment provider.
    Payment,
    /// The replicas → the carrier.
    Carrier,
}

impl Link {
    pub const ALL: [Link; 4] = [Link::Postgres, Link::Broker, Link::Payment, Link::Carrier];

    #[must_use]
    pub fn name(self) -> &'static str {
        match self {
            Link::Postgres => "postgres",
            Link::Broker => "broker",
            Link::Payment => "payment",
            Link::Carrier => "carrier",
        }
    }
}

/// One fault.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case", tag = "kind")]
pub enum Fault {
    /// `kill -9` of shop replica `replica`, started again after `down`.
    KillReplica { replica: usize, down: Duration },
    /// PostgreSQL `stop -m immediate`, started again after `down`.
    PostgresRestart { down: Duration },
    /// `kill -9` of the broker, started again after `down` on the same storage.
    BrokerRestart { down: Duration },
    /// A link misbehaves for `lasting`.
    Network {
        link: Link,
        fault: LinkFault,
        lasting: Duration,
    },
    /// Every open connection on a link is closed at once.
    ResetConnections { link: Link },
    /// The payment provider answers 503 to everything for `lasting`.
    ProviderOutage { lasting: Duration },
    /// Unhandleable messages produced onto a consumed topic by a plain Kafka client: no
    /// headers and not JSON, a bad event id, non-UTF-8 bytes, a tombstone.
    Poison,
}

impl Fault {
    /// How long after it starts the fault is healed.
    #[must_use]
    pub fn lasting(&self) -> Duration {
        match *self {
            Fault::KillReplica { down, .. }
            | Fault::PostgresRestart { down }
            | Fault::BrokerRestart { down } => down,
            Fault::Network { lasting, .. } | Fault::ProviderOutage { lasting } => lasting,
            Fault::ResetConnections { .. } | Fault::Poison => Duration::ZERO,
        }
    }

    /// A short human description, for progress lines and reports.
    #[must_use]
    pub fn describe(&self) -> String {
        match *self {
            Fault::KillReplica { replica, down } => {
                format!(
                    "kill -9 replica {replica}, restart after {}s",
                    down.as_secs()
                )
            }
            Fault::PostgresRestart { down } => format!(
                "PostgreSQL stop -m immediate, start after {}s",
                down.as_secs()
            ),
            Fault::BrokerRestart { down } => {
                format!("kill -9 broker, restart after {}s", down.as_secs())
            }
            Fault::Network {
                link,
                fault,
                lasting,
            } => {
                let what = match fault {
                    LinkFault::Latency(delay) => format!("+{} ms latency", delay.as_millis()),
                    LinkFault::Blackhole => "black hole".to_string(),
                    LinkFault::OneWay(Direction::ToUpstream) => {
                        "one-way loss (requests held)".to_string()
                    }
                    LinkFault::OneWay(Direction::ToClient) => {
                        "one-way loss (answers held)".to_string()
                    }
                };
                format!("{} link: {what} for {}s", link.name(), lasting.as_secs())
            }
            Fault::ResetConnections { link } => {
                format!("{} link: every connection reset", link.name())
            }
            Fault::ProviderOutage { lasting } => {
                format!("payment provider answers 503 for {}s", lasting.as_secs())
            }
            Fault::Poison => "poison messages onto checkout.orders".to_string(),
        }
    }
}

/// A fault at a time after the load starts.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct Step {
    pub at: Duration,
    pub fault: Fault,
}

/// A named drill.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct DrillPlan {
    pub name: &'static str,
    pub description: &'static str,
    /// The simulator plan that means the same thing, if any.
    pub simulator_plan: Option<&'static str>,
    /// How long the load runs; faults all heal before it ends.
    pub duration: Duration,
    pub steps: Vec<Step>,
}

/// The names [`DrillPlan::named`] knows, with their descriptions, for `--help` and errors.
pub const NAMES: [(&str, &str); 9] = [
    (
        "smoke",
        "one replica kill, one PostgreSQL restart, the broker cut off, one poison batch (~2 min; CI)",
    ),
    (
        "process-kill",
        "kill -9 a shop replica every 30 s, alternating (simulator: crash-loop)",
    ),
    (
        "postgres-restart",
        "PostgreSQL stop -m immediate every 40 s, 3 s down (simulator: flaky-store)",
    ),
    (
        "broker-restart",
        "kill -9 the broker every 40 s, 5 s down, durable storage",
    ),
    (
        "network",
        "latency, resets, black holes and one-way loss on every link (simulator: partition-storm)",
    ),
    (
        "provider-outage",
        "the payment provider answers 503 for 15 s every 40 s (simulator: payment-outage)",
    ),
    (
        "poison",
        "unhandleable messages produced onto a consumed topic every 20 s",
    ),
    (
        "full",
        "every fault above in turn, a new one every 25 s (10 minutes by default)",
    ),
    (
        "full-no-broker-kill",
        "as full, without killing the broker (tansu 0.6 does not survive it; see docs/reliability.md)",
    ),
];

const WARM_UP: Duration = Duration::from_secs(15);
/// Quiet time after the last fault heals before the load stops: the recovery is measured
/// under load.
const COOL_DOWN: Duration = Duration::from_secs(15);

fn secs(n: u64) -> Duration {
    Duration::from_secs(n)
}

impl DrillPlan {
    /// The named plan; `duration` overrides its default length (the smoke plan's is fixed).
    ///
    /// # Errors
    /// An unknown name (the known ones are listed), or a duration too short for one fault.
    pub fn named(name: &str, duration: Option<Duration>) -> Result<Self, String> {
        let Some(&(name, description)) = NAMES.iter().find(|(known, _)| *known == name) else {
            let known: Vec<&str> = NAMES.iter().map(|(n, _)| *n).collect();
            return Err(format!(
                "unknown drill plan '{name}'; known: {}",
                known.join(", ")
            ));
        };
        let default = match name {
            "smoke" => secs(110),
            "full" | "full-no-broker-kill" => secs(600),
            _ => secs(150),
        };
        let duration = if name == "smoke" {
            default
        } else {
            duration.unwrap_or(default)
        };
        let kill = |replica| Fault::KillReplica {
            replica,
            down: secs(5),
        };
        let pg = Fault::PostgresRestart { down: secs(3) };
        let broker = Fault::BrokerRestart { down: secs(5) };
        let outage = Fault::ProviderOutage { lasting: secs(15) };
        let network = |link, fault, lasting| Fault::Network {
            link,
            fault,
            lasting: secs(lasting),
        };
        let network_cycle = vec![
            network(
                Link::Postgres,
                LinkFault::Latency(Duration::from_millis(200)),
                15,
            ),
            network(Link::Broker, LinkFault::Blackhole, 10),
            network(Link::Payment, LinkFault::OneWay(Direction::ToClient), 10),
            Fault::ResetConnections {
                link: Link::Postgres,
            },
            network(Link::Broker, LinkFault::OneWay(Direction::ToUpstream), 8),
            network(Link::Carrier, LinkFault::Blackhole, 10),
            Fault::ResetConnections { link: Link::Broker },
            network(Link::Postgres, LinkFault::Blackhole, 5),
        ];
        let (cycle, gap): (Vec<Fault>, Duration) = match name {
            // The broker is cut off at the network, not killed: tansu 0.6 does not survive
            // `kill -9` under load (see `broker`), and CI must not fail on the broker's
            // defect. `broker-restart` and `full` kill it.
            "smoke" => (
                vec![
                    kill(1),
                    pg,
                    network(Link::Broker, LinkFault::Blackhole, 8),
                    Fault::Poison,
                ],
                secs(22),
            ),
            "process-kill" => (vec![kill(0), kill(1)], secs(30)),
            "postgres-restart" => (vec![pg], secs(40)),
            "broker-restart" => (vec![broker], secs(40)),
            "network" => (network_cycle, secs(20)),
            "provider-outage" => (vec![outage], secs(40)),
            "poison" => (vec![Fault::Poison], secs(20)),
            _ => {
                let mut all = vec![kill(0), pg, network_cycle[0]];
                if name == "full" {
                    all.push(broker);
                }
                all.extend([
                    outage,
                    network_cycle[1],
                    Fault::Poison,
                    kill(1),
                    network_cycle[2],
                ]);
                all.extend_from_slice(&network_cycle[3..]);
                (all, secs(25))
            }
        };
        let mut steps = Vec::new();
        let mut at = WARM_UP;
        for fault in cycle.iter().cycle() {
            if at + fault.lasting() + COOL_DOWN > duration {
                break;
            }
            steps.push(Step { at, fault: *fault });
            if name == "smoke" && steps.len() == cycle.len() {
                break;
            }
            at += gap;
        }
        if steps.is_empty() {
            return Err(format!(
                "{}s is too short for drill '{name}': it needs {}s of warm-up, one fault and {}s of cool-down",
                duration.as_secs(),
                WARM_UP.as_secs(),
                COOL_DOWN.as_secs()
            ));
        }
        let simulator_plan = match name {
            "process-kill" => Some("crash-loop"),
            "network" => Some("partition-storm"),
            "postgres-restart" => Some("flaky-store"),
            "provider-outage" => Some("payment-outage"),
            _ => None,
        };
        Ok(DrillPlan {
            name,
            description,
            simulator_plan,
            duration,
            steps,
        })
    }

    /// Whether the plan kills the broker (and so needs durable broker storage).
    #[must_use]
    pub fn kills_broker(&self) -> bool {
        self.steps
            .iter()
            .any(|step| matches!(step.fault, Fault::BrokerRestart { .. }))
    }

    /// When the last fault heals, from the start of the load.
    #[must_use]
    pub fn last_heal(&self) -> Duration {
        self.steps
            .iter()
            .map(|step| step.at + step.fault.lasting())
            .max()
            .unwrap_or_default()
    }

    /// The payment provider's outage windows, from the start of the load.
    #[must_use]
    pub fn outages(&self) -> Vec<(Duration, Duration)> {
        self.steps
            .iter()
            .filter_map(|step| match step.fault {
                Fault::ProviderOutage { lasting } => Some((step.at, step.at + lasting)),
                _ => None,
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_named_plan_builds_with_faults_that_heal_before_the_next_and_before_the_end() {
        for (name, _) in NAMES {
            let plan = DrillPlan::named(name, None).unwrap();
            assert!(!plan.steps.is_empty(), "{name}");
            for pair in plan.steps.windows(2) {
                assert!(
                    pair[0].at + pair[0].fault.lasting() < pair[1].at,
                    "{name}: {:?} overlaps {:?}",
                    pair[0],
                    pair[1]
                );
            }
            assert!(plan.last_heal() + COOL_DOWN <= plan.duration, "{name}");
        }
    }

    #[test]
    fn smoke_is_a_kill_a_postgres_restart_a_broker_cut_and_poison() {
        let plan = DrillPlan::named("smoke", Some(secs(9999))).unwrap();
        let kinds: Vec<&str> = plan
            .steps
            .iter()
            .map(|step| match step.fault {
                Fault::KillReplica { .. } => "kill",
                Fault::PostgresRestart { .. } => "postgres",
                Fault::Network {
                    link: Link::Broker,
                    fault: LinkFault::Blackhole,
                    ..
                } => "broker",
                Fault::Poison => "poison",
                _ => "other",
            })
            .collect();
        assert_eq!(kinds, ["kill", "postgres", "broker", "poison"]);
        assert_eq!(plan.duration, secs(110), "the smoke plan's length is fixed");
        assert!(
            !plan.kills_broker(),
            "CI runs the smoke on the memory broker"
        );
        assert!(
            DrillPlan::named("broker-restart", None)
                .unwrap()
                .kills_broker()
        );
        assert!(DrillPlan::named("full", None).unwrap().kills_broker());
        assert!(
            !DrillPlan::named("full-no-broker-kill", None)
                .unwrap()
                .kills_broker()
        );
    }

    #[test]
    fn full_covers_every_fault_kind_and_every_link() {
        let plan = DrillPlan::named("full", None).unwrap();
        let has = |f: &dyn Fn(&Fault) -> bool| plan.steps.iter().any(|s| f(&s.fault));
        assert!(has(&|f| matches!(f, Fault::KillReplica { .. })));
        assert!(has(&|f| matches!(f, Fault::PostgresRestart { .. })));
        assert!(has(&|f| matches!(f, Fault::BrokerRestart { .. })));
        assert!(has(&|f| matches!(f, Fault::ProviderOutage { .. })));
        assert!(has(&|f| matches!(f, Fault::Poison)));
        assert!(has(&|f| matches!(f, Fault::ResetConnections { .. })));
        for link in Link::ALL {
            assert!(
                has(&|f| matches!(f, Fault::Network { link: l, .. } if *l == link)),
                "{link:?}"
            );
        }
        for kind in [
            |f: &LinkFault| matches!(f, LinkFault::Latency(_)),
            |f: &LinkFault| matches!(f, LinkFault::Blackhole),
            |f: &LinkFault| matches!(f, LinkFault::OneWay(_)),
        ] {
            assert!(has(
                &|f| matches!(f, Fault::Network { fault, .. } if kind(fault))
            ));
        }
    }

    #[test]
    fn unknown_names_and_short_durations_are_refused_clearly() {
        let error = DrillPlan::named("crash-lop", None).unwrap_err();
        assert!(error.contains("unknown drill plan 'crash-lop'") && error.contains("process-kill"));
        let error = DrillPlan::named("network", Some(secs(20))).unwrap_err();
        assert!(error.contains("too short"), "{error}");
    }
}
