//! The catalog of algorithm templates and workgroups known to a component.
//!
//! Standalone loads it from a directory of YAML manifests (the same `apiVersion`/`kind`/`spec`
//! shape as the Kubernetes custom resources) and reloads it when the directory changes; the
//! Kubernetes mode will fill it from a watch. Readers take a cheap `Arc` snapshot; a reload that
//! fails validation keeps the previous snapshot and reports every error with file and field.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime};

use serde::Deserialize;

use crate::spec::{AlgorithmTemplate, TEMPLATE_KIND, WORKGROUP_KIND, Workgroup};

/// An immutable view of the catalog.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Snapshot {
    /// Templates by name.
    pub templates: BTreeMap<String, AlgorithmTemplate>,
    /// Workgroups by name.
    pub workgroups: BTreeMap<String, Workgroup>,
}

/// Errors of loading a catalog: every problem, each naming its file.
#[derive(Debug, Clone, thiserror::Error)]
#[error("invalid manifests:\n  {}", .0.join("\n  "))]
pub struct CatalogError(pub Vec<String>);

/// Shared, swappable catalog.
#[derive(Debug, Default, Clone)]
pub struct Catalog {
    inner: Arc<RwLock<Arc<Snapshot>>>,
}

impl Catalog {
    /// Returns a catalog holding `snapshot`.
    #[must_use]
    pub fn new(snapshot: Snapshot) -> Self {
        Self {
            inner: Arc::new(RwLock::new(Arc::new(snapshot))),
        }
    }

    /// Returns the current snapshot.
    #[must_use]
    pub fn snapshot(&self) -> Arc<Snapshot> {
        // A poisoned lock only means a writer panicked mid-swap of an Arc: the value is intact.
        self.inner
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    /// Replaces the snapshot.
    pub fn replace(&self, snapshot: Snapshot) {
        *self
            .inner
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Arc::new(snapshot);
    }
}

fn manifest_files(dir: &Path) -> Result<Vec<PathBuf>, CatalogError> {
    let rd = std::fs::read_dir(dir).map_err(|e| {
        CatalogError(vec![format!(
            "{}: cannot read the templates directory: {e}",
            dir.display()
        )])
    })?;
    let mut files: Vec<PathBuf> = rd
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| {
            p.is_file() && matches!(p.extension().and_then(|e| e.to_str()), Some("yaml" | "yml"))
        })
        .collect();
    files.sort();
    Ok(files)
}

