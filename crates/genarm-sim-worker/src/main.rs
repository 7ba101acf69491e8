//! `genarm-sim-worker`: a load-simulation worker for benchmarks (see the library docs). Never
//! for serving.

use std::process::ExitCode;

use clap::Parser as _;
use genarm_proto::v1::worker_server::WorkerServer;
use genarm_proto::v1::WORKER_SERVICE_NAME;
use genarm_sim_worker::{RowBank, SimArgs, SimService};
use tonic::transport::server::TcpIncoming;
use tonic_health::ServingStatus;

#[tokio::main]
async fn main() -> ExitCode {
    let args = SimArgs::parse();
    let _telemetry = genarm_worker::init_tracing("genarm-sim-worker");
    match run(args).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("genarm-sim-worker: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(args: SimArgs) -> anyhow::Result<()> {
    let reward_name = args.reward_name().map_err(anyhow::Error::msg)?.to_string();
    let bank = match (&args.rows, args.synthetic_rows) {
        (Some(path), _) => RowBank::load(path, &args.rows_tensor(), args.vocab_size)?,
        (None, Some(n)) => {
            // The reward name picks the variant, so simulated ARMs disagree with the base.
            let variant =
                reward_name.bytes().fold(0u64, |h, b| h.wrapping_mul(31).wrapping_add(u64::from(b)));
            RowBank::synthetic(n.max(1), args.vocab_size, args.vocab_size, args.seed, variant)
                .map_err(anyhow::Error::msg)?
        }
        (None, None) => anyhow::bail!(
            "give --rows FILE (recorded logit rows) or --synthetic-rows N (protocol tests only)"
        ),
    };
    let shutdown = genarm_worker::shutdown_signal()?;
    let max = args.max_message_bytes;
    let service = SimService::new(args.clone(), bank).map_err(anyhow::Error::msg)?;
    let listener = genarm_worker::bind(&args.listen).await?;
    let addr = listener.local_addr()?;
    genarm_worker::announce(addr)?;
    tracing::warn!(%addr, model = %service.info().model_id, vocab = args.vocab_size,
        forward_ms = args.forward_ms, forward_ms_per_seq = args.forward_ms_per_seq,
        "load-simulation worker listening (benchmarks only: it runs no model)");
    let (reporter, health) = tonic_health::server::health_reporter();
    reporter.set_service_status("", ServingStatus::Serving).await;
    reporter.set_service_status(WORKER_SERVICE_NAME, ServingStatus::Serving).await;
    let worker = WorkerServer::new(service).max_decoding_message_size(max).max_encoding_message_size(max);
    tonic::transport::Server::builder()
        .add_service(health)
        .add_service(worker)
        .serve_with_incoming_shutdown(TcpIncoming::from(listener).with_nodelay(Some(true)), shutdown)
        .await?;
    Ok(())
}
