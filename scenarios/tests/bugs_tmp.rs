use reprise_scenarios::simulation::{all, explain_failure};
use reprise_sim::{FaultPlan, SimConfig, TraceMode, run};

#[test]
fn bugs() {
    let only = std::env::var("ONLY").ok();
    let n: u64 = std::env::var("N").map(|v| v.parse().unwrap()).unwrap_or(100);
    for scenario in all() {
        if only.as_deref().is_some_and(|o| !o.split(',').any(|x| x == scenario.name())) { continue; }
        let t = std::time::Instant::now();
        let mut found = None;
        let mut fails = 0;
        for seed in 1..=n {
            let report = run(scenario.as_ref(), &SimConfig::new(seed).with_plan(FaultPlan::swarm()));
            if !report.passed() {
                fails += 1;
                if found.is_none() { found = Some((seed, report)); }
            }
        }
        println!("== {} : {fails}/100 failing of {n}, {:?}", scenario.name(), t.elapsed());
        if let Some((seed, _)) = found {
            let full = run(scenario.as_ref(), &SimConfig::new(seed).with_plan(FaultPlan::swarm()).with_trace(TraceMode::Full));
            println!("first seed {seed}:\n{}", explain_failure(&full, 12));
        }
    }
}
