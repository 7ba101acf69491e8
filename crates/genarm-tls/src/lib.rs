//! genarm-tls: mutual TLS between the router and the workers (tonic over rustls with ring) and
//! the etcd TLS/auth flags. Workers flatten [`WorkerTlsArgs`] (`--tls-cert/--tls-key/--tls-ca`,
//! `--plaintext-health-listen`) and serve with [`TlsArgs::server_config`], which refuses clients
//! without a certificate signed by the CA; the router flattens [`RouterTlsArgs`] (the same three
//! flags plus `--tls-server-name` and the etcd flags) and dials every worker with
//! [`ClientTls::config_for`], which verifies the worker's certificate against the CA and the
//! expected name. [`EtcdTlsArgs`] (`--etcd-ca/-cert/-key/-user/-password`) is shared by both.

use std::path::{Path, PathBuf};

use clap::Args;
use rustls_pki_types::pem::PemObject as _;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tonic::transport::{Certificate, ClientTlsConfig, Identity, ServerTlsConfig};

/// A TLS configuration error; each names the flag and the fix.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A file given to a flag cannot be read.
    #[error("{flag} {path}: cannot read the file: {source}; check the path and its permissions")]
    Read {
        /// The flag, e.g. `--tls-cert`.
        flag: &'static str,
        /// The path given.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// A file holds no usable PEM object of the expected kind.
    #[error("{flag} {path}: {what}; give a PEM file ({expected})")]
    BadPem {
        /// The flag.
        flag: &'static str,
        /// The path given.
        path: PathBuf,
        /// What is wrong.
        what: String,
        /// What the file should hold.
        expected: &'static str,
    },
    /// Only part of a certificate/key pair was given.
    #[error("{given} is given without {missing}: {why}")]
    Incomplete {
        /// The flag given.
        given: &'static str,
        /// The flag missing.
        missing: &'static str,
        /// Why both are needed.
        why: &'static str,
    },
    /// A URL whose scheme does not match the TLS configuration.
    #[error("{0}")]
    Scheme(String),
    /// tonic/rustls refused the configuration.
    #[error(
        "{flags}: the TLS configuration is refused: {reason}; check that the key belongs to the certificate"
    )]
    Refused {
        /// The flags involved.
        flags: &'static str,
        /// tonic's/rustls's reason.
        reason: String,
    },
    /// A bad `--tls-server-name`.
    #[error("--tls-server-name `{0}` is not a valid DNS name or IP address")]
    BadServerName(String),
}

/// `--tls-cert`, `--tls-key`, `--tls-ca`: the TLS flags every service has.
#[derive(Debug, Clone, Default, Args)]
pub struct TlsArgs {
    /// This service's certificate chain (PEM). With --tls-key and --tls-ca it turns on mutual
    /// TLS: a worker serves gRPC over TLS with it; the router presents it to the workers as its
    /// client certificate.
    #[arg(long, env = "GENARM_TLS_CERT", value_name = "PATH")]
    pub tls_cert: Option<PathBuf>,

    /// The private key of --tls-cert (PEM: PKCS#8, PKCS#1 or SEC1).
    #[arg(long, env = "GENARM_TLS_KEY", value_name = "PATH")]
    pub tls_key: Option<PathBuf>,

    /// The CA certificate(s) (PEM) that sign the peers' certificates: a worker accepts only
    /// clients whose certificate it signed; the router accepts only workers whose certificate it
    /// signed (and whose name matches, see --tls-server-name on the router).
    #[arg(long, env = "GENARM_TLS_CA", value_name = "PATH")]
    pub tls_ca: Option<PathBuf>,
}

/// The worker's TLS flags: [`TlsArgs`] plus a plaintext health port for probes.
#[derive(Debug, Clone, Default, Args)]
pub struct WorkerTlsArgs {
    /// `--tls-cert`, `--tls-key`, `--tls-ca`.
    #[command(flatten)]
    pub tls: TlsArgs,

    /// With TLS on, also serve `grpc.health.v1` (and nothing else) without TLS on this address,
    /// as host:port: Kubernetes gRPC probes cannot present a client certificate. Without TLS
    /// the health service is on the gRPC port already.
    #[arg(long, env = "GENARM_PLAINTEXT_HEALTH_LISTEN", value_name = "HOST:PORT")]
    pub plaintext_health_listen: Option<String>,
}

/// The router's TLS flags: [`TlsArgs`], `--tls-server-name`, and the etcd flags.
#[derive(Debug, Clone, Default, Args)]
pub struct RouterTlsArgs {
    /// `--tls-cert`, `--tls-key`, `--tls-ca` (the router's client identity and the workers' CA).
    #[command(flatten)]
    pub tls: TlsArgs,

