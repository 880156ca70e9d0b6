//! End to end on a real single-node cluster: a scheduler reading templates from the cluster and a
//! receiver running runs as Kubernetes Jobs, in-process, against the API server, controller
//! manager, scheduler and kubelet (containerd + runc) of `scripts/kube-cluster.sh`. Nothing is
//! played by the test: the Job controller creates the pods, kube-scheduler places them, the
//! kubelet runs the `nexus-demo` container of the Nexus image, which fetches its payload and
//! completes through the receiver; the garbage collector carries out the cancels' propagation
//! policies; OOM kills, image pull back-offs, unschedulable pods and deadlines come from the
//! real components, and each is checked as a user sees it through the HTTP API.
//!
//! Needs (the integration tier sets them; without them every test fails saying so):
//! * `NEXUS_TEST_KUBECONFIG`: the kubeconfig `scripts/kube-cluster.sh start` prints;
//! * `NEXUS_TEST_IMAGE`: the Nexus image loaded into the node (`registry/image:tag`, e.g.
//!   `localhost/nexus:e2e`, built by `scripts/image.sh`, loaded by `kube-cluster.sh load-image`);
//! * `NEXUS_TEST_NODE_IP`: the node's address (10.254.254.1), where the receiver's completion
//!   endpoint and the payload server listen so that pods reach them (no cluster DNS here).
//!
//! Each test works in a namespace of its own, deleted at the end.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{Namespace, Pod};
use kube::api::{DeleteParams, ListParams, PostParams};
use kube::{Api, Client};
use nexus_cli::distributed::{
    self, CatalogSource, ReceiverProcess, Runtime, SchedulerProcess, ShardEntry, SharedStores,
};
use nexus_kube::classify::FailureConfig;
use nexus_kube::client::{ApiBudget, KubeClientConfig};
use nexus_link::grpc::{GrpcLinkConfig, LinkAuth};
use nexus_model::spec::{NexusAlgorithmTemplate, NexusAlgorithmWorkgroup};
use nexus_store::{InMemoryRunStore, RunStore};
use serde_json::{Value, json};

const KUBECONFIG_ENV: &str = "NEXUS_TEST_KUBECONFIG";
const IMAGE_ENV: &str = "NEXUS_TEST_IMAGE";
const NODE_IP_ENV: &str = "NEXUS_TEST_NODE_IP";
const KEY: &[u8] = b"0123456789abcdef0123456789abcdef-kubernetes-test";
const SHARD: &str = "kube-a";
/// The label the rendered Jobs and their pods carry.
const REQUEST_ID_LABEL: &str = "science.sneaksanddata.com/request-id";
/// Generous bound of every wait on the cluster (pods start in seconds; a pod deleted with its
/// 30 s grace period, nexus-demo being PID 1 and ignoring SIGTERM, takes about 30 s).
const WAIT: Duration = Duration::from_secs(150);

/// The variable's value, or a panic saying how to provide it.
fn required(name: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| {
        panic!(
            "{name} is not set: these tests need a real single-node cluster and the Nexus image \
             in it. Run them as the integration tier does (scripts/integration.sh):\n  \
             cargo build -p nexus-cli -p nexus-examples\n  \
             NEXUS_BIN_DIR=target/debug NEXUS_IMAGE=localhost/nexus:e2e NEXUS_IMAGE_SMOKE=0 bash scripts/image.sh\n  \
             kc=$(scripts/kube-cluster.sh start) && scripts/kube-cluster.sh load-image localhost/nexus:e2e\n  \
             {KUBECONFIG_ENV}=$kc {IMAGE_ENV}=localhost/nexus:e2e {NODE_IP_ENV}=10.254.254.1 \
             cargo test -p nexus-cli --features kube-tests --test it kubernetes::\n  \
             scripts/kube-cluster.sh stop"
        )
    })
}

fn kubeconfig() -> PathBuf {
    required(KUBECONFIG_ENV).into()
}

/// The node's address: pods reach the host there (not on loopback, which is theirs).
fn node_ip() -> IpAddr {
    let v = required(NODE_IP_ENV);
    let ip: IpAddr = v
        .parse()
        .unwrap_or_else(|e| panic!("{NODE_IP_ENV}={v} is not an IP address: {e}"));
    assert!(
        !ip.is_loopback(),
        "{NODE_IP_ENV}={v} is a loopback address, which pods cannot reach; use the node IP of \
         scripts/kube-cluster.sh (10.254.254.1)"
    );
    ip
}

