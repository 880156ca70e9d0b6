//! Rendering a run into the Kubernetes `batch/v1` Job that executes it (reference §3.4,
//! `ToV1Job`), as a pure function: no client, no cluster, no clock.
//!
//! Faithful to the reference, with its defects fixed:
//! * argument placeholders are explicit ([`nexus_executor::contract::render_args`]), not substrings;
//! * an empty `fatalExitCodes` / `transientExitCodes` list produces no pod-failure-policy rule
//!   (the API server rejects a rule with no exit codes);
//! * invalid quantities, tolerations, affinity, `valueFrom` and `envFrom` entries are
//!   [`RenderError`]s naming the field, never panics;
//! * label values are always valid (see [`label_value`]);
//! * `ttlSecondsAfterFinished` is configurable ([`JobOptions::ttl_seconds_after_finished`]).
//!
//! Kept from the reference on purpose: the container is named after the request id (the
//! supervisor and existing tooling look for it), and the Job carries no namespace-independent
//! identity other than its name (= run id).
//!
//! Resources: a missing `cpuLimit` or `memoryLimit` simply omits that resource from both limits
//! and requests. The CRD and [`nexus_model::spec::AlgorithmSpec::validate`] decide what is required;
//! rendering does not invent defaults (a Job without a CPU limit is then governed by the
//! namespace's LimitRange, if any).

use std::collections::BTreeMap;
use std::fmt::Write as _;

use k8s_openapi::api::batch::v1::{
    Job, JobSpec, PodFailurePolicy, PodFailurePolicyOnExitCodesRequirement,
    PodFailurePolicyOnPodConditionsPattern, PodFailurePolicyRule,
};
use k8s_openapi::api::core::v1::{
    Affinity, ConfigMapVolumeSource, Container, EnvFromSource, EnvVar, EnvVarSource,
    HostPathVolumeSource, KeyToPath, PodSpec, PodTemplateSpec, ResourceRequirements, Toleration,
    Volume, VolumeMount,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use nexus_executor::contract::{LaunchContext, contract_env, render_args, split_command};
use nexus_model::run::Run;
use nexus_model::spec::{WorkgroupSpec, parse_quantity};

/// Label: the algorithm (template) name (reference).
pub(crate) const LABEL_ALGORITHM: &str = "science.sneaksanddata.com/algorithm-template-name";
/// Label: the Nexus version that rendered the Job (reference).
pub(crate) const LABEL_VERSION: &str = "science.sneaksanddata.com/nexus-version";
/// Label: the Nexus component, always [`COMPONENT_ALGORITHM_RUN`] here (reference).
pub(crate) const LABEL_COMPONENT: &str = "science.sneaksanddata.com/nexus-component";
/// Label: the run id (Nexus addition).
pub(crate) const LABEL_REQUEST_ID: &str = "science.sneaksanddata.com/request-id";
/// Label: the shard (workgroup cluster) the run was sent to (Nexus addition).
pub(crate) const LABEL_SHARD: &str = "science.sneaksanddata.com/shard";
/// Value of [`LABEL_COMPONENT`] on algorithm runs.
pub(crate) const COMPONENT_ALGORITHM_RUN: &str = "algorithm-run";
/// Name of the DogStatsD socket volume.
pub(crate) const DATADOG_VOLUME: &str = "dsdsocket";
/// Host path of the DogStatsD socket directory.
pub(crate) const DATADOG_HOST_PATH: &str = "/var/run/datadog/";
/// Mount path of the DogStatsD socket directory in the container.
pub(crate) const DATADOG_MOUNT_PATH: &str = "/var/run/datadog";
/// Name of the volume holding the CA certificate of [`JobOptions::ca_config_map`].
pub(crate) const CA_VOLUME: &str = "nexus-ca";
/// Where that CA certificate is mounted (directory; the file is `ca.crt` in it).
pub(crate) const CA_MOUNT_PATH: &str = "/etc/nexus/ca";
/// Longest valid label value.
pub(crate) const MAX_LABEL_VALUE_LEN: usize = 63;

/// Rendering settings that do not come from the run, its template or its workgroup (section
/// `job` of `nexus receiver`; the namespace and version are filled in by the receiver).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct JobOptions {
    /// Namespace the Job is created in (the shard client's namespace).
    #[serde(skip)]
    pub namespace: String,
    /// Version recorded in the [`LABEL_VERSION`] label (sanitised to a label value).
    #[serde(skip)]
    pub nexus_version: String,
    /// `ttlSecondsAfterFinished` of the Job (reference: 300, hard-coded). Must be ≥ 0. Note that
    /// a finished parent Job deleted by this TTL garbage-collects its still-running children when
    /// they carry an owner reference to it (see [`render_job`]).
    pub ttl_seconds_after_finished: i32,
    /// `imagePullPolicy` of the container.
    pub image_pull_policy: String,
    /// CPU request as a fraction of the CPU limit (reference: 0.1, "Burstable QoS"); in (0, 1].
    pub default_cpu_request_fraction: f64,
    /// A ConfigMap in the Jobs' namespace whose key `ca_config_map_key` is the PEM CA certificate
    /// of Nexus's private TLS certificates: mounted read-only into every algorithm container at
    /// `/etc/nexus/ca/ca.crt` and named by `NEXUS_CA_FILE`, so algorithms trust Nexus's `https://`
    /// URLs. Empty: none (certificates from a public CA need none).
    pub ca_config_map: String,
    /// The key of `ca_config_map` holding the certificate.
    pub ca_config_map_key: String,
}

impl Default for JobOptions {
    fn default() -> Self {
        Self {
            namespace: "default".into(),
            nexus_version: env!("CARGO_PKG_VERSION").into(),
            ttl_seconds_after_finished: 300,
            image_pull_policy: "IfNotPresent".into(),
            default_cpu_request_fraction: 0.1,
            ca_config_map: String::new(),
            ca_config_map_key: "ca.crt".into(),
        }
    }
}

