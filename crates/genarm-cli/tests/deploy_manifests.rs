//! The Kubernetes manifests under `deploy/kubernetes`: each kustomization (the base and every
//! overlay) renders with `kubectl kustomize`, the rendered objects validate offline with
//! `kubernetes-validate` (strict, against the oldest and the newest Kubernetes version they
//! target), every `GENARM_*` variable and `--flag` a container gives a genarm binary exists in
//! that binary's `--help`, and the operational invariants hold (probes, drain timings, GPUs =
//! tensor-parallel degree, the router's reward names = the rm-workers', a PodDisruptionBudget per
//! workload, an HPA per Deployment). Fails — does not skip — when kubectl or kubernetes-validate
//! is missing.

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use genarm_testkit::cluster::bin_path;
use serde_json::Value;

/// The pinned kubernetes-validate version `.ci/run` installs.
const KUBERNETES_VALIDATE_VERSION: &str = "1.34.1";

/// Kubernetes versions the rendered objects must be valid for: 1.27 is the first with gRPC
/// probes GA (the workers' probes); 1.34 the newest schema the pinned kubernetes-validate ships.
const KUBERNETES_VERSIONS: [&str; 2] = ["1.27.0", "1.34.0"];

/// The kustomizations, relative to `deploy/kubernetes`.
const KUSTOMIZATIONS: [&str; 3] = ["base", "overlays/cpu-demo", "overlays/gpu-70b"];

/// The genarm binaries a container may run (its `command[0]`).
const BINARIES: [&str; 3] = ["genarm-router", "genarm-base-worker", "genarm-rm-worker"];

fn repo_root() -> PathBuf {
    PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../.."))
}

/// `$GENARM_KUBECTL`, else `kubectl` on the PATH.
fn kubectl() -> PathBuf {
    std::env::var_os("GENARM_KUBECTL")
        .filter(|p| !p.is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(|| "kubectl".into())
}

fn kubectl_hint() -> &'static str {
    "install kubectl with `apt-get install -y kubernetes-client` (Debian; .ci/run does this) or point \
     GENARM_KUBECTL at a kubectl that has the `kustomize` subcommand"
}

fn validate_hint() -> String {
    format!(
        "install it with: python3 -m venv ~/.cache/genarm/venv && ~/.cache/genarm/venv/bin/pip install \
         kubernetes-validate=={KUBERNETES_VALIDATE_VERSION} (or point GENARM_PYTHON at a Python that has it); \
         .ci/run does this"
    )
}

/// Runs `cmd`, feeding `stdin`; its stdout, or a panic naming `what` with its stderr.
fn run(mut cmd: Command, stdin: &[u8], what: &str, hint: &str) -> String {
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {what} ({cmd:?}): {e}; {hint}"));
    child.stdin.take().expect("stdin").write_all(stdin).expect("writing stdin");
    let out = child.wait_with_output().expect("waiting for the child");
    if !out.status.success() {
        panic!(
            "{what} failed ({}):\n{}\n{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    String::from_utf8(out.stdout).expect("utf-8 output")
}

/// `kubectl kustomize DIR`: the rendered multi-document YAML.
fn render(dir: &Path) -> String {
    let mut cmd = Command::new(kubectl());
    cmd.arg("kustomize").arg(dir);
    run(cmd, b"", &format!("kubectl kustomize {}", dir.display()), kubectl_hint())
}

/// The documents of a YAML stream as JSON, converted by PyYAML (a kubernetes-validate dependency).
fn yaml_to_json(yaml: &str) -> Vec<Value> {
    let mut cmd = Command::new(genarm_testkit::cache::python());
    cmd.args([
        "-c",
        "import json, sys, yaml; json.dump([d for d in yaml.safe_load_all(sys.stdin) if d is not None], sys.stdout)",
    ]);
    let json = run(cmd, yaml.as_bytes(), "PyYAML", &validate_hint());
    match serde_json::from_str(&json).expect("PyYAML printed JSON") {
        Value::Array(docs) => docs,
        other => panic!("expected a list of documents, got {other}"),
    }
}

fn str_at<'a>(v: &'a Value, path: &str) -> Option<&'a str> {
    v.pointer(path).and_then(Value::as_str)
}

