//! placeholder until its issue work lands
