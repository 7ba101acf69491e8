//! Unit tests of the flag checks and configuration builders (certificates made with rcgen).

use super::*;
use rcgen::{CertificateParams, KeyPair};

struct Files {
    dir: tempfile::TempDir,
}

impl Files {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let ca_key = KeyPair::generate().unwrap();
        let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        let ca_cert = ca.self_signed(&ca_key).unwrap();
        let key = KeyPair::generate().unwrap();
        let leaf = CertificateParams::new(vec!["localhost".to_string()])
            .unwrap()
            .signed_by(&key, &ca_cert, &ca_key)
            .unwrap();
        std::fs::write(dir.path().join("ca.pem"), ca_cert.pem()).unwrap();
        std::fs::write(dir.path().join("cert.pem"), leaf.pem()).unwrap();
        std::fs::write(dir.path().join("key.pem"), key.serialize_pem()).unwrap();
        std::fs::write(dir.path().join("garbage.pem"), "-----BEGIN CERTIFICATE-----\n!!!\n").unwrap();
        std::fs::write(dir.path().join("empty.pem"), "nothing here\n").unwrap();
        Files { dir }
    }

    fn p(&self, name: &str) -> Option<PathBuf> {
        Some(self.dir.path().join(name))
    }

    fn args(&self, cert: &str, key: &str, ca: &str) -> TlsArgs {
        let f = |n: &str| if n.is_empty() { None } else { self.p(n) };
        TlsArgs { tls_cert: f(cert), tls_key: f(key), tls_ca: f(ca) }
    }
}

#[test]
fn worker_needs_all_three_files_and_names_the_missing_flag() {
    let f = Files::new();
    assert!(TlsArgs::default().server_config().unwrap().is_none());
    assert!(f.args("cert.pem", "key.pem", "ca.pem").server_config().unwrap().is_some());
    let e = f.args("cert.pem", "", "ca.pem").server_config().unwrap_err().to_string();
    assert!(e.contains("--tls-cert is given without --tls-key"), "{e}");
    let e = f.args("cert.pem", "key.pem", "").server_config().unwrap_err().to_string();
    assert!(e.contains("without --tls-ca"), "{e}");
    let e = f.args("", "", "ca.pem").server_config().unwrap_err().to_string();
    assert!(e.contains("--tls-cert and --tls-key"), "{e}");
}

#[test]
fn unreadable_files_are_named_with_their_flag() {
    let f = Files::new();
    let e = f.args("missing.pem", "key.pem", "ca.pem").server_config().unwrap_err().to_string();
    assert!(e.starts_with("--tls-cert ") && e.contains("missing.pem") && e.contains("cannot read"), "{e}");
    let e = f.args("cert.pem", "key.pem", "garbage.pem").server_config().unwrap_err().to_string();
    assert!(e.starts_with("--tls-ca ") && e.contains("unreadable PEM"), "{e}");
    let e = f.args("empty.pem", "key.pem", "ca.pem").server_config().unwrap_err().to_string();
    assert!(e.contains("no certificate in the file"), "{e}");
    // A certificate where the key should be.
    let e = f.args("cert.pem", "cert.pem", "ca.pem").server_config().unwrap_err().to_string();
    assert!(e.starts_with("--tls-key ") && e.contains("no private key"), "{e}");
}

