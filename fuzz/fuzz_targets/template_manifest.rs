//! The template manifest loader on arbitrary text: never panics, and refuses with a message that
//! names the file.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("t.yaml");
    std::fs::write(&file, data).unwrap();
    if let Err(e) = nexus_model::catalog::load_dir(dir.path()) {
        assert!(e.to_string().contains("t.yaml"), "error without the file name: {e}");
    }
});