/// Loads and validates every `*.yaml`/`*.yml` file of `dir` (several documents per file allowed).
///
/// # Errors
/// Every parse or validation problem, with file, document index and field path; duplicate names;
/// templates whose workgroup is not defined.
pub fn load_dir(dir: &Path) -> Result<Snapshot, CatalogError> {
    let mut snap = Snapshot::default();
    let mut errors = Vec::new();
    let mut origin: BTreeMap<(String, String), String> = BTreeMap::new();
    for file in manifest_files(dir)? {
        let fname = file.display().to_string();
        let text = match std::fs::read_to_string(&file) {
            Ok(t) => t,
            Err(e) => {
                errors.push(format!("{fname}: cannot read: {e}"));
                continue;
            }
        };
        for (i, doc) in serde_yaml::Deserializer::from_str(&text).enumerate() {
            let at = if i == 0 {
                fname.clone()
            } else {
                format!("{fname} (document {})", i + 1)
            };
            let value = match serde_yaml::Value::deserialize(doc) {
                Ok(serde_yaml::Value::Null) => continue,
                Ok(v) => v,
                Err(e) => {
                    // A syntax error ends the file: the document stream cannot resync after it.
                    errors.push(format!("{at}: not valid YAML: {e}"));
                    break;
                }
            };
            let kind = value
                .get("kind")
                .and_then(|k| k.as_str())
                .unwrap_or_default()
                .to_owned();
            let (name, result) = match kind.as_str() {
                TEMPLATE_KIND => parse_and_insert(
                    value,
                    &mut snap.templates,
                    AlgorithmTemplate::validate,
                    |t| t.metadata.name.clone(),
                ),
                WORKGROUP_KIND => {
                    parse_and_insert(value, &mut snap.workgroups, Workgroup::validate, |w| {
                        w.metadata.name.clone()
                    })
                }
                other => (
                    String::new(),
                    Err(format!(
                        "kind: must be '{TEMPLATE_KIND}' or '{WORKGROUP_KIND}', found '{other}'"
                    )),
                ),
            };
            match result {
                Err(e) => errors.push(format!("{at}: {e}")),
                Ok(()) => {
                    if let Some(prev) = origin.insert((kind.clone(), name.clone()), at.clone()) {
                        errors.push(format!(
                            "{at}: {kind} '{name}' is already defined in {prev}"
                        ));
                    }
                }
            }
        }
    }
    for t in snap.templates.values() {
        if let Some(wg) = t.spec.workgroup_name()
            && !snap.workgroups.contains_key(wg)
        {
            let at = origin
                .get(&(TEMPLATE_KIND.to_owned(), t.metadata.name.clone()))
                .cloned()
                .unwrap_or_default();
            errors.push(format!(
                "{at}: spec.workgroupRef.name: workgroup '{wg}' is not defined (known: {})",
                snap.workgroups
                    .keys()
                    .cloned()
                    .collect::<Vec<_>>()
                    .join(", ")
            ));
        }
    }
    if errors.is_empty() {
        Ok(snap)
    } else {
        Err(CatalogError(errors))
    }
}

/// Reads a manifest strictly: a bad value is named by its path (`spec.runtimeEnvironment.
/// deadlineSeconds: invalid value: integer `-5`, expected u32`), and a key Nexus does not know is
/// an error naming it, with the closest known key (`spec.runtimeEnvironment.deadlineSecond:
/// unknown field; did you mean deadlineSeconds?`), as the CRD refuses the same manifest on a
/// cluster. Keys under `metadata` (Kubernetes' own) and a top-level `status` are left alone.
fn from_manifest<T: serde::de::DeserializeOwned>(
    value: serde_yaml::Value,
    kind: &str,
) -> Result<T, String> {
    let mut unknown: Vec<String> = Vec::new();
    let mut track = serde_path_to_error::Track::new();
    let parsed = serde_ignored::deserialize(
        serde_path_to_error::Deserializer::new(value, &mut track),
        |path| {
            // serde_ignored writes `?` for an `Option`'s `Some`: not part of the manifest's path.
            let p = path
                .to_string()
                .split('.')
                .filter(|s| *s != "?")
                .collect::<Vec<_>>()
                .join(".");
            if p != "status" && !p.starts_with("metadata.") && !p.starts_with("status.") {
                unknown.push(p);
            }
        },
    );
    let obj = parsed.map_err(|e| {
        let at = track.path().to_string();
        if at.is_empty() || at == "." {
            e.to_string()
        } else {
            format!("{at}: {e}")
        }
    })?;
    if unknown.is_empty() {
        return Ok(obj);
    }
    let messages: Vec<String> = unknown
        .iter()
        .map(|p| match crate::crd::suggest_field(kind, p) {
            Some(s) => format!("{p}: unknown field; did you mean {s}?"),
            None => format!("{p}: unknown field (not in the {kind} schema: nexus crd prints it)"),
        })
        .collect();
    Err(messages.join("; "))
}

