//! `nexus-demo` as a process, as Nexus and the README use it: the knapsack example payload from
//! a file gives the README's result, and a bad command line is a clear exit 2.
//!
//! Being an integration test of this package, it also makes `cargo test --workspace` build
//! `target/debug/nexus-demo`, which the standalone end-to-end tests in `nexus-cli` run (they build
//! it themselves only when it is older than the sources).

use std::path::Path;
use std::process::Command;

fn demo() -> Command {
    Command::new(env!("CARGO_BIN_EXE_nexus-demo"))
}

#[test]
fn knapsack_from_a_payload_file_prints_the_readme_result() {
    let payload = Path::new(env!("CARGO_MANIFEST_DIR")).join("payloads/knapsack.json");
    let out = demo()
        .arg("knapsack")
        .arg(format!("--payload-file={}", payload.display()))
        .output()
        .expect("nexus-demo runs");
    assert!(out.status.success(), "{out:?}");
    let stdout = String::from_utf8(out.stdout).expect("utf-8 output");
    let json = stdout
        .lines()
        .find(|l| l.trim_start().starts_with('{'))
        .unwrap_or_else(|| panic!("no JSON result in {stdout:?}"));
    let result: serde_json::Value = serde_json::from_str(json).expect("the result is JSON");
    assert_eq!(result["totalValue"], 90, "{result}");
    assert_eq!(result["totalWeight"], 7, "{result}");
    assert_eq!(result["chosen"], serde_json::json!(["b", "d"]), "{result}");
}

#[test]
fn a_bad_command_line_exits_2_and_points_to_help() {
    let out = demo().arg("no-such-algorithm").output().expect("nexus-demo runs");
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("nexus-demo --help"), "{stderr}");
}
