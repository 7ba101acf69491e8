//! TLS and user/password authentication to a real etcd (https with client-certificate auth and
//! RBAC enabled), through [`register_with`]/[`watch_with`]: the right CA, client certificate and
//! password register and watch; a wrong password or no client certificate is refused, naming
//! the etcd URL.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use etcd_client::{Certificate, ConnectOptions, Identity, TlsOptions};
use genarm_discovery::{
    register_with, watch_with, workers_prefix, EtcdSecurity, MembershipEvent, WorkerRecord, WorkerRole,
};
use genarm_testkit::cluster::ChildProcess;
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair};

fn rec(id: &str) -> WorkerRecord {
    WorkerRecord {
        address: "https://127.0.0.1:1".into(),
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

/// PEM certificate and key.
struct Pem {
    cert: String,
    key: String,
}

/// A CA, an etcd server certificate (127.0.0.1, localhost) and a client certificate.
fn pki() -> (String, Pem, Pem) {
    let ca_key = KeyPair::generate().unwrap();
    let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
    p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca = p.self_signed(&ca_key).unwrap();
    let leaf = |sans: &[&str], cn: &str| {
        let key = KeyPair::generate().unwrap();
        let mut p = CertificateParams::new(sans.iter().map(|s| s.to_string()).collect::<Vec<_>>()).unwrap();
        p.distinguished_name.push(DnType::CommonName, cn);
        let cert = p.signed_by(&key, &ca, &ca_key).unwrap();
        Pem { cert: cert.pem(), key: key.serialize_pem() }
    };
    let server = leaf(&["127.0.0.1", "localhost"], "etcd");
    let client = leaf(&["genarm-worker"], "genarm-worker");
    (ca.pem(), server, client)
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// etcd over https with `--client-cert-auth`, its files in `dir`.
fn start_etcd(dir: &Path) -> (ChildProcess, String) {
    let bin = genarm_testkit::etcd::etcd_bin().unwrap_or_else(|e| panic!("{e:#}"));
    let (client, peer) = (free_port(), free_port());
    let url = format!("https://127.0.0.1:{client}");
    let peer_url = format!("http://127.0.0.1:{peer}");
    let mut c = Command::new(bin);
    c.arg("--name")
        .arg("genarm-tls-test")
        .arg("--data-dir")
        .arg(dir.join("data"))
        .args(["--listen-client-urls", &url, "--advertise-client-urls", &url])
        .args(["--listen-peer-urls", &peer_url, "--initial-advertise-peer-urls", &peer_url])
        .args(["--initial-cluster", &format!("genarm-tls-test={peer_url}")])
        .args(["--initial-cluster-state", "new", "--log-level", "warn", "--client-cert-auth"])
        .arg("--cert-file")
        .arg(dir.join("server.pem"))
        .arg("--key-file")
        .arg(dir.join("server-key.pem"))
        .arg("--trusted-ca-file")
        .arg(dir.join("ca.pem"))
        .env("ETCD_UNSUPPORTED_ARCH", std::env::consts::ARCH);
    (ChildProcess::spawn("etcd (tls)", c).unwrap(), url)
}

fn tls(ca: &str, client: Option<&Pem>) -> TlsOptions {
    let mut t = TlsOptions::new().ca_certificate(Certificate::from_pem(ca));
    if let Some(c) = client {
        t = t.identity(Identity::from_pem(&c.cert, &c.key));
    }
    t
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_and_password_reach_etcd_and_wrong_credentials_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let (ca, server, client) = pki();
    std::fs::write(dir.path().join("ca.pem"), &ca).unwrap();
    std::fs::write(dir.path().join("server.pem"), &server.cert).unwrap();
    std::fs::write(dir.path().join("server-key.pem"), &server.key).unwrap();
    let (mut etcd, url) = start_etcd(dir.path());
    let eps = vec![url.clone()];

    // Turn on authentication: a root user with a password (over TLS with the client certificate).
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut admin = loop {
        let opts = ConnectOptions::new()
            .with_tls(tls(&ca, Some(&client)))
            .with_connect_timeout(Duration::from_secs(2));
        let last = match etcd_client::Client::connect(&eps, Some(opts)).await {
            Ok(mut c) => match c.status().await {
                Ok(_) => break c,
                Err(e) => e.to_string(),
            },
            Err(e) => e.to_string(),
        };
        assert!(etcd.try_status().is_none(), "etcd exited\n{}", etcd.log_tail(40));
        assert!(Instant::now() < deadline, "etcd over TLS not up in time: {last}\n{}", etcd.log_tail(40));
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    admin.user_add("root", "s3cret", None).await.unwrap();
    admin.user_grant_role("root", "root").await.unwrap();
    admin.auth_enable().await.unwrap();

    let good = EtcdSecurity {
        tls: Some(tls(&ca, Some(&client))),
        user: Some(("root".to_string(), "s3cret".to_string())),
    };
    let prefix = workers_prefix("t").unwrap();
    let reg = register_with(&eps, &good, "t", &rec("a"), Duration::from_secs(5)).await.unwrap();
    let mut m = watch_with(&eps, &good, &prefix).await.unwrap();
    let ev = tokio::time::timeout(Duration::from_secs(5), m.next()).await.unwrap().unwrap();
    assert!(matches!(&ev, MembershipEvent::Added { key, .. } if key.ends_with("/a")), "{ev:?}");
    assert!(!format!("{good:?}").contains("s3cret"), "the password leaks through Debug");

    // A wrong password is refused.
    let wrong = EtcdSecurity { user: Some(("root".into(), "nope".into())), ..good.clone() };
    let e =
        register_with(&eps, &wrong, "t", &rec("b"), Duration::from_secs(5)).await.unwrap_err().to_string();
    assert!(e.contains(&url), "{e}");
    // No password at all: the put is refused (authentication is on).
    let anonymous = EtcdSecurity { user: None, ..good.clone() };
    assert!(register_with(&eps, &anonymous, "t", &rec("c"), Duration::from_secs(5)).await.is_err());
    // No client certificate: the handshake fails.
    let no_cert = EtcdSecurity { tls: Some(tls(&ca, None)), ..good.clone() };
    assert!(register_with(&eps, &no_cert, "t", &rec("d"), Duration::from_secs(5)).await.is_err());

    reg.deregister().await;
    let ev = tokio::time::timeout(Duration::from_secs(5), m.next()).await.unwrap().unwrap();
    assert!(matches!(&ev, MembershipEvent::Removed { key } if key.ends_with("/a")), "{ev:?}");
}
