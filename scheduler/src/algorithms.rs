//! `GET /algorithm/v1/algorithms`: the catalog as the caller may use it — the algorithms
//! (templates) it may submit, read or cancel runs of, with their workgroup and shard, and those
//! workgroups. The console's algorithms page and `nexus`-side tooling read it; the Go Nexus has
//! no such route (its users list the CRDs with kubectl, which data scientists may not reach).
//!
//! A principal sees a template when a rule grants it any action on it (the actions it has are
//! listed); anonymous callers (authentication off) and runs (which may create children of any
//! algorithm) see every template with every action.

use std::collections::BTreeSet;
use std::sync::Arc;

use axum::Extension;
use axum::extract::State;
use nexus_auth::Action;
use serde::Serialize;

use crate::Scheduler;
use crate::access::Caller;

/// One algorithm as the caller sees it.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct AlgorithmView {
    /// Template name.
    pub name: String,
    /// Its workgroup.
    pub workgroup: String,
    /// The shard its runs go to (the workgroup's cluster; empty when the workgroup is unknown).
    pub shard: String,
    /// `registry/image:tag` for Kubernetes, empty for local processes.
    pub image: String,
    /// The command.
    pub command: String,
    /// Deadline of a run, seconds.
    pub deadline_seconds: u32,
    /// Retries of a failed attempt.
    pub maximum_retries: u32,
    /// What the caller may do with runs of it (`submit`, `read`, `cancel`).
    pub actions: Vec<&'static str>,
}

/// One workgroup.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct WorkgroupView {
    /// Name.
    pub name: String,
    /// Description.
    pub description: String,
    /// Shard (cluster) of its runs.
    pub shard: String,
}

/// The answer.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Algorithms {
    /// Algorithms, by name.
    pub algorithms: Vec<AlgorithmView>,
    /// The workgroups of those algorithms, by name.
    pub workgroups: Vec<WorkgroupView>,
}

const ACTIONS: [Action; 3] = [Action::Submit, Action::Read, Action::Cancel];

/// What `caller` sees of the catalog.
#[must_use]
pub fn visible(s: &Scheduler, caller: &Caller) -> Algorithms {
    let snap = s.catalog.snapshot();
    let mut algorithms = Vec::new();
    let mut used = BTreeSet::new();
    for (name, t) in &snap.templates {
        let workgroup = t.spec.workgroup_name().unwrap_or_default().to_owned();
        let actions: Vec<&'static str> = ACTIONS
            .iter()
            .filter(|a| match caller {
                Caller::Anonymous | Caller::Run(_) => true,
                Caller::Principal(p) => s.auth.policy().allows(p, **a, name, &workgroup),
            })
            .map(|a| a.as_str())
            .collect();
        if actions.is_empty() {
            continue;
        }
        let shard = snap
            .workgroups
            .get(&workgroup)
            .map(|w| w.spec.cluster.clone())
            .unwrap_or_default();
        let image = t
            .spec
            .container
            .as_ref()
            .filter(|c| !c.image.is_empty())
            .map(|c| {
                let reg = if c.registry.is_empty() {
                    String::new()
                } else {
                    format!("{}/", c.registry)
                };
                format!("{reg}{}:{}", c.image, c.version_tag)
            })
            .unwrap_or_default();
        used.insert(workgroup.clone());
        algorithms.push(AlgorithmView {
            name: name.clone(),
            workgroup,
            shard,
            image,
            command: t.spec.command.clone(),
            deadline_seconds: t.spec.deadline_seconds(),
            maximum_retries: t.spec.maximum_retries(),
            actions,
        });
    }
    let workgroups = used
        .into_iter()
        .filter_map(|n| {
            snap.workgroups.get(&n).map(|w| WorkgroupView {
                name: n.clone(),
                description: w.spec.description.clone(),
                shard: w.spec.cluster.clone(),
            })
        })
        .collect();
    Algorithms {
        algorithms,
        workgroups,
    }
}

/// `GET /algorithm/v1/algorithms`.
pub async fn list(
    State(s): State<Arc<Scheduler>>,
    Extension(caller): Extension<Arc<Caller>>,
) -> axum::Json<Algorithms> {
    axum::Json(visible(&s, &caller))
}
