//! Fills a [`Catalog`] from the cluster: kube-runtime reflectors (watch + cache) over the
//! `NexusAlgorithmTemplate` and `NexusAlgorithmWorkgroup` custom resources. Every change rebuilds
//! the snapshot, so a template added at runtime takes runs at once and a deleted one stops taking
//! new runs at once (runs already accepted keep their applied configuration).
//!
//! The API server validates manifests against the CRD schema when they are applied; what the
//! schema cannot express (a transient code also listed as fatal, ...) is checked here with the
//! same validation as the file catalog, and an invalid resource is left out with a warning naming
//! it and its field.

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use kube::runtime::reflector::{self, Store};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client, ResourceExt};
use tokio_util::sync::CancellationToken;

use nexus_model::catalog::{Catalog, Snapshot};
use nexus_model::spec::{
    API_VERSION, AlgorithmTemplate, NexusAlgorithmTemplate, NexusAlgorithmWorkgroup, ObjectMeta,
    TEMPLATE_KIND, WORKGROUP_KIND, Workgroup,
};

fn meta(m: &kube::api::ObjectMeta) -> ObjectMeta {
    ObjectMeta {
        name: m.name.clone().unwrap_or_default(),
        namespace: m.namespace.clone(),
        labels: m.labels.clone().unwrap_or_default(),
        annotations: m.annotations.clone().unwrap_or_default(),
    }
}

/// Builds a snapshot from the reflectors' caches, leaving out (and logging) invalid resources.
#[must_use]
pub(crate) fn snapshot_of(
    templates: &[Arc<NexusAlgorithmTemplate>],
    workgroups: &[Arc<NexusAlgorithmWorkgroup>],
) -> Snapshot {
    let mut snap = Snapshot::default();
    for w in workgroups {
        let name = w.name_any();
        if let Err(e) = w.spec.validate("spec") {
            tracing::warn!(workgroup = %name, error = %e, "workgroup left out of the catalog");
            continue;
        }
        snap.workgroups.insert(
            name,
            Workgroup {
                api_version: API_VERSION.into(),
                kind: WORKGROUP_KIND.into(),
                metadata: meta(&w.metadata),
                spec: w.spec.clone(),
            },
        );
    }
    for t in templates {
        let name = t.name_any();
        if let Err(e) = t.spec.validate("spec") {
            tracing::warn!(template = %name, error = %e, "template left out of the catalog");
            continue;
        }
        snap.templates.insert(
            name,
            AlgorithmTemplate {
                api_version: API_VERSION.into(),
                kind: TEMPLATE_KIND.into(),
                metadata: meta(&t.metadata),
                spec: t.spec.clone(),
            },
        );
    }
    snap
}

/// Watches templates and workgroups in `namespace` (all namespaces when `None`) and keeps
/// `catalog` equal to them until `shutdown`. `synced` is cancelled once both caches have been
/// listed the first time (the scheduler turns ready after it). Watch errors are retried with
/// back-off; the last good snapshot stays in place meanwhile.
pub async fn watch_cluster(
    catalog: Catalog,
    client: Client,
    namespace: Option<String>,
    synced: CancellationToken,
    shutdown: CancellationToken,
) {
    let (templates_api, workgroups_api): (
        Api<NexusAlgorithmTemplate>,
        Api<NexusAlgorithmWorkgroup>,
    ) = match &namespace {
        Some(ns) => (
            Api::namespaced(client.clone(), ns),
            Api::namespaced(client, ns),
        ),
        None => (Api::all(client.clone()), Api::all(client)),
    };
    let (t_reader, t_writer) = reflector::store();
    let (w_reader, w_writer) = reflector::store();
    let t_stream = reflector::reflector(
        t_writer,
        watcher(templates_api, watcher::Config::default()).default_backoff(),
    )
    .map(|e| e.map(|_| ()).map_err(|e| format!("templates: {e}")))
    .boxed();
    let w_stream = reflector::reflector(
        w_writer,
        watcher(workgroups_api, watcher::Config::default()).default_backoff(),
    )
    .map(|e| e.map(|_| ()).map_err(|e| format!("workgroups: {e}")))
    .boxed();
    let mut events = futures::stream::select(t_stream, w_stream);
    let rebuild = |t: &Store<NexusAlgorithmTemplate>, w: &Store<NexusAlgorithmWorkgroup>| {
        let snap = snapshot_of(&t.state(), &w.state());
        tracing::debug!(
            templates = snap.templates.len(),
            workgroups = snap.workgroups.len(),
            "catalog updated from the cluster"
        );
        crate::metrics::catalog_templates(snap.templates.len());
        catalog.replace(snap);
    };
    let mut ready = false;
    loop {
        let ev = tokio::select! {
            () = shutdown.cancelled() => return,
            ev = events.next() => ev,
        };
        match ev {
            None => return,
            Some(Err(e)) => {
                crate::metrics::catalog_watch_error();
                tracing::warn!(
                    error = %e, "template watch failed, retrying (the catalog keeps its last state)"
                );
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Some(Ok(())) => {
                if !ready {
                    // Both caches must have completed their first list before the first snapshot
                    // replaces anything: a half-listed catalog would refuse known templates.
                    let both = tokio::time::timeout(Duration::from_millis(1), async {
                        let _ = t_reader.wait_until_ready().await;
                        let _ = w_reader.wait_until_ready().await;
                    })
                    .await
                    .is_ok();
                    if !both {
                        continue;
                    }
                    ready = true;
                    rebuild(&t_reader, &w_reader);
                    synced.cancel();
                    continue;
                }
                rebuild(&t_reader, &w_reader);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use nexus_model::spec::{AlgorithmSpec, WorkgroupRef, WorkgroupSpec};

    fn template(name: &str, command: &str) -> Arc<NexusAlgorithmTemplate> {
        let spec = AlgorithmSpec {
            command: command.into(),
            workgroup_ref: Some(WorkgroupRef {
                name: "wg".into(),
                ..WorkgroupRef::default()
            }),
            ..AlgorithmSpec::default()
        };
        Arc::new(NexusAlgorithmTemplate::new(name, spec))
    }

    #[test]
    fn the_snapshot_holds_the_valid_resources_and_leaves_out_the_others() {
        let wg = Arc::new(NexusAlgorithmWorkgroup::new(
            "wg",
            WorkgroupSpec {
                cluster: "shard-a".into(),
                ..WorkgroupSpec::default()
            },
        ));
        let bad_wg = Arc::new(NexusAlgorithmWorkgroup::new(
            "nowhere",
            WorkgroupSpec::default(),
        ));
        let snap = snapshot_of(
            &[template("good", "python3 main.py"), template("bad", "  ")],
            &[wg, bad_wg],
        );
        assert_eq!(snap.templates.keys().collect::<Vec<_>>(), vec!["good"]);
        assert_eq!(snap.workgroups.keys().collect::<Vec<_>>(), vec!["wg"]);
        let t = &snap.templates["good"];
        assert_eq!(t.kind, TEMPLATE_KIND);
        assert_eq!(t.metadata.name, "good");
        assert_eq!(snap.workgroups["wg"].spec.cluster, "shard-a");
    }
}
