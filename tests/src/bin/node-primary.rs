//! The `uvring-node` binary (cluster/src/bin/uvring-node.rs), built as a
//! test helper so that tests/tests/node_workers.rs drives its exact code as
//! a separate program.

#[path = "../../../cluster/src/bin/uvring-node.rs"]
mod uvring_node;

fn main() {
    uvring_node::main();
}