impl JobOptions {
    /// Checks the configurable values.
    ///
    /// # Errors
    /// A message naming the key (under `job.`).
    pub fn validate(&self) -> Result<(), String> {
        if self.ttl_seconds_after_finished < 0 {
            return Err(format!(
                "job.ttl_seconds_after_finished: {} is negative; use 0 (delete at once) or more",
                self.ttl_seconds_after_finished
            ));
        }
        if !["Always", "IfNotPresent", "Never"].contains(&self.image_pull_policy.as_str()) {
            return Err(format!(
                "job.image_pull_policy: '{}' is not one of Always, IfNotPresent, Never",
                self.image_pull_policy
            ));
        }
        let f = self.default_cpu_request_fraction;
        if !(f > 0.0 && f <= 1.0) {
            return Err(format!(
                "job.default_cpu_request_fraction: {f} must be in (0, 1] (the CPU request as a fraction of the limit)"
            ));
        }
        if !self.ca_config_map.is_empty() && !is_dns_subdomain(&self.ca_config_map) {
            return Err(format!(
                "job.ca_config_map: '{}' is not a valid ConfigMap name (lowercase letters, digits, '-' and '.', at most 253)",
                self.ca_config_map
            ));
        }
        if !is_config_map_key(&self.ca_config_map_key) {
            return Err(format!(
                "job.ca_config_map_key: '{}' is not a valid ConfigMap key (letters, digits, '-', '_' and '.', at most 253)",
                self.ca_config_map_key
            ));
        }
        Ok(())
    }
}

/// A DNS-1123 subdomain (the names of most Kubernetes objects).
fn is_dns_subdomain(s: &str) -> bool {
    let alnum = |c: char| c.is_ascii_lowercase() || c.is_ascii_digit();
    s.len() <= 253
        && s.split('.').all(|part| {
            part.starts_with(alnum)
                && part.ends_with(alnum)
                && part.chars().all(|c| alnum(c) || c == '-')
        })
}

/// A ConfigMap data key.
fn is_config_map_key(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 253
        && s != "."
        && s != ".."
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
}

/// The parent run's Job in the same cluster, made the owner of the child's Job.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParentJob {
    /// The parent Job's name (its run id).
    pub name: String,
    /// The parent Job's `metadata.uid`.
    pub uid: String,
}

/// Why a run cannot be rendered into a Job: the offending field and what is wrong with it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {message}")]
pub struct RenderError {
    /// Path of the offending field, e.g. `spec.computeResources.cpuLimit` (template fields),
    /// `workgroup.spec.tolerations[1]` (workgroup fields) or `options.…` ([`JobOptions`]).
    pub field: String,
    /// What is wrong.
    pub message: String,
}

impl RenderError {
    fn new(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            field: field.into(),
            message: message.into(),
        }
    }
}