/// `NEXUS_TEST_IMAGE` split as a template's `container` wants it: (registry, image, versionTag).
fn image() -> (String, String, String) {
    let v = required(IMAGE_ENV);
    let parts = v.rsplit_once('/').and_then(|(registry, rest)| {
        let (image, tag) = rest.rsplit_once(':')?;
        Some((registry.to_owned(), image.to_owned(), tag.to_owned()))
    });
    parts.unwrap_or_else(|| {
        panic!(
            "{IMAGE_ENV}={v} is not of the form <registry>/<image>:<tag> (e.g. localhost/nexus:e2e)"
        )
    })
}

fn kube_config(ns: &str) -> KubeClientConfig {
    KubeClientConfig {
        kubeconfig: Some(kubeconfig()),
        namespace: Some(ns.to_owned()),
        ..KubeClientConfig::default()
    }
}

async fn client() -> Client {
    let c = KubeClientConfig {
        kubeconfig: Some(kubeconfig()),
        ..KubeClientConfig::default()
    };
    nexus_kube::client::client(&c, &ApiBudget::new(c.api_budget))
        .await
        .unwrap_or_else(|e| panic!("cannot reach the API server: {e}"))
}

async fn namespace(c: &Client) -> String {
    nexus_kube::testkit::create_namespace(c, "cli")
        .await
        .unwrap_or_else(|e| panic!("{e}"))
}

fn manifest<T: serde::de::DeserializeOwned>(v: Value) -> T {
    serde_json::from_value(v).unwrap()
}

/// A workgroup of the test shard; `affinity` is its pods' affinity.
fn workgroup(name: &str, affinity: Option<Value>) -> NexusAlgorithmWorkgroup {
    let mut spec = json!({ "cluster": SHARD });
    if let Some(a) = affinity {
        spec["affinity"] = a;
    }
    manifest(json!({
        "apiVersion": "science.sneaksanddata.com/v1", "kind": "NexusAlgorithmWorkgroup",
        "metadata": {"name": name}, "spec": spec
    }))
}

/// A template running `nexus-demo <algorithm>` from `(registry, image, tag)`.
struct Template<'a> {
    name: &'a str,
    algorithm: &'a str,
    image: (String, String, String),
    workgroup: &'a str,
    memory: &'a str,
    deadline_seconds: u32,
}

impl Template<'_> {
    fn manifest(&self) -> NexusAlgorithmTemplate {
        let (registry, image, tag) = &self.image;
        manifest(json!({
            "apiVersion": "science.sneaksanddata.com/v1", "kind": "NexusAlgorithmTemplate",
            "metadata": {"name": self.name},
            "spec": {
                "container": {"image": image, "registry": registry, "versionTag": tag},
                "computeResources": {"cpuLimit": "1", "memoryLimit": self.memory},
                "workgroupRef": {"name": self.workgroup, "group": "science.sneaksanddata.com",
                                 "kind": "NexusAlgorithmWorkgroup"},
                "command": "nexus-demo",
                "args": [self.algorithm, "--sas-uri=%s", "--request-id=%s"],
                "runtimeEnvironment": {"deadlineSeconds": self.deadline_seconds, "maximumRetries": 0},
                "errorHandlingBehaviour": {"fatalExitCodes": [2]}
            }
        }))
    }
}

fn knapsack() -> Value {
    let text = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/payloads/knapsack.json"),
    )
    .unwrap();
    serde_json::from_str(&text).unwrap()
}

struct Deployment {
    _tmp: tempfile::TempDir,
    store: Arc<dyn RunStore>,
    scheduler: nexus_cli::standalone::Handle,
    receiver: distributed::ReceiverHandle,
}

