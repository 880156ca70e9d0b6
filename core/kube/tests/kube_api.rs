//! The CRDs, the rendered Jobs and the catalog reflector against a real Kubernetes API server.
//!
//! Run by the integration tier, which builds and starts `tools/kube-apiserver` (k8s.io/kubernetes'
//! own test API server on an embedded etcd, `scripts/kube-apiserver.sh`) and sets
//! `NEXUS_TEST_KUBECONFIG` to the kubeconfig it writes. Each test works in a namespace of its own.
//! Without the variable every test fails with a message saying how to start the server.

use std::time::Duration;

use k8s_openapi::api::batch::v1::Job;
use kube::api::{DeleteParams, PostParams};
use kube::{Api, Client};
use nexus_executor::contract::LaunchContext;
use nexus_kube::client::{ApiBudget, KubeClientConfig};
use nexus_kube::job::{JobOptions, render_job};
use nexus_kube::testkit::{JobEnd, PodState, create_pod, end_job, set_pod_state};
use nexus_model::catalog::Catalog;
use nexus_model::spec::{
    AlgorithmSpec, NexusAlgorithmTemplate, NexusAlgorithmWorkgroup, WorkgroupSpec,
};
use tokio_util::sync::CancellationToken;

const ENV: &str = "NEXUS_TEST_KUBECONFIG";