/// Renders the `batch/v1` Job of `run` (reference §3.4).
///
/// * `metadata`: name = run id, namespace = `opts.namespace`; the labels [`LABEL_ALGORITHM`],
///   [`LABEL_VERSION`], [`LABEL_COMPONENT`], [`LABEL_REQUEST_ID`], [`LABEL_SHARD`] and the
///   template's `runtimeEnvironment.annotations` on both the Job and its pod template.
/// * `ownerReferences = [parent]` when `parent` is given (no controller / blockOwnerDeletion, as
///   the reference). This is a garbage-collection convenience only: Nexus' correctness never
///   depends on it, because lineage lives in the run record (`parent`, `root`) and cancellation
///   cascades through the run store. Beware the reference behaviour it brings along: once the
///   parent Job finishes and its `ttlSecondsAfterFinished` ([`JobOptions`]) expires, Kubernetes
///   deletes it and garbage-collects children that are still running (reference gap 13). Pass
///   `None` to opt out, or size the TTL accordingly.
/// * `spec`: `backoffLimit = maximumRetries` (default 0), `activeDeadlineSeconds =
///   deadlineSeconds` (default [`nexus_model::spec::DEFAULT_DEADLINE_SECONDS`]),
///   `ttlSecondsAfterFinished`, and a pod failure policy: `Ignore` on `DisruptionTarget=True`,
///   `FailJob` on the fatal exit codes, `Ignore` on the transient ones (each only when its list
///   is non-empty).
/// * pod: `restartPolicy: Never`, the template's service account, the workgroup's affinity and
///   tolerations, the DogStatsD socket volume when `mountDatadogSocket`.
/// * one container named after the run id, image `<registry>/<image>:<versionTag>`, command =
///   the template command split on spaces, args through [`render_args`], env = template
///   variables then [`contract_env`] (with `NEXUS__SHARD_NAME = workgroup.cluster`), envFrom =
///   `mappedEnvironmentVariables`, resources as described in [`resources`].
///
/// The run token is put in the environment as a plain value. A follow-up may move it (and the
/// signed URLs) into a per-run Secret referenced through `valueFrom.secretKeyRef`, so that it does
/// not show in the Job object.
///
/// # Errors
/// A [`RenderError`] naming the first offending field.
pub fn render_job(
    run: &Run,
    workgroup: &WorkgroupSpec,
    ctx: &LaunchContext<'_>,
    parent: Option<&ParentJob>,
    opts: &JobOptions,
) -> Result<Job, RenderError> {
    let spec = &run.applied_configuration;
    let id = run.id.to_string();

    if opts.ttl_seconds_after_finished < 0 {
        return Err(RenderError::new(
            "options.ttlSecondsAfterFinished",
            format!(
                "must be at least 0, found {}",
                opts.ttl_seconds_after_finished
            ),
        ));
    }

    let ct = match spec.container.as_ref() {
        Some(c) if !c.image.is_empty() => c,
        _ => {
            return Err(RenderError::new(
                "spec.container.image",
                "is required to run on Kubernetes",
            ));
        }
    };
    if ct.registry.is_empty() {
        return Err(RenderError::new(
            "spec.container.registry",
            "is required to run on Kubernetes",
        ));
    }
    if ct.version_tag.is_empty() {
        return Err(RenderError::new(
            "spec.container.versionTag",
            "is required to run on Kubernetes",
        ));
    }

    let command = split_command(&spec.command);
    if command.is_empty() {
        return Err(RenderError::new("spec.command", "must not be empty"));
    }

    let rt = spec.runtime_environment.clone().unwrap_or_default();
    let mut env = Vec::with_capacity(rt.environment_variables.len() + 9);
    for (i, e) in rt.environment_variables.iter().enumerate() {
        let value_from = e
            .value_from
            .as_ref()
            .map(|v| {
                convert::<EnvVarSource>(
                    v,
                    &format!("spec.runtimeEnvironment.environmentVariables[{i}].valueFrom"),
                )
            })
            .transpose()?;
        env.push(EnvVar {
            name: e.name.clone(),
            value: e.value.clone(),
            value_from,
        });
    }
    env.extend(
        contract_env(run, &workgroup.cluster, ctx)
            .into_iter()
            .map(|(name, value)| EnvVar {
                name,
                value: Some(value),
                value_from: None,
            }),
    );
    let env_from = rt
        .mapped_environment_variables
        .iter()
        .enumerate()
        .map(|(i, v)| {
            convert::<EnvFromSource>(
                v,
                &format!("spec.runtimeEnvironment.mappedEnvironmentVariables[{i}]"),
            )
        })
        .collect::<Result<Vec<_>, _>>()?;

    let tolerations = workgroup
        .tolerations
        .iter()
        .enumerate()
        .map(|(i, v)| convert::<Toleration>(v, &format!("workgroup.spec.tolerations[{i}]")))
        .collect::<Result<Vec<_>, _>>()?;
    let affinity = workgroup
        .affinity
        .as_ref()
        .map(|v| convert::<Affinity>(v, "workgroup.spec.affinity"))
        .transpose()?;

    let backoff_limit = i32::try_from(spec.maximum_retries()).map_err(|_| {
        RenderError::new(
            "spec.runtimeEnvironment.maximumRetries",
            format!("{} is larger than {}", spec.maximum_retries(), i32::MAX),
        )
    })?;

    let datadog = spec
        .datadog_integration_settings
        .as_ref()
        .is_some_and(|d| d.mount_datadog_socket);
    let ca = !opts.ca_config_map.is_empty();
    if ca {
        env.push(EnvVar {
            name: nexus_proto::v1::env::CA_FILE.into(),
            value: Some(format!("{CA_MOUNT_PATH}/ca.crt")),
            value_from: None,
        });
    }
    let mut mounts = Vec::new();
    let mut volumes = Vec::new();
    if datadog {
        mounts.push(VolumeMount {
            name: DATADOG_VOLUME.into(),
            mount_path: DATADOG_MOUNT_PATH.into(),
            ..Default::default()
        });
        volumes.push(Volume {
            name: DATADOG_VOLUME.into(),
            host_path: Some(HostPathVolumeSource {
                path: DATADOG_HOST_PATH.into(),
                type_: None,
            }),
            ..Default::default()
        });
    }
    if ca {
        mounts.push(VolumeMount {
            name: CA_VOLUME.into(),
            mount_path: CA_MOUNT_PATH.into(),
            read_only: Some(true),
            ..Default::default()
        });
        volumes.push(Volume {
            name: CA_VOLUME.into(),
            config_map: Some(ConfigMapVolumeSource {
                name: opts.ca_config_map.clone(),
                items: Some(vec![KeyToPath {
                    key: opts.ca_config_map_key.clone(),
                    path: "ca.crt".into(),
                    mode: None,
                }]),
                default_mode: Some(0o444),
                optional: None,
            }),
            ..Default::default()
        });
    }

    let labels = BTreeMap::from([
        (LABEL_ALGORITHM.to_owned(), label_value(&run.algorithm)),
        (LABEL_VERSION.to_owned(), label_value(&opts.nexus_version)),
        (
            LABEL_COMPONENT.to_owned(),
            COMPONENT_ALGORITHM_RUN.to_owned(),
        ),
        (LABEL_REQUEST_ID.to_owned(), label_value(&id)),
        (LABEL_SHARD.to_owned(), label_value(&workgroup.cluster)),
    ]);
    let annotations = (!rt.annotations.is_empty()).then(|| rt.annotations.clone());

    let container = Container {
        name: id.clone(),
        image: Some(format!("{}/{}:{}", ct.registry, ct.image, ct.version_tag)),
        image_pull_policy: Some(opts.image_pull_policy.clone()),
        command: Some(command),
        args: Some(render_args(&spec.args, ctx.payload_url, &id)).filter(|a| !a.is_empty()),
        env: Some(env),
        env_from: Some(env_from).filter(|e| !e.is_empty()),
        resources: resources(run, opts.default_cpu_request_fraction)?,
        volume_mounts: Some(mounts).filter(|m| !m.is_empty()),
        ..Default::default()
    };

    let pod = PodSpec {
        restart_policy: Some("Never".into()),
        service_account_name: ct.service_account_name.clone().filter(|s| !s.is_empty()),
        affinity,
        tolerations: Some(tolerations).filter(|t| !t.is_empty()),
        volumes: Some(volumes).filter(|v| !v.is_empty()),
        containers: vec![container],
        ..Default::default()
    };

    Ok(Job {
        metadata: ObjectMeta {
            name: Some(id),
            namespace: Some(opts.namespace.clone()),
            labels: Some(labels.clone()),
            annotations: annotations.clone(),
            owner_references: parent.map(|p| {
                vec![OwnerReference {
                    api_version: "batch/v1".into(),
                    kind: "Job".into(),
                    name: p.name.clone(),
                    uid: p.uid.clone(),
                    controller: None,
                    block_owner_deletion: None,
                }]
            }),
            ..Default::default()
        },
        spec: Some(JobSpec {
            backoff_limit: Some(backoff_limit),
            active_deadline_seconds: Some(i64::from(spec.deadline_seconds())),
            ttl_seconds_after_finished: Some(opts.ttl_seconds_after_finished),
            pod_failure_policy: Some(pod_failure_policy(run)),
            template: PodTemplateSpec {
                metadata: Some(ObjectMeta {
                    labels: Some(labels),
                    annotations,
                    ..Default::default()
                }),
                spec: Some(pod),
            },
            ..Default::default()
        }),
        status: None,
    })
}

