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

/// Every `*.rs` under `dir` (skipping `target`).
fn rust_files(dir: &Path, out: &mut Vec<std::path::PathBuf>) {
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        let p = e.path();
        let name = e.file_name();
        if p.is_dir() && name != "target" && name != ".git" && name != "node_modules" {
            rust_files(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
}

#[test]
fn metrics_md_lists_every_declared_metric() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let doc = std::fs::read_to_string(root.join("docs/METRICS.md")).unwrap();
    let mut files = Vec::new();
    for dir in ["core", "scheduler", "receiver", "supervisor", "cli/src"] {
        rust_files(&root.join(dir), &mut files);
    }
    let sources: Vec<String> = files
        .iter()
        .map(|f| std::fs::read_to_string(f).unwrap())
        .collect();
    // `pub const NAME: &str = "nexus_…";` anywhere: metric names declared as constants.
    let mut consts = std::collections::HashMap::new();
    for s in &sources {
        for line in s.lines() {
            if let Some(rest) = line.trim().strip_prefix("pub const ")
                && let Some((ident, value)) = rest.split_once(": &str = \"")
                && value.starts_with("nexus_")
            {
                consts.insert(ident.to_owned(), value.trim_end_matches("\";").to_owned());
            }
        }
    }
    let mut declared = Vec::new();
    for s in &sources {
        for macro_name in [
            "describe_counter!(",
            "describe_gauge!(",
            "describe_histogram!(",
        ] {
            for (i, _) in s.match_indices(macro_name) {
                let arg = s[i + macro_name.len()..]
                    .trim_start()
                    .split(',')
                    .next()
                    .unwrap_or_default()
                    .trim();
                let name = if let Some(lit) = arg.strip_prefix('"') {
                    lit.trim_end_matches('"').to_owned()
                } else if let Some(c) = consts.get(arg) {
                    c.clone()
                } else {
                    continue; // a computed name (per-component HTTP metrics), listed by hand
                };
                declared.push(name);
            }
        }
    }
    assert!(declared.len() >= 30, "found only {declared:?}");
    for prefix in ["nexus_scheduler", "nexus_receiver"] {
        declared.push(format!("{prefix}_http_requests_total"));
        declared.push(format!("{prefix}_http_request_duration_seconds"));
    }
    let missing: Vec<&String> = declared
        .iter()
        .filter(|n| !doc.contains(&format!("`{n}`")))
        .collect();
    assert!(
        missing.is_empty(),
        "docs/METRICS.md does not list {missing:?}"
    );
}
