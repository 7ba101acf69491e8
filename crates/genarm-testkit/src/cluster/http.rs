//! A small blocking HTTP/1.1 client over `std::net::TcpStream` for tests: one connection per
//! request (`Connection: close`), raw byte bodies (so tests can send malformed ones), chunked
//! and content-length responses, and incremental server-sent events (parsed by
//! `genarm_bench::sse`). Every read and write has a timeout.

use std::collections::VecDeque;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use genarm_bench::sse::SseParser;

/// Read/write timeout of every request made here.
pub const TIMEOUT: Duration = Duration::from_secs(60);

/// A complete response.
#[derive(Clone, Debug)]
pub struct Response {
    /// Status code.
    pub status: u16,
    /// Headers, names lower-cased, in order.
    pub headers: Vec<(String, String)>,
    /// The body (de-chunked).
    pub body: Vec<u8>,
}

impl Response {
    /// The body as text (lossy UTF-8).
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// The body parsed as JSON; the error quotes the body.
    pub fn json(&self) -> Result<serde_json::Value> {
        serde_json::from_slice(&self.body)
            .with_context(|| format!("status {} body is not JSON: {:?}", self.status, self.text()))
    }

    /// The first header called `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        header(&self.headers, name)
    }
}

fn header<'a>(headers: &'a [(String, String)], name: &str) -> Option<&'a str> {
    headers.iter().find(|(n, _)| n.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
}

/// Splits `http://host:port/path` into (`host:port`, `/path`).
fn split_url(url: &str) -> Result<(&str, &str)> {
    let rest = url.strip_prefix("http://").ok_or_else(|| anyhow!("{url:?} is not an http:// URL"))?;
    Ok(match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    })
}

/// Status, headers, and the connection positioned at the start of the body.
type Head = (u16, Vec<(String, String)>, BufReader<TcpStream>);

/// Sends one request and returns the response head and the connection.
fn send(method: &str, url: &str, headers: &[(&str, &str)], body: &[u8]) -> Result<Head> {
    let (authority, path) = split_url(url)?;
    let stream = TcpStream::connect(authority).with_context(|| format!("connecting to {authority}"))?;
    stream.set_read_timeout(Some(TIMEOUT))?;
    stream.set_write_timeout(Some(TIMEOUT))?;
    let mut head = format!(
        "{method} {path} HTTP/1.1\r\nHost: {authority}\r\nConnection: close\r\nContent-Length: {}\r\n",
        body.len()
    );
    for (name, value) in headers {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    head.push_str("\r\n");
    let mut writer = &stream;
    writer.write_all(head.as_bytes()).with_context(|| format!("{method} {url}: writing"))?;
    // A server may answer (413) and close before reading a large body: keep what it says.
    let write_err = writer.write_all(body).and_then(|_| writer.flush()).err();
    let mut reader = BufReader::new(stream);
    let (status, headers) = match read_head(&mut reader) {
        Ok(head) => head,
        Err(e) => match write_err {
            Some(w) => return Err(e.context(format!("{method} {url}: writing the body failed: {w}"))),
            None => return Err(e.context(format!("{method} {url}"))),
        },
    };
    Ok((status, headers, reader))
}

fn read_head(reader: &mut BufReader<TcpStream>) -> Result<(u16, Vec<(String, String)>)> {
    let mut line = String::new();
    reader.read_line(&mut line).context("reading the status line")?;
    let status = line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| anyhow!("bad status line {line:?}"))?;
    let mut headers = Vec::new();
    loop {
        line.clear();
        if reader.read_line(&mut line).context("reading headers")? == 0 {
            bail!("connection closed inside the headers");
        }
        let l = line.trim_end_matches(['\r', '\n']);
        if l.is_empty() {
            break;
        }
        let (name, value) = l.split_once(':').ok_or_else(|| anyhow!("bad header line {l:?}"))?;
        headers.push((name.trim().to_ascii_lowercase(), value.trim().to_string()));
    }
    Ok((status, headers))
}

/// Reads a response body as framed by its headers.
struct Body {
    inner: BufReader<TcpStream>,
    framing: Framing,
}

enum Framing {
    /// Chunked: bytes left in the current chunk; `None` before the first, `Some(0)` between.
    Chunked {
        left: usize,
        done: bool,
    },
    Length(usize),
    Eof,
}

impl Body {
    fn new(inner: BufReader<TcpStream>, headers: &[(String, String)]) -> Body {
        let framing = if header(headers, "transfer-encoding").is_some_and(|t| t.contains("chunked")) {
            Framing::Chunked { left: 0, done: false }
        } else if let Some(n) = header(headers, "content-length").and_then(|n| n.parse().ok()) {
            Framing::Length(n)
        } else {
            Framing::Eof
        };
        Body { inner, framing }
    }
}