/// The pod failure policy: evictions and preemptions (`DisruptionTarget`) never count, fatal exit
/// codes fail the Job at once, transient ones are retried without counting. A rule is only
/// emitted for a non-empty list (the reference's `!= nil` test produced rules the API server
/// rejects).
fn pod_failure_policy(run: &Run) -> PodFailurePolicy {
    let eh = run
        .applied_configuration
        .error_handling_behaviour
        .clone()
        .unwrap_or_default();
    let mut rules = vec![PodFailurePolicyRule {
        action: "Ignore".into(),
        on_exit_codes: None,
        on_pod_conditions: Some(vec![PodFailurePolicyOnPodConditionsPattern {
            type_: "DisruptionTarget".into(),
            status: "True".into(),
        }]),
    }];
    for (action, codes) in [
        ("FailJob", eh.fatal_exit_codes),
        ("Ignore", eh.transient_exit_codes),
    ] {
        if !codes.is_empty() {
            rules.push(PodFailurePolicyRule {
                action: action.into(),
                on_exit_codes: Some(PodFailurePolicyOnExitCodesRequirement {
                    container_name: None,
                    operator: "In".into(),
                    values: codes,
                }),
                on_pod_conditions: None,
            });
        }
    }
    PodFailurePolicy { rules }
}

/// Container resources: limits = `{cpu: cpuLimit, memory: memoryLimit} ∪ customResources`;
/// requests = the same, except `cpu = round(fraction × cpu millicores)m`, at least `1m`.
/// A missing (empty) `cpuLimit` / `memoryLimit` omits that resource (no invented defaults);
/// `None` when there are no resources at all. Custom resources may not redefine `cpu` or
/// `memory` (ambiguous with the dedicated fields).
fn resources(run: &Run, fraction: f64) -> Result<Option<ResourceRequirements>, RenderError> {
    if !fraction.is_finite() || fraction <= 0.0 || fraction > 1.0 {
        return Err(RenderError::new(
            "options.defaultCpuRequestFraction",
            format!("must be in (0, 1], found {fraction}"),
        ));
    }
    let Some(cr) = &run.applied_configuration.compute_resources else {
        return Ok(None);
    };
    let mut limits = BTreeMap::new();
    let mut requests = BTreeMap::new();
    if !cr.cpu_limit.is_empty() {
        let cpu = parse_quantity(&cr.cpu_limit)
            .map_err(|e| RenderError::new("spec.computeResources.cpuLimit", e))?;
        limits.insert("cpu".to_owned(), Quantity(cr.cpu_limit.clone()));
        requests.insert("cpu".to_owned(), Quantity(cpu_request(cpu, fraction)));
    }
    if !cr.memory_limit.is_empty() {
        parse_quantity(&cr.memory_limit)
            .map_err(|e| RenderError::new("spec.computeResources.memoryLimit", e))?;
        limits.insert("memory".to_owned(), Quantity(cr.memory_limit.clone()));
        requests.insert("memory".to_owned(), Quantity(cr.memory_limit.clone()));
    }
    for (k, v) in &cr.custom_resources {
        let field = format!("spec.computeResources.customResources.{k}");
        if k == "cpu" || k == "memory" {
            return Err(RenderError::new(
                field,
                format!("set {k} through computeResources.{k}Limit"),
            ));
        }
        parse_quantity(v).map_err(|e| RenderError::new(field, e))?;
        limits.insert(k.clone(), Quantity(v.clone()));
        requests.insert(k.clone(), Quantity(v.clone()));
    }
    if limits.is_empty() {
        return Ok(None);
    }
    Ok(Some(ResourceRequirements {
        limits: Some(limits),
        requests: Some(requests),
        claims: None,
    }))
}

/// `round(fraction × cores × 1000)m`, at least `1m` (the API server rounds sub-millicore
/// quantities up anyway; `0m` would mean "no request").
#[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
fn cpu_request(cores: f64, fraction: f64) -> String {
    let m = (cores * 1000.0 * fraction).round().max(1.0) as u64;
    format!("{m}m")
}

/// Converts a free-form JSON value of a spec into a Kubernetes type, strictly: a value of the
/// wrong shape is an error, and so is a key the Kubernetes type does not know (k8s-openapi
/// ignores unknown keys silently, which would turn a typo like `secretKeyRefs` into an empty
/// source). `field` names the value in the error.
fn convert<T: DeserializeOwned + Serialize>(
    v: &serde_json::Value,
    field: &str,
) -> Result<T, RenderError> {
    let t: T = serde_json::from_value(v.clone())
        .map_err(|e| RenderError::new(field, format!("is not a valid Kubernetes value: {e}")))?;
    let back = serde_json::to_value(&t)
        .map_err(|e| RenderError::new(field, format!("cannot be serialised back: {e}")))?;
    if let Some(path) = dropped_key(v, &back, String::new()) {
        return Err(RenderError::new(
            format!("{field}{path}"),
            "unknown field (check its spelling and nesting against the Kubernetes API)",
        ));
    }
    Ok(t)
}

