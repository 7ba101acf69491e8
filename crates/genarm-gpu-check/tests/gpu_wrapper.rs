//! The GPU bundle's wrapper (bundle/run.sh, copied to dist/gpu/run.sh) on machines that cannot run
//! the bundle: it must refuse with exit status 3 and one clear line, and run nothing. Every case runs
//! the template in a fake bundle under a fake root (GENARM_GPU_PROBE_ROOT), so the outcome is the
//! same on any CI machine and needs no CUDA build; the last cases fake a complete machine to see the
//! wrapper hand over to the program with the library path it found.

use std::fs;
use std::os::unix::fs::{symlink, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

const CUDA_LIBS: &str = "libcublas.so.13 libcublasLt.so.13 libcudart.so.13 libcurand.so.10 libnccl.so.2";
const MARKER: &str = "FAKE-GPU-CHECK-RAN";

struct Machine {
    _tmp: tempfile::TempDir,
    bundle: PathBuf,
    root: PathBuf,
}

fn write_exec(path: &Path, text: &str) {
    fs::create_dir_all(path.parent().unwrap()).unwrap();
    fs::write(path, text).unwrap();
    fs::set_permissions(path, fs::Permissions::from_mode(0o755)).unwrap();
}

fn bundle_env(glibc_min: &str) -> String {
    format!(
        "GENARM_BUNDLE_COMMIT='test'\nGENARM_BUNDLE_COMPUTE_CAP='90'\nGENARM_BUNDLE_DRIVER_MIN='580'\n\
         GENARM_BUNDLE_GLIBC_MIN='{glibc_min}'\n\
         GENARM_BUNDLE_PROGRAMS='genarm-base-worker genarm-rm-worker genarm-gpu-check'\n\
         GENARM_BUNDLE_CUDA_LIBS='{CUDA_LIBS}'\nGENARM_BUNDLE_SYSTEM_LIBS='libc.so.6'\n\
         GENARM_BUNDLE_PIP=\"pip install 'cuda-toolkit[cudart,cublas,curand,nvrtc]==13.0.2' 'nvidia-nccl-cu13==2.28.9'\"\n"
    )
}

/// A bundle (the real run.sh template, a fake genarm-gpu-check) and an empty fake root.
fn machine() -> Machine {
    let tmp = tempfile::tempdir().unwrap();
    let bundle = tmp.path().join("gpu");
    let root = tmp.path().join("root");
    fs::create_dir_all(bundle.join("data")).unwrap();
    fs::create_dir_all(&root).unwrap();
    let template = Path::new(env!("CARGO_MANIFEST_DIR")).join("bundle/run.sh");
    fs::copy(&template, bundle.join("run.sh")).unwrap();
    fs::set_permissions(bundle.join("run.sh"), fs::Permissions::from_mode(0o755)).unwrap();
    fs::write(bundle.join("bundle.env"), bundle_env("2.17")).unwrap();
    write_exec(
        &bundle.join("bin/genarm-gpu-check"),
        &format!(
            "#!/bin/sh\necho {MARKER}\necho \"args=$*\"\necho \"LD_LIBRARY_PATH=$LD_LIBRARY_PATH\"\n\
             echo \"GENARM_GPU_DATA=$GENARM_GPU_DATA\"\n"
        ),
    );
    Machine { _tmp: tmp, bundle, root }
}

impl Machine {
    /// A driver of `version` under the fake root, as the driver installs it.
    fn driver(&self, version: &str) -> &Self {
        let dir = self.root.join("usr/lib/x86_64-linux-gnu");
        fs::create_dir_all(&dir).unwrap();
        fs::write(dir.join(format!("libcuda.so.{version}")), b"").unwrap();
        symlink(format!("libcuda.so.{version}"), dir.join("libcuda.so.1")).unwrap();
        self
    }

    /// A Python whose site-packages hold the CUDA 13 and NCCL wheels' libraries.
    fn python_with_cuda_wheels(&self) -> PathBuf {
        let site = self.root.join("venv/site-packages");
        for lib in CUDA_LIBS.split(' ') {
            let sub = if lib.starts_with("libnccl") { "nvidia/nccl/lib" } else { "nvidia/cu13/lib" };
            fs::create_dir_all(site.join(sub)).unwrap();
            fs::write(site.join(sub).join(lib), b"").unwrap();
        }
        let python = self.root.join("venv/bin/python");
        write_exec(&python, &format!("#!/bin/sh\necho {}\n", site.display()));
        python
    }

    fn run(&self, args: &[&str], env: &[(&str, &Path)]) -> Output {
        let mut cmd = Command::new(self.bundle.join("run.sh"));
        cmd.args(args).env_clear().env("PATH", "/usr/bin:/bin").env("GENARM_GPU_PROBE_ROOT", &self.root);
        for (k, v) in env {
            cmd.env(k, v);
        }
        cmd.output().unwrap()
    }
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// Exit status 3, one line on stderr saying why (containing every `needles`), nothing run.
fn assert_refused(out: &Output, needles: &[&str]) {
    let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
    assert_eq!(out.status.code(), Some(3), "stdout: {stdout}\nstderr: {stderr}");
    assert!(!stdout.contains(MARKER), "the program ran: {stdout}");
    let lines: Vec<&str> = stderr.lines().collect();
    assert_eq!(lines.len(), 1, "expected one line, got: {stderr}");
    assert!(lines[0].starts_with("genarm-gpu: cannot run on this machine: "), "{stderr}");
    for n in needles {
        assert!(lines[0].contains(n), "{n:?} not in: {stderr}");
    }
}

#[test]
fn refuses_without_a_driver() {
    let m = machine();
    let out = m.run(&["genarm-gpu-check", "--out", "result.json"], &[]);
    assert_refused(&out, &["no NVIDIA driver", "libcuda.so.1", "driver >= 580"]);
    assert_refused(&m.run(&["--env"], &[]), &["no NVIDIA driver"]);
}

#[test]
fn refuses_a_driver_older_than_cuda_13_needs() {
    let m = machine();
    m.driver("570.86.15");
    let out = m.run(&["genarm-gpu-check"], &[]);
    assert_refused(&out, &["driver 570.86.15 is older than 580"]);
}

#[test]
fn refuses_without_the_cuda_libraries_and_says_what_to_install() {
    let m = machine();
    m.driver("580.65.06");
    let out = m.run(&["genarm-gpu-check"], &[]);
    assert_refused(&out, &["libcublas.so.13", "libnccl.so.2", "pip install", "nvidia-nccl-cu13==2.28.9"]);
}

#[test]
fn refuses_an_old_glibc() {
    let m = machine();
    fs::write(m.bundle.join("bundle.env"), bundle_env("99.1")).unwrap();
    assert_refused(&m.run(&["genarm-gpu-check"], &[]), &["glibc", "older than the 99.1"]);
}

#[test]
fn refuses_an_incomplete_bundle() {
    let m = machine();
    fs::remove_file(m.bundle.join("bundle.env")).unwrap();
    assert_refused(&m.run(&["genarm-gpu-check"], &[]), &["bundle.env is missing"]);
    let m = machine();
    fs::remove_file(m.bundle.join("bin/genarm-gpu-check")).unwrap();
    assert_refused(&m.run(&["genarm-gpu-check"], &[]), &["bin/genarm-gpu-check.xz is missing"]);
}

/// A check that cannot run here is skipped with `why` on a developer's machine, but fails in CI
/// (`CI=true`), where every check must really run.
fn skip_outside_ci(why: &str) {
    if std::env::var("CI").is_ok_and(|v| v == "true") {
        panic!("CI=true, and this check cannot run: {why}");
    }
    eprintln!("skipped: {why}");
}

/// Replaces the fake program by its xz archive, as the bundle ships it, recording `sha256`
/// (default: the real one) in bundle.env. False when this machine has no xz to make it.
fn pack(m: &Machine, sha256: Option<&str>) -> bool {
    let bin = m.bundle.join("bin/genarm-gpu-check");
    let Ok(out) = Command::new("xz").arg("-k").arg(&bin).output() else {
        skip_outside_ci(
            "no xz on this machine: cannot make the compressed program (apt-get install xz-utils)",
        );
        return false;
    };
    assert!(out.status.success(), "{}", text(&out.stderr));
    let real = Command::new("sha256sum").arg(&bin).output().unwrap();
    let real = text(&real.stdout).split_whitespace().next().unwrap().to_string();
    fs::remove_file(&bin).unwrap();
    let env = bundle_env("2.17")
        + &format!("GENARM_BUNDLE_SHA256='genarm-gpu-check={}'\n", sha256.unwrap_or(&real));
    fs::write(m.bundle.join("bundle.env"), env).unwrap();
    true
}

#[test]
fn unpacks_the_compressed_program_once_and_checks_it() {
    let m = machine();
    if !pack(&m, None) {
        return;
    }
    m.driver("580.65.06");
    let python = m.python_with_cuda_wheels();
    for _ in 0..2 {
        let out = m.run(&["genarm-gpu-check"], &[("GENARM_PYTHON", &python)]);
        assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
        assert!(text(&out.stdout).contains(MARKER));
        assert!(m.bundle.join("bin/genarm-gpu-check").is_file());
    }

    let m = machine();
    if !pack(&m, Some(&"0".repeat(64))) {
        return;
    }
    m.driver("580.65.06");
    let python = m.python_with_cuda_wheels();
    let out = m.run(&["genarm-gpu-check"], &[("GENARM_PYTHON", &python)]);
    assert_refused(&out, &["unpacks to sha256", "the bundle is damaged"]);
    assert!(!m.bundle.join("bin/genarm-gpu-check").exists());
}

#[test]
fn rejects_unknown_programs_and_usage() {
    let m = machine();
    let out = m.run(&["bash"], &[]);
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out.stderr).contains("unknown program 'bash'"), "{}", text(&out.stderr));
    let out = m.run(&[], &[]);
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out.stderr).contains("usage: run.sh PROGRAM"));
    let out = m.run(&["--help"], &[]);
    assert_eq!(out.status.code(), Some(0));
    assert!(text(&out.stdout).contains("genarm-gpu-check"));
}

