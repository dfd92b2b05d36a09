//! Routing benchmarks (placeholder in this branch).

fn main() {}
