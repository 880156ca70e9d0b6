//! Algorithm isolation (issue 16, item 5): a hostile algorithm (`nexus-demo hostile`) runs next
//! to a victim run under standalone Nexus and tries to read the server's signing key, run store
//! and object store, to reach the victim's work directory, to complete the victim and to fetch
//! its payload. Every attempt must be refused.
//!
//! What protects what depends on the machine, and the test checks each protection where it
//! exists:
//! * always: work directories outside the data directory with unguessable names (no
//!   `../signing.key`, no directory found by run id), private files (`0600`/`0700`, checked on
//!   disk), run tokens bound to their run (401) and signed URLs bound to their path (403);
//! * as root (the CI machine): algorithms run as `nobody` (`executor.run_as`), so the private
//!   files and the `0711` work root keep them out of the server's files;
//! * with Landlock (`nexus sandbox-exec --probe` says so): the filesystem confinement and the
//!   ptrace-class isolation also keep one run out of another run's `/proc` entries.
//!
//! The scenario runs twice: with `confine: auto` (Landlock where the kernel has it) and with
//! `confine: off`, so the file-permission and `run_as` protections are tested on their own even
//! on a Landlock kernel.
//!
//! Where a protection cannot exist on this machine (not root and no Landlock: algorithms run as
//! the server's user; no Landlock: runs sharing one `run_as` user can see each other in `/proc`),
//! the test prints which attempts it could not hold to refusal and why, and asserts the rest.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::Duration;

use crate::common::*;
use nexus_cli::sandbox::Confine;
use serde_json::{Value, json};

const TEMPLATE: &str = "apiVersion: science.sneaksanddata.com/v1
kind: NexusAlgorithmTemplate
metadata:
  name: hostile