    /// The name every worker's certificate must carry (a DNS name or IP address in its
    /// subjectAltName). Default: the host of each worker's URL (`https://HOST:PORT`). Set it when
    /// workers are dialled by an address their certificate cannot name, e.g. pod IPs registered
    /// in etcd.
    #[arg(long, env = "GENARM_TLS_SERVER_NAME", value_name = "NAME")]
    pub tls_server_name: Option<String>,

    /// etcd TLS and authentication.
    #[command(flatten)]
    pub etcd: EtcdTlsArgs,
}

/// etcd TLS and authentication flags (workers and router).
#[derive(Debug, Clone, Default, Args)]
pub struct EtcdTlsArgs {
    /// CA certificate (PEM) that signs etcd's server certificate; needed for https:// etcd
    /// endpoints, refused with http:// ones.
    #[arg(long, env = "GENARM_ETCD_CA", value_name = "PATH")]
    pub etcd_ca: Option<PathBuf>,

    /// Client certificate (PEM) presented to etcd (when etcd runs with --client-cert-auth);
    /// needs --etcd-key.
    #[arg(long, env = "GENARM_ETCD_CERT", value_name = "PATH")]
    pub etcd_cert: Option<PathBuf>,

    /// Private key (PEM) of --etcd-cert.
    #[arg(long, env = "GENARM_ETCD_KEY", value_name = "PATH")]
    pub etcd_key: Option<PathBuf>,

    /// etcd user name (etcd role-based authentication); needs --etcd-password.
    #[arg(long, env = "GENARM_ETCD_USER", value_name = "NAME")]
    pub etcd_user: Option<String>,

    /// Password of --etcd-user. Prefer the environment variable to the flag (command lines are
    /// visible to other users); it is never logged.
    #[arg(long, env = "GENARM_ETCD_PASSWORD", value_name = "PASSWORD", hide_env_values = true)]
    pub etcd_password: Option<Password>,
}

/// A password: `Debug` and `Display` never show it.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Password(String);

impl Password {
    /// The password itself, for the one place that sends it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Password {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Password(<redacted>)")
    }
}

impl std::str::FromStr for Password {
    type Err = std::convert::Infallible;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(Password(s.to_string()))
    }
}

const CERT_EXPECTED: &str = "one or more -----BEGIN CERTIFICATE----- blocks";
const KEY_EXPECTED: &str = "a -----BEGIN PRIVATE KEY----- (or RSA/EC PRIVATE KEY) block";

fn read(flag: &'static str, path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|source| TlsError::Read { flag, path: path.to_path_buf(), source })
}

/// Reads a PEM certificate file, checking that it holds at least one well-formed certificate.
pub fn read_certs(flag: &'static str, path: &Path) -> Result<Vec<u8>, TlsError> {
    let pem = read(flag, path)?;
    let bad =
        |what: String| TlsError::BadPem { flag, path: path.to_path_buf(), what, expected: CERT_EXPECTED };
    let mut n = 0;
    for c in CertificateDer::pem_slice_iter(&pem) {
        c.map_err(|e| bad(format!("unreadable PEM ({e})")))?;
        n += 1;
    }
    if n == 0 {
        return Err(bad("no certificate in the file".into()));
    }
    Ok(pem)
}

/// Reads a PEM private key file, checking that it holds a well-formed key.
pub fn read_key(flag: &'static str, path: &Path) -> Result<Vec<u8>, TlsError> {
    let pem = read(flag, path)?;
    PrivateKeyDer::from_pem_slice(&pem).map_err(|e| TlsError::BadPem {
        flag,
        path: path.to_path_buf(),
        what: match e {
            rustls_pki_types::pem::Error::NoItemsFound => "no private key in the file".into(),
            e => format!("unreadable PEM ({e})"),
        },
        expected: KEY_EXPECTED,
    })?;
    Ok(pem)
}

/// Reads a certificate/key pair given by two optional flags: `None` when neither is given, an
/// error naming the missing flag when only one is.
fn identity(
    cert: Option<&Path>,
    key: Option<&Path>,
    flags: (&'static str, &'static str),
    why: &'static str,
) -> Result<Option<Identity>, TlsError> {
    match (cert, key) {
        (None, None) => Ok(None),
        (Some(_), None) => Err(TlsError::Incomplete { given: flags.0, missing: flags.1, why }),
        (None, Some(_)) => Err(TlsError::Incomplete { given: flags.1, missing: flags.0, why }),
        (Some(c), Some(k)) => Ok(Some(Identity::from_pem(read_certs(flags.0, c)?, read_key(flags.1, k)?))),
    }
}

impl TlsArgs {
    /// Whether any of the three flags is given.
    pub fn is_configured(&self) -> bool {
        self.tls_cert.is_some() || self.tls_key.is_some() || self.tls_ca.is_some()
    }