#[test]
fn runs_the_program_with_the_libraries_it_found() {
    let m = machine();
    m.driver("580.65.06");
    let python = m.python_with_cuda_wheels();
    let out = m.run(&["genarm-gpu-check", "--out", "result.json"], &[("GENARM_PYTHON", &python)]);
    let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
    assert_eq!(out.status.code(), Some(0), "stdout: {stdout}\nstderr: {stderr}");
    assert!(stdout.contains(MARKER) && stdout.contains("args=--out result.json"), "{stdout}");
    let site = m.root.join("venv/site-packages");
    let ld = stdout.lines().find_map(|l| l.strip_prefix("LD_LIBRARY_PATH=")).unwrap();
    let dirs: Vec<&str> = ld.split(':').collect();
    for want in
        [site.join("nvidia/cu13/lib"), site.join("nvidia/nccl/lib"), m.root.join("usr/lib/x86_64-linux-gnu")]
    {
        assert!(dirs.contains(&want.to_str().unwrap()), "{want:?} not in {ld}");
    }
    assert!(stdout.contains(&format!("GENARM_GPU_DATA={}", m.bundle.join("data").display())), "{stdout}");

    let out = m.run(&["--env"], &[("GENARM_PYTHON", &python)]);
    let stdout = text(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert!(stdout.contains("driver:          580.65.06") && !stdout.contains(MARKER), "{stdout}");
}

/// The real probes (ldconfig, /proc, nvidia-smi, python3) on this machine, when it has no driver.
#[test]
fn refuses_on_this_machine_when_it_has_no_driver() {
    let has_driver = Path::new("/proc/driver/nvidia").exists()
        || Command::new("sh")
            .args(["-c", "ldconfig -p 2>/dev/null || /sbin/ldconfig -p"])
            .output()
            .map(|o| text(&o.stdout).contains("libcuda.so.1"))
            .unwrap_or(false)
        || ["/usr/lib/x86_64-linux-gnu", "/usr/lib64", "/usr/local/nvidia/lib64"]
            .iter()
            .any(|d| Path::new(d).join("libcuda.so.1").exists());
    if has_driver {
        skip_outside_ci("this machine has an NVIDIA driver: nothing to check");
        return;
    }
    let m = machine();
    let out = Command::new(m.bundle.join("run.sh"))
        .args(["genarm-gpu-check", "--out", "result.json"])
        .env_clear()
        .env("PATH", "/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin")
        .output()
        .unwrap();
    assert_refused(&out, &["no NVIDIA driver"]);
}
