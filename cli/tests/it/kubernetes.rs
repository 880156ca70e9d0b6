//! A scheduler reading templates from the cluster and a receiver running runs as Kubernetes Jobs,
//! against the real API server of `tools/kube-apiserver` (integration tier: `scripts/integration.sh`
//! starts it and sets `NEXUS_TEST_KUBECONFIG`; without it these tests fail, saying how to start it).
//!
//! The test API server runs no controllers and no kubelet, so the test plays them through the API
//! (`nexus_kube::testkit`): it creates the Job's pod, runs the pod's container — the real
//! `nexus-demo` binary with the Job's command, arguments and environment — as a local process,
//! reports the pod's status, and marks the Job Complete as the Job controller would.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::batch::v1::Job;
use kube::api::{DeleteParams, PostParams};
use kube::{Api, Client};
use nexus_cli::distributed::{
    self, CatalogSource, ReceiverProcess, Runtime, SchedulerProcess, ShardEntry, SharedStores,
};
use nexus_kube::client::{ApiBudget, KubeClientConfig};
use nexus_kube::testkit::{JobEnd, PodState, create_pod, end_job, set_pod_state};
use nexus_link::grpc::{GrpcLinkConfig, LinkAuth};
use nexus_model::spec::{NexusAlgorithmTemplate, NexusAlgorithmWorkgroup};
use nexus_store::{InMemoryRunStore, RunStore};

const ENV: &str = "NEXUS_TEST_KUBECONFIG";
const KEY: &[u8] = b"0123456789abcdef0123456789abcdef-kubernetes-test";
const SHARD: &str = "kube-a";

fn kubeconfig() -> PathBuf {
    std::env::var(ENV)
        .unwrap_or_else(|_| {
            panic!(
                "{ENV} is not set: these tests need a real Kubernetes API server. Start one with \
                 `scripts/kube-apiserver.sh start` (it prints the kubeconfig path) and run them \
                 with {ENV}=<that path> (scripts/integration.sh does both)"
            )
        })
        .into()
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

fn template(name: &str) -> NexusAlgorithmTemplate {
    serde_yaml::from_str(&format!(
        "apiVersion: science.sneaksanddata.com/v1\nkind: NexusAlgorithmTemplate\nmetadata:\n  name: {name}\nspec:\n  container: {{image: nexus-demo, registry: local, versionTag: latest}}\n  computeResources: {{cpuLimit: \"1\", memoryLimit: 256Mi}}\n  workgroupRef: {{name: wg, group: science.sneaksanddata.com, kind: NexusAlgorithmWorkgroup}}\n  command: nexus-demo\n  args: [knapsack, --sas-uri=%s, --request-id=%s]\n  runtimeEnvironment: {{deadlineSeconds: 120, maximumRetries: 0}}\n"
    ))
    .unwrap()
}

fn knapsack() -> serde_json::Value {
    let text = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/payloads/knapsack.json"),
    )
    .unwrap();
    serde_json::from_str(&text).unwrap()
}

