//! The process harness itself (`genarm_testkit::cluster`), on `sh` scripts standing in for the
//! services: listening-line parsing, failures that quote the child's log, deadlines, the whole
//! process group stopped on drop (SIGKILL for a child ignoring SIGTERM), and the HTTP client on
//! a scripted server (content-length, chunked, server-sent events).

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use genarm_testkit::cluster::http::{self, EventStream};
use genarm_testkit::cluster::{bin_path, ChildProcess, TERM_GRACE};

fn sh(script: &str) -> Command {
    let mut command = Command::new("sh");
    command.args(["-c", script]);
    command
}

fn alive(pid: u32) -> bool {
    // A zombie (exited, not yet reaped by its reparented parent) counts as gone.
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|s| s.rsplit(')').next().is_some_and(|rest| !rest.trim_start().starts_with('Z')))
        .unwrap_or(false)
}

fn soon(deadline: Duration, cond: impl Fn() -> bool) -> bool {
    let end = Instant::now() + deadline;
    while Instant::now() < end {
        if cond() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    cond()
}

#[test]
fn listening_line_is_parsed_and_drop_stops_the_whole_group() {
    let mut child = ChildProcess::spawn(
        "fake",
        sh("sleep 60 & echo \"grandchild $!\"; echo log line >&2; echo GENARM_LISTENING grpc 127.0.0.1:4242; wait"),
    )
    .unwrap();
    let addr = child.wait_listening(Instant::now() + Duration::from_secs(10)).unwrap();
    assert_eq!(addr.to_string(), "127.0.0.1:4242");
    let grandchild: u32 = child.stdout_lines()[0].strip_prefix("grandchild ").unwrap().parse().unwrap();
    let pid = child.pid();
    assert!(alive(pid) && alive(grandchild));
    assert!(soon(Duration::from_secs(2), || child.log_tail(10).contains("log line")));
    drop(child);
    assert!(!alive(pid), "the child survived its drop");
    assert!(
        soon(Duration::from_secs(2), || !alive(grandchild)),
        "the grandchild survived: the group was not stopped"
    );
}

#[test]
fn a_child_ignoring_sigterm_is_killed_after_the_grace() {
    let mut child =
        ChildProcess::spawn("stubborn", sh("trap '' TERM; echo GENARM_LISTENING http 127.0.0.1:1; sleep 60"))
            .unwrap();
    child.wait_listening(Instant::now() + Duration::from_secs(10)).unwrap();
    let started = Instant::now();
    let status = child.stop(TERM_GRACE);
    assert!(!status.success());
    assert!(started.elapsed() >= TERM_GRACE, "stopped before the grace ended");
    assert!(started.elapsed() < TERM_GRACE + Duration::from_secs(2));
}

#[test]
fn exiting_before_listening_fails_with_the_status_and_the_log() {
    let mut child = ChildProcess::spawn("doomed", sh("echo 'cannot open config.json' >&2; exit 3")).unwrap();
    let err = format!("{:#}", child.wait_listening(Instant::now() + Duration::from_secs(10)).unwrap_err());
    assert!(err.contains("doomed") && err.contains("exit status: 3"), "{err}");
    assert!(err.contains("cannot open config.json"), "{err}");
}

#[test]
fn waiting_past_the_deadline_fails_promptly() {
    let mut child = ChildProcess::spawn("slow", sh("echo still loading >&2; sleep 60")).unwrap();
    let started = Instant::now();
    let err = format!("{:#}", child.wait_listening(Instant::now() + Duration::from_millis(300)).unwrap_err());
    assert!(started.elapsed() < Duration::from_secs(2));
    assert!(err.contains("in time") && err.contains("still loading"), "{err}");
}

#[test]
fn a_missing_binary_says_how_to_build_it() {
    let err = format!("{:#}", bin_path("genarm-no-such-binary").unwrap_err());
    assert!(err.contains("cargo build --workspace --bins"), "{err}");
    // The test executable's own directory is where binaries are looked for.
    let exe = std::env::current_exe().unwrap();
    let dir = exe.parent().unwrap();
    let dir = if dir.ends_with("deps") { dir.parent().unwrap() } else { dir };
    assert!(err.contains(&dir.join("genarm-no-such-binary").display().to_string()), "{err}");
    assert!(Path::new(dir).is_dir());
}

/// Serves `responses` (raw bytes, one per connection) and returns each request it read.
fn scripted_server(responses: Vec<Vec<u8>>) -> (String, std::thread::JoinHandle<Vec<String>>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let handle = std::thread::spawn(move || {
        let mut requests = Vec::new();
        for response in responses {
            let (mut stream, _) = listener.accept().unwrap();
            let mut reader = BufReader::new(stream.try_clone().unwrap());
            let (mut head, mut line, mut len) = (String::new(), String::new(), 0usize);
            loop {
                line.clear();
                reader.read_line(&mut line).unwrap();
                if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                    len = v.trim().parse().unwrap();
                }
                head.push_str(&line);
                if line == "\r\n" {
                    break;
                }
            }
            let mut body = vec![0; len];
            reader.read_exact(&mut body).unwrap();
            requests.push(format!("{head}{}", String::from_utf8_lossy(&body)));
            stream.write_all(&response).unwrap();
        }
        requests
    });
    (url, handle)
}

#[test]
fn the_http_client_reads_length_chunked_and_event_stream_bodies() {
    let (url, server) = scripted_server(vec![
        b"HTTP/1.1 200 OK\r\nContent-Length: 11\r\nContent-Type: application/json\r\n\r\n{\"a\": true}".to_vec(),
        b"HTTP/1.1 400 Bad Request\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n".to_vec(),
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Type: text/event-stream\r\n\r\n\
          d\r\ndata: {\"x\":1}\r\n2\r\n\n\n\r\n\
          19\r\n: comment\n\ndata: [DONE]\n\n\r\n0\r\n\r\n"
            .to_vec(),
    ]);
    let r = http::post_json(&format!("{url}/v1/x"), &serde_json::json!({"q": 1})).unwrap();
    assert_eq!((r.status, r.json().unwrap()), (200, serde_json::json!({"a": true})));
    assert_eq!(r.header("content-type"), Some("application/json"));
    let r = http::get(&format!("{url}/chunked")).unwrap();
    assert_eq!((r.status, r.text().as_str()), (400, "hello world"));
    let mut events = EventStream::post_json(&format!("{url}/stream"), &serde_json::json!({})).unwrap();
    assert_eq!(events.status, 200);
    assert_eq!(events.next_data().unwrap().as_deref(), Some("{\"x\":1}"));
    assert_eq!(events.next_data().unwrap().as_deref(), Some("[DONE]"));
    assert_eq!(events.next_data().unwrap(), None);
    let requests = server.join().unwrap();
    assert!(
        requests[0].starts_with("POST /v1/x HTTP/1.1\r\n") && requests[0].ends_with("{\"q\":1}"),
        "{}",
        requests[0]
    );
    assert!(requests[1].starts_with("GET /chunked HTTP/1.1\r\n"));
}