/// The path (`.a.b[2].c`) of the first non-null object key of `orig` absent from `back`.
fn dropped_key(orig: &serde_json::Value, back: &serde_json::Value, at: String) -> Option<String> {
    use serde_json::Value;
    match (orig, back) {
        (Value::Object(o), Value::Object(b)) => o.iter().find_map(|(k, v)| match b.get(k) {
            None if !v.is_null() => Some(format!("{at}.{k}")),
            None => None,
            Some(bv) => dropped_key(v, bv, format!("{at}.{k}")),
        }),
        (Value::Array(o), Value::Array(b)) => o
            .iter()
            .zip(b)
            .enumerate()
            .find_map(|(i, (v, bv))| dropped_key(v, bv, format!("{at}[{i}]"))),
        _ => None,
    }
}

/// Returns `v` as a valid Kubernetes label value: at most 63 characters of `[A-Za-z0-9-_.]`,
/// starting and ending with an alphanumeric (or empty).
///
/// A valid value is returned unchanged. Otherwise characters outside the set become `-`,
/// leading and trailing non-alphanumerics are dropped, and a value still longer than 63
/// characters is cut to 54 and suffixed with `-` and the first 8 hex digits of the SHA-256 of
/// the *original* value, so distinct long values stay distinct. Labels are for selection and
/// display only; the Job's identity is its name (the run id), never a label.
#[must_use]
pub(crate) fn label_value(v: &str) -> String {
    if is_label_value(v) {
        return v.to_owned();
    }
    let mapped: String = v
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.') {
                c
            } else {
                '-'
            }
        })
        .collect();
    let trimmed = mapped.trim_matches(|c: char| !c.is_ascii_alphanumeric());
    if trimmed.len() <= MAX_LABEL_VALUE_LEN {
        return trimmed.to_owned();
    }
    let head = trimmed[..54].trim_end_matches(|c: char| !c.is_ascii_alphanumeric());
    let digest = Sha256::digest(v.as_bytes());
    let mut out = format!("{head}-");
    for b in &digest[..4] {
        let _ = write!(out, "{b:02x}");
    }
    out
}

fn is_label_value(v: &str) -> bool {
    let b = v.as_bytes();
    v.is_empty()
        || (b.len() <= MAX_LABEL_VALUE_LEN
            && b.iter()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'-' | b'_' | b'.'))
            && b[0].is_ascii_alphanumeric()
            && b[b.len() - 1].is_ascii_alphanumeric())
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;
    use std::time::Duration;

    use super::*;
    use nexus_model::run::{PayloadLocation, RunId, RunRef, Stage};
    use nexus_model::spec::AlgorithmSpec;

    const ID: &str = "01890a5f-0000-7000-8000-000000000001";
    const PARENT_ID: &str = "01890a5f-0000-7000-8000-0000000000aa";

    fn ctx() -> LaunchContext<'static> {
        LaunchContext {
            payload_url: "https://nexus.example/payload/knapsack/x?sig=p",
            run_token: "run-token-123",
            receiver_url: "https://receiver.example",
            result_upload_url: "https://nexus.example/results/knapsack/x?sig=r",
            scheduler_url: "",
        }
    }

    fn opts() -> JobOptions {
        JobOptions {
            namespace: "nexus".into(),
            nexus_version: "1.2.3-45".into(),
            ..JobOptions::default()
        }
    }

    fn run(spec_yaml: &str) -> Run {
        let spec: AlgorithmSpec = serde_yaml::from_str(spec_yaml).unwrap();
        let id: RunId = ID.parse().unwrap();
        Run {
            id,
            algorithm: "knapsack".into(),
            stage: Stage::Buffered,
            workgroup: "default".into(),
            shard: "shard-a".into(),
            tag: None,
            api_version: None,
            parent: None,
            root: id,
            depth: 0,
            idempotency_key: None,
            owner: None,
            attempts: 0,
            applied_configuration: spec,
            configuration_overrides: None,
            payload: PayloadLocation::Inline {
                bytes: b"{}".to_vec(),
            },
            content_hash: String::new(),
            payload_size: 2,
            payload_valid_for: Duration::from_secs(3600),
            result_uri: None,
            result_stored: false,
            logs_stored: false,
            failure_cause: None,
            failure_details: None,
            executor_ref: None,
            received_at: 0,
            started_at: None,
            finished_at: None,
            last_modified: 0,
            timeline: Vec::new(),
            external: false,
            progress: None,
        }
    }

    fn workgroup(yaml: &str) -> WorkgroupSpec {
        serde_yaml::from_str(yaml).unwrap()
    }

    const BASIC: &str = r#"
container: { image: knapsack, registry: registry.example, versionTag: v1 }
computeResources: { cpuLimit: "1", memoryLimit: 512Mi }
workgroupRef: { name: default, group: science.sneaksanddata.com, kind: NexusAlgorithmWorkgroup }
command: python3 main.py
args: ["--sas-uri=%s", "--request-id=%s"]
"#;

    const FULL: &str = r#"
container: { image: trainer, registry: registry.example/ml, versionTag: "2025.1", serviceAccountName: trainer-sa }
computeResources:
  cpuLimit: "2"
  memoryLimit: 8Gi
  customResources: { nvidia.com/gpu: "1" }
