//! The CRDs, the rendered Jobs, the catalog reflector, the Lease and the Kubernetes executor
//! against a real cluster.
//!
//! Run by the integration tier, which starts a single-node cluster (`scripts/kube-cluster.sh`:
//! the test API server of `tools/kube-apiserver`, kube-controller-manager, kube-scheduler and a
//! kubelet on containerd) and sets `NEXUS_TEST_KUBECONFIG` to its kubeconfig. The executor's
//! Jobs run real containers of the Nexus image named by `NEXUS_TEST_IMAGE` (loaded into the
//! node); nothing plays the Job controller or the kubelet. The CRD, rendering, catalog and Lease
//! tests need only the API server. Each test works in a namespace of its own. Without the
//! variables every test fails with a message saying how to provide them.

use std::time::Duration;

use k8s_openapi::api::batch::v1::Job;
use kube::api::{DeleteParams, PostParams};
use kube::{Api, Client};
use nexus_executor::contract::LaunchContext;
use nexus_kube::client::{ApiBudget, KubeClientConfig};
use nexus_kube::job::{JobOptions, render_job};
use nexus_model::catalog::Catalog;
use nexus_model::spec::{
    AlgorithmSpec, NexusAlgorithmTemplate, NexusAlgorithmWorkgroup, WorkgroupSpec,
};
use tokio_util::sync::CancellationToken;

const ENV: &str = "NEXUS_TEST_KUBECONFIG";
const IMAGE_ENV: &str = "NEXUS_TEST_IMAGE";

async fn client() -> Client {
    let path = std::env::var(ENV).unwrap_or_else(|_| {
        panic!(
            "{ENV} is not set: these tests need a real Kubernetes cluster. Start one with \
             `scripts/kube-cluster.sh start` (it prints the kubeconfig path) and run them with \
             {ENV}=<that path> (scripts/integration.sh does both)"
        )
    });
    let config = KubeClientConfig {
        kubeconfig: Some(path.into()),
        ..KubeClientConfig::default()
    };
    nexus_kube::client::client(&config, &ApiBudget::new(config.api_budget))
        .await
        .unwrap_or_else(|e| panic!("cannot reach the API server: {e}"))
}

/// Applies both CRDs (idempotent) and waits until they are Established.
async fn install_crds(c: &Client) {
    nexus_kube::crd::install(c, Duration::from_secs(10))
        .await
        .unwrap_or_else(|e| panic!("{e}"));
}

async fn namespace(c: &Client, test: &str) -> String {
    nexus_kube::testkit::create_namespace(c, test)
        .await
        .unwrap_or_else(|e| panic!("{e}"))
}

fn manifest<T: serde::de::DeserializeOwned>(yaml: &str) -> T {
    serde_yaml::from_str(yaml).unwrap()
}

const TEMPLATE: &str = r#"
apiVersion: science.sneaksanddata.com/v1
kind: NexusAlgorithmTemplate
metadata:
  name: trainer
spec:
  container: {image: ml/trainer, registry: registry.example, versionTag: "2025.1", serviceAccountName: trainer-sa}
  computeResources: {cpuLimit: "2", memoryLimit: 8Gi, customResources: {nvidia.com/gpu: "1"}}
  workgroupRef: {name: gpu, group: science.sneaksanddata.com, kind: NexusAlgorithmWorkgroup}
  command: python3 -m trainer
  args: ["--sas-uri=%s", "--request-id=%s"]
  runtimeEnvironment:
    environmentVariables:
      - {name: MODE, value: fast}
      - {name: DB_PASSWORD, valueFrom: {secretKeyRef: {name: trainer-secrets, key: db-password}}}
    mappedEnvironmentVariables: [{configMapRef: {name: trainer-config}}]
    annotations: {team: ml}
    deadlineSeconds: 7200
    maximumRetries: 3
  errorHandlingBehaviour: {transientExitCodes: [75], fatalExitCodes: [2]}
  datadogIntegrationSettings: {mountDatadogSocket: true}
  payloadConfiguration: {payloadValidFor: 6h}
"#;

const WORKGROUP: &str = r#"
apiVersion: science.sneaksanddata.com/v1
kind: NexusAlgorithmWorkgroup
metadata:
  name: gpu
