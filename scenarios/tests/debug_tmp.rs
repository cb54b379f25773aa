use reprise_scenarios::simulation::by_name;
use reprise_sim::{FaultPlan, SimConfig, TraceMode, run};

#[test]
fn debug() {
    let name = std::env::var("SCN").unwrap_or("checkout".into());
    let seed: u64 = std::env::var("SEED").unwrap_or("9".into()).parse().unwrap();
    let pat = std::env::var("PAT").unwrap_or("o025".into());
    let scenario = by_name(&name).unwrap();
    let full = run(
        scenario.as_ref(),
        &SimConfig::new(seed)
            .with_plan(FaultPlan::swarm())
            .with_trace(TraceMode::Full),
    );
    println!("plan: {:?}", full.plan);
    for f in &full.faults {
        println!("fault {f}");
    }
    for line in full.trace.as_ref().unwrap() {
        if pat.split('|').any(|p| line.text.contains(p)) {
            println!("{line}");
        }
    }
    println!("{}", full.outcome);
}
