//! API-key authentication: the keys (from `--api-key`/`GENARM_API_KEYS` and `--api-key-file`,
//! the file re-read on SIGHUP), the constant-time check of `Authorization: Bearer <key>`, and the
//! axum middleware that answers 401 (OpenAI error, code `invalid_api_key`) and applies the
//! per-key concurrency limit. Keys are kept only as SHA-256 digests plus a label (`key-<N>` for
//! flag keys, the file's `NAME:` prefix or `file-line-<N>`); the label, never the key, appears in
//! logs, metrics and error messages.

use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use axum::extract::{Request, State};
use axum::http::header;
use axum::response::{IntoResponse, Response};
use sha2::{Digest, Sha256};

use super::error::ApiError;
use super::limits::{ConcurrencyGuard, KeyLimits};
use super::state::AppState;

/// Longest accepted API key, in bytes.
pub const MAX_KEY_BYTES: usize = 4096;

/// The authenticated caller of a request (an axum request extension).
#[derive(Debug, Clone)]
pub struct KeyIdentity {
    /// The key's label (never the key).
    pub label: Arc<str>,
}

/// Checks the text of one key; the error never repeats it.
pub fn check_key_text(key: &str) -> Result<(), String> {
    if key.is_empty() {
        return Err("is empty; give a non-empty key".into());
    }
    if key.len() > MAX_KEY_BYTES {
        return Err(format!("is longer than {MAX_KEY_BYTES} bytes"));
    }
    if key.chars().any(|c| c.is_whitespace() || c.is_control() || !c.is_ascii()) {
        return Err("holds whitespace, control or non-ASCII characters, which an HTTP Bearer token cannot \
                    carry; use printable ASCII (e.g. `openssl rand -hex 32`)"
            .into());
    }
    Ok(())
}

/// Whether `s` is a usable key label (metric label values, log fields).
pub fn valid_label(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 64
        && s.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'))
}

/// Parses a key file: `(label, key)` per non-blank, non-`#` line; `NAME:KEY` labels a key
/// `NAME` (when NAME is a valid label), a bare key is labelled `file-line-<N>`. Errors name the
/// line, never its key.
pub fn parse_key_file(text: &str) -> Result<Vec<(String, String)>, String> {
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let n = i + 1;
        let (label, key) = match line.split_once(':') {
            Some((name, key)) if valid_label(name.trim()) => (name.trim().to_string(), key.trim()),
            _ => (format!("file-line-{n}"), line),
        };
        check_key_text(key).map_err(|why| format!("line {n}: the key {why}"))?;
        out.push((label, key.to_string()));
    }
    Ok(out)
}

fn digest(key: &str) -> [u8; 32] {
    Sha256::digest(key.as_bytes()).into()
}

/// Equality of two digests in time independent of where they differ.
fn ct_eq(a: &[u8; 32], b: &[u8; 32]) -> bool {
    let diff = a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y));
    std::hint::black_box(diff) == 0
}

/// A set of keys as (SHA-256 digest, label).
#[derive(Default)]
pub struct KeySet {
    entries: Vec<([u8; 32], Arc<str>)>,
}

impl std::fmt::Debug for KeySet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeySet").field("keys", &self.entries.len()).finish()
    }
}

impl KeySet {
    /// The set of `(label, key)` pairs (a repeated key keeps its first label).
    pub fn new<'a>(keys: impl IntoIterator<Item = (&'a str, &'a str)>) -> Self {
        let mut entries: Vec<([u8; 32], Arc<str>)> = Vec::new();
        for (label, key) in keys {
            let d = digest(key);
            if !entries.iter().any(|(e, _)| e == &d) {
                entries.push((d, Arc::from(label)));
            }
        }
        KeySet { entries }
    }

    /// How many keys.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// No keys.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The label of `presented`, if it is one of the keys. The presented key is hashed and
    /// compared with every stored digest in constant time (no early exit), so the time taken
    /// tells nothing about how close a guess was.
    pub fn lookup(&self, presented: &str) -> Option<Arc<str>> {
        let d = digest(presented);
        let mut found = None;
        for (stored, label) in &self.entries {
            if ct_eq(stored, &d) && found.is_none() {
                found = Some(Arc::clone(label));
            }
        }
        found
    }
}