workgroupRef: { name: gpu, group: science.sneaksanddata.com, kind: NexusAlgorithmWorkgroup }
command: python3 -m trainer
args: ["--sas-uri=%s", "--request-id=%s", "--note=request-id", "--out={request_id}.json"]
runtimeEnvironment:
  environmentVariables:
    - { name: MODE, value: fast }
    - name: DB_PASSWORD
      valueFrom: { secretKeyRef: { name: trainer-secrets, key: db-password } }
  mappedEnvironmentVariables:
    - configMapRef: { name: trainer-config }
  annotations: { team: ml, cluster-autoscaler.kubernetes.io/safe-to-evict: "false" }
  deadlineSeconds: 7200
  maximumRetries: 3
errorHandlingBehaviour: { transientExitCodes: [75, 143], fatalExitCodes: [2] }
datadogIntegrationSettings: { mountDatadogSocket: true }
"#;

    const WG_BASIC: &str = "{ description: default, cluster: shard-a }";

    const WG_FULL: &str = r#"
description: GPU nodes
cluster: gpu-cluster
tolerations:
  - { key: nvidia.com/gpu, operator: Exists, effect: NoSchedule }
  - { key: dedicated, operator: Equal, value: ml, effect: NoExecute, tolerationSeconds: 600 }
affinity:
  nodeAffinity:
    requiredDuringSchedulingIgnoredDuringExecution:
      nodeSelectorTerms:
        - matchExpressions:
            - { key: kubernetes.io/arch, operator: In, values: [amd64] }