fn name_of(obj: &Value) -> String {
    format!("{}/{}", str_at(obj, "/kind").unwrap_or("?"), str_at(obj, "/metadata/name").unwrap_or("?"))
}

/// The options of a binary's `--help`: flag names (`--listen`) and env variables (`GENARM_LISTEN`).
struct HelpSurface {
    flags: BTreeSet<String>,
    envs: BTreeSet<String>,
}

fn help_surface(binary: &str) -> HelpSurface {
    let path = bin_path(binary).unwrap_or_else(|e| panic!("{e:#}"));
    let out =
        Command::new(&path).arg("--help").output().unwrap_or_else(|e| panic!("running {binary} --help: {e}"));
    assert!(out.status.success(), "{binary} --help failed: {}", String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8(out.stdout).expect("utf-8 help");
    let mut flags = BTreeSet::new();
    let mut envs = BTreeSet::new();
    for word in text.split(|c: char| c.is_whitespace() || c == ',' || c == '[' || c == ']') {
        if let Some(rest) = word.strip_prefix("--") {
            let name: String = rest.chars().take_while(|c| c.is_ascii_alphanumeric() || *c == '-').collect();
            if !name.is_empty() {
                flags.insert(format!("--{name}"));
            }
        }
    }
    for part in text.split("[env: ").skip(1) {
        let name: String = part.chars().take_while(|c| c.is_ascii_alphanumeric() || *c == '_').collect();
        envs.insert(name);
    }
    assert!(!envs.is_empty(), "{binary} --help lists no env variables:\n{text}");
    HelpSurface { flags, envs }
}

/// The environment of a container as its process sees it: `envFrom` ConfigMaps first, then
/// `env` (which wins). Values from fieldRefs etc. read as `<ref>`.
fn container_env(
    container: &Value,
    config_maps: &BTreeMap<String, Value>,
    ctx: &str,
) -> BTreeMap<String, String> {
    let mut env = BTreeMap::new();
    for from in container["envFrom"].as_array().into_iter().flatten() {
        if let Some(cm) = str_at(from, "/configMapRef/name") {
            let optional = from.pointer("/configMapRef/optional").and_then(Value::as_bool).unwrap_or(false);
            match config_maps.get(cm) {
                Some(data) => {
                    for (k, v) in data.as_object().into_iter().flatten() {
                        env.insert(k.clone(), v.as_str().unwrap_or_default().to_string());
                    }
                }
                None => assert!(optional, "{ctx}: envFrom ConfigMap {cm} is not in the rendered manifests"),
            }
        }
    }
    for e in container["env"].as_array().into_iter().flatten() {
        let name = str_at(e, "/name").unwrap_or_else(|| panic!("{ctx}: env entry without a name"));
        env.insert(name.to_string(), str_at(e, "/value").unwrap_or("<ref>").to_string());
    }
    env
}

fn port_of(addr: &str) -> Option<i64> {
    addr.rsplit_once(':').and_then(|(_, p)| p.parse().ok())
}

/// The `preStop` sleep of a container in seconds (`exec: sleep N` or the `sleep` action).
fn pre_stop_secs(container: &Value) -> Option<i64> {
    let pre = container.pointer("/lifecycle/preStop")?;
    if let Some(s) = pre.pointer("/sleep/seconds").and_then(Value::as_i64) {
        return Some(s);
    }
    let cmd: Vec<&str> = pre.pointer("/exec/command")?.as_array()?.iter().filter_map(Value::as_str).collect();
    match cmd.as_slice() {
        ["sleep", n] => n.parse().ok(),
        _ => None,
    }
}

fn labels_match(selector: &Value, labels: &Value) -> bool {
    selector
        .as_object()
        .map(|sel| !sel.is_empty() && sel.iter().all(|(k, v)| labels.get(k) == Some(v)))
        .unwrap_or(false)
}

/// Checks one rendered kustomization; returns the problems found.
fn check_objects(docs: &[Value], help: &BTreeMap<&str, HelpSurface>) -> Vec<String> {
    let mut problems = Vec::new();
    let config_maps: BTreeMap<String, Value> = docs
        .iter()
        .filter(|d| str_at(d, "/kind") == Some("ConfigMap"))
        .map(|d| (str_at(d, "/metadata/name").unwrap_or_default().to_string(), d["data"].clone()))
        .collect();
    let of_kind = |kind: &'static str| docs.iter().filter(move |d| str_at(d, "/kind") == Some(kind));
    let mut genarm_containers = 0;
    // Reward names: what the router serves (GENARM_RM, GENARM_DEFAULT_GUIDANCE) and what the
    // rm-workers are (GENARM_NAME).
    let mut router_rms: BTreeSet<String> = BTreeSet::new();
    let mut guidance_names: BTreeSet<String> = BTreeSet::new();
    let mut worker_names: BTreeSet<String> = BTreeSet::new();

    for obj in docs.iter().filter(|d| matches!(str_at(d, "/kind"), Some("Deployment" | "StatefulSet"))) {
        let obj_name = name_of(obj);
        let pod = &obj["spec"]["template"]["spec"];
        let pod_labels = &obj["spec"]["template"]["metadata"]["labels"];
        let grace = pod["terminationGracePeriodSeconds"].as_i64().unwrap_or(30);

        // Every workload: a PodDisruptionBudget; every Deployment: an HPA.
        if !of_kind("PodDisruptionBudget")
            .any(|p| labels_match(&p["spec"]["selector"]["matchLabels"], pod_labels))
        {
            problems.push(format!("{obj_name}: no PodDisruptionBudget selects its pods"));
        }
        if str_at(obj, "/kind") == Some("Deployment")
            && !of_kind("HorizontalPodAutoscaler").any(|h| {
                str_at(h, "/spec/scaleTargetRef/kind") == Some("Deployment")
                    && str_at(h, "/spec/scaleTargetRef/name") == str_at(obj, "/metadata/name")
            })
        {
            problems.push(format!("{obj_name}: no HorizontalPodAutoscaler targets it"));
        }

        let containers = pod["containers"].as_array().into_iter().flatten();
        let init = pod["initContainers"].as_array().into_iter().flatten();
        for c in containers.chain(init) {
            let ctx = format!("{obj_name} container {}", str_at(c, "/name").unwrap_or("?"));
            let command: Vec<&str> =
                c["command"].as_array().into_iter().flatten().filter_map(Value::as_str).collect();
            let args: Vec<&str> =
                c["args"].as_array().into_iter().flatten().filter_map(Value::as_str).collect();
            let env = container_env(c, &config_maps, &ctx);
            let binary = command.first().map(|p| p.rsplit('/').next().unwrap_or(p));
            let Some(surface) = binary.and_then(|b| help.get(b)) else {
                // Not a genarm process (etcd, the model download): it must not be handed genarm
                // settings by mistake.
                if let Some(k) = env.keys().find(|k| k.starts_with("GENARM_")) {
                    problems.push(format!("{ctx}: {k} given to {binary:?}, which is not a genarm binary"));
                }
                continue;
            };
            let binary = binary.unwrap_or_default();
            genarm_containers += 1;

            // Flags and variables exist in the binary.
            for word in command.iter().skip(1).chain(&args) {
                if let Some(flag) =
                    word.strip_prefix("--").map(|f| format!("--{}", f.split('=').next().unwrap_or(f)))
                {
                    if !surface.flags.contains(&flag) {
                        problems.push(format!("{ctx}: {binary} has no flag {flag} (see {binary} --help)"));
                    }
                }
            }
            for k in env.keys().filter(|k| k.starts_with("GENARM_")) {
                if !surface.envs.contains(k) {
                    problems.push(format!("{ctx}: {binary} reads no variable {k} (see {binary} --help)"));
                }
            }

            // Probes: the router over HTTP, workers over gRPC on their listen port (or, with TLS,
            // their plaintext health port).
            let listen_port = env.get("GENARM_LISTEN").and_then(|a| port_of(a));
            let names = |key: &str| -> Vec<String> {
                env.get(key)
                    .map(|v| v.split(',').filter(|n| !n.is_empty()))
                    .into_iter()
                    .flatten()
                    .map(|n| n.split('=').next().unwrap_or(n).trim().to_string())
                    .collect()
            };
            match binary {
                "genarm-router" => {
                    router_rms.extend(names("GENARM_RM"));
                    guidance_names.extend(names("GENARM_DEFAULT_GUIDANCE"));
                }
                "genarm-rm-worker" => worker_names.extend(names("GENARM_NAME")),
                _ => {}
            }
            if binary == "genarm-router" {
                for (probe, path) in [("livenessProbe", "/health"), ("readinessProbe", "/ready")] {
                    if c.pointer(&format!("/{probe}/httpGet/path")).and_then(Value::as_str) != Some(path) {
                        problems.push(format!("{ctx}: {probe} must be an HTTP GET of {path}"));
                    }
                }
                if !env.get("GENARM_LISTEN").is_some_and(|a| a.starts_with("0.0.0.0:")) {
                    problems.push(format!(
                        "{ctx}: GENARM_LISTEN must listen on 0.0.0.0 (the default is loopback)"
                    ));
                }
            } else {
                // With mutual TLS the gRPC port needs a client certificate, which kubelet's gRPC
                // probes cannot present: they use the plaintext health port instead.
                let (probe_port, port_var) = if env.contains_key("GENARM_TLS_CERT") {
                    let port = env.get("GENARM_PLAINTEXT_HEALTH_LISTEN").and_then(|a| port_of(a));
                    (port, "GENARM_PLAINTEXT_HEALTH_LISTEN (TLS is on)")
                } else {
                    (listen_port, "GENARM_LISTEN")
                };
                for probe in ["startupProbe", "livenessProbe", "readinessProbe"] {
                    let port = c.pointer(&format!("/{probe}/grpc/port")).and_then(Value::as_i64);
                    if port.is_none() || port != probe_port {
                        problems.push(format!(
                            "{ctx}: {probe} must be a gRPC probe on the {port_var} port {probe_port:?}, got {port:?}"
                        ));
                    }
                }
                // A wildcard listen address cannot be registered in etcd.
                if env.contains_key("GENARM_ETCD") && !env.contains_key("GENARM_ADVERTISE") {
                    problems.push(format!("{ctx}: registers in etcd without GENARM_ADVERTISE"));
                }
                // GPUs = tensor-parallel degree on CUDA, none on CPU.
                let tp: i64 = env.get("GENARM_TP").map_or(1, |t| t.parse().unwrap_or(-1));
                let device = env.get("GENARM_DEVICE").map_or("cpu", String::as_str);
                for side in ["requests", "limits"] {
                    let gpus = c.pointer(&format!("/resources/{side}/nvidia.com~1gpu")).and_then(|g| {
                        g.as_str().map(str::to_string).or_else(|| g.as_i64().map(|n| n.to_string()))
                    });
                    let want = device.starts_with("cuda").then(|| tp.to_string());
                    if gpus != want {
                        problems.push(format!(
                            "{ctx}: {side} nvidia.com/gpu is {gpus:?}, expected {want:?} (GENARM_DEVICE={device}, GENARM_TP={tp})"
                        ));
                    }
                }
            }

            // Drain: the pod is given at least the preStop sleep plus the drain grace.
            match pre_stop_secs(c) {
                None => problems.push(format!("{ctx}: no preStop sleep")),
                Some(sleep) => {
                    let drain: i64 = env
                        .get("GENARM_SHUTDOWN_GRACE_SECS")
                        .map_or(0, |s| s.parse().unwrap_or(i64::MAX / 2));
                    if grace < sleep + drain + 5 {
                        problems.push(format!(
                            "{ctx}: terminationGracePeriodSeconds {grace} < preStop {sleep} + drain {drain} + 5 spare"
                        ));
                    }
                }
            }
        }
    }
    if router_rms != worker_names {
        problems.push(format!(
            "the router serves reward names {router_rms:?} (GENARM_RM), the rm-workers are {worker_names:?}"
        ));
    }
    if !guidance_names.is_subset(&router_rms) {
        problems.push(format!(
            "GENARM_DEFAULT_GUIDANCE names {guidance_names:?} outside GENARM_RM {router_rms:?}"
        ));
    }
    if genarm_containers == 0 {
        problems.push("no container runs a genarm binary".into());
    }
    problems
}

/// Validates `yaml` (one rendered kustomization) with kubernetes-validate, strictly (unknown
/// fields are errors), against each of [`KUBERNETES_VERSIONS`].
fn validate(yaml: &str, label: &str, dir: &Path) -> Vec<String> {
    let file = dir.join(format!("{}.yaml", label.replace('/', "-")));
    std::fs::write(&file, yaml).expect("writing the rendered manifests");
    let mut problems = Vec::new();
    for version in KUBERNETES_VERSIONS {
        let out = Command::new(genarm_testkit::cache::python())
            .args(["-m", "kubernetes_validate", "--strict", "--quiet", "-k", version])
            .arg(&file)
            .output()
            .expect("running kubernetes-validate");
        if !out.status.success() {
            problems.push(format!(
                "{label}: kubernetes-validate -k {version} failed:\n{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ));
        }
    }
    problems
}

#[test]
fn manifests_render_validate_and_match_the_binaries() {
    // The tools first, with install instructions.
    let probe = Command::new(genarm_testkit::cache::python())
        .args(["-c", "import kubernetes_validate, yaml; print(kubernetes_validate.__version__)"])
        .output();
    match probe {
        Err(e) => {
            panic!("cannot run {}: {e}; {}", genarm_testkit::cache::python().display(), validate_hint())
        }
        Ok(o) if !o.status.success() => panic!(
            "{} cannot import kubernetes_validate ({}); {}",
            genarm_testkit::cache::python().display(),
            String::from_utf8_lossy(&o.stderr).trim(),
            validate_hint()
        ),
        Ok(o) => eprintln!(
            "using {} with kubernetes-validate {}",
            genarm_testkit::cache::python().display(),
            String::from_utf8_lossy(&o.stdout).trim()
        ),
    }
    let version = Command::new(kubectl())
        .args(["version", "--client"])
        .output()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}; {}", kubectl().display(), kubectl_hint()));
    eprintln!("using {}: {}", kubectl().display(), String::from_utf8_lossy(&version.stdout).trim());

    let help: BTreeMap<&str, HelpSurface> = BINARIES.iter().map(|b| (*b, help_surface(b))).collect();
    let tmp = tempfile::tempdir().expect("tempdir");
    let root = repo_root().join("deploy/kubernetes");
    let mut problems = Vec::new();
    for k in KUSTOMIZATIONS {
        let yaml = render(&root.join(k));
        problems.extend(validate(&yaml, k, tmp.path()));
        let docs = yaml_to_json(&yaml);
        assert!(docs.len() > 10, "{k}: only {} objects rendered", docs.len());
        problems.extend(check_objects(&docs, &help).into_iter().map(|p| format!("{k}: {p}")));
    }
    assert!(
        problems.is_empty(),
        "{} problem(s) in deploy/kubernetes:\n{}",
        problems.len(),
        problems.join("\n")
    );
}

/// The checks themselves catch what they are for: a flag, a variable or a GPU count that does
/// not match, and an invalid field.
#[test]
fn the_checks_catch_mistakes() {
    let help: BTreeMap<&str, HelpSurface> = BINARIES.iter().map(|b| (*b, help_surface(b))).collect();
    let yaml = render(&repo_root().join("deploy/kubernetes/overlays/cpu-demo"));
    let mut docs = yaml_to_json(&yaml);
    assert_eq!(check_objects(&docs, &help), Vec::<String>::new(), "the cpu-demo overlay itself is clean");

    let sts = docs
        .iter_mut()
        .find(|d| {
            str_at(d, "/kind") == Some("StatefulSet")
                && str_at(d, "/metadata/name") == Some("genarm-base-worker")
        })
        .expect("the base-worker StatefulSet");
    let c = &mut sts["spec"]["template"]["spec"]["containers"][0];
    c["args"] = serde_json::json!(["--no-such-flag=1"]);
    c["env"]
        .as_array_mut()
        .expect("env")
        .push(serde_json::json!({"name": "GENARM_NO_SUCH_VAR", "value": "1"}));
    c["resources"]["limits"]["nvidia.com/gpu"] = serde_json::json!("1");
    let problems = check_objects(&docs, &help).join("\n");
    for needle in ["no flag --no-such-flag", "no variable GENARM_NO_SUCH_VAR", "limits nvidia.com/gpu"] {
        assert!(problems.contains(needle), "expected a problem about {needle:?}, got:\n{problems}");
    }

    let tmp = tempfile::tempdir().expect("tempdir");
    let bad = yaml.replacen("terminationGracePeriodSeconds:", "terminationGracePeriodSecondz:", 1);
    let found = validate(&bad, "bad", tmp.path());
    assert!(!found.is_empty(), "kubernetes-validate accepted an unknown field");
}