    /// The URL scheme peers use: `https` with TLS, `http` without.
    pub fn scheme(&self) -> &'static str {
        if self.is_configured() {
            "https"
        } else {
            "http"
        }
    }

    /// A worker's server configuration: `None` without TLS flags; with them, all three are
    /// required, and clients must present a certificate signed by `--tls-ca` (others fail the
    /// handshake).
    pub fn server_config(&self) -> Result<Option<ServerTlsConfig>, TlsError> {
        if !self.is_configured() {
            return Ok(None);
        }
        let why = "a worker serving TLS needs its certificate and its key";
        let Some(id) =
            identity(self.tls_cert.as_deref(), self.tls_key.as_deref(), ("--tls-cert", "--tls-key"), why)?
        else {
            return Err(TlsError::Incomplete { given: "--tls-ca", missing: "--tls-cert and --tls-key", why });
        };
        let Some(ca) = &self.tls_ca else {
            return Err(TlsError::Incomplete {
                given: "--tls-cert",
                missing: "--tls-ca",
                why: "workers accept only clients whose certificate the CA signed (mutual TLS)",
            });
        };
        let ca = Certificate::from_pem(read_certs("--tls-ca", ca)?);
        Ok(Some(ServerTlsConfig::new().identity(id).client_ca_root(ca)))
    }
}

/// The router's client side of mutual TLS, read once and applied to every worker channel.
#[derive(Debug, Clone)]
pub struct ClientTls {
    ca: Certificate,
    identity: Option<Identity>,
    server_name: Option<String>,
}

impl RouterTlsArgs {
    /// The router's client TLS: `None` without TLS flags; with them, `--tls-ca` is required and
    /// `--tls-cert`/`--tls-key` go together (without them workers refuse the router, so that is
    /// an error too).
    pub fn client(&self) -> Result<Option<ClientTls>, TlsError> {
        if !self.tls.is_configured() {
            if self.tls_server_name.is_some() {
                return Err(TlsError::Incomplete {
                    given: "--tls-server-name",
                    missing: "--tls-ca (and --tls-cert/--tls-key)",
                    why: "the name is only checked on TLS connections",
                });
            }
            return Ok(None);
        }
        let Some(ca) = &self.tls.tls_ca else {
            return Err(TlsError::Incomplete {
                given: if self.tls.tls_cert.is_some() { "--tls-cert" } else { "--tls-key" },
                missing: "--tls-ca",
                why: "the router verifies each worker's certificate against the CA that signed it",
            });
        };
        let ca = Certificate::from_pem(read_certs("--tls-ca", ca)?);
        let why = "workers accept only clients presenting a certificate signed by their CA";
        let identity = identity(
            self.tls.tls_cert.as_deref(),
            self.tls.tls_key.as_deref(),
            ("--tls-cert", "--tls-key"),
            why,
        )?;
        if identity.is_none() {
            return Err(TlsError::Incomplete { given: "--tls-ca", missing: "--tls-cert and --tls-key", why });
        }
        let server_name = match self.tls_server_name.as_deref().map(str::trim) {
            None => None,
            Some(n) => {
                rustls_pki_types::ServerName::try_from(n)
                    .map_err(|_| TlsError::BadServerName(n.to_string()))?;
                Some(n.to_string())
            }
        };
        Ok(Some(ClientTls { ca, identity, server_name }))
    }
}

impl ClientTls {
    /// The configuration for one worker channel: the CA, the router's identity, and the
    /// expected name (`--tls-server-name`, else the URL's host, which tonic uses by default).
    pub fn config(&self) -> ClientTlsConfig {
        let mut c = ClientTlsConfig::new().ca_certificate(self.ca.clone());
        if let Some(id) = &self.identity {
            c = c.identity(id.clone());
        }
        if let Some(n) = &self.server_name {
            c = c.domain_name(n.clone());
        }
        c
    }

    /// The name the worker at `url` must carry in its certificate.
    pub fn expected_name(&self, url: &str) -> String {
        match &self.server_name {
            Some(n) => n.clone(),
            None => url_host(url).unwrap_or(url).to_string(),
        }
    }
}

/// The host of `scheme://host:port/...` (IPv6 brackets kept).
fn url_host(url: &str) -> Option<&str> {
    let rest = url.split_once("://")?.1;
    let authority = rest.split(['/', '?', '#']).next()?;
    let authority = authority.rsplit_once('@').map_or(authority, |(_, a)| a);
    if authority.starts_with('[') {
        return authority.split_inclusive(']').next();
    }
    Some(authority.split(':').next().unwrap_or(authority))
}