"#;

    fn check_golden(name: &str, job: &Job) {
        let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/golden");
        let path = dir.join(format!("{name}.yaml"));
        let actual = serde_yaml::to_string(job).unwrap();
        if std::env::var_os("NEXUS_UPDATE_GOLDEN").is_some() {
            std::fs::create_dir_all(&dir).unwrap();
            std::fs::write(&path, &actual).unwrap();
            return;
        }
        let expected = std::fs::read_to_string(&path).unwrap_or_default();
        let actual_path = dir.join(format!("{name}.actual.yaml"));
        if expected == actual {
            let _ = std::fs::remove_file(&actual_path);
        } else {
            std::fs::create_dir_all(&dir).unwrap();
            std::fs::write(&actual_path, &actual).unwrap();
            panic!(
                "rendered Job differs from {}; the rendering is in {}. If the change is intended, \
                 review it and accept with: NEXUS_UPDATE_GOLDEN=1 cargo test -p nexus-kube --lib job",
                path.display(),
                actual_path.display()
            );
        }
    }

    #[test]
    fn golden_basic() {
        let job = render_job(&run(BASIC), &workgroup(WG_BASIC), &ctx(), None, &opts()).unwrap();
        check_golden("job_basic", &job);
    }

    #[test]
    fn golden_full() {
        let job = render_job(&run(FULL), &workgroup(WG_FULL), &ctx(), None, &opts()).unwrap();
        check_golden("job_full", &job);
    }

    #[test]
    fn golden_parent() {
        let mut r = run(BASIC);
        r.parent = Some(RunRef {
            request_id: PARENT_ID.parse().unwrap(),
            algorithm_name: "planner".into(),
        });
        r.depth = 1;
        r.root = r.parent.as_ref().unwrap().request_id;
        let parent = ParentJob {
            name: PARENT_ID.into(),
            uid: "3f6e1c2a-1111-4222-8333-444455556666".into(),
        };
        let o = JobOptions {
            ttl_seconds_after_finished: 3600,
            ..opts()
        };
        let job = render_job(&r, &workgroup(WG_BASIC), &ctx(), Some(&parent), &o).unwrap();
        check_golden("job_parent", &job);
    }

    fn err(spec: &str, wg: &str) -> RenderError {
        render_job(&run(spec), &workgroup(wg), &ctx(), None, &opts()).unwrap_err()
    }

    #[test]
    fn errors_name_the_field() {
        let cases: &[(&str, &str, &str, &str)] = &[
            (
                "bad cpu limit",
                r#"{container: {image: i, registry: r, versionTag: t}, command: c, computeResources: {cpuLimit: lots, memoryLimit: 1Gi}}"#,
                WG_BASIC,
                "spec.computeResources.cpuLimit",
            ),
            (
                "bad memory limit",
                r#"{container: {image: i, registry: r, versionTag: t}, command: c, computeResources: {cpuLimit: "1", memoryLimit: "1Xi"}}"#,
                WG_BASIC,
                "spec.computeResources.memoryLimit",
            ),
            (
                "bad custom resource",
                r#"{container: {image: i, registry: r, versionTag: t}, command: c, computeResources: {customResources: {nvidia.com/gpu: many}}}"#,
                WG_BASIC,
                "spec.computeResources.customResources.nvidia.com/gpu",
            ),
            (
                "custom resource redefines cpu",
                r#"{container: {image: i, registry: r, versionTag: t}, command: c, computeResources: {customResources: {cpu: "1"}}}"#,
                WG_BASIC,
                "spec.computeResources.customResources.cpu",
            ),
            (
                "no container",
                "{command: c}",
                WG_BASIC,
                "spec.container.image",
            ),
            (
                "empty image",
                "{container: {registry: r, versionTag: t}, command: c}",
                WG_BASIC,
                "spec.container.image",
            ),
            (
                "no registry",
                "{container: {image: i, versionTag: t}, command: c}",
                WG_BASIC,
                "spec.container.registry",
            ),
            (
                "no tag",
                "{container: {image: i, registry: r}, command: c}",
                WG_BASIC,
                "spec.container.versionTag",
            ),
            (
                "blank command",
                "{container: {image: i, registry: r, versionTag: t}, command: '  '}",
                WG_BASIC,
                "spec.command",
            ),
            (
                "toleration not an object",
                "{container: {image: i, registry: r, versionTag: t}, command: c}",
                "{cluster: a, tolerations: [{key: k, operator: Exists}, gpu]}",
                "workgroup.spec.tolerations[1]",
            ),
            (
                "toleration with a misspelt key",
                "{container: {image: i, registry: r, versionTag: t}, command: c}",
                "{cluster: a, tolerations: [{key: k, operater: Exists}]}",
                "workgroup.spec.tolerations[0].operater",
            ),
            (
                "affinity of the wrong shape",
                "{container: {image: i, registry: r, versionTag: t}, command: c}",
                "{cluster: a, affinity: {nodeAffinity: [1]}}",
                "workgroup.spec.affinity",
            ),
            (
                "valueFrom a string",
                "{container: {image: i, registry: r, versionTag: t}, command: c, runtimeEnvironment: {environmentVariables: [{name: A, value: x}, {name: B, valueFrom: secret}]}}",
                WG_BASIC,
                "spec.runtimeEnvironment.environmentVariables[1].valueFrom",
            ),
            (
                "valueFrom with a wrong nested shape",
                "{container: {image: i, registry: r, versionTag: t}, command: c, runtimeEnvironment: {environmentVariables: [{name: B, valueFrom: {secretKeyRef: s}}]}}",
                WG_BASIC,
                "spec.runtimeEnvironment.environmentVariables[0].valueFrom",
            ),
            (
                "valueFrom with an unknown source",
                "{container: {image: i, registry: r, versionTag: t}, command: c, runtimeEnvironment: {environmentVariables: [{name: B, valueFrom: {secretKeyRefs: {name: s, key: k}}}]}}",
                WG_BASIC,
                "spec.runtimeEnvironment.environmentVariables[0].valueFrom.secretKeyRefs",
            ),
            (
                "envFrom of the wrong shape",
                "{container: {image: i, registry: r, versionTag: t}, command: c, runtimeEnvironment: {mappedEnvironmentVariables: [{configMapRef: {name: c}}, [x]]}}",
                WG_BASIC,
                "spec.runtimeEnvironment.mappedEnvironmentVariables[1]",
            ),
        ];
        for (what, spec, wg, field) in cases {
            let e = err(spec, wg);
            assert_eq!(e.field, *field, "{what}: {e}");
            assert!(
                e.to_string().starts_with(&format!("{field}: ")),
                "{what}: {e}"
            );
        }
        assert!(
            err(cases[0].1, WG_BASIC)
                .message
                .contains("'lots' is not a valid quantity")
        );
    }

    #[test]
    fn option_errors() {
        let r = run(BASIC);
        let wg = workgroup(WG_BASIC);
        for (o, field) in [
            (
                JobOptions {
                    default_cpu_request_fraction: 0.0,
                    ..opts()
                },
                "options.defaultCpuRequestFraction",
            ),
            (
                JobOptions {
                    default_cpu_request_fraction: f64::NAN,
                    ..opts()
                },
                "options.defaultCpuRequestFraction",
            ),
            (
                JobOptions {
                    ttl_seconds_after_finished: -1,
                    ..opts()
                },
                "options.ttlSecondsAfterFinished",
            ),
        ] {
            assert_eq!(
                render_job(&r, &wg, &ctx(), None, &o).unwrap_err().field,
                field
            );
        }
    }

    #[test]
    fn ca_config_map_is_mounted_and_named() {
        let o = JobOptions {
            ca_config_map: "nexus-ca".into(),
            ca_config_map_key: "bundle.pem".into(),
            ..opts()
        };
        let job = render_job(&run(FULL), &workgroup(WG_FULL), &ctx(), None, &o).unwrap();
        let pod = job.spec.unwrap().template.spec.unwrap();
        let c = &pod.containers[0];
        let env = c.env.as_ref().unwrap();
        let ca = env.iter().find(|e| e.name == "NEXUS_CA_FILE").unwrap();
        assert_eq!(ca.value.as_deref(), Some("/etc/nexus/ca/ca.crt"));
        let mounts = c.volume_mounts.as_ref().unwrap();
        assert_eq!(
            mounts.len(),
            2,
            "the Datadog socket stays mounted: {mounts:?}"
        );
        let m = mounts.iter().find(|m| m.name == CA_VOLUME).unwrap();
        assert_eq!(
            (m.mount_path.as_str(), m.read_only),
            (CA_MOUNT_PATH, Some(true))
        );
        let v = pod.volumes.unwrap();
        let cm = v
            .iter()
            .find(|v| v.name == CA_VOLUME)
            .unwrap()
            .config_map
            .clone()
            .unwrap();
        assert_eq!(cm.name, "nexus-ca");
        let items = cm.items.unwrap();
        assert_eq!(
            (items[0].key.as_str(), items[0].path.as_str()),
            ("bundle.pem", "ca.crt")
        );
        // Without it, nothing is added.
        let job = render_job(&run(BASIC), &workgroup(WG_BASIC), &ctx(), None, &opts()).unwrap();
        let pod = job.spec.unwrap().template.spec.unwrap();
        assert!(pod.volumes.is_none() && pod.containers[0].volume_mounts.is_none());
        assert!(
            !pod.containers[0]
                .env
                .as_ref()
                .unwrap()
                .iter()
                .any(|e| e.name == "NEXUS_CA_FILE")
        );
    }

    #[test]
    fn ca_config_map_names_are_checked() {
        for (name, key, want) in [
            ("Nexus_CA", "ca.crt", "job.ca_config_map: 'Nexus_CA'"),
            ("-ca", "ca.crt", "job.ca_config_map: '-ca'"),
            ("nexus-ca", "", "job.ca_config_map_key: ''"),
            ("nexus-ca", "a/b", "job.ca_config_map_key: 'a/b'"),
        ] {
            let o = JobOptions {
                ca_config_map: name.into(),
                ca_config_map_key: key.into(),
                ..JobOptions::default()
            };
            let e = o.validate().unwrap_err();
            assert!(e.starts_with(want), "{e}");
        }
        let o = JobOptions {
            ca_config_map: "trust.example-ca".into(),
            ..JobOptions::default()
        };
        o.validate().unwrap();
    }

    fn rules(eh: &str) -> Vec<PodFailurePolicyRule> {
        let spec = format!(
            "{{container: {{image: i, registry: r, versionTag: t}}, command: c, errorHandlingBehaviour: {eh}}}"
        );
        let job = render_job(&run(&spec), &workgroup(WG_BASIC), &ctx(), None, &opts()).unwrap();
        job.spec.unwrap().pod_failure_policy.unwrap().rules
    }

    #[test]
    fn empty_exit_code_lists_produce_no_rule() {
        let r = rules("{transientExitCodes: [], fatalExitCodes: []}");
        assert_eq!(r.len(), 1);
        assert_eq!(
            r[0].on_pod_conditions.as_ref().unwrap()[0].type_,
            "DisruptionTarget"
        );
        let r = rules("{fatalExitCodes: [2]}");
        assert_eq!(r.len(), 2);
        assert_eq!(r[1].action, "FailJob");
        assert_eq!(r[1].on_exit_codes.as_ref().unwrap().values, [2]);
        let r = rules("{transientExitCodes: [75]}");
        assert_eq!(r.len(), 2);
        assert_eq!(r[1].action, "Ignore");
        assert_eq!(r[1].on_exit_codes.as_ref().unwrap().operator, "In");
    }

    #[test]
    fn cpu_request_rounding() {
        for (limit, fraction, want) in [
            ("2", 0.1, "200m"),
            ("250m", 0.1, "25m"),
            ("1m", 0.1, "1m"),
            ("1.5", 0.1, "150m"),
            ("333m", 0.1, "33m"),
            ("335m", 0.1, "34m"),
            ("4", 0.5, "2000m"),
            ("2", 1.0, "2000m"),
        ] {
            let spec = format!(
                "{{container: {{image: i, registry: r, versionTag: t}}, command: c, computeResources: {{cpuLimit: '{limit}'}}}}"
            );
            let o = JobOptions {
                default_cpu_request_fraction: fraction,
                ..opts()
            };
            let job = render_job(&run(&spec), &workgroup(WG_BASIC), &ctx(), None, &o).unwrap();
            let res = job.spec.unwrap().template.spec.unwrap().containers[0]
                .resources
                .clone()
                .unwrap();
            assert_eq!(res.requests.unwrap()["cpu"].0, want, "{limit} × {fraction}");
            assert_eq!(res.limits.as_ref().unwrap()["cpu"].0, limit);
            assert!(
                !res.limits.unwrap().contains_key("memory"),
                "no invented memory"
            );
        }
    }

    #[test]
    fn no_compute_resources_means_no_resources() {
        let spec = "{container: {image: i, registry: r, versionTag: t}, command: c}";
        let job = render_job(&run(spec), &workgroup(WG_BASIC), &ctx(), None, &opts()).unwrap();
        assert!(
            job.spec.unwrap().template.spec.unwrap().containers[0]
                .resources
                .is_none()
        );
    }

    #[test]
    fn label_values_are_sanitised() {
        let long = "a".repeat(70);
        let long2 = format!("{}b", "a".repeat(69));
        for (input, want) in [
            ("knapsack", "knapsack".to_owned()),
            ("", String::new()),
            ("1.2.3-45", "1.2.3-45".to_owned()),
            ("0.1.0+git.abc", "0.1.0-git.abc".to_owned()),
            ("-x y_", "x-y".to_owned()),
            ("été", "t".to_owned()),
            ("___", String::new()),
        ] {
            assert_eq!(label_value(input), want, "{input}");
        }
        let a = label_value(&long);
        let b = label_value(&long2);
        assert_eq!(a.len(), MAX_LABEL_VALUE_LEN);
        assert!(a.starts_with(&"a".repeat(54)));
        assert_ne!(a, b, "distinct long values stay distinct");
        for v in [a, b, label_value(&format!("{}.-x", "b".repeat(53)))] {
            assert!(is_label_value(&v), "{v}");
        }
    }

    #[test]
    fn long_names_give_valid_labels() {
        let mut r = run(BASIC);
        r.algorithm = format!("{}.algorithm", "very-long-name".repeat(6));
        let wg = workgroup(&format!("{{cluster: {}}}", "c".repeat(80)));
        let job = render_job(&r, &wg, &ctx(), None, &opts()).unwrap();
        for v in job.metadata.labels.unwrap().values() {
            assert!(is_label_value(v), "{v}");
        }
    }

    #[test]
    fn env_is_shared_with_the_local_executor() {
        let mut r = run(BASIC);
        r.parent = Some(RunRef {
            request_id: PARENT_ID.parse().unwrap(),
            algorithm_name: "planner".into(),
        });
        let wg = workgroup(WG_BASIC);
        let job = render_job(&r, &wg, &ctx(), None, &opts()).unwrap();
        let c = &job.spec.unwrap().template.spec.unwrap().containers[0];
        let env: Vec<(String, String)> = c
            .env
            .clone()
            .unwrap()
            .into_iter()
            .map(|e| (e.name, e.value.unwrap()))
            .collect();
        let local = nexus_executor::contract::launch_spec(&r, &wg, &ctx()).unwrap();
        assert_eq!(env, local.env);
        assert_eq!(c.command.as_ref().unwrap(), &["python3", "main.py"]);
        assert_eq!(local.command, "python3");
        assert_eq!(local.args[1..], c.args.clone().unwrap()[..]);
    }
}
