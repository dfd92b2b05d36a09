//! The `stampgate` command line.

fn main() {}