/// Checks a worker URL's scheme against the router's TLS configuration: `https://` needs TLS
/// flags, `http://` must not be used when they are given (the `what` names where the URL came
/// from, e.g. `--base` or `the etcd registration of ...`).
pub fn check_worker_url(url: &str, tls: Option<&ClientTls>, what: &str) -> Result<(), TlsError> {
    let https = url.starts_with("https://");
    match (https, tls.is_some()) {
        (true, false) => Err(TlsError::Scheme(format!(
            "{what} `{url}` is an https:// URL but no TLS is configured: give --tls-ca, --tls-cert and \
             --tls-key (GENARM_TLS_CA/CERT/KEY) to talk to TLS workers"
        ))),
        (false, true) => Err(TlsError::Scheme(format!(
            "{what} `{url}` is a plaintext http:// URL while TLS is configured (--tls-ca): use \
             https://{}, or drop the --tls-* flags",
            url.split_once("://").map_or(url, |(_, r)| r)
        ))),
        _ => Ok(()),
    }
}

/// A hint to append to a connection failure that looks like a certificate problem.
pub fn hint_for(reason: &str, expected_name: Option<&str>) -> Option<String> {
    let r = reason.to_ascii_lowercase();
    if r.contains("notvalidforname") || r.contains("not valid for name") {
        return Some(format!(
            "the worker's certificate does not carry the name {} in its subjectAltName: reissue it with \
             that name, or set --tls-server-name to a name it carries",
            expected_name.map_or_else(|| "the router expects".to_string(), |n| format!("`{n}`"))
        ));
    }
    if r.contains("unknownissuer") || r.contains("unknown issuer") || r.contains("badsignature") {
        return Some(
            "the worker's certificate is not signed by --tls-ca: give the CA that signed it".to_string(),
        );
    }
    if r.contains("certificate required") || r.contains("certificaterequired") || r.contains("unknown ca") {
        return Some(
            "the worker refused the router's client certificate: sign --tls-cert with the worker's --tls-ca"
                .to_string(),
        );
    }
    if r.contains("invalid peer certificate") || r.contains("received fatal alert") {
        return Some("a TLS handshake failed: check --tls-ca, --tls-cert, --tls-key and the names".into());
    }
    None
}

impl EtcdTlsArgs {
    /// The etcd client TLS options: `None` without `--etcd-ca`; `--etcd-cert`/`--etcd-key` go
    /// together and need `--etcd-ca`.
    pub fn tls(&self) -> Result<Option<ClientTlsConfig>, TlsError> {
        let id = identity(
            self.etcd_cert.as_deref(),
            self.etcd_key.as_deref(),
            ("--etcd-cert", "--etcd-key"),
            "etcd client authentication needs both",
        )?;
        let Some(ca) = &self.etcd_ca else {
            if id.is_some() {
                return Err(TlsError::Incomplete {
                    given: "--etcd-cert",
                    missing: "--etcd-ca",
                    why:
                        "a client certificate is only sent over TLS, which needs the CA of etcd's certificate",
                });
            }
            return Ok(None);
        };
        let mut c =
            ClientTlsConfig::new().ca_certificate(Certificate::from_pem(read_certs("--etcd-ca", ca)?));
        if let Some(id) = id {
            c = c.identity(id);
        }
        Ok(Some(c))
    }

    /// `(user, password)` for etcd authentication; both or neither.
    pub fn user(&self) -> Result<Option<(String, Password)>, TlsError> {
        match (&self.etcd_user, &self.etcd_password) {
            (None, None) => Ok(None),
            (Some(u), Some(p)) => Ok(Some((u.clone(), p.clone()))),
            (Some(_), None) => Err(TlsError::Incomplete {
                given: "--etcd-user",
                missing: "--etcd-password (GENARM_ETCD_PASSWORD)",
                why: "etcd authenticates a user by its password",
            }),
            (None, Some(_)) => Err(TlsError::Incomplete {
                given: "--etcd-password",
                missing: "--etcd-user",
                why: "etcd authenticates a user by name and password",
            }),
        }
    }

    /// Checks etcd endpoint schemes against `--etcd-ca`: https:// needs it, http:// refuses it.
    pub fn check_endpoints(&self, endpoints: &[String]) -> Result<(), TlsError> {
        for e in endpoints {
            let https = e.starts_with("https://");
            if https && self.etcd_ca.is_none() {
                return Err(TlsError::Scheme(format!(
                    "--etcd endpoint `{e}` is https:// but --etcd-ca (GENARM_ETCD_CA) is not given: give the CA \
                     that signs etcd's certificate"
                )));
            }
            if !https && self.etcd_ca.is_some() {
                return Err(TlsError::Scheme(format!(
                    "--etcd endpoint `{e}` is not https:// but --etcd-ca is given: use https:// endpoints for \
                     TLS, or drop --etcd-ca/--etcd-cert/--etcd-key"
                )));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests;