fn parse_and_insert<T: serde::de::DeserializeOwned>(
    value: serde_yaml::Value,
    into: &mut BTreeMap<String, T>,
    validate: impl Fn(&T) -> Result<(), crate::spec::ValidationErrors>,
    name: impl Fn(&T) -> String,
) -> (String, Result<(), String>) {
    let kind = value
        .get("kind")
        .and_then(|k| k.as_str())
        .unwrap_or_default()
        .to_owned();
    match from_manifest::<T>(value, &kind) {
        Err(e) => (String::new(), Err(e)),
        Ok(obj) => {
            let n = name(&obj);
            match validate(&obj) {
                Err(e) => (n, Err(e.to_string())),
                Ok(()) => {
                    into.insert(n.clone(), obj);
                    (n, Ok(()))
                }
            }
        }
    }
}

/// A fingerprint of the directory (names, sizes, modification times) to detect changes cheaply.
#[must_use]
pub fn fingerprint(dir: &Path) -> Vec<(PathBuf, u64, Option<SystemTime>)> {
    manifest_files(dir)
        .unwrap_or_default()
        .into_iter()
        .map(|p| {
            let md = std::fs::metadata(&p).ok();
            let len = md.as_ref().map_or(0, std::fs::Metadata::len);
            let mtime = md.and_then(|m| m.modified().ok());
            (p, len, mtime)
        })
        .collect()
}

