//! The `static_files` example (cluster/examples/static_files.rs), built as
//! a test helper so that tests/tests/static_files.rs drives the example's
//! exact code as a separate program.

#[path = "../../../cluster/examples/static_files.rs"]
mod static_files;

fn main() {
    static_files::main();
}
