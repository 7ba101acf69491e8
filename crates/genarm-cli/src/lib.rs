//! The `genarm` command's library: `genarm launch` ([`launch`]) and the supervision of the
//! service processes it starts ([`supervise`]).
#![warn(missing_docs)]

pub mod launch;
pub mod supervise;