/// A receiver for shard `kube-a` on Kubernetes in `ns` and a scheduler reading the catalog from
/// `ns`, on an in-memory run store and an HTTP-served payload store. The receiver's completion
/// endpoint, the scheduler's payload route and the payload server listen on the node IP, where
/// pods reach them. Pods stuck
/// before their container runs are given up after 5 s (instead of minutes), so the failure
/// classes show quickly.
async fn deploy(ns: &str) -> Deployment {
    let ip = node_ip();
    let tmp = tempfile::tempdir().unwrap();
    let key_file = tmp.path().join("signing.key");
    std::fs::write(&key_file, KEY).unwrap();
    let store: Arc<dyn RunStore> = Arc::new(InMemoryRunStore::default());
    let stores = SharedStores {
        store: store.clone(),
        payloads: Some(crate::common::http_payloads_on(tmp.path(), KEY, store.clone(), ip).await),
    };
    let link = GrpcLinkConfig {
        auth: LinkAuth::None,
        ..GrpcLinkConfig::default()
    };
    let http = tokio::net::TcpListener::bind((ip, 0))
        .await
        .unwrap_or_else(|e| panic!("cannot listen on the node IP {ip}: {e}"));
    let rc = ReceiverProcess {
        shard: SHARD.into(),
        public_url: Some(format!("http://{}", http.local_addr().unwrap())),
        signing_key_file: Some(key_file.clone()),
        grpc: link.clone(),
        work_dir: tmp.path().join("receiver"),
        drain_grace: Duration::from_secs(1),
        runtime: Runtime::Kubernetes,
        kubernetes: kube_config(ns),
        failures: FailureConfig {
            image_pull_grace: Duration::from_secs(5),
            unschedulable_limit: Duration::from_secs(5),
            config_error_grace: Duration::from_secs(5),
        },
        ..ReceiverProcess::default()
    };
    let make = distributed::kube_executor(&rc).await.unwrap();
    let receiver = distributed::start_receiver_with(
        rc,
        http,
        crate::common::port0().await,
        stores.clone(),
        make,
    )
    .await
    .expect("receiver starts");
    let mut shards = BTreeMap::new();
    shards.insert(
        SHARD.to_owned(),
        ShardEntry {
            endpoints: vec![format!("http://{}", receiver.grpc_addr)],
        },
    );
    // Pods read inline payloads from the scheduler's payload route: it listens on the node IP.
    let api = tokio::net::TcpListener::bind((ip, 0))
        .await
        .unwrap_or_else(|e| panic!("cannot listen on the node IP {ip}: {e}"));
    let sc = SchedulerProcess {
        public_url: Some(format!("http://{}", api.local_addr().unwrap())),
        signing_key_file: Some(key_file),
        grpc: link,
        shards,
        catalog: CatalogSource::Kubernetes,
        kubernetes: kube_config(ns),
        ..SchedulerProcess::default()
    };
    let scheduler = distributed::start_scheduler_with(sc, api, stores)
        .await
        .expect("scheduler starts");
    Deployment {
        _tmp: tmp,
        store,
        scheduler,
        receiver,
    }
}

/// One test's namespace on the cluster, its templates and workgroups, the Nexus deployment
/// serving it, and the client's view of both.
struct Cluster {
    c: Client,
    ns: String,
    jobs: Api<Job>,
    pods: Api<Pod>,
    templates: Api<NexusAlgorithmTemplate>,
    d: Deployment,
    http: reqwest::Client,
    base: String,
}

/// Templates of every test: `knapsack`; `chaos` (64Mi, the failure paths); `chaos-deadline`
/// (5 s); `missing-image` (an image no registry has); `unplaceable` (a workgroup whose node
/// affinity no node matches).
async fn cluster() -> Cluster {
    // Every variable is checked before anything is created.
    let (img, _) = (image(), node_ip());
    let c = client().await;
    nexus_kube::crd::install(&c, Duration::from_secs(10))
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let ns = namespace(&c).await;
    let templates: Api<NexusAlgorithmTemplate> = Api::namespaced(c.clone(), &ns);
    let workgroups: Api<NexusAlgorithmWorkgroup> = Api::namespaced(c.clone(), &ns);
    let nowhere = json!({"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {
        "nodeSelectorTerms": [{"matchExpressions": [
            {"key": "nexus.test/pool", "operator": "In", "values": ["nowhere"]}
        ]}]
    }}});
    for wg in [workgroup("wg", None), workgroup("nowhere", Some(nowhere))] {
        workgroups
            .create(&PostParams::default(), &wg)
            .await
            .unwrap();
    }
    let missing = (
        img.0.clone(),
        "nexus-no-such-image".to_owned(),
        img.2.clone(),
    );
    let t = |name, algorithm, image, workgroup, memory, deadline_seconds| {
        Template {
            name,
            algorithm,
            image,
            workgroup,
            memory,
            deadline_seconds,
        }
        .manifest()
    };
    for tpl in [
        t("knapsack", "knapsack", img.clone(), "wg", "256Mi", 300),
        t("chaos", "chaos", img.clone(), "wg", "64Mi", 300),
        t("chaos-deadline", "chaos", img.clone(), "wg", "64Mi", 5),
        t("missing-image", "knapsack", missing, "wg", "256Mi", 300),
        t("unplaceable", "knapsack", img, "nowhere", "256Mi", 300),
    ] {
        templates
            .create(&PostParams::default(), &tpl)
            .await
            .unwrap();
    }
    let d = deploy(&ns).await;
    let base = d.scheduler.url.clone();
    Cluster {
        jobs: Api::namespaced(c.clone(), &ns),
        pods: Api::namespaced(c.clone(), &ns),
        templates,
        c,
        ns,
        d,
        http: reqwest::Client::new(),
        base,
    }
}