/// The router's authentication state: the keys (swapped on reload), where they come from, and
/// the per-key limits.
pub struct Auth {
    keys: RwLock<Arc<KeySet>>,
    /// `(label, key)` from the flags, kept to rebuild the set on reload.
    flag_keys: Vec<(String, String)>,
    file: Option<PathBuf>,
    /// Whether keys are required at all (some flag key or a key file is configured).
    enabled: bool,
    /// Whether `/metrics` needs a key.
    pub protect_metrics: bool,
    /// Per-key concurrency and token-rate limits.
    pub limits: Arc<KeyLimits>,
}

impl std::fmt::Debug for Auth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Auth")
            .field("enabled", &self.enabled)
            .field("keys", &self.keys().len())
            .field("file", &self.file)
            .field("protect_metrics", &self.protect_metrics)
            .finish()
    }
}

fn read_key_file(path: &Path) -> Result<Vec<(String, String)>, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read the API key file {} (--api-key-file): {e}", path.display()))?;
    parse_key_file(&text).map_err(|e| format!("the API key file {} (--api-key-file): {e}", path.display()))
}

impl Auth {
    /// No keys: every request is let in (per-key limits do not apply).
    pub fn open() -> Self {
        Auth {
            keys: RwLock::new(Arc::new(KeySet::default())),
            flag_keys: Vec::new(),
            file: None,
            enabled: false,
            protect_metrics: false,
            limits: Arc::new(KeyLimits::new(0, 0)),
        }
    }

    /// Keys from the flags (`flag_keys` in order, labelled `key-<N>`) and from `file` (read
    /// now; an unreadable or malformed file is an error). Authentication is on when either is
    /// given (a key file with no keys then refuses every request, with a warning).
    pub fn new(
        flag_keys: &[String],
        file: Option<PathBuf>,
        protect_metrics: bool,
        limits: KeyLimits,
    ) -> Result<Self, String> {
        let flag_keys: Vec<(String, String)> =
            flag_keys.iter().enumerate().map(|(i, k)| (format!("key-{}", i + 1), k.clone())).collect();
        let enabled = !flag_keys.is_empty() || file.is_some();
        let auth = Auth {
            keys: RwLock::new(Arc::new(KeySet::default())),
            flag_keys,
            file,
            enabled,
            protect_metrics,
            limits: Arc::new(limits),
        };
        let n = auth.reload()?;
        if enabled && n == 0 {
            tracing::warn!("the API key file holds no keys: every request that needs a key is refused (401)");
        }
        Ok(auth)
    }

    /// Whether requests need a key.
    pub fn enabled(&self) -> bool {
        self.enabled
    }

    /// The current keys.
    pub fn keys(&self) -> Arc<KeySet> {
        Arc::clone(&self.keys.read().unwrap_or_else(|e| e.into_inner()))
    }

    /// Re-reads the key file and rebuilds the set; on error the old keys stay. Returns how many
    /// keys are now in force.
    pub fn reload(&self) -> Result<usize, String> {
        let from_file = match &self.file {
            Some(path) => read_key_file(path)?,
            None => Vec::new(),
        };
        let set = KeySet::new(
            self.flag_keys.iter().chain(&from_file).map(|(label, key)| (label.as_str(), key.as_str())),
        );
        let n = set.len();
        *self.keys.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(set);
        Ok(n)
    }

    /// Checks a request's `Authorization` header: the caller's identity, or a 401.
    pub fn authenticate(&self, authorization: Option<&[u8]>) -> Result<KeyIdentity, ApiError> {
        let Some(value) = authorization else {
            metrics::counter!("genarm_auth_failures_total", "reason" => "missing").increment(1);
            return Err(ApiError::Unauthorized {
                message: "no API key: send the header `Authorization: Bearer <key>` (OpenAI clients: set \
                          api_key); ask the operator of this router for a key"
                    .into(),
            });
        };
        let token = std::str::from_utf8(value)
            .ok()
            .and_then(|v| {
                let v = v.trim();
                let (scheme, rest) = v.split_once(' ')?;
                scheme.eq_ignore_ascii_case("bearer").then(|| rest.trim())
            })
            .ok_or_else(|| {
                metrics::counter!("genarm_auth_failures_total", "reason" => "malformed").increment(1);
                ApiError::Unauthorized {
                    message: "the Authorization header is not `Bearer <key>`; send \
                              `Authorization: Bearer <key>`"
                        .into(),
                }
            })?;
        match self.keys().lookup(token) {
            Some(label) => Ok(KeyIdentity { label }),
            None => {
                metrics::counter!("genarm_auth_failures_total", "reason" => "invalid").increment(1);
                Err(ApiError::Unauthorized {
                    message:
                        "invalid API key: the key sent in `Authorization: Bearer` is not one this router \
                              accepts (it may have been revoked); check the key, or ask the operator for one"
                            .into(),
                })
            }
        }
    }
}

