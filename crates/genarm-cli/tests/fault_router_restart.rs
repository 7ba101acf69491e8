//! The router killed (SIGKILL) mid-request and restarted while the workers keep running: the
//! sequences it left in the workers' KV are released by the workers themselves after
//! `--orphan-timeout-secs` (counted in `Stats.orphans_released`), and a new router on the same
//! address serves the same workers with the right output. Real processes on loopback.

mod common;
mod fault_common;

use std::time::{Duration, Instant};

use common::*;
use fault_common::*;

#[test]
fn workers_release_the_sequences_of_a_killed_router_and_a_new_router_serves() {
    let _serial = serial();
    let router_args = ["--worker-reprobe-ms", "200"];
    let mut c = FaultCluster::start(false, &router_args, &["--orphan-timeout-secs", "2"]);
    assert_eq!(c.complete(true, 6), c.reference(true, 6), "before the crash");
    let port = c.router_url.rsplit(':').next().unwrap().parse::<u16>().unwrap();

    // Two requests in flight (one guided, one not) when the router dies.
    let (guided, _) = c.open_stream(true, 400, 2);
    let (plain, _) = c.open_stream(false, 400, 2);
    c.router.kill();
    let killed = Instant::now();
    let (base_held, arm_held) = (stats(&c.base_url).sequences, stats(&c.arm_url).sequences);
    assert!(
        base_held >= 1 && arm_held >= 1,
        "the killed router should have left sequences behind (base {base_held}, rm {arm_held})\n{}",
        c.logs()
    );
    for s in [guided, plain] {
        let (_, _, done) = drain(s);
        assert!(!done, "a stream of the killed router ended normally");
    }

    // Released by the workers' sweep after the 2 s timeout, not before.
    c.assert_no_kv(Duration::from_secs(10));
    let took = killed.elapsed();
    assert!(took >= Duration::from_millis(1500), "released after {took:?}, before the 2 s orphan timeout");
    eprintln!("orphans released {took:?} after the router was killed");
    assert_eq!(stats(&c.base_url).orphans_released, u64::from(base_held));
    assert_eq!(stats(&c.arm_url).orphans_released, u64::from(arm_held));
    for (name, p) in [("base-worker", &c.base), ("rm-worker", &c.arm)] {
        assert!(p.log_tail(400).contains("released orphaned sequences"), "{name} did not log the release");
    }

    // A new router on the same address serves the same workers.
    let (router, url) = spawn_router(port, &c.base_url, &c.arm_url, &router_args);
    assert_eq!(url, c.router_url);
    c.router = router;
    c.assert_recovered(Duration::from_secs(30));
    let (s, _) = c.open_stream(true, 8, 0);
    let (text, errors, done) = drain(s);
    assert!(errors.is_empty() && done, "{errors:?}");
    assert_eq!(text, c.reference(true, 8), "a streamed guided request through the new router");
    assert_eq!(stats(&c.arm_url).orphans_released, u64::from(arm_held), "no orphan while a router serves");
}
