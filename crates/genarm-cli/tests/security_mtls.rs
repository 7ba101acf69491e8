//! Mutual TLS between the router and the workers, with real processes on loopback and
//! certificates made in the test (rcgen): a router with proper certificates serves the same
//! greedy text as the in-process reference decode; a worker refuses gRPC clients without a
//! certificate or with one from another CA (and answers one with a proper certificate); a router
//! whose expected worker name is not in the worker's certificate refuses the worker, naming the
//! name; plaintext/TLS URL mix-ups are refused naming the flag.

mod common;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::*;
use genarm_proto::tonic;
use genarm_proto::v1::worker_client::WorkerClient;
use genarm_proto::v1::InfoRequest;
use genarm_testkit::cluster::genarm_command;
use rcgen::{BasicConstraints, CertificateParams, IsCa, KeyPair};
use tonic::transport::{Certificate, ClientTlsConfig, Endpoint, Identity};

/// A CA and the certificates it signed, written as PEM files into a temporary directory.
struct Pki {
    dir: tempfile::TempDir,
}

/// A CA: its certificate and key (to sign leaves with).
struct Ca {
    cert: rcgen::Certificate,
    key: KeyPair,
}

fn ca(name: &str) -> Ca {
    let key = KeyPair::generate().unwrap();
    let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
    p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    p.distinguished_name.push(rcgen::DnType::CommonName, name);
    Ca { cert: p.self_signed(&key).unwrap(), key }
}