/// Waits for the Job of run `id` to exist and returns it.
async fn job_of(jobs: &Api<Job>, id: &str) -> Job {
    for _ in 0..400 {
        if let Some(j) = jobs.get_opt(id).await.unwrap() {
            return j;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("no Job {id} after 20s");
}

/// Plays the kubelet for the Job's single container: runs its command with its arguments and
/// literal environment as a local process (the demo algorithm is on `path`) and returns the exit
/// code.
async fn run_container(job: &Job, path: &std::path::Path) -> i32 {
    let c = &job
        .spec
        .as_ref()
        .unwrap()
        .template
        .spec
        .as_ref()
        .unwrap()
        .containers[0];
    let argv: Vec<String> = c
        .command
        .clone()
        .unwrap_or_default()
        .into_iter()
        .chain(c.args.clone().unwrap_or_default())
        .collect();
    let mut cmd = tokio::process::Command::new(path.join(&argv[0]));
    cmd.args(&argv[1..]).env_clear();
    for e in c.env.clone().unwrap_or_default() {
        if let Some(v) = e.value {
            cmd.env(e.name, v);
        }
    }
    let out = cmd.output().await.expect("run the container's command");
    assert!(
        out.status.success(),
        "the algorithm failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.status.code().unwrap_or(-1)
}

struct Deployment {
    _tmp: tempfile::TempDir,
    store: Arc<dyn RunStore>,
    scheduler: nexus_cli::standalone::Handle,
    receiver: distributed::ReceiverHandle,
}

/// A receiver for shard `kube-a` on Kubernetes in `ns` and a scheduler reading the catalog from
/// `ns`, on an in-memory run store and an HTTP-served payload store.
async fn deploy(ns: &str) -> Deployment {
    let tmp = tempfile::tempdir().unwrap();
    let key_file = tmp.path().join("signing.key");
    std::fs::write(&key_file, KEY).unwrap();
    let store: Arc<dyn RunStore> = Arc::new(InMemoryRunStore::default());
    let stores = SharedStores {
        store: store.clone(),
        payloads: Some(crate::common::http_payloads(tmp.path(), KEY, store.clone()).await),
    };
    let link = GrpcLinkConfig {
        auth: LinkAuth::None,
        ..GrpcLinkConfig::default()
    };
    let rc = ReceiverProcess {
        shard: SHARD.into(),
        signing_key_file: Some(key_file.clone()),
        grpc: link.clone(),
        work_dir: tmp.path().join("receiver"),
        drain_grace: Duration::from_secs(1),
        runtime: Runtime::Kubernetes,
        kubernetes: kube_config(ns),
        ..ReceiverProcess::default()
    };
    let make = distributed::kube_executor(&rc).await.unwrap();
    let receiver = distributed::start_receiver_with(
        rc,
        crate::common::port0().await,
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
    let sc = SchedulerProcess {
        signing_key_file: Some(key_file),
        grpc: link,
        shards,
        catalog: CatalogSource::Kubernetes,
        kubernetes: kube_config(ns),
        ..SchedulerProcess::default()
    };
    let scheduler = distributed::start_scheduler_with(sc, crate::common::port0().await, stores)
        .await
        .expect("scheduler starts");
    Deployment {
        _tmp: tmp,
        store,
        scheduler,
        receiver,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn runs_become_jobs_complete_cancel_and_follow_templates_in_the_cluster() {
    let demo = crate::common::demo_dir();
    let c = client().await;
    nexus_kube::crd::install(&c, Duration::from_secs(10))
        .await
        .unwrap();
    let ns = namespace(&c).await;
    let templates: Api<NexusAlgorithmTemplate> = Api::namespaced(c.clone(), &ns);
    let workgroups: Api<NexusAlgorithmWorkgroup> = Api::namespaced(c.clone(), &ns);
    let wg: NexusAlgorithmWorkgroup = serde_yaml::from_str(&format!(
        "apiVersion: science.sneaksanddata.com/v1\nkind: NexusAlgorithmWorkgroup\nmetadata:\n  name: wg\nspec:\n  cluster: {SHARD}\n"
    ))
    .unwrap();
    workgroups
        .create(&PostParams::default(), &wg)
        .await
        .unwrap();
    templates
        .create(&PostParams::default(), &template("knapsack"))
        .await
        .unwrap();

    let d = deploy(&ns).await;
    let base = d.scheduler.url.clone();
    let http = reqwest::Client::new();
    let jobs: Api<Job> = Api::namespaced(c.clone(), &ns);

    // 1. A run becomes a Job; the "kubelet" runs it, the algorithm completes through the
    //    receiver, the "Job controller" marks the Job Complete: the run is COMPLETED.
    let id = crate::common::submit(&http, &base, "knapsack", knapsack()).await;
    let job = job_of(&jobs, &id).await;
    let labels = job.metadata.labels.clone().unwrap();
    assert_eq!(
        labels["science.sneaksanddata.com/request-id"], id,
        "{labels:?}"
    );
    assert_eq!(labels["science.sneaksanddata.com/shard"], SHARD);
    assert_eq!(
        job.spec.as_ref().unwrap().ttl_seconds_after_finished,
        Some(300)
    );
    let pod = create_pod(&c, &job).await.unwrap();
    set_pod_state(&c, &ns, &pod, &PodState::Running)
        .await
        .unwrap();
    let run = d.store.get(id.parse().unwrap()).await.unwrap().unwrap();
    assert!(
        run.owner
            .as_deref()
            .unwrap_or_default()
            .starts_with(&format!("receiver/{SHARD}/")),
        "{:?}",
        run.owner
    );
    assert_eq!(run_container(&job, &demo).await, 0);
    set_pod_state(&c, &ns, &pod, &PodState::Succeeded)
        .await
        .unwrap();
    end_job(&c, &ns, &id, &JobEnd::Complete).await.unwrap();
    let r =
        crate::common::wait_terminal(&http, &base, "knapsack", &id, Duration::from_secs(30)).await;
    assert_eq!(r["status"], "COMPLETED", "{r}");
    let result = crate::common::get_json(&http, r["resultUri"].as_str().unwrap()).await;
    assert_eq!(result["totalValue"], 90, "{result}");

    // 2. Cancelling a run deletes its Job with the requested propagation policy. This API
    //    server has no garbage collector, so a Foreground delete leaves the Job terminating with
    //    the foregroundDeletion finalizer: exactly what was asked for.
    let id = crate::common::submit(&http, &base, "knapsack", knapsack()).await;
    let _ = job_of(&jobs, &id).await;
    let resp = http
        .post(format!("{base}/algorithm/v1/cancel/knapsack/requests/{id}"))
        .json(&serde_json::json!({
            "initiator": "kubernetes-test", "reason": "no longer needed",
            "cancellationPolicy": "Foreground"
        }))
        .send()
        .await
        .unwrap();
    assert!(resp.status().is_success(), "{}", resp.text().await.unwrap());
    let r =
        crate::common::wait_terminal(&http, &base, "knapsack", &id, Duration::from_secs(30)).await;
    assert_eq!(r["status"], "CANCELLED", "{r}");
    crate::common::eventually(Duration::from_secs(10), "the Job is being deleted", || {
        let jobs = jobs.clone();
        let id = id.clone();
        async move {
            jobs.get_opt(&id).await.unwrap().is_some_and(|j| {
                j.metadata.deletion_timestamp.is_some()
                    && j.metadata
                        .finalizers
                        .unwrap_or_default()
                        .iter()
                        .any(|f| f == "foregroundDeletion")
            })
        }
    })
    .await;

    // 3. Templates added and removed at runtime are seen by the scheduler.
    let accepted = |alg: &'static str| {
        let (http, base) = (http.clone(), base.clone());
        async move {
            let r = http
                .post(format!("{base}/algorithm/v1/run/{alg}"))
                .json(&serde_json::json!({ "algorithmParameters": knapsack() }))
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
    templates
        .create(&PostParams::default(), &template("knapsack-2"))
        .await
        .unwrap();
    crate::common::eventually(
        Duration::from_secs(10),
        "knapsack-2 is accepted",
        || async { accepted("knapsack-2").await == 202 },
    )
    .await;
    templates
        .delete("knapsack", &DeleteParams::default())
        .await
        .unwrap();
    crate::common::eventually(
        Duration::from_secs(10),
        "knapsack is no longer accepted",
        || async { accepted("knapsack").await == 400 },
    )
    .await;

    d.scheduler.stop().await;
    d.receiver.http.stop().await;
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
