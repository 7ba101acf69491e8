//! The `genarm` command's library: `genarm launch` ([`launch`]) and the supervision of the
//! service processes it starts ([`supervise`]).

pub mod bench;
pub mod demo;
pub mod eval;
pub mod launch;
pub mod merge;
pub mod supervise;
pub mod train;
