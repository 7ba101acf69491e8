//! `genarm-fault-proxy --upstream URL --fault-file PATH [--listen HOST:PORT]`: a gRPC proxy in
//! front of one real worker that serves the worker protocol (`genarm.v1.Worker` and
//! `grpc.health.v1`), prints `GENARM_LISTENING grpc <addr>` like the workers, forwards every
//! call upstream, and injects into `Step` the fault named in the control file, re-read on every
//! call (see `genarm_testkit::fault`). `Info`, `Release`, `Stats` and health are forwarded
//! untouched. `close` cuts every open connection of the proxy at the TCP level (the caller sees
//! a transport error mid-call, as when a worker dies). For the fault-injection tests.

use std::io::Write as _;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context as TaskContext, Poll, Waker};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use genarm_proto::prost::bytes::Bytes;
use genarm_proto::tonic::transport::{Channel, Endpoint, Server};
use genarm_proto::tonic::{self, Request, Response, Status};
use genarm_proto::v1::worker_client::WorkerClient;
use genarm_proto::v1::worker_server::{Worker, WorkerServer};
use genarm_proto::v1::{
    seq_result, FetchRowsRequest, InfoRequest, InfoResponse, ReleaseRequest, ReleaseResponse, StatsRequest,
    StatsResponse, StepRequest, StepResponse,
};
use genarm_testkit::fault::{corrupt_certificate, corrupt_logits, Directive, Fault};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::health_server::{Health, HealthServer};
use tonic_health::pb::{HealthCheckRequest, HealthCheckResponse};

/// Largest message either way (a step of many sequences over a big vocabulary).
const MAX_MESSAGE: usize = 256 << 20;

const USAGE: &str = "usage: genarm-fault-proxy --upstream URL --fault-file PATH [--listen HOST:PORT]";

#[derive(Clone)]
struct Proxy {
    worker: WorkerClient<Channel>,
    health: HealthClient<Channel>,
    fault_file: PathBuf,
    /// (the control file's content when last read, `Step` calls it was applied to since).
    applied: Arc<Mutex<(String, u64)>>,
    cutter: Arc<Cutter>,
}

/// Cuts every connection accepted so far (`close`): each holds the epoch it was accepted in,
/// and fails its next read or write once the epoch moved on.
#[derive(Default)]
struct Cutter {
    epoch: AtomicU64,
    /// Tasks polling a connection, woken when it is cut.
    wakers: Mutex<Vec<Waker>>,
}

impl Cutter {
    fn cut(&self) {
        self.epoch.fetch_add(1, Ordering::SeqCst);
        for w in self.wakers.lock().unwrap_or_else(|e| e.into_inner()).drain(..) {
            w.wake();
        }
    }
}

/// An accepted connection that [`Cutter::cut`] can break.
struct CuttableIo {
    inner: TcpStream,
    cutter: Arc<Cutter>,
    epoch: u64,
}

impl CuttableIo {
    fn check(&self, cx: &TaskContext<'_>) -> std::io::Result<()> {
        if self.cutter.epoch.load(Ordering::SeqCst) != self.epoch {
            return Err(std::io::Error::new(
                std::io::ErrorKind::ConnectionReset,
                "fault-proxy: connection cut (injected `close`)",
            ));
        }
        let mut wakers = self.cutter.wakers.lock().unwrap_or_else(|e| e.into_inner());
        if !wakers.iter().any(|w| w.will_wake(cx.waker())) {
            wakers.push(cx.waker().clone());
        }
        Ok(())
    }
}

