//! The workers layer: everything the router knows about its workers, and nothing about HTTP.
//!
//! - [`backend`]: the [`StepBackend`] trait the scheduler drives (one batched `Step` per model,
//!   `Release`, readiness), and its wire-neutral step types.
//! - [`catalog`]: the models of the cluster, checked once at startup (V = the base tokenizer's
//!   size, effective context = min of the models' max positions, every ARM's vocabulary equal to
//!   the base's over [0, V): invariant 6 of docs/architecture.md §1).
//! - `membership`: members come from the static flags (`--base URL`, `--rm NAME=URL`: members
//!   that never expire) and, with `--etcd`, from the registrations under
//!   `/genarm/<cluster>/workers/` (added when their key appears, removed when it disappears).
//!   Every newcomer is probed (`probe`) until SERVING and checked: protocol version, role and
//!   reward name, and for an ARM the catalog's checks. A static worker that fails at startup is
//!   fatal; a discovered one is refused and logged. A monitor task per member tracks its health.
//! - `pool`: the ready members of a slot share its sequences. A new sequence (start position 0)
//!   is placed on the ready member most likely to hold its prefix in its prefix cache
//!   (`prefix_affinity`: the prompt blocks recently sent to each member), unless that member is
//!   much busier than the least-loaded one, and otherwise on the ready member holding the fewest
//!   sequences; it stays there. When that
//!   member fails, its sequences are answered [`SeqErrorKind::ReplicaLost`] while another member
//!   is ready, and the step replays them there (failover); with no ready member left the call
//!   fails as a whole (the scheduler then holds the affected requests for
//!   `--worker-restart-grace-secs` and replays them once a member is ready).
//! - `grpc`: the `Step`, `FetchRows` and `Release` calls to one member.
//! - [`error`]: [`CallError`] (by kind: transport, timeout, gRPC status, protocol) and
//!   [`CatalogError`].

pub mod backend;
pub mod catalog;
pub mod config;
pub mod error;
mod grpc;
mod membership;
mod pool;
mod prefix_affinity;
mod probe;

pub use backend::{
    Bytes, LogitsWire, ModelIndex, RowFetch, SeqErrorKind, SeqOutcome, SeqStep, SparseRow, StepBackend,
    StepReply, WorkerHealth,
};
pub use catalog::{Catalog, ModelEntry};
pub use config::{EtcdConfig, WorkersConfig};
pub use error::{CallError, CatalogError};
pub use pool::Workers;
