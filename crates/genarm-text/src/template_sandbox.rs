//! `TemplateSandbox`: renders chat templates in child processes whose address space is limited,
//! so a template that builds huge strings kills only its child, never the router.
//!
//! MiniJinja bounds a render's instructions (fuel), recursion and output, but not the size of
//! intermediate strings: `{% set s = s ~ s %}` in a loop, `'a'|center(10**12)` or chains of
//! `replace` allocate without limit in one instruction each, so no check of the template can be
//! sound. The process boundary is: a child re-executes the current program with
//! [`SANDBOX_ENV`] set, [`run_sandbox_if_requested`] (the first line of the program's `main`)
//! limits its memory and serves render requests over its stdin/stdout; a child that runs out
//! of memory aborts and the parent reports the template as too hungry.
//!
//! Protocol: frames of a `u32` little-endian length and that many bytes of JSON. Requests are
//! `{"source": TEMPLATE, "ctx": VARIABLES}`; replies `{"ok": TEXT}`, `{"raised": MESSAGE}` or
//! `{"error": REASON}`. A child exits at the end of its stdin.

use std::fmt;
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::sync::{Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use minijinja::Value;
use serde::{Deserialize, Serialize};

use crate::template::{ChatTemplate, RenderFailure};

/// The environment variable that makes a process a sandbox child; its value is the child's
/// memory budget in bytes (address space beyond what the process holds at startup).
pub const SANDBOX_ENV: &str = "GENARM_TEMPLATE_SANDBOX";

/// How long a render may take in a child before the child is killed (the fuel limit stops a
/// render after about a second).
const REPLY_DEADLINE: Duration = Duration::from_secs(10);

/// Fewest children: one per CPU renders at a time (and is kept idle between renders), at least
/// this many and at most [`MAX_IDLE`]; more concurrent renders wait for a free child, so the
/// sandbox never holds more than that many memory budgets (an idle child holds about 5 MB).
const MIN_IDLE: usize = 2;
/// Most children.
const MAX_IDLE: usize = 16;

/// Compiled templates a child keeps (one per model it serves, usually a few).
const COMPILED_KEPT: usize = 8;

/// Largest reply frame accepted from a child: the 64 MiB output limit, JSON-escaped.
const MAX_REPLY_BYTES: usize = 512 << 20;

/// Turns this process into a sandbox child if [`SANDBOX_ENV`] is set: limits its memory, then
/// renders the requests read from stdin until stdin ends, and exits without returning. Returns
/// at once (doing nothing) if the variable is not set.
///
/// Call it as the first line of `main` of every program that builds a
/// [`TemplateSandbox::new`] (the sandbox re-executes the current program as its child).
pub fn run_sandbox_if_requested() {
    let Some(value) = std::env::var_os(SANDBOX_ENV) else {
        return;
    };
    let Some(budget) = value.to_str().and_then(|v| v.trim().parse::<u64>().ok()) else {
        eprintln!("{SANDBOX_ENV} must be a memory budget in bytes, got {value:?}");
        std::process::exit(2);
    };
    if let Err(e) = limit_memory(budget) {
        eprintln!("cannot limit the template sandbox's memory: {e}");
        std::process::exit(2);
    }
    let code = match serve(io::stdin().lock(), io::stdout().lock()) {
        Ok(()) => 0,
        Err(_) => 1,
    };
    std::process::exit(code);
}

/// Limits this process's address space to its current size plus `budget` bytes (Unix; no limit
/// elsewhere), and switches off core dumps (a child that runs out of memory aborts).
#[cfg(unix)]
fn limit_memory(budget: u64) -> io::Result<()> {
    let rlimit = |value: u64| {
        let value = libc::rlim_t::try_from(value).unwrap_or(libc::RLIM_INFINITY);
        libc::rlimit { rlim_cur: value, rlim_max: value }
    };
    let check = |rc: libc::c_int| if rc == 0 { Ok(()) } else { Err(io::Error::last_os_error()) };
    let no_core = rlimit(0);
    // SAFETY: `no_core` is a valid, initialised rlimit that outlives the call.
    check(unsafe { libc::setrlimit(libc::RLIMIT_CORE, &no_core) })?;
    let address_space = rlimit(current_address_space().saturating_add(budget));
    // SAFETY: as above.
    check(unsafe { libc::setrlimit(libc::RLIMIT_AS, &address_space) })
}

#[cfg(not(unix))]
fn limit_memory(_budget: u64) -> io::Result<()> {
    Ok(())
}

/// This process's virtual memory size in bytes (Linux: `/proc/self/statm`; 0 where unknown).
/// The budget is counted from here, so that what the program maps at startup (its binary,
/// libraries, a sanitizer's shadow memory) does not eat into it.
#[cfg(unix)]
fn current_address_space() -> u64 {
    let pages = std::fs::read_to_string("/proc/self/statm")
        .ok()
        .and_then(|s| s.split_whitespace().next().and_then(|p| p.parse::<u64>().ok()))
        .unwrap_or(0);
    // SAFETY: sysconf has no preconditions.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    pages.saturating_mul(u64::try_from(page).unwrap_or(4096))
}

/// One request as the parent writes it.
#[derive(Serialize)]
struct RequestOut<'a> {
    source: &'a str,
    ctx: &'a Value,
}