impl AsyncRead for CuttableIo {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut TaskContext<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        self.check(cx)?;
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for CuttableIo {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut TaskContext<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        self.check(cx)?;
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<std::io::Result<()>> {
        self.check(cx)?;
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

impl tonic::transport::server::Connected for CuttableIo {
    type ConnectInfo = ();

    fn connect_info(&self) -> Self::ConnectInfo {}
}

impl Proxy {
    /// The fault for this `Step` call, from the control file.
    fn fault(&self) -> Result<Fault, Status> {
        let text = std::fs::read_to_string(&self.fault_file).unwrap_or_default();
        let directive = Directive::parse(&text).map_err(|e| {
            Status::internal(format!(
                "fault-proxy: {} holds a bad directive: {e:#}",
                self.fault_file.display()
            ))
        })?;
        let mut applied = self.applied.lock().unwrap_or_else(|e| e.into_inner());
        if applied.0 != text {
            *applied = (text, 0);
        }
        if directive.times.is_some_and(|n| applied.1 >= n) {
            return Ok(Fault::None);
        }
        if directive.fault != Fault::None {
            applied.1 += 1;
            eprintln!("fault-proxy: injecting {:?} (call {} of this directive)", directive.fault, applied.1);
        }
        Ok(directive.fault)
    }
}

/// Applies a garbage fault to every full row and certificate of a reply.
fn corrupt(resp: &mut StepResponse, dtype: i32, fault: Fault) {
    for r in &mut resp.results {
        match &mut r.outcome {
            Some(seq_result::Outcome::Logits(bytes)) => {
                *bytes = Bytes::from(corrupt_logits(bytes, dtype, fault))
            }
            Some(seq_result::Outcome::Sparse(cert)) => corrupt_certificate(cert, fault),
            _ => {}
        }
    }
}

#[tonic::async_trait]
impl Worker for Proxy {
    async fn info(&self, request: Request<InfoRequest>) -> Result<Response<InfoResponse>, Status> {
        self.worker.clone().info(request.into_inner()).await
    }

    async fn step(&self, request: Request<StepRequest>) -> Result<Response<StepResponse>, Status> {
        let fault = self.fault()?;
        if fault == Fault::Hang {
            std::future::pending::<()>().await;
        }
        let req = request.into_inner();
        let dtype = req.logits_dtype;
        let mut resp = self.worker.clone().step(req).await?.into_inner();
        match fault {
            Fault::Delay(ms) => tokio::time::sleep(Duration::from_millis(ms)).await,
            Fault::Close => {
                // The worker advanced its KV; the caller never gets the answer.
                self.cutter.cut();
                std::future::pending::<()>().await;
            }
            Fault::Nan | Fault::PosInf | Fault::Short => corrupt(&mut resp, dtype, fault),
            Fault::None | Fault::Hang => {}
        }
        Ok(Response::new(resp))
    }

    async fn fetch_rows(&self, request: Request<FetchRowsRequest>) -> Result<Response<StepResponse>, Status> {
        let fault = self.fault()?;
        let req = request.into_inner();
        let dtype = req.logits_dtype;
        let mut resp = self.worker.clone().fetch_rows(req).await?.into_inner();
        if matches!(fault, Fault::Nan | Fault::PosInf | Fault::Short) {
            corrupt(&mut resp, dtype, fault);
        }
        Ok(Response::new(resp))
    }

    async fn release(&self, request: Request<ReleaseRequest>) -> Result<Response<ReleaseResponse>, Status> {
        self.worker.clone().release(request.into_inner()).await
    }

    async fn stats(&self, request: Request<StatsRequest>) -> Result<Response<StatsResponse>, Status> {
        self.worker.clone().stats(request.into_inner()).await
    }
}

#[tonic::async_trait]
impl Health for Proxy {
    async fn check(
        &self,
        request: Request<HealthCheckRequest>,
    ) -> Result<Response<HealthCheckResponse>, Status> {
        self.health.clone().check(request.into_inner()).await
    }

    type WatchStream = tonic::Streaming<HealthCheckResponse>;

    async fn watch(
        &self,
        request: Request<HealthCheckRequest>,
    ) -> Result<Response<Self::WatchStream>, Status> {
        self.health.clone().watch(request.into_inner()).await
    }
}

struct Args {
    upstream: String,
    fault_file: PathBuf,
    listen: String,
}

fn parse_args() -> Result<Args> {
    let mut args = std::env::args().skip(1);
    let (mut upstream, mut fault_file, mut listen) = (None, None, "127.0.0.1:0".to_string());
    while let Some(flag) = args.next() {
        let mut value = || args.next().with_context(|| format!("{flag} needs a value\n{USAGE}"));
        match flag.as_str() {
            "--upstream" => upstream = Some(value()?),
            "--fault-file" => fault_file = Some(PathBuf::from(value()?)),
            "--listen" => listen = value()?,
            "-h" | "--help" => {
                println!("{USAGE}");
                std::process::exit(0);
            }
            _ => bail!("unknown argument {flag:?}\n{USAGE}"),
        }
    }
    Ok(Args {
        upstream: upstream.with_context(|| format!("--upstream is required\n{USAGE}"))?,
        fault_file: fault_file.with_context(|| format!("--fault-file is required\n{USAGE}"))?,
        listen,
    })
}

#[tokio::main]
async fn main() -> Result<()> {
    let args = parse_args()?;
    let channel = Endpoint::from_shared(args.upstream.clone())
        .with_context(|| format!("--upstream {:?} is not a URL", args.upstream))?
        .connect_timeout(Duration::from_secs(5))
        .tcp_nodelay(true)
        .connect_lazy();
    let proxy = Proxy {
        worker: WorkerClient::new(channel.clone())
            .max_decoding_message_size(MAX_MESSAGE)
            .max_encoding_message_size(MAX_MESSAGE),
        health: HealthClient::new(channel),
        fault_file: args.fault_file,
        applied: Arc::new(Mutex::new((String::new(), 0))),
        cutter: Arc::new(Cutter::default()),
    };
    let listener = tokio::net::TcpListener::bind(&args.listen)
        .await
        .with_context(|| format!("binding {}", args.listen))?;
    let addr = listener.local_addr()?;
    {
        let mut out = std::io::stdout().lock();
        writeln!(out, "GENARM_LISTENING grpc {addr}")?;
        out.flush()?;
    }
    eprintln!("fault-proxy: {addr} -> {}", args.upstream);
    let cutter = Arc::clone(&proxy.cutter);
    let incoming = futures::stream::unfold(listener, move |listener| {
        let cutter = Arc::clone(&cutter);
        async move {
            let accepted = listener.accept().await.map(|(inner, _)| {
                let _ = inner.set_nodelay(true);
                let epoch = cutter.epoch.load(Ordering::SeqCst);
                CuttableIo { inner, cutter, epoch }
            });
            Some((accepted, listener))
        }
    });
    Server::builder()
        .add_service(HealthServer::new(proxy.clone()))
        .add_service(
            WorkerServer::new(proxy)
                .max_decoding_message_size(MAX_MESSAGE)
                .max_encoding_message_size(MAX_MESSAGE),
        )
        .serve_with_incoming(incoming)
        .await
        .context("serving")?;
    Ok(())
}