spec:
  container: {image: nexus-demo, registry: ghcr.io/nexus-rs, versionTag: latest}
  computeResources: {cpuLimit: \"1\", memoryLimit: 256Mi}
  workgroupRef: {name: local, group: science.sneaksanddata.com, kind: NexusAlgorithmWorkgroup}
  command: nexus-demo
  args: [hostile, --sas-uri=%s, --request-id=%s]
  runtimeEnvironment: {deadlineSeconds: 120, maximumRetries: 0}
";

/// Attempts that only Landlock can refuse when both runs share one user.
const LANDLOCK_ONLY: [&str; 2] = [
    "reach another run's work directory through /proc/<pid>/cwd",
    "steal another run's token through /proc/<pid>/environ",
];
/// Attempts refused on every machine.
const ALWAYS: [&str; 2] = [
    "signing.key by ../signing.key",
    "open the victim's work directory by its run id",
];

/// What `nexus sandbox-exec --probe` says this kernel enforces.
fn landlock_enforced() -> bool {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_nexus"))
        .args(["sandbox-exec", "--probe"])
        .output()
        .expect("run nexus sandbox-exec --probe");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && text.starts_with("nexus-sandbox "),
        "probe failed: {text} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    text.contains("landlock-abi=")
}

/// Every file and directory under `dir` is private to its owner.
fn assert_private_tree(dir: &Path) {
    let mut pending = vec![dir.to_path_buf()];
    let mut seen = 0;
    while let Some(p) = pending.pop() {
        let meta = std::fs::symlink_metadata(&p).unwrap();
        let mode = meta.permissions().mode() & 0o777;
        assert_eq!(mode & 0o077, 0, "{} is {mode:o}", p.display());
        seen += 1;
        if meta.is_dir() {
            pending.extend(std::fs::read_dir(&p).unwrap().map(|e| e.unwrap().path()));
        }
    }
    for name in [
        "signing.key",
        "runs.db",
        "runs.db-wal",
        "objects.db",
        "objects",
    ] {
        assert!(dir.join(name).exists(), "{name} missing from the data dir");
    }
    assert!(
        !dir.join("work").exists(),
        "work directories live outside the data dir"
    );
    assert!(seen > 8, "only {seen} entries checked");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hostile_algorithm_is_refused_at_every_attempt_under_landlock_where_available() {
    hostile_scenario(Confine::Auto).await;
}

/// The same attacks without Landlock (`confine: off`): file permissions and, as root, `run_as`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hostile_algorithm_is_refused_by_file_permissions_and_run_as_alone() {
    hostile_scenario(Confine::Off).await;
}

async fn hostile_scenario(confine: Confine) {
    let root = nix::unistd::geteuid().is_root();
    let nobody = nix::unistd::User::from_name("nobody").ok().flatten();
    assert!(
        !root || nobody.is_some(),
        "this machine runs tests as root but has no 'nobody' user to run algorithms as"
    );
    let landlock = confine != Confine::Off && landlock_enforced();
    let data = tempfile::tempdir().unwrap();
    let templates = tempfile::tempdir().unwrap();
    std::fs::write(templates.path().join("hostile.yaml"), TEMPLATE).unwrap();
    std::fs::copy(
        crate::common::templates().join("workgroup.yaml"),
        templates.path().join("workgroup.yaml"),
    )
    .unwrap();
    // The work root's parent must be traversable by `nobody` (a temp dir is 0700).
    let work_parent = tempfile::tempdir().unwrap();
    std::fs::set_permissions(work_parent.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let work_root = work_parent.path().join("work");
    let h = start_standalone_with(data.path(), |c| {
        c.templates_dir = templates.path().to_path_buf();
        c.executor.work_root = Some(work_root.clone());
        c.executor.launcher = Some(env!("CARGO_BIN_EXE_nexus").into());
        c.executor.confine = confine;
        if root {
            c.executor.run_as = Some("nobody".into());
        }
    })
    .await;
    let http = reqwest::Client::new();

    let victim = submit(
        &http,
        &h.url,
        "hostile",
        json!({"mode": "victim", "seconds": 60}),
    )
    .await;
    eventually(
        Duration::from_secs(30),
        "the victim wrote its secret",
        || {
            let found = std::fs::read_dir(&work_root)
                .map(|rd| {
                    rd.flatten()
                        .any(|e| e.path().join("victim-secret").exists())
                })
                .unwrap_or(false);
            async move { found }
        },
    )
    .await;
    let data_dir = std::fs::canonicalize(data.path()).unwrap();
    let attacker = submit(
        &http,
        &h.url,
        "hostile",
        json!({
            "mode": "attack",
            "dataDir": data_dir.display().to_string(),
            "victim": {"id": victim, "algorithm": "hostile"},
        }),
    )
    .await;
    let r = wait_terminal(&http, &h.url, "hostile", &attacker, Duration::from_secs(90)).await;
    assert_eq!(r["status"], "COMPLETED", "{r}");
    let report: Value = get_json(&http, r["resultUri"].as_str().unwrap()).await;
    let attempts = report["attempts"].as_array().expect("a report").clone();
    assert_eq!(attempts.len(), 16, "{report:#}");
    eprintln!(
        "hostile algorithm ran as {} in {}; root={root} landlock={landlock}",
        report["uid"], report["cwd"]
    );
    assert!(
        !report["cwd"]
            .as_str()
            .unwrap()
            .starts_with(&data_dir.display().to_string()),
        "{report}"
    );

    let mut not_held = Vec::new();
    for a in &attempts {
        let name = a["name"].as_str().unwrap();
        let refused = a["outcome"] == "refused";
        let detail = a["detail"].as_str().unwrap_or_default();
        let must_refuse = if name.starts_with("complete the victim") {
            assert!(detail.starts_with("HTTP 401"), "{name}: {detail}");
            true
        } else if name.starts_with("fetch the victim's payload") {
            assert!(detail.starts_with("HTTP 403"), "{name}: {detail}");
            true
        } else if ALWAYS.contains(&name) {
            true
        } else if LANDLOCK_ONLY.contains(&name) {
            landlock
        } else {
            // The server's files and the work root: another user or Landlock keeps them out.
            root || landlock
        };
        if must_refuse {
            assert!(refused, "the hostile algorithm succeeded: {name}: {detail}");
        } else if !refused {
            not_held.push(format!("{name}: {detail}"));
        }
    }
    if !not_held.is_empty() {
        eprintln!(
            "NOT ENFORCEABLE on this machine (root={root}, landlock={landlock}; see docs/DECISIONS.md \"Security: algorithm isolation\"):\n  {}",
            not_held.join("\n  ")
        );
    }

    // The victim was neither completed nor given the attacker's result.
    let md: Value = get_json(
        &http,
        &format!("{}/algorithm/v1/metadata/hostile/requests/{victim}", h.url),
    )
    .await;
    assert_eq!(md["lifecycle_stage"], "RUNNING", "{md}");
    let c = http
        .post(format!(
            "{}/algorithm/v1/cancel/hostile/requests/{victim}",
            h.url
        ))
        .json(&json!({"reason": "test over", "initiator": "hostile-test"}))
        .send()
        .await
        .unwrap();
    assert_eq!(c.status(), 200);
    let v = wait_terminal(&http, &h.url, "hostile", &victim, Duration::from_secs(10)).await;
    assert_eq!(v["status"], "CANCELLED", "{v}");
    assert!(
        !v.to_string().contains("attacker.invalid"),
        "the forged result reached the victim: {v}"
    );

    // Everything the server wrote is private; the runs' directories are gone.
    assert_private_tree(&data_dir);
    let root_mode = std::fs::metadata(&work_root).unwrap().permissions().mode() & 0o777;
    assert_eq!(root_mode, if root { 0o711 } else { 0o700 });
    eventually(Duration::from_secs(10), "work directories removed", || {
        let empty = std::fs::read_dir(&work_root).unwrap().next().is_none();
        async move { empty }
    })
    .await;
    h.stop().await;
}
