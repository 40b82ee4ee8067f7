//! The `hello_cluster` example (cluster/examples/hello_cluster.rs), built as
//! a test helper so that tests/tests/cluster_hello.rs drives the example's
//! exact code as a separate program.

#[path = "../../../cluster/examples/hello_cluster.rs"]
mod hello_cluster;

fn main() {
    hello_cluster::main();
}