spec:
  description: GPU nodes
  cluster: gpu-cluster
  tolerations: [{key: nvidia.com/gpu, operator: Exists, effect: NoSchedule}]
  affinity:
    nodeAffinity:
      requiredDuringSchedulingIgnoredDuringExecution:
        nodeSelectorTerms: [{matchExpressions: [{key: kubernetes.io/arch, operator: In, values: [amd64]}]}]
"#;

#[tokio::test]
async fn the_crds_are_accepted_and_refuse_bad_manifests_at_apply_time() {
    let c = client().await;
    install_crds(&c).await;
    let ns = namespace(&c, "crd").await;
    let templates: Api<NexusAlgorithmTemplate> = Api::namespaced(c.clone(), &ns);
    let workgroups: Api<NexusAlgorithmWorkgroup> = Api::namespaced(c.clone(), &ns);
    workgroups
        .create(&PostParams::default(), &manifest(WORKGROUP))
        .await
        .expect("a good workgroup is accepted");
    let created = templates
        .create(&PostParams::default(), &manifest(TEMPLATE))
        .await
        .expect("a good template is accepted");
    assert_eq!(created.spec.command, "python3 -m trainer");
    // The repository's example manifests are valid custom resources too.
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/templates");
    for e in std::fs::read_dir(dir).unwrap() {
        let text = std::fs::read_to_string(e.unwrap().path()).unwrap();
        if text.contains("kind: NexusAlgorithmTemplate") {
            templates
                .create(&PostParams::default(), &manifest(&text))
                .await
                .unwrap();
        } else {
            workgroups
                .create(&PostParams::default(), &manifest(&text))
                .await
                .unwrap();
        }
    }
    // Bad manifests are refused by the API server, naming the field.
    let bad: Vec<(&str, &str, &str)> = vec![
        (
            "cpuLimit: \"2\"",
            "cpuLimit: lots",
            "spec.computeResources.cpuLimit",
        ),
        (
            "payloadValidFor: 6h",
            "payloadValidFor: soon",
            "spec.payloadConfiguration.payloadValidFor",
        ),
        (
            "command: python3 -m trainer",
            "command: \"\"",
            "spec.command",
        ),
        (
            "deadlineSeconds: 7200",
            "deadlineSeconds: 0",
            "spec.runtimeEnvironment.deadlineSeconds",
        ),
        ("versionTag: \"2025.1\", ", "", "spec.container.versionTag"),
        (
            "nvidia.com/gpu: \"1\"",
            "nvidia.com/gpu: one",
            "spec.computeResources.customResources",
        ),
    ];
    for (i, (from, to, field)) in bad.into_iter().enumerate() {
        assert!(TEMPLATE.contains(from), "{from}");
        let text = TEMPLATE
            .replace(from, to)
            .replace("name: trainer\n", &format!("name: bad-{i}\n"));
        let t: NexusAlgorithmTemplate = serde_yaml::from_str(&text).unwrap_or_else(|e| {
            // A manifest Nexus itself cannot read never reaches the server; that is a refusal too.
            panic!("{field}: {e}")
        });
        match templates.create(&PostParams::default(), &t).await {
            Err(kube::Error::Api(e)) => {
                assert_eq!(e.code, 422, "{field}: {e:?}");
                assert!(
                    e.message.contains(field),
                    "{field} not named in: {}",
                    e.message
                );
            }
            other => panic!("{field}: the API server accepted a bad manifest: {other:?}"),
        }
    }
    let wg_bad: NexusAlgorithmWorkgroup = manifest(
        &WORKGROUP
            .replace("cluster: gpu-cluster", "cluster: Not_A_Name")
            .replace("name: gpu", "name: bad-wg"),
    );
    let e = workgroups
        .create(&PostParams::default(), &wg_bad)
        .await
        .unwrap_err();
    assert!(e.to_string().contains("spec.cluster"), "{e}");
}

