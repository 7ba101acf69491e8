//! Registration and watch against a real etcd server: events on register, deregister, lease
//! expiry, and a clear error naming the URL when etcd is unreachable.

use std::time::Duration;

use genarm_discovery::{register, watch, workers_prefix, MembershipEvent, WorkerRecord, WorkerRole};
use genarm_testkit::etcd::EtcdServer;

fn rec(id: &str) -> WorkerRecord {
    WorkerRecord {
        address: "http://127.0.0.1:1".into(),
        model_id: "m".into(),
        role: WorkerRole::Reward,
        reward_name: "helpful".into(),
        vocab_fingerprint: "00".into(),
        vocab_size: 10,
        kv_capacity_tokens: 100,
        instance_id: id.into(),
        protocol_version: 1,
    }
}

async fn next(m: &mut genarm_discovery::Membership, within: Duration) -> MembershipEvent {
    tokio::time::timeout(within, m.next()).await.expect("an event in time").expect("watch alive")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn register_watch_deregister_and_expire() {
    let etcd = EtcdServer::start().unwrap();
    let eps = vec![etcd.url().to_string()];
    let prefix = workers_prefix("t").unwrap();

    let a = register(&eps, "t", &rec("a"), Duration::from_secs(2)).await.unwrap();
    let mut m = watch(&eps, &prefix).await.unwrap();
    // The initial snapshot.
    match next(&mut m, Duration::from_secs(5)).await {
        MembershipEvent::Added { key, value } => {
            assert_eq!(key, "/genarm/t/workers/reward/helpful/a");
            assert_eq!(value, rec("a"));
        }
        e => panic!("{e:?}"),
    }
    // A live registration.
    let b = register(&eps, "t", &rec("b"), Duration::from_secs(2)).await.unwrap();
    assert!(
        matches!(next(&mut m, Duration::from_secs(5)).await, MembershipEvent::Added { key, .. } if key.ends_with("/b"))
    );
    // Keep-alive holds it past its TTL: no event for 3 s (a lapsed lease would remove it).
    if let Ok(ev) = tokio::time::timeout(Duration::from_secs(3), m.next()).await {
        panic!("the kept-alive registration changed within its TTL: {ev:?}");
    }
    // Deregistration removes at once.
    b.deregister().await;
    assert!(
        matches!(next(&mut m, Duration::from_secs(2)).await, MembershipEvent::Removed { key } if key.ends_with("/b"))
    );
    // A registration whose keep-alive stops (the process froze or died) expires with its lease.
    // (A key whose lease is not kept alive, as a frozen or killed worker leaves it.)
    let mut c = etcd_client::Client::connect(&eps, None).await.unwrap();
    let lease = c.lease_grant(1, None).await.unwrap().id();
    let v = serde_json::to_string(&rec("c")).unwrap();
    c.put("/genarm/t/workers/reward/helpful/c", v, Some(etcd_client::PutOptions::new().with_lease(lease)))
        .await
        .unwrap();
    assert!(
        matches!(next(&mut m, Duration::from_secs(5)).await, MembershipEvent::Added { key, .. } if key.ends_with("/c"))
    );
    let t = std::time::Instant::now();
    assert!(
        matches!(next(&mut m, Duration::from_secs(10)).await, MembershipEvent::Removed { key } if key.ends_with("/c"))
    );
    assert!(t.elapsed() < Duration::from_secs(8), "expired after {:?}", t.elapsed());
    // `a` was kept alive all along.
    a.deregister().await;
    assert!(
        matches!(next(&mut m, Duration::from_secs(2)).await, MembershipEvent::Removed { key } if key.ends_with("/a"))
    );
}

#[tokio::test]
async fn unreachable_etcd_is_a_clear_error_naming_the_url() {
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let eps = vec![format!("http://127.0.0.1:{port}")];
    let e = watch(&eps, "/genarm/x/workers/").await.unwrap_err().to_string();
    assert!(e.contains(&eps[0]) && e.contains("etcd"), "{e}");
    let e = register(&eps, "x", &rec("a"), Duration::from_secs(2)).await.unwrap_err().to_string();
    assert!(e.contains(&eps[0]), "{e}");
}