impl Cluster {
    async fn submit(&self, alg: &str, params: Value) -> String {
        crate::common::submit(&self.http, &self.base, alg, params).await
    }

    /// Waits for run `id` to be terminal and returns `GET results`.
    async fn terminal(&self, alg: &str, id: &str) -> Value {
        crate::common::wait_terminal(&self.http, &self.base, alg, id, WAIT).await
    }

    /// `GET metadata` of run `id` (its failure cause and details).
    async fn metadata(&self, alg: &str, id: &str) -> Value {
        crate::common::get_json(
            &self.http,
            &format!("{}/algorithm/v1/metadata/{alg}/requests/{id}", self.base),
        )
        .await
    }

    /// The run's failure details as a user reads them, checking the stage and cause first.
    async fn failure(&self, alg: &str, id: &str, stage: &str, cause: &str) -> String {
        let r = self.terminal(alg, id).await;
        let m = self.metadata(alg, id).await;
        assert_eq!(r["status"], stage, "{alg} {id}: {r}\n{m}");
        assert_eq!(r["runErrorMessage"], cause, "{alg} {id}: {r}\n{m}");
        assert_eq!(m["algorithm_failure_cause"], cause, "{m}");
        let details = m["algorithm_failure_details"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        eprintln!("{alg} {id}: {stage}: {cause}: {details}");
        details
    }

    /// The pods of run `id`.
    async fn pods_of(&self, id: &str) -> Vec<Pod> {
        self.pods
            .list(&ListParams::default().labels(&format!("{REQUEST_ID_LABEL}={id}")))
            .await
            .unwrap()
            .items
    }

    /// Waits for the Job of run `id` to exist and returns it.
    async fn job_of(&self, id: &str) -> Job {
        let deadline = std::time::Instant::now() + WAIT;
        loop {
            if let Some(j) = self.jobs.get_opt(id).await.unwrap() {
                return j;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "no Job for run {id} after {WAIT:?}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Waits until the container of run `id` runs (the kubelet reports it running).
    async fn running(&self, id: &str) -> Pod {
        let deadline = std::time::Instant::now() + WAIT;
        loop {
            let pods = self.pods_of(id).await;
            if let Some(p) = pods
                .iter()
                .find(|p| container_state(p).is_some_and(|s| s.running.is_some()))
            {
                return p.clone();
            }
            assert!(
                std::time::Instant::now() < deadline,
                "the container of run {id} is not running after {WAIT:?}: {:?}",
                pods.iter().map(|p| &p.status).collect::<Vec<_>>()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    async fn cancel(&self, alg: &str, id: &str, policy: &str) {
        let resp = self
            .http
            .post(format!(
                "{}/algorithm/v1/cancel/{alg}/requests/{id}",
                self.base
            ))
            .json(&json!({
                "initiator": "kubernetes-test", "reason": "no longer needed",
                "cancellationPolicy": policy
            }))
            .send()
            .await
            .unwrap();
        assert!(resp.status().is_success(), "{}", resp.text().await.unwrap());
    }

    /// Stops Nexus and deletes the namespace (its leftovers with it).
    async fn stop(self) {
        self.d.scheduler.stop().await;
        self.d.receiver.http.stop().await;
        let _ = Api::<Namespace>::all(self.c)
            .delete(&self.ns, &DeleteParams::background())
            .await;
    }
}

/// The state of a pod's (only) container.
fn container_state(p: &Pod) -> Option<k8s_openapi::api::core::v1::ContainerState> {
    p.status
        .as_ref()?
        .container_statuses
        .as_ref()?
        .first()?
        .state
        .clone()
}

fn is_deleting(p: &Pod) -> bool {
    p.metadata.deletion_timestamp.is_some()
}

/// A run becomes a Job, the Job a pod, the pod a real container of `nexus-demo` from the Nexus
/// image; it fetches its payload, uploads its result and completes through the receiver:
/// COMPLETED with the knapsack's answer, and the Job Complete. Templates added and removed at
/// runtime are seen by the scheduler.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_run_becomes_a_job_whose_real_container_completes_it() {
    let k = cluster().await;
    let id = k.submit("knapsack", knapsack()).await;
    let job = k.job_of(&id).await;
    let labels = job.metadata.labels.clone().unwrap();
    assert_eq!(labels[REQUEST_ID_LABEL], id, "{labels:?}");
    assert_eq!(labels["science.sneaksanddata.com/shard"], SHARD);
    assert_eq!(
        job.spec.as_ref().unwrap().ttl_seconds_after_finished,
        Some(300)
    );
    let r = k.terminal("knapsack", &id).await;
    assert_eq!(
        r["status"],
        "COMPLETED",
        "{r}\n{}",
        k.metadata("knapsack", &id).await
    );
    let result = crate::common::get_json(&k.http, r["resultUri"].as_str().unwrap()).await;
    assert_eq!(result["totalValue"], 90, "{result}");
    let run = k.d.store.get(id.parse().unwrap()).await.unwrap().unwrap();
    assert!(
        run.owner
            .as_deref()
            .unwrap_or_default()
            .starts_with(&format!("receiver/{SHARD}/")),
        "{:?}",
        run.owner
    );
    // It was a real container of the image, placed on the node, that exited 0; the Job
    // controller marked the Job Complete.
    let (registry, image, tag) = image();
    crate::common::eventually(
        WAIT,
        "the pod succeeded and the Job is Complete",
        || async {
            let pods = k.pods_of(&id).await;
            let pod_ok = pods.iter().any(|p| {
                let spec = p.spec.as_ref().unwrap();
                spec.node_name.is_some()
                    && spec.containers[0].image.as_deref()
                        == Some(format!("{registry}/{image}:{tag}").as_str())
                    && p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Succeeded")
                    && container_state(p)
                        .and_then(|s| s.terminated)
                        .is_some_and(|t| t.exit_code == 0)
            });
            let job = k.jobs.get(&id).await.unwrap();
            let complete = job
                .status
                .and_then(|s| s.conditions)
                .unwrap_or_default()
                .iter()
                .any(|c| c.type_ == "Complete" && c.status == "True");
            pod_ok && complete
        },
    )
    .await;

    // Templates added and removed at runtime are seen by the scheduler.
    let accepted = |alg: &'static str| {
        let (http, base) = (k.http.clone(), k.base.clone());
        async move {
            let r = http
                .post(format!("{base}/algorithm/v1/run/{alg}"))
                .json(&json!({ "algorithmParameters": knapsack() }))
                .send()
                .await
                .unwrap();
            r.status().as_u16()
        }
    };
    assert_eq!(
        accepted("knapsack-2").await,
        400,
        "an unknown template is refused"
    );
    let mut t = k.templates.get("knapsack").await.unwrap();
    t.metadata = kube::api::ObjectMeta {
        name: Some("knapsack-2".into()),
        ..Default::default()
    };
    k.templates
        .create(&PostParams::default(), &t)
        .await
        .unwrap();
    crate::common::eventually(
        Duration::from_secs(10),
        "knapsack-2 is accepted",
        || async { accepted("knapsack-2").await == 202 },
    )
    .await;
    k.templates
        .delete("knapsack", &DeleteParams::default())
        .await
        .unwrap();
    crate::common::eventually(
        Duration::from_secs(10),
        "knapsack is no longer accepted",
        || async { accepted("knapsack").await == 400 },
    )
    .await;
    k.stop().await;
}

/// Live logs of a real pod: `GET logs?follow=true` streams the container's output while it runs
/// (lines arrive before it ends) and ends when the run ended; a copy of the pod's log is kept
/// when its Job finishes, and is served after the Job and its pod are gone.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_running_pods_log_is_followed_and_kept_after_the_pod_is_gone() {
    let k = cluster().await;
    let id = k
        .submit("chaos", json!({"mode": "sleep", "seconds": 15}))
        .await;
    let uri = format!("{}/algorithm/v1/logs/chaos/requests/{id}", k.base);
    k.running(&id).await;
    let mut resp = k
        .http
        .get(format!("{uri}?follow=true"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let mut got = String::new();
    let deadline = std::time::Instant::now() + WAIT;
    while !got.contains("[chaos] sleeping 15s") {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        let chunk = tokio::time::timeout(left, resp.chunk())
            .await
            .unwrap_or_else(|_| panic!("no sleeping line after {WAIT:?}: {got:?}"))
            .unwrap()
            .unwrap_or_else(|| panic!("the stream ended before the sleeping line: {got:?}"));
        got.push_str(&String::from_utf8_lossy(&chunk));
    }
    // The line came while the run runs (it sleeps 15 s after printing it).
    let status = crate::common::get_json(
        &k.http,
        &format!("{}/algorithm/v1/results/chaos/requests/{id}", k.base),
    )
    .await;
    assert_eq!(
        status["status"], "RUNNING",
        "{status}
{got}"
    );
    let followed_at = std::time::Instant::now();
    // The rest, until the stream ends with the run.
    loop {
        let chunk = tokio::time::timeout(WAIT, resp.chunk())
            .await
            .unwrap_or_else(|_| panic!("the follow did not end after {WAIT:?}: {got:?}"))
            .unwrap();
        match chunk {
            Some(c) => got.push_str(&String::from_utf8_lossy(&c)),
            None => break,
        }
    }
    eprintln!(
        "followed for {:?} after the first lines:\n{got}",
        followed_at.elapsed()
    );
    assert!(got.contains("[nexus-demo] fetched payload"), "{got}");
    assert!(got.contains("[chaos] action: Sleep(15)\n"), "{got}");
    assert!(got.contains("[chaos] woke up after 15s\n"), "{got}");
    assert!(!got.contains("[nexus:"), "no note: {got}");
    let r = k.terminal("chaos", &id).await;
    assert_eq!(r["status"], "COMPLETED", "{r}");

    // Kept: the copy appears as logs_uri once the Job finished.
    crate::common::eventually(WAIT, "the run's metadata names its kept logs", || async {
        k.metadata("chaos", &id).await["logs_uri"].is_string()
    })
    .await;
    // The Job and its pod go (as the TTL controller or a node drain would take them).
    k.jobs
        .delete(&id, &DeleteParams::background())
        .await
        .unwrap();
    for p in k.pods_of(&id).await {
        let _ = k
            .pods
            .delete(
                p.metadata.name.as_deref().unwrap(),
                &DeleteParams {
                    grace_period_seconds: Some(0),
                    ..DeleteParams::default()
                },
            )
            .await;
    }
    crate::common::eventually(WAIT, "the run's Job and pod are gone", || async {
        k.pods_of(&id).await.is_empty() && k.jobs.get_opt(&id).await.unwrap().is_none()
    })
    .await;
    for u in [uri.clone(), format!("{uri}?follow=true")] {
        let resp = k.http.get(&u).send().await.unwrap();
        assert_eq!(resp.status(), 200, "{u}");
        let text = resp.text().await.unwrap();
        assert!(
            text.contains("[chaos] sleeping 15s") && text.contains("[chaos] woke up after 15s"),
            "{u}: {text}"
        );
    }
    let logs_uri = k.metadata("chaos", &id).await["logs_uri"]
        .as_str()
        .unwrap()
        .to_owned();
    let kept = k.http.get(&logs_uri).send().await.unwrap();
    assert_eq!(kept.status(), 200);
    assert!(kept.text().await.unwrap().contains("[chaos] woke up"));
    k.stop().await;
}

/// A cancel deletes the run's Job with the propagation policy asked for, and the cluster's
/// garbage collector carries it out on the running pod: `Background` deletes the Job at once and
/// its pod after; `Foreground` keeps the Job (with the `foregroundDeletion` finalizer) until its
/// pod is gone; `Orphan` deletes the Job and leaves the pod running, no longer owned by it.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_cancel_propagates_to_the_job_and_its_pod_with_each_policy() {
    let k = cluster().await;
    let sleep = json!({"mode": "sleep", "seconds": 600});
    let mut ids = Vec::new();
    for _ in 0..3 {
        ids.push(k.submit("chaos", sleep.clone()).await);
    }
    for id in &ids {
        k.running(id).await;
    }
    let (bg, fg, orphan) = (&ids[0], &ids[1], &ids[2]);

    let background = async {
        k.cancel("chaos", bg, "Background").await;
        let r = k.terminal("chaos", bg).await;
        assert_eq!(r["status"], "CANCELLED", "{r}");
        crate::common::eventually(WAIT, "Background: the Job is gone", || async {
            k.jobs.get_opt(bg).await.unwrap().is_none()
        })
        .await;
        crate::common::eventually(WAIT, "Background: the pod is gone after it", || async {
            k.pods_of(bg).await.is_empty()
        })
        .await;
    };
    let foreground = async {
        k.cancel("chaos", fg, "Foreground").await;
        let r = k.terminal("chaos", fg).await;
        assert_eq!(r["status"], "CANCELLED", "{r}");
        // The Job stays, being deleted with the finalizer, while its pod terminates (its
        // container has a 30 s grace period); it goes only once no pod is left.
        let job = k
            .jobs
            .get_opt(fg)
            .await
            .unwrap()
            .expect("the Job is kept while its pod terminates");
        assert!(
            job.metadata.deletion_timestamp.is_some(),
            "{:?}",
            job.metadata
        );
        assert!(
            job.metadata
                .finalizers
                .unwrap_or_default()
                .iter()
                .any(|f| f == "foregroundDeletion"),
            "Foreground: the foregroundDeletion finalizer"
        );
        let pods_while_job = std::sync::atomic::AtomicUsize::new(0);
        crate::common::eventually(WAIT, "Foreground: the Job is gone", || {
            let (seen, k) = (&pods_while_job, &k);
            async move {
                let pods = k.pods_of(fg).await;
                if k.jobs.get_opt(fg).await.unwrap().is_some() {
                    seen.fetch_max(pods.len(), std::sync::atomic::Ordering::Relaxed);
                    return false;
                }
                assert!(
                    k.pods_of(fg).await.is_empty(),
                    "Foreground: the Job went before its pod"
                );
                true
            }
        })
        .await;
        assert!(
            pods_while_job.into_inner() > 0,
            "the pod was seen while the Job waited for it"
        );
    };
    let orphaned = async {
        k.cancel("chaos", orphan, "Orphan").await;
        let r = k.terminal("chaos", orphan).await;
        assert_eq!(r["status"], "CANCELLED", "{r}");
        crate::common::eventually(WAIT, "Orphan: the Job is gone", || async {
            k.jobs.get_opt(orphan).await.unwrap().is_none()
        })
        .await;
        let pods = k.pods_of(orphan).await;
        assert_eq!(pods.len(), 1, "Orphan: the pod is left");
        let p = &pods[0];
        assert!(!is_deleting(p), "Orphan: the pod is not being deleted");
        assert!(
            container_state(p).is_some_and(|s| s.running.is_some()),
            "Orphan: its container still runs"
        );
        assert!(
            p.metadata
                .owner_references
                .as_deref()
                .unwrap_or_default()
                .iter()
                .all(|o| o.kind != "Job"),
            "Orphan: the pod is no longer owned by the Job: {:?}",
            p.metadata.owner_references
        );
        // Nexus left it running, as asked: the operator removes it.
        let name = p.metadata.name.clone().unwrap();
        k.pods
            .delete(
                &name,
                &DeleteParams {
                    grace_period_seconds: Some(0),
                    ..DeleteParams::default()
                },
            )
            .await
            .unwrap();
    };
    tokio::join!(background, foreground, orphaned);
    k.stop().await;
}

/// Failures as the real kubelet, scheduler and Job controller produce them, each checked on the
/// run's stage, cause and details as a user reads them through the HTTP API:
/// * a container over its memory limit is OOM-killed: FAILED, naming the limit;
/// * a fatal exit code (`errorHandlingBehaviour.fatalExitCodes`): FAILED, naming the code;
/// * an image that does not exist backs off: SCHEDULING_FAILED naming the image, Job deleted;
/// * a node affinity no node matches: SCHEDULING_FAILED with the scheduler's reason, Job deleted;
/// * `deadlineSeconds` exceeded: DEADLINE_EXCEEDED naming the deadline.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn failures_from_the_real_kubelet_reach_the_user() {
    let k = cluster().await;
    let oom = k
        .submit("chaos", json!({"mode": "memory", "megabytes": 512}))
        .await;
    let fatal = k.submit("chaos", json!({"mode": "exit", "code": 2})).await;
    let pull = k.submit("missing-image", knapsack()).await;
    let nowhere = k.submit("unplaceable", knapsack()).await;
    let late = k
        .submit("chaos-deadline", json!({"mode": "sleep", "seconds": 600}))
        .await;

    let details = k
        .failure("chaos", &oom, "FAILED", "Algorithm ran out of memory")
        .await;
    assert!(details.contains("memory limit of 64Mi"), "{details}");
    let terminated = k
        .pods_of(&oom)
        .await
        .iter()
        .filter_map(|p| container_state(p)?.terminated)
        .map(|t| (t.reason.unwrap_or_default(), t.exit_code))
        .collect::<Vec<_>>();
    assert_eq!(
        terminated,
        [("OOMKilled".to_owned(), 137)],
        "the kubelet's verdict"
    );

    let details = k
        .failure(
            "chaos",
            &fatal,
            "FAILED",
            "Algorithm failed with a fatal exit code",
        )
        .await;
    assert!(details.contains("exited with code 2"), "{details}");

    let (registry, _, tag) = image();
    let details = k
        .failure(
            "missing-image",
            &pull,
            "SCHEDULING_FAILED",
            "Container image could not be pulled",
        )
        .await;
    assert!(
        details.contains(&format!("{registry}/nexus-no-such-image:{tag}")),
        "{details}"
    );
    assert!(
        details.contains("ErrImagePull") || details.contains("ImagePullBackOff"),
        "{details}"
    );

    let details = k
        .failure(
            "unplaceable",
            &nowhere,
            "SCHEDULING_FAILED",
            "No node can run the algorithm",
        )
        .await;
    assert!(details.contains("node affinity"), "{details}");
    assert!(
        details.contains("fix the workgroup's affinity"),
        "the advice names the field to fix: {details}"
    );

    let details = k
        .failure(
            "chaos-deadline",
            &late,
            "DEADLINE_EXCEEDED",
            "Algorithm exceeded its max allowed run time",
        )
        .await;
    assert!(details.contains("after 5s"), "{details}");

    // The runs given up before their container ran had their Jobs (and so pods) deleted.
    for id in [&pull, &nowhere] {
        crate::common::eventually(WAIT, "the Job of a run given up is deleted", || async {
            k.jobs.get_opt(id).await.unwrap().is_none()
        })
        .await;
    }
    k.stop().await;
}

/// `nexus crd --apply` installs (and re-applies) the CRDs and says so; a bad kubeconfig is an
/// error naming the file.
#[tokio::test]
async fn nexus_crd_apply_installs_the_crds() {
    let kc = kubeconfig();
    for _ in 0..2 {
        let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_nexus"))
            .args(["crd", "--apply", "--kubeconfig"])
            .arg(&kc)
            .output()
            .await
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "{err}");
        assert!(err.contains("installed nexusalgorithmtemplates"), "{err}");
    }
    let crds: Api<
        k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition,
    > = Api::all(client().await);
    assert!(
        crds.get_opt("nexusalgorithmworkgroups.science.sneaksanddata.com")
            .await
            .unwrap()
            .is_some()
    );
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_nexus"))
        .args(["crd", "--apply", "--kubeconfig", "/nonexistent/kubeconfig"])
        .output()
        .await
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(err.contains("/nonexistent/kubeconfig"), "{err}");
}

/// Two supervisors with `supervisor.leader_election: kubernetes` elect one leader on the Lease
/// `nexus-supervisor` of their namespace; when the leader stops it resigns, and the standby
/// leads at its next tick, long before the Lease (60 s here) could have lapsed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn supervisors_elect_their_leader_on_a_kubernetes_lease() {
    use k8s_openapi::api::coordination::v1::Lease;
    use nexus_cli::distributed::{LeaderElection, SUPERVISOR_LEASE, SupervisorProcess};

    let c = client().await;
    nexus_kube::crd::install(&c, Duration::from_secs(10))
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let ns = namespace(&c).await;
    let tmp = tempfile::tempdir().unwrap();
    let key_file = tmp.path().join("signing.key");
    std::fs::write(&key_file, KEY).unwrap();
    let store: Arc<dyn RunStore> = Arc::new(InMemoryRunStore::default());
    let start = |id: &'static str| {
        let mut sc = SupervisorProcess {
            instance_id: Some(id.into()),
            signing_key_file: Some(key_file.clone()),
            grpc: GrpcLinkConfig {
                auth: nexus_link::grpc::LinkAuth::None,
                ..GrpcLinkConfig::default()
            },
            catalog: CatalogSource::Kubernetes,
            kubernetes: kube_config(&ns),
            ..SupervisorProcess::default()
        };
        sc.supervisor.leader_election = LeaderElection::Kubernetes;
        sc.supervisor.lease_ttl = Duration::from_secs(60);
        sc.supervisor.recovery_interval = Duration::from_millis(200);
        let store = store.clone();
        async move {
            distributed::start_supervisor_with(sc, crate::common::port0().await, store)
                .await
                .expect("supervisor starts")
        }
    };
    let leases: Api<Lease> = Api::namespaced(c.clone(), &ns);
    let holder = || async {
        leases
            .get_opt(SUPERVISOR_LEASE)
            .await
            .unwrap()
            .and_then(|l| l.spec)
            .and_then(|s| s.holder_identity)
    };
    let until_held_by = |want: &'static str| async move {
        let t0 = std::time::Instant::now();
        loop {
            if holder().await.as_deref() == Some(want) {
                return t0.elapsed();
            }
            assert!(
                t0.elapsed() < Duration::from_secs(30),
                "the Lease never went to {want} (holder: {:?})",
                holder().await
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    };
    let a = start("a").await;
    until_held_by("supervisor/a").await;
    let b = start("b").await;
    // b stands by through several of its ticks (200 ms) while a renews.
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(holder().await.as_deref(), Some("supervisor/a"));
    a.stop().await;
    let took = until_held_by("supervisor/b").await;
    eprintln!("leadership handed over {took:?} after the leader stopped (Lease duration 60 s)");
    assert!(
        took < Duration::from_secs(30),
        "the standby waited for the Lease to lapse ({took:?})"
    );
    let spec = leases.get(SUPERVISOR_LEASE).await.unwrap().spec.unwrap();
    assert_eq!(spec.lease_duration_seconds, Some(60));
    b.stop().await;
    assert_eq!(holder().await, None, "b resigned when it stopped");
}