#[tokio::test]
async fn a_rendered_job_passes_the_api_servers_validation() {
    let c = client().await;
    let ns = namespace(&c, "job").await;
    let t: NexusAlgorithmTemplate = manifest(TEMPLATE);
    let w: NexusAlgorithmWorkgroup = manifest(WORKGROUP);
    let spec: AlgorithmSpec = t.spec;
    let wg: WorkgroupSpec = w.spec;
    let mut run = nexus_store::test_suite::sample_run("trainer");
    run.applied_configuration = spec;
    run.workgroup = "gpu".into();
    run.shard = "gpu-cluster".into();
    let ctx = LaunchContext {
        payload_url: "https://nexus.example/data/v1/payloads/trainer/x?sig=p",
        run_token: "token",
        receiver_url: "https://receiver.example",
        result_upload_url: "https://s3.example/results/x?sig=r",
        scheduler_url: "",
    };
    let opts = JobOptions {
        namespace: ns.clone(),
        ..JobOptions::default()
    };
    let job = render_job(&run, &wg, &ctx, None, &opts).expect("renders");
    let jobs: Api<Job> = Api::namespaced(c.clone(), &ns);
    let created = jobs
        .create(&PostParams::default(), &job)
        .await
        .unwrap_or_else(|e| panic!("the API server refused the rendered Job: {e}"));
    let spec = created.spec.unwrap();
    assert_eq!(spec.backoff_limit, Some(3));
    assert_eq!(spec.active_deadline_seconds, Some(7200));
    assert_eq!(spec.ttl_seconds_after_finished, Some(300));
    assert_eq!(spec.pod_failure_policy.unwrap().rules.len(), 3);
    // Server-side dry run of the child with a parent owner reference.
    let parent = nexus_kube::job::ParentJob {
        name: created.metadata.name.clone().unwrap(),
        uid: created.metadata.uid.clone().unwrap(),
    };
    let mut child = nexus_store::test_suite::sample_run("trainer");
    child.applied_configuration = run.applied_configuration.clone();
    let child_job = render_job(&child, &wg, &ctx, Some(&parent), &opts).unwrap();
    let made = jobs
        .create(&PostParams::default(), &child_job)
        .await
        .unwrap();
    assert_eq!(made.metadata.owner_references.unwrap()[0].uid, parent.uid);
    jobs.delete(&child.id.to_string(), &DeleteParams::background())
        .await
        .unwrap();
}

