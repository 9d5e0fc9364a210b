//! The `agentwire` binary.
fn main() {}