/// One request as the child reads it (MiniJinja's `Value` deserializes keeping key order).
#[derive(Deserialize)]
struct RequestIn {
    source: String,
    ctx: Value,
}

/// A child's answer to one request.
#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
enum Reply {
    /// The rendered text.
    Ok(String),
    /// The template called `raise_exception(message)`.
    Raised(String),
    /// Compiling or rendering failed.
    Error(String),
}

/// The child's loop: answers each request frame of `input` with a reply frame on `output`.
/// Compiled templates are kept (the most recent [`COMPILED_KEPT`]): any child serves any
/// model, and a guided request renders the base's and each ARM's template in turn.
fn serve(mut input: impl Read, mut output: impl Write) -> io::Result<()> {
    // Most recently used last.
    let mut compiled: Vec<(String, Result<ChatTemplate, String>)> = Vec::new();
    while let Some(frame) = read_frame(&mut input, usize::MAX)? {
        let reply = match serde_json::from_slice::<RequestIn>(&frame) {
            Err(e) => Reply::Error(format!("the template sandbox got a malformed request: {e}")),
            Ok(request) => {
                match compiled.iter().position(|(source, _)| *source == request.source) {
                    Some(i) => {
                        let hit = compiled.remove(i);
                        compiled.push(hit);
                    }
                    None => {
                        if compiled.len() == COMPILED_KEPT {
                            drop(compiled.remove(0));
                        }
                        let template = ChatTemplate::compile(&request.source);
                        compiled.push((request.source, template));
                    }
                }
                match compiled.last().map(|(_, t)| t) {
                    Some(Ok(template)) => match template.render(request.ctx) {
                        Ok(text) => Reply::Ok(text),
                        Err(RenderFailure::Raised(m)) => Reply::Raised(m),
                        Err(RenderFailure::Other(m)) => Reply::Error(m),
                    },
                    Some(Err(reason)) => Reply::Error(reason.clone()),
                    None => Reply::Error("the template sandbox lost its template".into()),
                }
            }
        };
        let bytes = serde_json::to_vec(&reply).map_err(io::Error::other)?;
        write_frame(&mut output, &bytes)?;
    }
    Ok(())
}

/// Reads one frame; `None` at a clean end of input (before a frame's first byte).
fn read_frame(input: &mut impl Read, max_len: usize) -> io::Result<Option<Vec<u8>>> {
    let mut len = [0u8; 4];
    let mut got = 0;
    while got < len.len() {
        match input.read(&mut len[got..]) {
            Ok(0) if got == 0 => return Ok(None),
            Ok(0) => return Err(io::ErrorKind::UnexpectedEof.into()),
            Ok(n) => got += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    let len = u32::from_le_bytes(len) as usize;
    if len > max_len {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("a frame of {len} bytes is too long"),
        ));
    }
    let mut frame = vec![0u8; len];
    input.read_exact(&mut frame)?;
    Ok(Some(frame))
}

/// Writes one frame and flushes it.
fn write_frame(output: &mut impl Write, bytes: &[u8]) -> io::Result<()> {
    let len = u32::try_from(bytes.len())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "a frame over 4 GiB"))?;
    output.write_all(&len.to_le_bytes())?;
    output.write_all(bytes)?;
    output.flush()
}

/// Renders chat templates in memory-limited child processes (see the module docs).
///
/// Children are spawned on demand and reused; one per CPU (2 to 16) renders at a time, more
/// renders wait for one, and finished children stay idle for the next renders. A child that
/// crashes (runs out of memory), misbehaves or takes longer than 10 s is killed and replaced by
/// a fresh one at the next render. Children run in their own process group and are killed
/// when the sandbox is dropped; a child whose parent dies exits at the end of its stdin.
pub struct TemplateSandbox {
    program: PathBuf,
    memory_limit_bytes: u64,
    max_idle: usize,
    idle: Mutex<Vec<SandboxChild>>,
    /// Renders in progress (at most `max_idle`), and the signal that one ended.
    rendering: Mutex<usize>,
    render_ended: Condvar,
}