async fn client() -> Client {
    let path = std::env::var(ENV).unwrap_or_else(|_| {
        panic!(
            "{ENV} is not set: these tests need a real Kubernetes API server. Start one with \
             `scripts/kube-apiserver.sh start` (it prints the kubeconfig path) and run them with \
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

/// A Kubernetes executor in a namespace of its own, with the test template and workgroup.
struct ExecFixture {
    c: Client,
    ns: String,
    exec: nexus_kube::KubeExecutor,
    stop: CancellationToken,
    jobs: Api<Job>,
    template: NexusAlgorithmTemplate,
    workgroup: NexusAlgorithmWorkgroup,
}

type Events = tokio::sync::mpsc::UnboundedReceiver<nexus_executor::ExecutorEvent>;

impl ExecFixture {
    /// The fixture and the executor's events.
    async fn new(prefix: &str, failures: nexus_kube::classify::FailureConfig) -> (Self, Events) {
        let c = client().await;
        let ns = namespace(&c, prefix).await;
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        let stop = CancellationToken::new();
        let opts = JobOptions {
            namespace: ns.clone(),
            ..JobOptions::default()
        };
        let exec = nexus_kube::KubeExecutor::new(c.clone(), opts, failures, tx, stop.clone());
        let jobs = Api::namespaced(c.clone(), &ns);
        let f = Self {
            c,
            ns,
            exec,
            stop,
            jobs,
            template: manifest(TEMPLATE),
            workgroup: manifest(WORKGROUP),
        };
        (f, rx)
    }

    /// A run of the test template.
    fn run(&self) -> nexus_model::run::Run {
        let mut r = nexus_store::test_suite::sample_run("trainer");
        r.applied_configuration = self.template.spec.clone();
        r
    }

    /// The launch of `run` (the executor renders its Job).
    fn launch(&self, run: &nexus_model::run::Run) -> nexus_executor::LaunchSpec {
        let ctx = LaunchContext {
            payload_url: "https://nexus.example/p",
            run_token: "token",
            receiver_url: "https://receiver.example",
            result_upload_url: "https://s3.example/r",
            scheduler_url: "",
        };
        nexus_executor::contract::launch_spec(run, &self.workgroup.spec, &ctx).unwrap()
    }
}

/// Plays the Job controller: marks the Job finished the way the controller would.
async fn finish_job(c: &Client, ns: &str, name: &str, complete: bool) {
    let end = if complete {
        JobEnd::Complete
    } else {
        JobEnd::Failed("DeadlineExceeded".into())
    };
    end_job(c, ns, name, &end)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
}

async fn next_event(
    rx: &mut tokio::sync::mpsc::UnboundedReceiver<nexus_executor::ExecutorEvent>,
) -> nexus_executor::ExecutorEvent {
    tokio::time::timeout(Duration::from_secs(20), rx.recv())
        .await
        .expect("an executor event in time")
        .expect("the channel is open")
}

#[tokio::test]
async fn the_kubernetes_executor_creates_follows_and_cancels_jobs() {
    use nexus_executor::{Executor, ExecutorEvent, Outcome};
    use nexus_model::run::CancellationPolicy;
    let (f, mut rx) =
        ExecFixture::new("exec", nexus_kube::classify::FailureConfig::default()).await;
    let (c, ns) = (f.c.clone(), f.ns.clone());
    let (exec, jobs, stop) = (&f.exec, &f.jobs, &f.stop);
    let launch = |run: &nexus_model::run::Run| f.launch(run);
    let mk = || f.run();

    // Launch (twice: idempotent), then the "controller" completes it.
    let ok = mk();
    exec.launch(launch(&ok)).await.unwrap();
    exec.launch(launch(&ok)).await.unwrap();
    match next_event(&mut rx).await {
        ExecutorEvent::Started {
            run_id,
            executor_ref,
            ..
        } => {
            assert_eq!(run_id, ok.id);
            assert!(
                executor_ref.starts_with(&format!("job/{ns}/")),
                "{executor_ref}"
            );
        }
        e => panic!("{e:?}"),
    }
    assert_eq!(exec.active().await, vec![ok.id]);
    let got = jobs.get(&ok.id.to_string()).await.unwrap();
    assert_eq!(got.spec.unwrap().active_deadline_seconds, Some(7200));
    finish_job(&c, &ns, &ok.id.to_string(), true).await;
    assert_eq!(
        next_event(&mut rx).await,
        ExecutorEvent::Finished {
            run_id: ok.id,
            outcome: Outcome::Succeeded,
            logs_stored: false
        }
    );
    assert!(exec.active().await.is_empty());

    // Deadline exceeded, as the Job controller reports it.
    let late = mk();
    exec.launch(launch(&late)).await.unwrap();
    let _ = next_event(&mut rx).await;
    finish_job(&c, &ns, &late.id.to_string(), false).await;
    match next_event(&mut rx).await {
        ExecutorEvent::Finished {
            run_id,
            outcome: Outcome::DeadlineExceeded { deadline },
            ..
        } => {
            assert_eq!(run_id, late.id);
            assert_eq!(deadline, Duration::from_secs(7200));
        }
        e => panic!("{e:?}"),
    }

    // Cancel with each propagation policy. Without a garbage collector in this API server, a
    // Foreground or Orphan delete leaves the Job with the finalizer that asks for it.
    for (policy, finalizer) in [
        (CancellationPolicy::Background, None),
        (CancellationPolicy::Foreground, Some("foregroundDeletion")),
        (CancellationPolicy::Orphan, Some("orphan")),
    ] {
        let r = mk();
        exec.launch(launch(&r)).await.unwrap();
        let _ = next_event(&mut rx).await;
        exec.cancel(r.id, policy).await.unwrap();
        assert_eq!(
            next_event(&mut rx).await,
            ExecutorEvent::Finished {
                run_id: r.id,
                outcome: Outcome::Cancelled,
                logs_stored: false
            }
        );
        match (jobs.get_opt(&r.id.to_string()).await.unwrap(), finalizer) {
            (None, None) => {}
            (Some(j), Some(f)) => {
                assert!(
                    j.metadata.deletion_timestamp.is_some(),
                    "{policy:?}: being deleted"
                );
                assert!(
                    j.metadata
                        .finalizers
                        .unwrap_or_default()
                        .iter()
                        .any(|x| x == f),
                    "{policy:?}: the {f} finalizer"
                );
            }
            (j, f) => panic!(
                "{policy:?}: job {:?}, expected finalizer {f:?}",
                j.map(|j| j.metadata)
            ),
        }
        exec.cancel(r.id, policy)
            .await
            .expect("cancel is idempotent");
    }
    stop.cancel();
}

/// The kubelet helper: a Job's pod goes through every state the supervisor classifies, each
/// accepted by the API server's pod status validation and read back as set.
#[tokio::test]
async fn the_kubelet_helper_sets_every_pod_state() {
    use k8s_openapi::api::core::v1::Pod;
    let c = client().await;
    let ns = namespace(&c, "kubelet").await;
    let t: NexusAlgorithmTemplate = manifest(TEMPLATE);
    let w: NexusAlgorithmWorkgroup = manifest(WORKGROUP);
    let mut run = nexus_store::test_suite::sample_run("trainer");
    run.applied_configuration = t.spec.clone();
    let ctx = LaunchContext {
        payload_url: "https://nexus.example/p",
        run_token: "token",
        receiver_url: "https://receiver.example",
        result_upload_url: "https://s3.example/r",
        scheduler_url: "",
    };
    let opts = JobOptions {
        namespace: ns.clone(),
        ..JobOptions::default()
    };
    let job = render_job(&run, &w.spec, &ctx, None, &opts).unwrap();
    let job = Api::<Job>::namespaced(c.clone(), &ns)
        .create(&PostParams::default(), &job)
        .await
        .unwrap();
    let pod = create_pod(&c, &job).await.unwrap();
    let pods: Api<Pod> = Api::namespaced(c.clone(), &ns);
    let got = pods.get(&pod).await.unwrap();
    assert_eq!(
        got.metadata.labels.as_ref().unwrap()["batch.kubernetes.io/job-name"],
        run.id.to_string()
    );
    assert_eq!(
        got.metadata.owner_references.as_ref().unwrap()[0].uid,
        job.metadata.uid.clone().unwrap()
    );
    let reason = |p: &Pod| {
        let cs = &p
            .status
            .as_ref()
            .unwrap()
            .container_statuses
            .as_ref()
            .unwrap()[0];
        let st = cs.state.as_ref().unwrap();
        st.waiting
            .as_ref()
            .and_then(|w| w.reason.clone())
            .or_else(|| st.terminated.as_ref().and_then(|t| t.reason.clone()))
            .unwrap_or_else(|| "running".into())
    };
    // The kubelet's order: scheduling trouble, pull trouble, running, then one ending per pod.
    let p = set_pod_state(
        &c,
        &ns,
        &pod,
        &PodState::Unschedulable("0/3 nodes are available: 3 Insufficient memory.".into()),
    )
    .await
    .unwrap();
    let cond = &p.status.as_ref().unwrap().conditions.as_ref().unwrap()[0];
    assert_eq!(
        (cond.reason.as_deref(), cond.status.as_str()),
        (Some("Unschedulable"), "False")
    );
    for (state, want) in [
        (PodState::ErrImagePull, "ErrImagePull"),
        (PodState::ImagePullBackOff, "ImagePullBackOff"),
        (
            PodState::ConfigError("secret \"trainer-secrets\" not found".into()),
            "CreateContainerConfigError",
        ),
        (PodState::Running, "running"),
    ] {
        let p = set_pod_state(&c, &ns, &pod, &state).await.unwrap();
        assert_eq!(reason(&p), want, "{state:?}");
    }
    let p = set_pod_state(&c, &ns, &pod, &PodState::OomKilled)
        .await
        .unwrap();
    assert_eq!(reason(&p), "OOMKilled");
    assert_eq!(p.status.as_ref().unwrap().phase.as_deref(), Some("Failed"));
    // Terminal pods are final; fresh pods for the other endings.
    for (state, want, code) in [
        (PodState::Failed(2), "Error", 2),
        (PodState::Succeeded, "Completed", 0),
    ] {
        let pod = create_pod(&c, &job).await.unwrap();
        let p = set_pod_state(&c, &ns, &pod, &state).await.unwrap();
        assert_eq!(reason(&p), want);
        let cs = &p
            .status
            .as_ref()
            .unwrap()
            .container_statuses
            .as_ref()
            .unwrap()[0];
        assert_eq!(
            cs.state
                .as_ref()
                .unwrap()
                .terminated
                .as_ref()
                .unwrap()
                .exit_code,
            code
        );
    }
}

/// Failures diagnosed from pod and Job status through the real API server: image pull and
/// scheduling problems past their grace end the run (and delete its Job); a failed Job's cause
/// comes from its pods' last termination (OOM-killed at the memory limit, a fatal exit code).
#[tokio::test]
async fn the_kubernetes_executor_diagnoses_failures_from_status() {
    use nexus_executor::{Executor, ExecutorEvent, FailureKind, Outcome};
    use nexus_kube::classify::FailureConfig;
    let failures = FailureConfig {
        image_pull_grace: Duration::from_millis(300),
        unschedulable_limit: Duration::from_millis(300),
        config_error_grace: Duration::from_secs(3600),
    };
    let (f, mut rx) = ExecFixture::new("diagnose", failures).await;
    let (c, ns) = (f.c.clone(), f.ns.clone());
    let (exec, jobs, stop) = (&f.exec, &f.jobs, &f.stop);
    // Launches a run, creates its pod as the Job controller would, returns (run id, pod).
    let start = async |rx: &mut Events| {
        let run = f.run();
        exec.launch(f.launch(&run)).await.unwrap();
        assert!(matches!(
            next_event(rx).await,
            ExecutorEvent::Started { .. }
        ));
        let job = jobs.get(&run.id.to_string()).await.unwrap();
        (run.id, create_pod(&c, &job).await.unwrap())
    };
    let diagnosis = |ev: ExecutorEvent| match ev {
        ExecutorEvent::Finished {
            run_id,
            outcome:
                Outcome::Diagnosed {
                    kind,
                    cause,
                    details,
                },
            ..
        } => (run_id, kind, cause, details),
        e => panic!("expected a diagnosis, got {e:?}"),
    };

    // A configuration error within its (long) grace, then the container runs: nothing given up;
    // then an image that cannot be pulled, past its grace: SCHEDULING_FAILED-class, Job deleted.
    let (id, pod) = start(&mut rx).await;
    set_pod_state(
        &c,
        &ns,
        &pod,
        &PodState::ConfigError("secret \"trainer-secrets\" not found".into()),
    )
    .await
    .unwrap();
    set_pod_state(&c, &ns, &pod, &PodState::ImagePullBackOff)
        .await
        .unwrap();
    let (run_id, kind, cause, details) = diagnosis(next_event(&mut rx).await);
    assert_eq!((run_id, kind), (id, FailureKind::ImagePull));
    assert_eq!(cause, "Container image could not be pulled");
    assert!(
        details.contains("registry.example/ml/trainer:2025.1"),
        "{details}"
    );
    for _ in 0..100 {
        if jobs.get_opt(&id.to_string()).await.unwrap().is_none() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        jobs.get_opt(&id.to_string()).await.unwrap().is_none(),
        "the Job of a run given up is deleted"
    );
    assert!(exec.active().await.is_empty());

    // No node fits: the scheduler's message reaches the cause.
    let (id, pod) = start(&mut rx).await;
    set_pod_state(
        &c,
        &ns,
        &pod,
        &PodState::Unschedulable("0/3 nodes are available: 3 Insufficient nvidia.com/gpu.".into()),
    )
    .await
    .unwrap();
    let (run_id, kind, _, details) = diagnosis(next_event(&mut rx).await);
    assert_eq!((run_id, kind), (id, FailureKind::Unschedulable));
    assert!(
        details.contains("3 Insufficient nvidia.com/gpu"),
        "{details}"
    );

    // OOM-killed, then the Job controller gives up: the cause names the memory limit.
    let (id, pod) = start(&mut rx).await;
    set_pod_state(&c, &ns, &pod, &PodState::Running)
        .await
        .unwrap();
    set_pod_state(&c, &ns, &pod, &PodState::OomKilled)
        .await
        .unwrap();
    end_job(
        &c,
        &ns,
        &id.to_string(),
        &JobEnd::Failed("BackoffLimitExceeded".into()),
    )
    .await
    .unwrap();
    let (run_id, kind, cause, details) = diagnosis(next_event(&mut rx).await);
    assert_eq!((run_id, kind), (id, FailureKind::OutOfMemory));
    assert_eq!(cause, "Algorithm ran out of memory");
    assert!(details.contains("memory limit of 8Gi"), "{details}");

    // A fatal exit code matched by the pod failure policy.
    let (id, pod) = start(&mut rx).await;
    set_pod_state(&c, &ns, &pod, &PodState::Failed(2))
        .await
        .unwrap();
    end_job(
        &c,
        &ns,
        &id.to_string(),
        &JobEnd::Failed("PodFailurePolicy".into()),
    )
    .await
    .unwrap();
    let (run_id, kind, _, details) = diagnosis(next_event(&mut rx).await);
    assert_eq!((run_id, kind), (id, FailureKind::PodFailurePolicy));
    assert!(details.contains("exited with code 2"), "{details}");

    // The Job vanishes (deleted outside Nexus) while running: the run fails with that cause.
    let (id, pod) = start(&mut rx).await;
    set_pod_state(&c, &ns, &pod, &PodState::Running)
        .await
        .unwrap();
    jobs.delete(&id.to_string(), &DeleteParams::background())
        .await
        .unwrap();
    let (run_id, kind, cause, _) = diagnosis(next_event(&mut rx).await);
    assert_eq!((run_id, kind), (id, FailureKind::JobFailed));
    assert_eq!(cause, "Algorithm Job was deleted");
    stop.cancel();
}

/// The Job garbage collector deletes only Jobs that finished longer than their TTL (+ slack) ago:
/// not running ones, not recently finished ones, not Jobs of other components.
#[tokio::test]
async fn finished_jobs_past_their_ttl_are_collected() {
    use nexus_executor::Executor;
    let (f, _rx) = ExecFixture::new("jobgc", nexus_kube::classify::FailureConfig::default()).await;
    let (c, ns) = (f.c.clone(), f.ns.clone());
    let (exec, jobs, stop) = (&f.exec, &f.jobs, &f.stop);
    let mut ids = Vec::new();
    for _ in 0..3 {
        let run = f.run();
        exec.launch(f.launch(&run)).await.unwrap();
        ids.push(run.id.to_string());
    }
    // Long finished (the kit's timestamps are in January), finished just now, still running.
    end_job(&c, &ns, &ids[0], &JobEnd::Complete).await.unwrap();
    let now = k8s_openapi::chrono::Utc::now()
        .to_rfc3339_opts(k8s_openapi::chrono::SecondsFormat::Secs, true);
    jobs.patch_status(
        &ids[1],
        &kube::api::PatchParams::default(),
        &kube::api::Patch::Merge(&serde_json::json!({"status": {
            "startTime": now, "failed": 1,
            "conditions": [
                {"type": "FailureTarget", "status": "True", "reason": "BackoffLimitExceeded", "lastTransitionTime": now},
                {"type": "Failed", "status": "True", "reason": "BackoffLimitExceeded", "lastTransitionTime": now}
            ]
        }})),
    )
    .await
    .unwrap();
    // A finished Job that is not a Nexus run.
    let foreign: Job = serde_json::from_value(serde_json::json!({
        "apiVersion": "batch/v1", "kind": "Job", "metadata": {"name": "not-nexus"},
        "spec": {"template": {"spec": {"restartPolicy": "Never",
            "containers": [{"name": "c", "image": "busybox"}]}}}
    }))
    .unwrap();
    jobs.create(&PostParams::default(), &foreign).await.unwrap();
    end_job(&c, &ns, "not-nexus", &JobEnd::Complete)
        .await
        .unwrap();

    assert_eq!(exec.collect_finished_jobs().await, 1);
    assert!(
        jobs.get_opt(&ids[0]).await.unwrap().is_none(),
        "long finished: deleted"
    );
    assert!(
        jobs.get_opt(&ids[1]).await.unwrap().is_some(),
        "just finished: kept"
    );
    assert!(
        jobs.get_opt(&ids[2]).await.unwrap().is_some(),
        "running: kept"
    );
    assert!(
        jobs.get_opt("not-nexus").await.unwrap().is_some(),
        "not ours: kept"
    );
    assert_eq!(exec.collect_finished_jobs().await, 0);
    stop.cancel();
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