impl Read for Body {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let bad = |m: String| std::io::Error::new(std::io::ErrorKind::InvalidData, m);
        match &mut self.framing {
            Framing::Eof => self.inner.read(buf),
            Framing::Length(left) => {
                let n = buf.len().min(*left);
                if n == 0 {
                    return Ok(0);
                }
                let n = self.inner.read(&mut buf[..n])?;
                *left -= n;
                Ok(n)
            }
            Framing::Chunked { left, done } => {
                if *done {
                    return Ok(0);
                }
                if *left == 0 {
                    let mut line = String::new();
                    self.inner.read_line(&mut line)?;
                    let size = line.trim().split(';').next().unwrap_or("");
                    *left = usize::from_str_radix(size, 16)
                        .map_err(|_| bad(format!("bad chunk size {line:?}")))?;
                    if *left == 0 {
                        *done = true;
                        return Ok(0);
                    }
                }
                let n = buf.len().min(*left);
                let n = self.inner.read(&mut buf[..n])?;
                if n == 0 {
                    return Err(bad("connection closed inside a chunk".into()));
                }
                *left -= n;
                if *left == 0 {
                    let mut crlf = [0u8; 2];
                    self.inner.read_exact(&mut crlf)?;
                }
                Ok(n)
            }
        }
    }
}

/// Sends `method url` with extra `headers` and a raw `body`, reads the whole response.
pub fn request(method: &str, url: &str, headers: &[(&str, &str)], body: &[u8]) -> Result<Response> {
    let (status, headers, reader) = send(method, url, headers, body)?;
    let mut body = Vec::new();
    Body::new(reader, &headers)
        .read_to_end(&mut body)
        .with_context(|| format!("{method} {url}: reading body"))?;
    Ok(Response { status, headers, body })
}

/// `GET url`.
pub fn get(url: &str) -> Result<Response> {
    request("GET", url, &[], b"")
}

/// `POST url` with a JSON body.
pub fn post_json(url: &str, body: &serde_json::Value) -> Result<Response> {
    request("POST", url, &[("Content-Type", "application/json")], body.to_string().as_bytes())
}

/// A response being read as server-sent events, parsed by genarm-bench's
/// [`SseParser`] (the one event-stream parser of the tooling and the tests).
pub struct EventStream {
    /// Status code.
    pub status: u16,
    /// Headers, names lower-cased.
    pub headers: Vec<(String, String)>,
    body: Body,
    parser: SseParser,
    /// Events parsed but not yet returned.
    pending: VecDeque<String>,
    /// The body ended.
    ended: bool,
}

impl EventStream {
    /// `POST url` with a JSON body, returning once the response head arrived.
    pub fn post_json(url: &str, body: &serde_json::Value) -> Result<EventStream> {
        EventStream::post_json_with(url, &[], body)
    }

    /// `POST url` with a JSON body and extra `headers` (e.g. `Authorization`), returning once
    /// the response head arrived.
    pub fn post_json_with(
        url: &str,
        headers: &[(&str, &str)],
        body: &serde_json::Value,
    ) -> Result<EventStream> {
        let mut all = vec![("Content-Type", "application/json")];
        all.extend_from_slice(headers);
        let (status, headers, reader) = send("POST", url, &all, body.to_string().as_bytes())?;
        let body = Body::new(reader, &headers);
        Ok(EventStream {
            status,
            headers,
            body,
            parser: SseParser::new(),
            pending: VecDeque::new(),
            ended: false,
        })
    }

    /// The next event's `data` (multi-line data joined by `\n`); `None` at the end of the body.
    /// Comments and other fields are skipped; an event the body ends inside of is dropped.
    pub fn next_data(&mut self) -> Result<Option<String>> {
        let mut buf = [0u8; 4096];
        loop {
            if let Some(data) = self.pending.pop_front() {
                return Ok(Some(data));
            }
            if self.ended {
                return Ok(None);
            }
            let n = self.body.read(&mut buf).context("reading the event stream")?;
            if n == 0 {
                self.ended = true;
                continue;
            }
            let mut events = Vec::new();
            self.parser.push(&buf[..n], &mut events);
            self.pending.extend(events);
        }
    }

    /// The rest of the body as text (for error responses).
    pub fn rest_text(mut self) -> Result<String> {
        let mut body = Vec::new();
        self.body.read_to_end(&mut body)?;
        Ok(String::from_utf8_lossy(&body).into_owned())
    }
}