/// Polls `dir` every `interval` and swaps in a new snapshot when it changed and is valid; invalid
/// changes are logged and the previous snapshot stays. Returns when `shutdown` is cancelled.
pub async fn watch_dir(
    catalog: Catalog,
    dir: PathBuf,
    interval: Duration,
    shutdown: tokio_util::sync::CancellationToken,
) {
    // Start from "unknown" so that a change made between the initial load and this task's start
    // is picked up on the first tick (a reload of an unchanged directory is harmless).
    let mut last = Vec::new();
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = tokio::time::sleep(interval) => {}
        }
        let dir2 = dir.clone();
        let Ok(now) = tokio::task::spawn_blocking(move || fingerprint(&dir2)).await else {
            continue;
        };
        if now == last {
            continue;
        }
        last = now;
        let dir2 = dir.clone();
        match tokio::task::spawn_blocking(move || load_dir(&dir2)).await {
            // The first tick re-reads what start-up loaded: only a real change is news.
            Ok(Ok(snap)) if snap == *catalog.snapshot() => {}
            Ok(Ok(snap)) => {
                tracing::info!(templates = snap.templates.len(), workgroups = snap.workgroups.len(), dir = %dir.display(), "templates reloaded");
                catalog.replace(snap);
            }
            Ok(Err(e)) => {
                tracing::error!(dir = %dir.display(), error = %e, "templates not reloaded, keeping the previous set")
            }
            Err(e) => tracing::error!(error = %e, "template reload task failed"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const WG: &str = "apiVersion: science.sneaksanddata.com/v1\nkind: NexusAlgorithmWorkgroup\nmetadata: {name: local}\nspec: {cluster: local}\n";
    const T: &str = "apiVersion: science.sneaksanddata.com/v1\nkind: NexusAlgorithmTemplate\nmetadata: {name: hello}\nspec:\n  command: echo\n  workgroupRef: {name: local}\n";

    #[test]
    fn loads_multi_document_files() {
        let d = tempfile::tempdir().unwrap();
        std::fs::write(d.path().join("all.yaml"), format!("{WG}---\n{T}")).unwrap();
        std::fs::write(d.path().join("README.md"), "ignored").unwrap();
        let s = load_dir(d.path()).unwrap();
        assert!(s.templates.contains_key("hello"));
        assert!(s.workgroups.contains_key("local"));
    }

    #[test]
    fn errors_name_file_and_field() {
        let d = tempfile::tempdir().unwrap();
        std::fs::write(d.path().join("wg.yaml"), WG).unwrap();
        std::fs::write(
            d.path().join("bad.yaml"),
            T.replace("command: echo", "command: ''")
                .replace("local}", "nowhere}"),
        )
        .unwrap();
        std::fs::write(d.path().join("typo.yml"), "kind: NexusAlgorithmTemplat\n").unwrap();
        std::fs::write(d.path().join("broken.yaml"), "kind: [").unwrap();
        let e = load_dir(d.path()).unwrap_err().to_string();
        assert!(e.contains("broken.yaml: not valid YAML"), "{e}");
        assert!(e.contains("bad.yaml: spec.command: is required"), "{e}");
        assert!(e.contains("typo.yml: kind: must be"), "{e}");
    }

    #[test]
    fn unknown_keys_and_bad_values_are_named_with_their_path() {
        let d = tempfile::tempdir().unwrap();
        std::fs::write(d.path().join("wg.yaml"), WG).unwrap();
        let typo = T.replace(
            "command: echo",
            "command: echo\n  runtimeEnvironment: {deadlineSecond: 5}",
        );
        std::fs::write(d.path().join("typo.yaml"), &typo).unwrap();
        let upper = T
            .replace("hello", "upper")
            .replace("command: echo", "command: echo\n  Args: [a]");
        std::fs::write(d.path().join("upper.yaml"), upper).unwrap();
        let negative = T.replace("hello", "neg").replace(
            "command: echo",
            "command: echo\n  runtimeEnvironment: {deadlineSeconds: -5}",
        );
        std::fs::write(d.path().join("negative.yaml"), negative).unwrap();
        let wg_typo = WG
            .replace("name: local", "name: other")
            .replace("cluster:", "clustre:");
        std::fs::write(d.path().join("wg2.yaml"), wg_typo).unwrap();
        let e = load_dir(d.path()).unwrap_err().to_string();
        assert!(
            e.contains("typo.yaml: spec.runtimeEnvironment.deadlineSecond: unknown field; did you mean deadlineSeconds?"),
            "{e}"
        );
        assert!(
            e.contains("upper.yaml: spec.Args: unknown field `Args`, expected one of"),
            "{e}"
        );
        assert!(
            e.contains("negative.yaml: spec.runtimeEnvironment.deadlineSeconds: invalid value: integer `-5`"),
            "{e}"
        );
        assert!(
            e.contains("wg2.yaml: spec.clustre: unknown field `clustre`"),
            "{e}"
        );
        // What kubectl writes around a manifest is left alone.
        let d = tempfile::tempdir().unwrap();
        std::fs::write(d.path().join("wg.yaml"), WG).unwrap();
        let from_cluster = T.replace(
            "metadata: {name: hello}",
            "metadata: {name: hello, uid: 1f, resourceVersion: \"7\", creationTimestamp: x}\nstatus: {conditions: []}",
        );
        std::fs::write(d.path().join("t.yaml"), from_cluster).unwrap();
        load_dir(d.path()).unwrap();
    }

    #[test]
    fn missing_workgroup_is_reported() {
        let d = tempfile::tempdir().unwrap();
        std::fs::write(d.path().join("t.yaml"), T).unwrap();
        let e = load_dir(d.path()).unwrap_err().to_string();
        assert!(e.contains("workgroup 'local' is not defined"), "{e}");
    }

    #[tokio::test]
    async fn watch_reloads_on_change_and_keeps_old_on_error() {
        let d = tempfile::tempdir().unwrap();
        std::fs::write(d.path().join("wg.yaml"), WG).unwrap();
        let cat = Catalog::new(load_dir(d.path()).unwrap());
        let stop = tokio_util::sync::CancellationToken::new();
        let h = tokio::spawn(watch_dir(
            cat.clone(),
            d.path().to_owned(),
            Duration::from_millis(20),
            stop.clone(),
        ));
        std::fs::write(d.path().join("t.yaml"), T).unwrap();
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while !cat.snapshot().templates.contains_key("hello") {
            assert!(std::time::Instant::now() < deadline, "reload not seen");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        std::fs::write(d.path().join("t.yaml"), "kind: [").unwrap();
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert!(
            cat.snapshot().templates.contains_key("hello"),
            "bad reload must keep the old set"
        );
        stop.cancel();
        h.await.unwrap();
    }
}
