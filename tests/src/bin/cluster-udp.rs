//! The `udp_cluster` example (cluster/examples/udp_cluster.rs), built as a
//! test helper so that tests/tests/cluster_dgram.rs drives the example's
//! exact code as a separate program.

#[path = "../../../cluster/examples/udp_cluster.rs"]
mod udp_cluster;

fn main() {
    udp_cluster::main();
}