/// Describes the authentication and limit metrics.
pub fn describe_metrics() {
    metrics::describe_counter!(
        "genarm_auth_failures_total",
        "Requests refused with 401, by reason (missing, malformed, invalid)"
    );
    metrics::describe_counter!("genarm_key_requests_total", "Authenticated requests, by key label");
    metrics::describe_counter!(
        "genarm_limit_rejections_total",
        "Requests refused by a limit, by limit and key label"
    );
}

/// Re-reads the key file on every SIGHUP (unix); a bad file keeps the old keys and logs why.
pub fn spawn_sighup_reloader(auth: Arc<Auth>) {
    #[cfg(unix)]
    tokio::spawn(async move {
        let mut hup = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) {
            Ok(s) => s,
            Err(e) => {
                tracing::error!("cannot listen for SIGHUP (API keys will not be reloaded): {e}");
                return;
            }
        };
        while hup.recv().await.is_some() {
            if auth.file.is_none() {
                tracing::info!("SIGHUP: no --api-key-file to reload");
                continue;
            }
            match auth.reload() {
                Ok(n) => tracing::info!(keys = n, "SIGHUP: API keys reloaded"),
                Err(e) => {
                    tracing::error!(error = %e, "SIGHUP: API keys NOT reloaded, the old keys stay in force")
                }
            }
        }
    });
    #[cfg(not(unix))]
    drop(auth);
}

/// Whether `path` is open without a key.
fn is_open_path(path: &str, protect_metrics: bool) -> bool {
    matches!(path, "/health" | "/ready") || (path == "/metrics" && !protect_metrics)
}

/// Middleware: checks the key (see [`Auth::authenticate`]) on every path but `/health`, `/ready`
/// (and `/metrics` unless `--protect-metrics`), applies the per-key concurrency limit (held until
/// the response body ends) and records the caller as a [`KeyIdentity`] extension.
pub async fn require_key(
    State(st): State<Arc<AppState>>,
    mut req: Request,
    next: axum::middleware::Next,
) -> Response {
    let auth = &st.auth;
    if !auth.enabled() || is_open_path(req.uri().path(), auth.protect_metrics) {
        return next.run(req).await;
    }
    let identity = match auth.authenticate(req.headers().get(header::AUTHORIZATION).map(|v| v.as_bytes())) {
        Ok(id) => id,
        Err(e) => return e.into_response(),
    };
    metrics::counter!("genarm_key_requests_total", "key" => identity.label.to_string()).increment(1);
    let guard = match auth.limits.acquire(&identity.label) {
        Ok(g) => g,
        Err(e) => return e.into_response(),
    };
    req.extensions_mut().insert(identity);
    let resp = next.run(req).await;
    hold_until_body_ends(resp, guard)
}

