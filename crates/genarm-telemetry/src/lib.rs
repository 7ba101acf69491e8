//! Tracing setup shared by the genarm binaries: fmt logs to stderr, plus, when
//! `OTEL_EXPORTER_OTLP_ENDPOINT` is set, span export over OTLP/gRPC and W3C trace-context
//! propagation helpers for tonic metadata.

use std::io::IsTerminal as _;

use opentelemetry::propagation::{Extractor, Injector, TextMapPropagator as _};
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_otlp::WithExportConfig as _;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::SdkTracerProvider;
use tracing_opentelemetry::OpenTelemetrySpanExt as _;
use tracing_subscriber::layer::SubscriberExt as _;
use tracing_subscriber::util::SubscriberInitExt as _;
use tracing_subscriber::Layer as _;

/// Flushes and shuts down the span exporter when dropped; keep it alive until the process ends
/// and prefer [`TelemetryGuard::shutdown_async`] while the runtime still runs (the exporter's
/// task lives on it).
#[must_use = "spans are lost unless the guard lives until exit"]
pub struct TelemetryGuard {
    provider: Option<SdkTracerProvider>,
}

impl TelemetryGuard {
    /// Flushes pending spans and shuts the exporter down (also done on drop).
    pub fn shutdown(&mut self) {
        if let Some(provider) = self.provider.take() {
            let _ = provider.force_flush();
            if let Err(e) = provider.shutdown() {
                eprintln!("genarm-telemetry: span exporter shutdown failed: {e}");
            }
        }
    }
}

impl TelemetryGuard {
    /// Flushes and shuts down on a blocking thread of the current tokio runtime, whose tasks
    /// carry the export; call it before the runtime stops.
    pub async fn shutdown_async(mut self) {
        if let Some(provider) = self.provider.take() {
            let mut guard = TelemetryGuard { provider: Some(provider) };
            let _ = tokio::task::spawn_blocking(move || guard.shutdown()).await;
        }
    }
}

impl Drop for TelemetryGuard {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// Installs the global subscriber: fmt logs to stderr filtered by `RUST_LOG` (default `info`),
/// and, when `OTEL_EXPORTER_OTLP_ENDPOINT` is set, an OpenTelemetry layer exporting spans by
/// OTLP/gRPC with `service.name` = `service_name` and W3C trace-context propagation. The batch
/// exporter runs as a task on the current (multi-thread) tokio runtime: call this inside one
/// (`Runtime::enter`), or export stays off. Safe to call more than once (later calls install
/// nothing and return an inert guard).
pub fn init(service_name: &str) -> TelemetryGuard {
    let filter = || {
        tracing_subscriber::EnvFilter::try_from_default_env()
            .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"))
    };
    let fmt = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .with_filter(filter());
    let endpoint = std::env::var("OTEL_EXPORTER_OTLP_ENDPOINT").ok().filter(|s| !s.trim().is_empty());
    let Some(endpoint) = endpoint else {
        let _ = tracing_subscriber::registry().with(fmt).try_init();
        return TelemetryGuard { provider: None };
    };
    if tokio::runtime::Handle::try_current().is_err() {
        let _ = tracing_subscriber::registry().with(fmt).try_init();
        tracing::warn!("OTLP span export disabled: telemetry was initialised outside a tokio runtime");
        return TelemetryGuard { provider: None };
    }
    opentelemetry::global::set_text_map_propagator(TraceContextPropagator::new());
    let exporter = match opentelemetry_otlp::SpanExporter::builder()
        .with_tonic()
        .with_endpoint(endpoint.clone())
        .build()
    {
        Ok(e) => e,
        Err(e) => {
            let _ = tracing_subscriber::registry().with(fmt).try_init();
            tracing::warn!("OTLP span export disabled: cannot build exporter for {endpoint}: {e}");
            return TelemetryGuard { provider: None };
        }
    };
    let resource = opentelemetry_sdk::Resource::builder().with_service_name(service_name.to_string()).build();
    let provider = SdkTracerProvider::builder()
        .with_span_processor(
            opentelemetry_sdk::trace::span_processor_with_async_runtime::BatchSpanProcessor::builder(
                exporter,
                opentelemetry_sdk::runtime::Tokio,
            )
            .build(),
        )
        .with_resource(resource)
        .build();
    let tracer = provider.tracer(service_name.to_string());
    let otel = tracing_opentelemetry::layer().with_tracer(tracer).with_filter(filter());
    if tracing_subscriber::registry().with(fmt).with(otel).try_init().is_err() {
        let _ = provider.shutdown();
        return TelemetryGuard { provider: None };
    }
    TelemetryGuard { provider: Some(provider) }
}

struct MetadataInjector<'a>(&'a mut tonic::metadata::MetadataMap);

impl Injector for MetadataInjector<'_> {
    fn set(&mut self, key: &str, value: String) {
        if let (Ok(k), Ok(v)) = (
            tonic::metadata::MetadataKey::from_bytes(key.as_bytes()),
            tonic::metadata::MetadataValue::try_from(value.as_str()),
        ) {
            self.0.insert(k, v);
        }
    }
}

struct MetadataExtractor<'a>(&'a tonic::metadata::MetadataMap);

impl Extractor for MetadataExtractor<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|v| v.to_str().ok())
    }
    fn keys(&self) -> Vec<&str> {
        self.0
            .keys()
            .filter_map(|k| match k {
                tonic::metadata::KeyRef::Ascii(k) => Some(k.as_str()),
                tonic::metadata::KeyRef::Binary(_) => None,
            })
            .collect()
    }
}

/// Wraps `message` in a tonic request carrying the current span's W3C trace context
/// (`traceparent`) in its metadata.
pub fn traced_request<T>(message: T) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    inject_current(request.metadata_mut());
    request
}

/// Writes the current span's W3C trace context into `metadata` (nothing when no context).
pub fn inject_current(metadata: &mut tonic::metadata::MetadataMap) {
    let context = tracing::Span::current().context();
    TraceContextPropagator::new().inject_context(&context, &mut MetadataInjector(metadata));
}

/// Makes the W3C trace context found in `metadata`, if any, the parent of `span`.
pub fn set_parent_from(span: &tracing::Span, metadata: &tonic::metadata::MetadataMap) {
    let context = TraceContextPropagator::new().extract(&MetadataExtractor(metadata));
    use opentelemetry::trace::TraceContextExt as _;
    if context.span().span_context().is_valid() {
        let _ = span.set_parent(context);
    }
}
