//! Tracing: with `OTEL_EXPORTER_OTLP_ENDPOINT` set, the router and the workers export spans by
//! OTLP/gRPC to a receiver in this test (`opentelemetry-proto`'s tonic `TraceService`), and one
//! completion yields one trace holding router spans and worker spans whose parent is a router
//! span (W3C trace context carried in the gRPC metadata). Real processes on loopback.

mod common;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::any_value;

/// One exported span, as the receiver saw it.
#[derive(Clone, Debug)]
struct SeenSpan {
    service: String,
    name: String,
    trace_id: Vec<u8>,
    span_id: Vec<u8>,
    parent: Vec<u8>,
    /// Span ids of the spans it links to (follows-from).
    links: Vec<Vec<u8>>,
}

/// The OTLP trace receiver: keeps every span it is sent.
#[derive(Clone, Default)]
struct Receiver(Arc<Mutex<Vec<SeenSpan>>>);

#[tonic::async_trait]
impl TraceService for Receiver {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        let mut seen = self.0.lock().unwrap_or_else(|e| e.into_inner());
        for rs in request.into_inner().resource_spans {
            let service = rs
                .resource
                .as_ref()
                .and_then(|r| r.attributes.iter().find(|kv| kv.key == "service.name"))
                .and_then(|kv| kv.value.as_ref())
                .and_then(|v| match &v.value {
                    Some(any_value::Value::StringValue(s)) => Some(s.clone()),
                    _ => None,
                })
                .unwrap_or_default();
            for ss in rs.scope_spans {
                for s in ss.spans {
                    seen.push(SeenSpan {
                        service: service.clone(),
                        name: s.name,
                        trace_id: s.trace_id,
                        span_id: s.span_id,
                        parent: s.parent_span_id,
                        links: s.links.into_iter().map(|l| l.span_id).collect(),
                    });
                }
            }
        }
        Ok(tonic::Response::new(ExportTraceServiceResponse { partial_success: None }))
    }
}

/// A worker span of `worker_service` whose parent is a router span of the same trace.
fn linked_pair(spans: &[SeenSpan], worker_service: &str) -> Option<(SeenSpan, SeenSpan)> {
    spans.iter().filter(|w| w.service == worker_service && !w.parent.is_empty()).find_map(|w| {
        spans
            .iter()
            .find(|r| r.service == "genarm-router" && r.trace_id == w.trace_id && r.span_id == w.parent)
            .map(|r| (r.clone(), w.clone()))
    })
}

#[test]
fn one_trace_spans_router_and_workers() {
    let _serial = serial();
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().unwrap();
    let receiver = Receiver::default();
    let listener = runtime.block_on(tokio::net::TcpListener::bind("127.0.0.1:0")).unwrap();
    let port = listener.local_addr().unwrap().port();
    let service = TraceServiceServer::new(receiver.clone());
    runtime.spawn(async move {
        tonic::transport::Server::builder()
            .add_service(service)
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener))
            .await
    });
    // The children inherit these (only GENARM_* variables are cleared).
    std::env::set_var("OTEL_EXPORTER_OTLP_ENDPOINT", format!("http://127.0.0.1:{port}"));
    std::env::set_var("OTEL_BSP_SCHEDULE_DELAY", "200");

    let mut cluster = Cluster::start(ClusterSpec { base: fixture(BASE), ..Default::default() })
        .unwrap_or_else(|e| panic!("{e:#}"));
    let resp = post_ok(&cluster, "/v1/completions", &completion("The cat sat on the mat.", 3));
    assert!(resp["usage"]["completion_tokens"].as_u64().unwrap() >= 1, "{resp}");

    // SIGTERM: each process flushes its exporter on the way out.
    let logs = cluster.log_tails();
    assert!(cluster.router.stop(Duration::from_secs(15)).success(), "router exit\n{logs}");
    assert!(cluster.base.stop(Duration::from_secs(15)).success(), "base-worker exit\n{logs}");

    let deadline = Instant::now() + Duration::from_secs(10);
    let found = loop {
        let spans = receiver.0.lock().unwrap_or_else(|e| e.into_inner()).clone();
        if let Some(pair) = linked_pair(&spans, "genarm-base-worker") {
            break Some((pair, spans));
        }
        if Instant::now() > deadline {
            let names: Vec<String> = spans.iter().map(|s| format!("{}:{}", s.service, s.name)).collect();
            panic!("no trace links the router and the base-worker; spans seen: {names:?}\n{logs}");
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let ((router_span, worker_span), spans) = found.unwrap();
    assert_eq!(worker_span.name, "worker.step", "{worker_span:?}");
    let trace: Vec<&SeenSpan> = spans.iter().filter(|s| s.trace_id == router_span.trace_id).collect();
    assert!(trace.iter().any(|s| s.service == "genarm-router"), "{trace:?}");
    assert!(trace.iter().any(|s| s.service == "genarm-base-worker"), "{trace:?}");
    assert_eq!(router_span.trace_id.len(), 16, "{router_span:?}");
    // The step links to the HTTP request's span (a step serves a whole batch of requests).
    let step = trace.iter().find(|s| s.name == "router.step").unwrap_or_else(|| panic!("{trace:?}"));
    let request = spans
        .iter()
        .find(|s| s.service == "genarm-router" && step.links.contains(&s.span_id))
        .unwrap_or_else(|| panic!("the step links to no router span: {step:?}\n{spans:?}"));
    assert_eq!(request.name, "completions", "{request:?}");
    // The request's queue wait (admission to its first step) is a child of its span.
    let queue_wait = spans
        .iter()
        .find(|s| s.service == "genarm-router" && s.name == "router.queue_wait")
        .unwrap_or_else(|| panic!("no router.queue_wait span: {spans:?}"));
    assert_eq!(queue_wait.parent, request.span_id, "{queue_wait:?} vs. {request:?}");
    assert_eq!(queue_wait.trace_id, request.trace_id, "{queue_wait:?}");
}
