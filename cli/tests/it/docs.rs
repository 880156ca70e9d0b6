//! Documentation that must stay true: the configuration blocks of `docs/CONFIGURATION.md` are
//! the real `--dump-config` output of each command. `NEXUS_UPDATE_DOCS=1` rewrites them.

use std::path::Path;

fn dump(command: &str) -> String {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_nexus"))
        .args([command, "--dump-config"])
        .current_dir(Path::new(env!("CARGO_MANIFEST_DIR")).join(".."))
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "nexus {command} --dump-config: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// Replaces the fenced block after `<!-- dump: NAME -->` with `yaml`.
fn with_block(doc: &str, name: &str, yaml: &str) -> String {
    let marker = format!("<!-- dump: {name} -->\n```yaml\n");
    let start = doc.find(&marker).unwrap_or_else(|| panic!("no {marker:?}")) + marker.len();
    let end = start + doc[start..].find("```\n").expect("closing fence");
    format!("{}{yaml}{}", &doc[..start], &doc[end..])
}

#[test]
fn configuration_md_shows_the_real_dump_of_every_command() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/CONFIGURATION.md");
    let doc = std::fs::read_to_string(&path).unwrap();
    let mut want = doc.clone();
    for c in ["standalone", "scheduler", "receiver", "supervisor"] {
        want = with_block(&want, c, &dump(c));
    }
    if std::env::var_os("NEXUS_UPDATE_DOCS").is_some() {
        std::fs::write(&path, &want).unwrap();
        return;
    }
    assert!(
        doc == want,
        "docs/CONFIGURATION.md is not the current --dump-config output; regenerate it with \
         NEXUS_UPDATE_DOCS=1 cargo test -p nexus-cli --test it docs::"
    );
}
