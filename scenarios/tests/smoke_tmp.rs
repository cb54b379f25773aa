use reprise_scenarios::simulation::{CheckoutScenario, TransfersScenario, explain_failure};
use reprise_sim::{FaultPlan, SimConfig, TraceMode, run};

#[test]
fn smoke() {
    for (name, plan) in [("calm", FaultPlan::calm()), ("swarm", FaultPlan::swarm())] {
        for seed in 1..=3 {
            let t = std::time::Instant::now();
            let report = run(&CheckoutScenario::correct(), &SimConfig::new(seed).with_plan(plan.clone()));
            println!("checkout {name} seed {seed}: {} {:?} in {:?}", report.outcome, report.stats, t.elapsed());
            if !report.passed() {
                let full = run(&CheckoutScenario::correct(), &SimConfig::new(seed).with_plan(plan.clone()).with_trace(TraceMode::Full));
                println!("{}", explain_failure(&full, 30));
            }
            let t = std::time::Instant::now();
            let report = run(&TransfersScenario::correct(), &SimConfig::new(seed).with_plan(plan.clone()));
            println!("transfers {name} seed {seed}: {} {:?} in {:?}", report.outcome, report.stats, t.elapsed());
            if !report.passed() {
                let full = run(&TransfersScenario::correct(), &SimConfig::new(seed).with_plan(plan.clone()).with_trace(TraceMode::Full));
                println!("{}", explain_failure(&full, 30));
            }
        }
    }
}
