//! Shared by the Node worker tests: where the JavaScript apps are, and
//! whether `node` runs here.

use std::process::Command;

/// A JavaScript app of tests/node/.
pub fn app(name: &str) -> String {
    format!("{}/node/{name}", env!("CARGO_MANIFEST_DIR"))
}

/// Whether `node` runs here; prints a SKIP line when not (a failure under
/// `UVRING_REQUIRE_NODE=1`).
pub fn node_available() -> bool {
    let ok = Command::new("node").arg("--version").output().is_ok_and(|o| o.status.success());
    if !ok {
        if std::env::var("UVRING_REQUIRE_NODE").is_ok_and(|v| v == "1") {
            panic!("node required (UVRING_REQUIRE_NODE=1) but `node --version` does not run");
        }
        eprintln!("SKIP (node not found in PATH)");
    }
    ok
}