impl fmt::Debug for TemplateSandbox {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TemplateSandbox")
            .field("program", &self.program)
            .field("memory_limit_bytes", &self.memory_limit_bytes)
            .field("idle", &self.lock_idle().len())
            .finish()
    }
}

impl TemplateSandbox {
    /// A sandbox whose children re-execute the current program (whose `main` must call
    /// [`run_sandbox_if_requested`] first), each limited to `memory_limit_bytes` of address
    /// space beyond its startup size. Spawns nothing yet.
    pub fn new(memory_limit_bytes: u64) -> io::Result<Self> {
        Ok(Self::with_program(std::env::current_exe()?, memory_limit_bytes))
    }

    /// A sandbox whose children run `program` (which must call [`run_sandbox_if_requested`]
    /// first thing), for tests and tools.
    pub fn with_program(program: impl AsRef<Path>, memory_limit_bytes: u64) -> Self {
        TemplateSandbox {
            program: program.as_ref().to_path_buf(),
            memory_limit_bytes,
            max_idle: std::thread::available_parallelism()
                .map_or(MIN_IDLE, |n| n.get())
                .clamp(MIN_IDLE, MAX_IDLE),
            idle: Mutex::new(Vec::new()),
            rendering: Mutex::new(0),
            render_ended: Condvar::new(),
        }
    }

    /// The memory budget of each child, in bytes.
    pub fn memory_limit_bytes(&self) -> u64 {
        self.memory_limit_bytes
    }

    /// Renders a trivial template in a child (starting one, which then stays idle for the next
    /// render): a startup check that the program really serves as a sandbox child. The error
    /// says why not.
    pub fn check(&self) -> Result<(), String> {
        let ctx: Value = [("x", Value::from("sandbox"))].into_iter().collect();
        match self.render("{{ x }} ok", &ctx) {
            Ok(text) if text == "sandbox ok" => Ok(()),
            Ok(text) => Err(format!("the template sandbox rendered {text:?} instead of \"sandbox ok\"")),
            Err(RenderFailure::Raised(m) | RenderFailure::Other(m)) => Err(m),
        }
    }

    /// Renders `source` with the variables `ctx` in a child.
    pub(crate) fn render(&self, source: &str, ctx: &Value) -> Result<String, RenderFailure> {
        let request = serde_json::to_vec(&RequestOut { source, ctx }).map_err(|e| {
            RenderFailure::Other(format!("the chat template's variables cannot be sent to its sandbox: {e}"))
        })?;
        if u32::try_from(request.len()).is_err() {
            return Err(RenderFailure::Other(format!(
                "the chat template's variables are too large to send to its sandbox ({} bytes)",
                request.len()
            )));
        }
        let _slot = self.wait_for_slot()?;
        // An idle child may have died since its last render (killed from outside): if sending
        // the request to it fails, retry once with a fresh child.
        let pooled = self.lock_idle().pop();
        let reply = match pooled {
            Some(mut child) => match child.send(&request) {
                Ok(()) => child.receive().map(|reply| (child, reply)),
                Err(_) => {
                    drop(child);
                    self.round_trip_fresh(&request)
                }
            },
            None => self.round_trip_fresh(&request),
        };
        let (child, reply) = reply.map_err(|failure| RenderFailure::Other(self.describe(failure)))?;
        self.put_back(child);
        match reply {
            Reply::Ok(text) => Ok(text),
            Reply::Raised(message) => Err(RenderFailure::Raised(message)),
            Reply::Error(reason) => Err(RenderFailure::Other(reason)),
        }
    }

