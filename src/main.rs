//! The `stampgate` command (placeholder in this branch).

fn main() {}
