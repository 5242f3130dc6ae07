//! The kv command-line tool (being built).
fn main() {}