impl Pki {
    fn new() -> Pki {
        Pki { dir: tempfile::tempdir().unwrap() }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn write_ca(&self, name: &str, ca: &Ca) {
        std::fs::write(self.path(&format!("{name}.pem")), ca.cert.pem()).unwrap();
    }

    /// Writes `<name>.pem` and `<name>-key.pem`: a leaf with these subjectAltNames signed by `ca`.
    fn leaf(&self, name: &str, sans: &[&str], ca: &Ca) {
        let key = KeyPair::generate().unwrap();
        let p = CertificateParams::new(sans.iter().map(|s| s.to_string()).collect::<Vec<_>>()).unwrap();
        let cert = p.signed_by(&key, &ca.cert, &ca.key).unwrap();
        std::fs::write(self.path(&format!("{name}.pem")), cert.pem()).unwrap();
        std::fs::write(self.path(&format!("{name}-key.pem")), key.serialize_pem()).unwrap();
    }

    fn pem(&self, name: &str) -> Vec<u8> {
        std::fs::read(self.path(&format!("{name}.pem"))).unwrap()
    }

    /// `--tls-cert <name>.pem --tls-key <name>-key.pem --tls-ca <ca>.pem`.
    fn flags(&self, name: &str, ca: &str) -> Vec<String> {
        let p = |f: String| self.path(&f).display().to_string();
        vec![
            "--tls-cert".into(),
            p(format!("{name}.pem")),
            "--tls-key".into(),
            p(format!("{name}-key.pem")),
            "--tls-ca".into(),
            p(format!("{ca}.pem")),
        ]
    }
}

/// The test PKI: `ca` signs the worker (`localhost`, `127.0.0.1`) and the router; `rogue-ca`
/// signs a client certificate of another organisation.
fn pki() -> Pki {
    let pki = Pki::new();
    let good = ca("genarm test CA");
    let rogue = ca("rogue CA");
    pki.write_ca("ca", &good);
    pki.write_ca("rogue-ca", &rogue);
    pki.leaf("worker", &["localhost", "127.0.0.1"], &good);
    pki.leaf("router", &["genarm-router"], &good);
    pki.leaf("rogue", &["genarm-router"], &rogue);
    pki
}

fn worker(bin: &str, model: &Path, extra: &[String]) -> ChildProcess {
    let mut c = genarm_command(bin).unwrap();
    c.env("CANDLE_NUM_THREADS", "1").arg("--model").arg(model).args(["--listen", "127.0.0.1:0"]).args(extra);
    ChildProcess::spawn(bin, c).unwrap()
}

fn router(args: &[String]) -> ChildProcess {
    let mut c = genarm_command("genarm-router").unwrap();
    c.args(["--listen", "127.0.0.1:0", "--worker-connect-timeout-secs", "60"]).args(args);
    ChildProcess::spawn("router", c).unwrap()
}

fn wait_ready(router: &mut ChildProcess, url: &str, deadline: Instant) {
    loop {
        if let Some(status) = router.try_status() {
            panic!("the router exited ({status}) before it was ready\n{}", router.log_tail(40));
        }
        if http::get(url).map(|r| r.status == 200).unwrap_or(false) {
            return;
        }
        assert!(Instant::now() < deadline, "router not ready in time\n{}", router.log_tail(40));
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Waits for the router to exit by itself (it must refuse its workers) and returns its log.
fn refused(mut router: ChildProcess, within: Duration) -> String {
    let status = router.wait_exit(Instant::now() + within).unwrap_or_else(|e| {
        panic!("the router should have refused its worker and exited: {e:#}\n{}", router.log_tail(40))
    });
    assert!(!status.success(), "the router exited successfully: {status}");
    router.log_tail(80)
}

/// `Info` over TLS trusting `ca_pem`, presenting `identity` if any; `Err` with the error chain.
fn info_over_tls(
    addr: &str,
    ca_pem: Vec<u8>,
    identity: Option<(Vec<u8>, Vec<u8>)>,
) -> Result<String, String> {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    rt.block_on(async {
        let mut tls =
            ClientTlsConfig::new().ca_certificate(Certificate::from_pem(ca_pem)).domain_name("localhost");
        if let Some((cert, key)) = identity {
            tls = tls.identity(Identity::from_pem(cert, key));
        }
        let endpoint = Endpoint::from_shared(format!("https://{addr}"))
            .unwrap()
            .tls_config(tls)
            .map_err(|e| format!("tls config: {e}"))?
            .connect_timeout(Duration::from_secs(5));
        let call = async {
            let channel = endpoint.connect().await.map_err(|e| chain(&e))?;
            let info = WorkerClient::new(channel).info(InfoRequest {}).await.map_err(|s| chain(&s))?;
            Ok::<_, String>(info.into_inner().model_id)
        };
        tokio::time::timeout(Duration::from_secs(15), call).await.map_err(|_| "timed out".to_string())?
    })
}

fn chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut src = e.source();
    while let Some(e) = src {
        s.push_str(&format!(": {e}"));
        src = e.source();
    }
    s
}

#[test]
fn mtls_serves_the_reference_text_and_refuses_clients_without_a_ca_signed_certificate() {
    let _serial = serial();
    let pki = pki();
    let deadline = Instant::now() + Duration::from_secs(120);
    let worker_tls = pki.flags("worker", "ca");
    let mut base_flags = worker_tls.clone();
    base_flags.extend(["--plaintext-health-listen".to_string(), "127.0.0.1:0".to_string()]);
    let mut base = worker("genarm-base-worker", &fixture(BASE), &base_flags);
    let mut rm = {
        let mut extra = vec!["--name".to_string(), "gqa".to_string()];
        extra.extend(worker_tls.iter().cloned());
        worker("genarm-rm-worker", &fixture("llama-gqa-tied"), &extra)
    };
    let base_addr = base.wait_listening(deadline).unwrap();
    let rm_addr = rm.wait_listening(deadline).unwrap();

    // (a) A router with the right certificates, dialling https://127.0.0.1:port (an IP SAN).
    let mut args = vec![
        "--base".to_string(),
        format!("https://{base_addr}"),
        "--rm".to_string(),
        format!("gqa=https://{rm_addr}"),
    ];
    args.extend(pki.flags("router", "ca"));
    let mut r = router(&args);
    let addr = r.wait_listening(deadline).unwrap();
    wait_ready(&mut r, &format!("http://{addr}/ready"), deadline);

    let base_ref = RefModel::load(&fixture(BASE));
    let gqa_ref = RefModel::load(&fixture("llama-gqa-tied"));
    let prompt = "Once upon a time";
    let ids = base_ref.encode(prompt);
    for (guided, want) in
        [(false, greedy(&base_ref, &[], &ids, 8)), (true, greedy(&base_ref, &[(&gqa_ref, 1.0)], &ids, 8))]
    {
        assert_unambiguous("reference", &want);
        let mut body = completion(prompt, 8);
        if guided {
            body = with_guidance(body, &[("gqa", 1.0)], 1.0);
        }
        let resp = http::post_json(&format!("http://{addr}/v1/completions"), &body).unwrap();
        assert_eq!(resp.status, 200, "{} {}\n{}", resp.status, resp.text(), r.log_tail(40));
        assert_eq!(choice_text(&resp.json().unwrap()), base_ref.decode(&want.ids), "guided: {guided}");
    }

    // Kubernetes probes: grpc.health.v1 alone, without TLS, on --plaintext-health-listen.
    let line = base.wait_stdout_line(deadline, |l| l.starts_with("GENARM_LISTENING health ")).unwrap();
    let health_addr = line.rsplit(' ').next().unwrap().to_string();
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let (status, info) = rt.block_on(async {
        let channel =
            Endpoint::from_shared(format!("http://{health_addr}")).unwrap().connect().await.unwrap();
        let mut health = tonic_health::pb::health_client::HealthClient::new(channel.clone());
        let status = health
            .check(tonic_health::pb::HealthCheckRequest { service: String::new() })
            .await
            .map(|r| r.into_inner().status);
        let info = WorkerClient::new(channel).info(InfoRequest {}).await.map(|r| r.into_inner().model_id);
        (status, info)
    });
    assert_eq!(status.ok(), Some(tonic_health::pb::health_check_response::ServingStatus::Serving as i32));
    assert!(info.is_err(), "the plaintext health port must serve nothing but health: {info:?}");

    // (b) gRPC clients straight to the worker: the router's certificate works (the control) ...
    let base_s = base_addr.to_string();
    let ok = info_over_tls(&base_s, pki.pem("ca"), Some((pki.pem("router"), pki.pem("router-key"))));
    assert_eq!(ok.as_deref().ok(), Some(BASE), "a CA-signed client is answered: {ok:?}");
    // ... no certificate is refused ...
    let none = info_over_tls(&base_s, pki.pem("ca"), None);
    assert!(none.is_err(), "a client without a certificate got an answer: {none:?}");
    // ... a certificate from another CA is refused ...
    let rogue = info_over_tls(&base_s, pki.pem("ca"), Some((pki.pem("rogue"), pki.pem("rogue-key"))));
    assert!(rogue.is_err(), "a client with another CA's certificate got an answer: {rogue:?}");
    // ... and plaintext gRPC gets nothing either.
    let plain = rt.block_on(async {
        let call = async {
            let mut c = WorkerClient::connect(format!("http://{base_addr}")).await.map_err(|e| chain(&e))?;
            c.info(InfoRequest {}).await.map_err(|s| chain(&s)).map(|_| ())
        };
        tokio::time::timeout(Duration::from_secs(10), call).await.unwrap_or(Err("timed out".into()))
    });
    assert!(plain.is_err(), "a plaintext client got an answer from a TLS worker");
    // The worker still serves the router after refusing those.
    let resp = http::post_json(&format!("http://{addr}/v1/completions"), &completion(prompt, 2)).unwrap();
    assert_eq!(resp.status, 200, "{}", resp.text());
    drop(r);

    // (c) A router expecting another name than the worker's certificate carries refuses it at
    // startup, naming the name and the flag.
    let mut args = vec!["--base".to_string(), format!("https://{base_addr}")];
    args.extend(pki.flags("router", "ca"));
    args.extend(["--tls-server-name".to_string(), "wrong.example".to_string()]);
    let log = refused(router(&args), Duration::from_secs(30));
    assert!(log.contains("wrong.example") && log.contains("--tls-server-name"), "{log}");

    // A router trusting another CA refuses the worker too, naming --tls-ca.
    let mut args = vec!["--base".to_string(), format!("https://{base_addr}")];
    args.extend(pki.flags("rogue", "rogue-ca"));
    let log = refused(router(&args), Duration::from_secs(30));
    assert!(log.contains("--tls-ca"), "{log}");

    // URL/flag mix-ups are refused before any connection, naming the flag and the fix.
    let mut args = vec!["--base".to_string(), format!("http://{base_addr}")];
    args.extend(pki.flags("router", "ca"));
    let log = refused(router(&args), Duration::from_secs(10));
    assert!(log.contains("--base") && log.contains("https://"), "{log}");
    let log =
        refused(router(&["--base".to_string(), format!("https://{base_addr}")]), Duration::from_secs(10));
    assert!(log.contains("--tls-ca"), "{log}");
    let mut args = vec!["--base".to_string(), format!("https://{base_addr}")];
    args.extend(pki.flags("router", "ca"));
    args[3] = pki.path("missing.pem").display().to_string();
    let log = refused(router(&args), Duration::from_secs(10));
    assert!(log.contains("--tls-cert") && log.contains("missing.pem"), "{log}");
}

#[test]
fn a_worker_with_half_the_tls_flags_refuses_to_start_naming_the_missing_flag() {
    let _serial = serial();
    let pki = pki();
    let mut flags = pki.flags("worker", "ca");
    flags.truncate(4); // --tls-cert and --tls-key, no --tls-ca
    let mut w = worker("genarm-base-worker", &fixture(BASE), &flags);
    let status = w.wait_exit(Instant::now() + Duration::from_secs(60)).unwrap();
    assert!(!status.success());
    let log = w.log_tail(20);
    assert!(log.contains("--tls-ca"), "{log}");
}