#[tokio::test]
async fn the_catalog_follows_templates_added_and_deleted_at_runtime() {
    let c = client().await;
    install_crds(&c).await;
    let ns = namespace(&c, "catalog").await;
    let templates: Api<NexusAlgorithmTemplate> = Api::namespaced(c.clone(), &ns);
    let workgroups: Api<NexusAlgorithmWorkgroup> = Api::namespaced(c.clone(), &ns);
    workgroups
        .create(&PostParams::default(), &manifest(WORKGROUP))
        .await
        .unwrap();
    let catalog = Catalog::default();
    let (synced, stop) = (CancellationToken::new(), CancellationToken::new());
    let task = tokio::spawn(nexus_kube::catalog::watch_cluster(
        catalog.clone(),
        c.clone(),
        Some(ns.clone()),
        synced.clone(),
        stop.clone(),
    ));
    tokio::time::timeout(Duration::from_secs(20), synced.cancelled())
        .await
        .expect("the first list completes");
    assert!(catalog.snapshot().workgroups.contains_key("gpu"));
    assert!(catalog.snapshot().templates.is_empty());
    let wait = |want: bool| {
        let catalog = catalog.clone();
        async move {
            for _ in 0..100 {
                if catalog.snapshot().templates.contains_key("trainer") == want {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            panic!(
                "the catalog never saw the template {}",
                if want { "added" } else { "deleted" }
            );
        }
    };
    templates
        .create(&PostParams::default(), &manifest(TEMPLATE))
        .await
        .unwrap();
    wait(true).await;
    assert_eq!(
        catalog.snapshot().templates["trainer"].spec.command,
        "python3 -m trainer"
    );
    templates
        .delete("trainer", &DeleteParams::default())
        .await
        .unwrap();
    wait(false).await;
    stop.cancel();
    task.await.unwrap();
}

/// The Nexus image loaded into the node, as `(registry, image, versionTag)`.
fn image() -> (String, String, String) {
    let v = std::env::var(IMAGE_ENV).unwrap_or_else(|_| {
        panic!(
            "{IMAGE_ENV} is not set: the executor tests run real containers of the Nexus image. \
             Build it (`NEXUS_BIN_DIR=target/debug NEXUS_IMAGE=localhost/nexus:e2e \
             NEXUS_IMAGE_SMOKE=0 bash scripts/image.sh`), load it into the cluster \
             (`scripts/kube-cluster.sh load-image localhost/nexus:e2e`) and set \
             {IMAGE_ENV}=localhost/nexus:e2e (scripts/integration.sh does all three)"
        )
    });
    v.rsplit_once('/')
        .and_then(|(registry, rest)| {
            let (image, tag) = rest.rsplit_once(':')?;
            Some((registry.to_owned(), image.to_owned(), tag.to_owned()))
        })
        .unwrap_or_else(|| panic!("{IMAGE_ENV}={v} is not of the form <registry>/<image>:<tag>"))
}

/// A template whose Job runs `command` in the Nexus image, within `deadline_seconds`.
fn runnable(command: &str, deadline_seconds: u32) -> NexusAlgorithmTemplate {
    let (registry, image, tag) = image();
    serde_json::from_value(serde_json::json!({
        "apiVersion": "science.sneaksanddata.com/v1", "kind": "NexusAlgorithmTemplate",
        "metadata": {"name": "runnable"},
        "spec": {
            "container": {"image": image, "registry": registry, "versionTag": tag},
            "computeResources": {"cpuLimit": "1", "memoryLimit": "64Mi"},
            "workgroupRef": {"name": "plain", "group": "science.sneaksanddata.com",
                             "kind": "NexusAlgorithmWorkgroup"},
            "command": command,
            "runtimeEnvironment": {"deadlineSeconds": deadline_seconds, "maximumRetries": 0}
        }
    }))
    .unwrap()
}

/// A Kubernetes executor in a namespace of its own.
struct ExecFixture {
    c: Client,
    ns: String,
    exec: nexus_kube::KubeExecutor,
    stop: CancellationToken,
    jobs: Api<Job>,
}

type Events = tokio::sync::mpsc::UnboundedReceiver<nexus_executor::ExecutorEvent>;

impl ExecFixture {
    /// The fixture and the executor's events.
    async fn new(prefix: &str) -> (Self, Events) {
        let c = client().await;
        let ns = namespace(&c, prefix).await;
        Self::start(c, ns)
    }

    /// An executor starting now in namespace `ns`, and its events.
    fn start(c: Client, ns: String) -> (Self, Events) {
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        let stop = CancellationToken::new();
        let opts = JobOptions {
            namespace: ns.clone(),
            ..JobOptions::default()
        };
        let exec = nexus_kube::KubeExecutor::new(
            c.clone(),
            opts,
            nexus_kube::classify::FailureConfig::default(),
            tx,
            stop.clone(),
        );
        let jobs = Api::namespaced(c.clone(), &ns);
        (
            Self {
                c,
                ns,
                exec,
                stop,
                jobs,
            },
            rx,
        )
    }

    /// A run of `template`.
    fn run(template: &NexusAlgorithmTemplate) -> nexus_model::run::Run {
        let mut r = nexus_store::test_suite::sample_run("runnable");
        r.applied_configuration = template.spec.clone();
        r
    }

    /// The launch of `run` (the executor renders its Job), in a workgroup with no placement.
    fn launch(run: &nexus_model::run::Run) -> nexus_executor::LaunchSpec {
        let ctx = LaunchContext {
            payload_url: "https://nexus.example/p",
            run_token: "token",
            receiver_url: "https://receiver.example",
            result_upload_url: "https://s3.example/r",
            scheduler_url: "",
        };
        nexus_executor::contract::launch_spec(run, &WorkgroupSpec::default(), &ctx).unwrap()
    }

    /// Deletes the namespace (and whatever is left in it).
    async fn done(self) {
        self.stop.cancel();
        let _ = Api::<k8s_openapi::api::core::v1::Namespace>::all(self.c)
            .delete(&self.ns, &DeleteParams::background())
            .await;
    }
}

/// Waits for the executor's next event (bounded: a real pod starts in seconds).
async fn next_event(rx: &mut Events) -> nexus_executor::ExecutorEvent {
    tokio::time::timeout(Duration::from_secs(120), rx.recv())
        .await
        .expect("an executor event in time")
        .expect("the channel is open")
}

/// Real Jobs through the executor: a launch (twice: idempotent) whose container exits 0 ends
/// Succeeded when the Job controller marks the Job Complete; a container running past
/// `deadlineSeconds` ends DeadlineExceeded; a cancel deletes the Job and reports Cancelled, and
/// is idempotent; a Job deleted by someone else while its container runs fails the run with
/// that cause.
#[tokio::test]
async fn the_kubernetes_executor_runs_follows_and_cancels_real_jobs() {
    use nexus_executor::{Executor, ExecutorEvent, FailureKind, Outcome};
    use nexus_model::run::CancellationPolicy;
    let (f, mut rx) = ExecFixture::new("exec").await;
    let (exec, jobs) = (&f.exec, &f.jobs);
    let started = async |rx: &mut Events, id| match next_event(rx).await {
        ExecutorEvent::Started {
            run_id,
            executor_ref,
            ..
        } => {
            assert_eq!(run_id, id);
            assert!(
                executor_ref.starts_with(&format!("job/{}/", f.ns)),
                "{executor_ref}"
            );
        }
        e => panic!("{e:?}"),
    };

    let ok = ExecFixture::run(&runnable("nexus-demo --help", 300));
    exec.launch(ExecFixture::launch(&ok)).await.unwrap();
    exec.launch(ExecFixture::launch(&ok)).await.unwrap();
    started(&mut rx, ok.id).await;
    assert_eq!(exec.active().await, vec![ok.id]);
    let got = jobs.get(&ok.id.to_string()).await.unwrap();
    assert_eq!(got.spec.unwrap().active_deadline_seconds, Some(300));
    assert_eq!(
        next_event(&mut rx).await,
        ExecutorEvent::Finished {
            run_id: ok.id,
            outcome: Outcome::Succeeded,
            logs_stored: false
        }
    );
    assert!(exec.active().await.is_empty());

    let late = ExecFixture::run(&runnable("sleep 600", 3));
    exec.launch(ExecFixture::launch(&late)).await.unwrap();
    started(&mut rx, late.id).await;
    assert_eq!(
        next_event(&mut rx).await,
        ExecutorEvent::Finished {
            run_id: late.id,
            outcome: Outcome::DeadlineExceeded {
                deadline: Duration::from_secs(3)
            },
            logs_stored: false
        }
    );

    let cancelled = ExecFixture::run(&runnable("sleep 600", 300));
    exec.launch(ExecFixture::launch(&cancelled)).await.unwrap();
    started(&mut rx, cancelled.id).await;
    exec.cancel(cancelled.id, CancellationPolicy::Background)
        .await
        .unwrap();
    assert_eq!(
        next_event(&mut rx).await,
        ExecutorEvent::Finished {
            run_id: cancelled.id,
            outcome: Outcome::Cancelled,
            logs_stored: false
        }
    );
    assert!(
        jobs.get_opt(&cancelled.id.to_string())
            .await
            .unwrap()
            .is_none()
    );
    exec.cancel(cancelled.id, CancellationPolicy::Background)
        .await
        .expect("cancel is idempotent");

    // Deleted by someone else once its container runs.
    let vanished = ExecFixture::run(&runnable("sleep 600", 300));
    exec.launch(ExecFixture::launch(&vanished)).await.unwrap();
    started(&mut rx, vanished.id).await;
    let pods: Api<k8s_openapi::api::core::v1::Pod> = Api::namespaced(f.c.clone(), &f.ns);
    let selector = format!("science.sneaksanddata.com/request-id={}", vanished.id);
    let t0 = std::time::Instant::now();
    loop {
        let list = pods
            .list(&kube::api::ListParams::default().labels(&selector))
            .await
            .unwrap();
        if list
            .items
            .iter()
            .any(|p| p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running"))
        {
            break;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(120),
            "the pod never ran: {:?}",
            list.items.iter().map(|p| &p.status).collect::<Vec<_>>()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    jobs.delete(&vanished.id.to_string(), &DeleteParams::background())
        .await
        .unwrap();
    match next_event(&mut rx).await {
        ExecutorEvent::Finished {
            run_id,
            outcome: Outcome::Diagnosed { kind, cause, .. },
            ..
        } => {
            assert_eq!((run_id, kind), (vanished.id, FailureKind::JobFailed));
            assert_eq!(cause, "Algorithm Job was deleted");
        }
        e => panic!("{e:?}"),
    }
    f.done().await;
}

/// Plays the external controller a Job names in `spec.managedBy` (the built-in Job controller
/// leaves such Jobs alone): sets its terminal status, finished at `at`.
async fn finish_managed_job(jobs: &Api<Job>, name: &str, complete: bool, at: &str) {
    let status = if complete {
        serde_json::json!({
            "startTime": at, "completionTime": at, "succeeded": 1,
            "conditions": [
                {"type": "SuccessCriteriaMet", "status": "True", "lastTransitionTime": at},
                {"type": "Complete", "status": "True", "lastTransitionTime": at}
            ]
        })
    } else {
        serde_json::json!({
            "startTime": at, "failed": 1,
            "conditions": [
                {"type": "FailureTarget", "status": "True", "reason": "BackoffLimitExceeded", "lastTransitionTime": at},
                {"type": "Failed", "status": "True", "reason": "BackoffLimitExceeded", "lastTransitionTime": at}
            ]
        })
    };
    jobs.patch_status(
        name,
        &kube::api::PatchParams::default(),
        &kube::api::Patch::Merge(&serde_json::json!({ "status": status })),
    )
    .await
    .unwrap_or_else(|e| panic!("the API server refused the status of Job {name}: {e}"));
}

/// The Job garbage collector deletes only Jobs that finished longer than their TTL (+ slack) ago:
/// not running ones, not recently finished ones, not Jobs of other components; an executor
/// makes a pass as it starts (a receiver restarted cleans up at once), then on its interval or
/// when asked. The Jobs are managed by a controller of the test's own (`spec.managedBy`), which
/// finishes them at chosen times, and carry no `ttlSecondsAfterFinished` (the TTL controller
/// leaves them alone: the executor's default TTL applies, the case this backstop exists for).
#[tokio::test]
async fn finished_jobs_past_their_ttl_are_collected() {
    let c = client().await;
    let ns = namespace(&c, "jobgc").await;
    let jobs: Api<Job> = Api::namespaced(c.clone(), &ns);
    let opts = JobOptions {
        namespace: ns.clone(),
        ..JobOptions::default()
    };
    let managed = |mut job: Job| {
        let spec = job.spec.as_mut().unwrap();
        spec.managed_by = Some("nexus.test/hand-played".into());
        spec.ttl_seconds_after_finished = None;
        job
    };
    let template = runnable("sleep 600", 300);
    let create = async || {
        let run = ExecFixture::run(&template);
        let ctx = LaunchContext {
            payload_url: "https://nexus.example/p",
            run_token: "token",
            receiver_url: "https://receiver.example",
            result_upload_url: "https://s3.example/r",
            scheduler_url: "",
        };
        let job = render_job(&run, &WorkgroupSpec::default(), &ctx, None, &opts).unwrap();
        jobs.create(&PostParams::default(), &managed(job))
            .await
            .unwrap();
        run.id.to_string()
    };
    let long_ago = "2026-01-01T00:00:00Z";
    // Long finished, finished just now, still running.
    let ids = [create().await, create().await, create().await];
    finish_managed_job(&jobs, &ids[0], true, long_ago).await;
    let now = k8s_openapi::chrono::Utc::now()
        .to_rfc3339_opts(k8s_openapi::chrono::SecondsFormat::Secs, true);
    finish_managed_job(&jobs, &ids[1], false, &now).await;
    // A long finished Job that is not a Nexus run.
    let foreign: Job = serde_json::from_value(serde_json::json!({
        "apiVersion": "batch/v1", "kind": "Job", "metadata": {"name": "not-nexus"},
        "spec": {"template": {"spec": {"restartPolicy": "Never",
            "containers": [{"name": "c", "image": "busybox"}]}}}
    }))
    .unwrap();
    jobs.create(&PostParams::default(), &managed(foreign))
        .await
        .unwrap();
    finish_managed_job(&jobs, "not-nexus", true, long_ago).await;

    // The executor's pass at start.
    let (f, _rx) = ExecFixture::start(c, ns);
    let t0 = std::time::Instant::now();
    while jobs.get_opt(&ids[0]).await.unwrap().is_some() {
        assert!(
            t0.elapsed() < Duration::from_secs(30),
            "the long finished Job was not collected as the executor started"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let kept = async |what: &str, name: &str| {
        assert!(jobs.get_opt(name).await.unwrap().is_some(), "{what}: kept");
    };
    kept("just finished", &ids[1]).await;
    kept("running", &ids[2]).await;
    kept("not ours", "not-nexus").await;

    // A pass when asked (that pass has ended: it listed before the first Job was gone).
    let later = create().await;
    finish_managed_job(&jobs, &later, true, long_ago).await;
    assert_eq!(f.exec.collect_finished_jobs().await, 1);
    assert!(
        jobs.get_opt(&later).await.unwrap().is_none(),
        "long finished: deleted"
    );
    kept("just finished", &ids[1]).await;
    kept("running", &ids[2]).await;
    kept("not ours", "not-nexus").await;
    assert_eq!(f.exec.collect_finished_jobs().await, 0);
    f.done().await;
}

/// Supervisors elect their leader on a `coordination.k8s.io/v1` Lease: one holder at a time
/// (also when several race for a new Lease), renewals keep it, a holder that stops renewing is
/// replaced once the Lease has lapsed (the transition counted), and a resignation hands it over
/// at once. Each `KubeLease` stands for one supervisor process with its own observations.
#[tokio::test]
async fn supervisors_elect_one_leader_on_a_kubernetes_lease() {
    use k8s_openapi::api::coordination::v1::Lease;
    use nexus_kube::leader::KubeLease;
    use nexus_store::leader::Leadership;

    let c = client().await;
    let ns = namespace(&c, "leader-election").await;
    let api: Api<Lease> = Api::namespaced(c.clone(), &ns);
    let ttl = Duration::from_secs(3);

    // Six contenders race for a Lease that does not exist yet: exactly one wins.
    let racers: Vec<KubeLease> = (0..6)
        .map(|_| KubeLease::new(api.clone(), "race"))
        .collect();
    let wins = futures::future::join_all(
        racers
            .iter()
            .enumerate()
            .map(|(i, l)| async move { l.try_lead(&format!("racer-{i}"), ttl).await.unwrap() }),
    )
    .await;
    assert_eq!(wins.iter().filter(|w| **w).count(), 1, "{wins:?}");

    let a = KubeLease::new(api.clone(), "nexus-supervisor");
    let b = KubeLease::new(api.clone(), "nexus-supervisor");
    assert!(a.try_lead("supervisor/a", ttl).await.unwrap());
    assert!(!b.try_lead("supervisor/b", ttl).await.unwrap());
    assert!(a.try_lead("supervisor/a", ttl).await.unwrap(), "a renews");
    let lease = api.get("nexus-supervisor").await.unwrap();
    let spec = lease.spec.unwrap();
    assert_eq!(spec.holder_identity.as_deref(), Some("supervisor/a"));
    assert_eq!(spec.lease_duration_seconds, Some(3));
    assert_eq!(spec.lease_transitions, Some(0));
    assert_eq!(
        a.describe(),
        format!("Lease {ns}/nexus-supervisor"),
        "named in logs"
    );

    // a stops renewing: b, asking every 200 ms, takes over once it has seen the same record
    // for the lease duration, not before.
    let t0 = std::time::Instant::now();
    while !b.try_lead("supervisor/b", ttl).await.unwrap() {
        assert!(
            t0.elapsed() < Duration::from_secs(30),
            "the lapsed Lease was never taken over"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(
        t0.elapsed() >= ttl,
        "taken over after {:?}, before the Lease lapsed",
        t0.elapsed()
    );
    let spec = api.get("nexus-supervisor").await.unwrap().spec.unwrap();
    assert_eq!(spec.holder_identity.as_deref(), Some("supervisor/b"));
    assert_eq!(spec.lease_transitions, Some(1));
    assert!(
        !a.try_lead("supervisor/a", ttl).await.unwrap(),
        "the old holder, back, does not lead while b renews"
    );

    // b resigns: a leads at its next try, without waiting for a lapse.
    a.resign("supervisor/a").await.unwrap(); // not a's: no effect
    assert!(!a.try_lead("supervisor/a", ttl).await.unwrap());
    b.resign("supervisor/b").await.unwrap();
    let spec = api.get("nexus-supervisor").await.unwrap().spec.unwrap();
    assert_eq!(spec.holder_identity, None);
    assert!(a.try_lead("supervisor/a", ttl).await.unwrap());
}
