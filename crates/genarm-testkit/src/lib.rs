//! genarm-testkit