    /// Waits (up to the reply deadline) until fewer than `max_idle` renders are in progress and
    /// takes a place among them; the place is given back when the returned guard drops.
    fn wait_for_slot(&self) -> Result<RenderSlot<'_>, RenderFailure> {
        let deadline = Instant::now() + REPLY_DEADLINE;
        let mut rendering = self.rendering.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        while *rendering >= self.max_idle {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(RenderFailure::Other(format!(
                    "all {} chat template sandbox processes stayed busy for {} s (slow templates or a \
                     burst of chat requests); retry later",
                    self.max_idle,
                    REPLY_DEADLINE.as_secs()
                )));
            }
            rendering = self
                .render_ended
                .wait_timeout(rendering, left)
                .unwrap_or_else(|poisoned| poisoned.into_inner())
                .0;
        }
        *rendering += 1;
        Ok(RenderSlot(self))
    }

    /// Spawns a child and runs one request on it.
    fn round_trip_fresh(&self, request: &[u8]) -> Result<(SandboxChild, Reply), ChildFailure> {
        let mut child = self.spawn()?;
        child.send(request).map_err(|_| ChildFailure::Died)?;
        let reply = child.receive()?;
        Ok((child, reply))
    }

    /// Starts a child.
    fn spawn(&self) -> Result<SandboxChild, ChildFailure> {
        let mut command = Command::new(&self.program);
        command
            .env(SANDBOX_ENV, self.memory_limit_bytes.to_string())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null());
        #[cfg(unix)]
        std::os::unix::process::CommandExt::process_group(&mut command, 0);
        let mut process = command.spawn().map_err(ChildFailure::Spawn)?;
        let (Some(stdin), Some(stdout)) = (process.stdin.take(), process.stdout.take()) else {
            let _ = process.kill();
            let _ = process.wait();
            return Err(ChildFailure::Spawn(io::Error::other("the child's pipes are missing")));
        };
        let (tx, replies) = mpsc::channel();
        let reader = std::thread::Builder::new()
            .name("template-sandbox-reader".into())
            .spawn(move || read_replies(stdout, tx));
        if let Err(e) = reader {
            let _ = process.kill();
            let _ = process.wait();
            return Err(ChildFailure::Spawn(e));
        }
        Ok(SandboxChild { process, stdin, replies })
    }

    /// Keeps a healthy child for the next render, unless enough are idle already.
    fn put_back(&self, child: SandboxChild) {
        let mut idle = self.lock_idle();
        if idle.len() < self.max_idle {
            idle.push(child);
        }
    }

    fn lock_idle(&self) -> MutexGuard<'_, Vec<SandboxChild>> {
        self.idle.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// The render error for a failed child.
    fn describe(&self, failure: ChildFailure) -> String {
        let mib = self.memory_limit_bytes >> 20;
        match failure {
            ChildFailure::Died => format!(
                "the chat template exhausted its {mib} MiB memory budget (or crashed) while rendering; \
                 the model's chat_template builds huge strings — fix or replace it"
            ),
            ChildFailure::Timeout => format!(
                "the chat template did not finish rendering within {} s in its sandbox process; the \
                 model's chat_template is too slow — fix or replace it",
                REPLY_DEADLINE.as_secs()
            ),
            ChildFailure::Malformed(e) => {
                format!("the chat template's sandbox process sent a malformed reply ({e}); it was restarted")
            }
            ChildFailure::Spawn(e) => format!(
                "cannot start the chat template's sandbox process {} ({e}); check that the program \
                 exists and is executable",
                self.program.display()
            ),
        }
    }
}

/// A place among the renders in progress (see [`TemplateSandbox::wait_for_slot`]).
struct RenderSlot<'a>(&'a TemplateSandbox);

impl Drop for RenderSlot<'_> {
    fn drop(&mut self) {
        let mut rendering = self.0.rendering.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        *rendering -= 1;
        self.0.render_ended.notify_one();
    }
}

/// Why a round trip with a child failed (the child is then dropped, which kills it).
#[derive(Debug)]
enum ChildFailure {
    /// The child exited or closed its pipes: out of memory, or crashed.
    Died,
    /// No reply within [`REPLY_DEADLINE`].
    Timeout,
    /// The reply is not a reply.
    Malformed(String),
    /// The child could not be started.
    Spawn(io::Error),
}

/// A running child, its request pipe and the replies its reader thread forwards.
struct SandboxChild {
    process: Child,
    stdin: ChildStdin,
    replies: Receiver<io::Result<Vec<u8>>>,
}

impl SandboxChild {
    /// Writes one request.
    fn send(&mut self, request: &[u8]) -> io::Result<()> {
        write_frame(&mut self.stdin, request)
    }

    /// Waits for the reply to the request just sent.
    fn receive(&mut self) -> Result<Reply, ChildFailure> {
        match self.replies.recv_timeout(REPLY_DEADLINE) {
            Ok(Ok(frame)) => {
                serde_json::from_slice(&frame).map_err(|e| ChildFailure::Malformed(e.to_string()))
            }
            Ok(Err(e)) if e.kind() == io::ErrorKind::InvalidData => {
                Err(ChildFailure::Malformed(e.to_string()))
            }
            Ok(Err(_)) | Err(RecvTimeoutError::Disconnected) => Err(ChildFailure::Died),
            Err(RecvTimeoutError::Timeout) => Err(ChildFailure::Timeout),
        }
    }
}