/// Keeps `guard` alive until the response body is finished or dropped.
fn hold_until_body_ends(resp: Response, guard: Option<ConcurrencyGuard>) -> Response {
    let Some(guard) = guard else { return resp };
    if axum::body::HttpBody::size_hint(resp.body()).exact().is_some() {
        return resp;
    }
    let (parts, body) = resp.into_parts();
    let stream = futures::StreamExt::map(body.into_data_stream(), move |chunk| {
        let _held = &guard;
        chunk
    });
    Response::from_parts(parts, axum::body::Body::from_stream(stream))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lookup_finds_exactly_the_configured_keys() {
        let set = KeySet::new([("a", "sk-one"), ("b", "sk-two"), ("c", "sk-one")]);
        assert_eq!(set.len(), 2, "a repeated key keeps its first label");
        assert_eq!(set.lookup("sk-one").as_deref(), Some("a"));
        assert_eq!(set.lookup("sk-two").as_deref(), Some("b"));
        for wrong in ["", "sk-on", "sk-one ", "sk-onee", "SK-ONE", "sk-three"] {
            assert_eq!(set.lookup(wrong), None, "{wrong:?}");
        }
        assert!(ct_eq(&digest("x"), &digest("x")));
        assert!(!ct_eq(&digest("x"), &digest("y")));
        let mut d = digest("x");
        d[31] ^= 1;
        assert!(!ct_eq(&digest("x"), &d), "a difference in the last byte counts");
    }

    #[test]
    fn key_files_parse_labels_comments_and_refuse_bad_lines_without_echoing_them() {
        let keys = parse_key_file("# comment\n\nalice:sk-a\nsk-bare\n  bob : sk-b  \nnot a label:x\n");
        let e = keys.unwrap_err();
        assert!(e.contains("line 6") && !e.contains("not a label"), "{e}");
        let keys = parse_key_file("# comment\n\nalice:sk-a\nsk-bare\n  bob : sk-b  \n").unwrap();
        assert_eq!(
            keys,
            vec![
                ("alice".into(), "sk-a".into()),
                ("file-line-4".into(), "sk-bare".into()),
                ("bob".into(), "sk-b".into())
            ]
        );
        let e = parse_key_file("alice:\n").unwrap_err();
        assert!(e.contains("line 1") && e.contains("empty"), "{e}");
        assert!(check_key_text("sk-\u{7f}x").is_err());
        assert!(check_key_text(&"k".repeat(MAX_KEY_BYTES + 1)).is_err());
    }

    #[test]
    fn authenticate_answers_401_without_the_key() {
        let auth = Auth::new(&["sk-secret-1".into()], None, false, KeyLimits::new(0, 0)).unwrap();
        assert!(auth.enabled());
        assert_eq!(&*auth.authenticate(Some(b"Bearer sk-secret-1")).unwrap().label, "key-1");
        assert_eq!(&*auth.authenticate(Some(b"bearer  sk-secret-1 ")).unwrap().label, "key-1");
        for bad in [None, Some(&b"Bearer sk-secret-2"[..]), Some(b"sk-secret-1"), Some(b"Basic sk-secret-1")]
        {
            let e = auth.authenticate(bad).unwrap_err();
            let body = serde_json::to_string(&e.body()).unwrap();
            assert_eq!(e.status(), axum::http::StatusCode::UNAUTHORIZED);
            assert!(body.contains("invalid_api_key") && !body.contains("sk-secret"), "{body}");
        }
        assert!(!format!("{auth:?}").contains("sk-secret"));
        assert!(!Auth::open().enabled());
    }

    #[test]
    fn reload_keeps_the_old_keys_when_the_file_is_bad() {
        let dir = std::env::temp_dir().join(format!("genarm-auth-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("keys");
        std::fs::write(&path, "alice:sk-a\n").unwrap();
        let auth = Auth::new(&[], Some(path.clone()), true, KeyLimits::new(0, 0)).unwrap();
        assert_eq!(&*auth.authenticate(Some(b"Bearer sk-a")).unwrap().label, "alice");
        std::fs::write(&path, "bob:sk-b\n").unwrap();
        assert_eq!(auth.reload(), Ok(1));
        assert!(auth.authenticate(Some(b"Bearer sk-a")).is_err(), "revoked");
        assert_eq!(&*auth.authenticate(Some(b"Bearer sk-b")).unwrap().label, "bob");
        std::fs::write(&path, "carol:bad key\n").unwrap();
        let e = auth.reload().unwrap_err();
        assert!(e.contains("line 1") && !e.contains("bad key"), "{e}");
        assert_eq!(&*auth.authenticate(Some(b"Bearer sk-b")).unwrap().label, "bob", "old keys stay");
        std::fs::remove_dir_all(&dir).unwrap();
        assert!(is_open_path("/health", true) && is_open_path("/ready", true));
        assert!(is_open_path("/metrics", false) && !is_open_path("/metrics", true));
        assert!(!is_open_path("/v1/completions", false));
    }
}
