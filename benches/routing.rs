//! Routing benchmarks (a placeholder until the routing table exists).

fn main() {}