impl Drop for SandboxChild {
    fn drop(&mut self) {
        let _ = self.process.kill();
        let _ = self.process.wait();
    }
}

/// The reader thread of one child: forwards each reply frame, then the error that ended the
/// stream (an end of input counts as one), and exits.
fn read_replies(mut stdout: ChildStdout, tx: mpsc::Sender<io::Result<Vec<u8>>>) {
    loop {
        let frame = match read_frame(&mut stdout, MAX_REPLY_BYTES) {
            Ok(Some(frame)) => Ok(frame),
            Ok(None) => Err(io::ErrorKind::UnexpectedEof.into()),
            Err(e) => Err(e),
        };
        let last = frame.is_err();
        if tx.send(frame).is_err() || last {
            return;
        }
    }
}

/// The router shares one sandbox across its request handlers.
const _: () = {
    const fn assert_send_sync<T: Send + Sync>() {}
    assert_send_sync::<TemplateSandbox>();
};

#[cfg(test)]
mod tests {
    use super::*;

    fn frames(requests: &[&str]) -> Vec<u8> {
        let mut out = Vec::new();
        for r in requests {
            write_frame(&mut out, r.as_bytes()).unwrap();
        }
        out
    }

    fn replies(mut bytes: &[u8]) -> Vec<serde_json::Value> {
        let mut out = Vec::new();
        while let Some(frame) = read_frame(&mut bytes, usize::MAX).unwrap() {
            out.push(serde_json::from_slice(&frame).unwrap());
        }
        out
    }

    #[test]
    fn the_child_loop_answers_each_request() {
        let input = frames(&[
            r#"{"source": "{{ a }}-{{ b|tojson }}", "ctx": {"a": "x", "b": {"z": 1, "y": [true, null]}}}"#,
            r#"{"source": "{{ raise_exception('no') }}", "ctx": {}}"#,
            r#"{"source": "{{ 1 + 'a' }}", "ctx": {}}"#,
            r#"{"source": "{% for %}", "ctx": {}}"#,
            r#"not json"#,
        ]);
        let mut output = Vec::new();
        serve(&input[..], &mut output).unwrap();
        let got = replies(&output);
        assert_eq!(got.len(), 5, "{got:?}");
        // Key order survives the JSON hop (Python's tojson keeps insertion order).
        assert_eq!(got[0], serde_json::json!({"ok": "x-{\"z\": 1, \"y\": [true, null]}"}));
        assert_eq!(got[1], serde_json::json!({"raised": "no"}));
        assert!(got[2]["error"].is_string(), "{:?}", got[2]);
        assert!(got[3]["error"].is_string(), "{:?}", got[3]);
        assert!(got[4]["error"].as_str().unwrap().contains("malformed request"), "{:?}", got[4]);
    }

    #[test]
    fn a_child_alternating_between_templates_renders_each_with_its_own() {
        let a = r#"{"source": "A{{ x }}", "ctx": {"x": 1}}"#;
        let b = r#"{"source": "B{{ x }}", "ctx": {"x": 2}}"#;
        let input = frames(&[a, b, a, b]);
        let mut output = Vec::new();
        serve(&input[..], &mut output).unwrap();
        let want = ["A1", "B2", "A1", "B2"].map(|t| serde_json::json!({ "ok": t }));
        assert_eq!(replies(&output), want);
    }

    #[test]
    fn frames_are_checked() {
        let mut truncated: &[u8] = &[5, 0, 0, 0, b'a'];
        assert!(read_frame(&mut truncated, usize::MAX).is_err());
        let mut half_length: &[u8] = &[5, 0];
        assert!(read_frame(&mut half_length, usize::MAX).is_err());
        let mut too_long: &[u8] = &[5, 0, 0, 0, 1, 2, 3, 4, 5];
        assert!(read_frame(&mut too_long, 4).is_err());
        let mut empty: &[u8] = &[];
        assert!(read_frame(&mut empty, 4).unwrap().is_none());
    }

    #[test]
    fn a_missing_program_is_a_clear_error() {
        let sandbox = TemplateSandbox::with_program("/nonexistent/genarm-sandbox", 64 << 20);
        let e = sandbox.render("x", &Value::from(())).unwrap_err();
        assert!(matches!(&e, RenderFailure::Other(m) if m.contains("cannot start")), "{e:?}");
    }
}