#[test]
fn router_client_config_and_url_schemes() {
    let f = Files::new();
    let none = RouterTlsArgs::default();
    assert!(none.client().unwrap().is_none());
    check_worker_url("http://h:1", None, "--base").unwrap();
    let e = check_worker_url("https://h:1", None, "--base").unwrap_err().to_string();
    assert!(e.contains("--base `https://h:1`") && e.contains("--tls-ca"), "{e}");

    let r = RouterTlsArgs { tls: f.args("cert.pem", "key.pem", "ca.pem"), ..Default::default() };
    let tls = r.client().unwrap().unwrap();
    check_worker_url("https://h:1", Some(&tls), "--base").unwrap();
    let e = check_worker_url("http://h:1", Some(&tls), "--rm a").unwrap_err().to_string();
    assert!(e.contains("use https://h:1"), "{e}");
    assert_eq!(tls.expected_name("https://w1.svc:50051/"), "w1.svc");
    assert_eq!(tls.expected_name("https://[::1]:5"), "[::1]");

    let r = RouterTlsArgs {
        tls: f.args("cert.pem", "key.pem", "ca.pem"),
        tls_server_name: Some("genarm-worker".into()),
        ..Default::default()
    };
    assert_eq!(r.client().unwrap().unwrap().expected_name("https://10.0.0.3:1"), "genarm-worker");
    let r = RouterTlsArgs { tls: f.args("", "", "ca.pem"), ..Default::default() };
    assert!(r.client().unwrap_err().to_string().contains("--tls-cert and --tls-key"));
    let r = RouterTlsArgs { tls: f.args("cert.pem", "key.pem", ""), ..Default::default() };
    assert!(r.client().unwrap_err().to_string().contains("--tls-ca"));
    let r = RouterTlsArgs { tls_server_name: Some("x".into()), ..Default::default() };
    assert!(r.client().unwrap_err().to_string().contains("--tls-server-name"));
    let r = RouterTlsArgs {
        tls: f.args("cert.pem", "key.pem", "ca.pem"),
        tls_server_name: Some("bad name!".into()),
        ..Default::default()
    };
    assert!(r.client().unwrap_err().to_string().contains("not a valid DNS name"));
}

#[test]
fn etcd_flags_go_together_and_match_the_endpoints() {
    let f = Files::new();
    let e = EtcdTlsArgs::default();
    assert!(e.tls().unwrap().is_none() && e.user().unwrap().is_none());
    e.check_endpoints(&["http://e:2379".into()]).unwrap();
    let err = e.check_endpoints(&["https://e:2379".into()]).unwrap_err().to_string();
    assert!(err.contains("--etcd-ca"), "{err}");
    let t = EtcdTlsArgs { etcd_ca: f.p("ca.pem"), ..Default::default() };
    assert!(t.tls().unwrap().is_some());
    assert!(t.check_endpoints(&["http://e:2379".into()]).is_err());
    let t = EtcdTlsArgs { etcd_cert: f.p("cert.pem"), etcd_key: f.p("key.pem"), ..Default::default() };
    assert!(t.tls().unwrap_err().to_string().contains("--etcd-ca"));
    let u = EtcdTlsArgs { etcd_user: Some("root".into()), ..Default::default() };
    assert!(u.user().unwrap_err().to_string().contains("--etcd-password"));
    let u = EtcdTlsArgs {
        etcd_user: Some("root".into()),
        etcd_password: Some("s3cret".parse().unwrap()),
        ..Default::default()
    };
    let (name, pw) = u.user().unwrap().unwrap();
    assert_eq!((name.as_str(), pw.expose()), ("root", "s3cret"));
    assert!(!format!("{u:?}").contains("s3cret"), "the password leaks through Debug");
}

#[test]
fn flags_parse_with_env_vars_and_help() {
    use clap::{CommandFactory, Parser};
    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        w: WorkerTlsArgs,
        #[command(flatten)]
        e: EtcdTlsArgs,
    }
    #[derive(Parser)]
    struct Router {
        #[command(flatten)]
        r: RouterTlsArgs,
    }
    for cmd in [Cli::command(), Router::command()] {
        for arg in cmd.get_arguments() {
            let id = arg.get_id().as_str();
            if id == "help" {
                continue;
            }
            let env = arg.get_env().unwrap_or_else(|| panic!("--{id} has no env var"));
            assert!(env.to_str().unwrap().starts_with("GENARM_"), "--{id}");
            assert!(arg.get_help().is_some(), "--{id} has no help");
        }
    }
    let c =
        Router::try_parse_from(["r", "--tls-ca", "a", "--tls-server-name", "w", "--etcd-user", "u"]).unwrap();
    assert_eq!(c.r.tls.tls_ca, Some(PathBuf::from("a")));
    assert_eq!(c.r.tls_server_name.as_deref(), Some("w"));
    assert_eq!(c.r.etcd.etcd_user.as_deref(), Some("u"));
}

#[test]
fn hints_recognise_certificate_failures() {
    let h = hint_for("invalid peer certificate: certificate not valid for name \"x\"", Some("x")).unwrap();
    assert!(h.contains("`x`") && h.contains("--tls-server-name"), "{h}");
    assert!(hint_for("invalid peer certificate: UnknownIssuer", None).unwrap().contains("--tls-ca"));
    assert!(hint_for("connection refused", None).is_none());
}
