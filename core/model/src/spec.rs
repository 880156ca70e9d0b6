//! `NexusAlgorithmTemplate` and `NexusAlgorithmWorkgroup`: spec types, manifests, validation and
//! the per-run override merge.
//!
//! Field names follow the reference custom resources (group `science.sneaksanddata.com`, version
//! `v1`), so the same YAML works as a Kubernetes manifest and as a standalone template file.
//! Validation reports every problem with a field path (`spec.runtimeEnvironment.deadlineSeconds`)
//! and never panics. The merge fixes the reference's defects: the overridden workgroup decides
//! placement, and a missing sub-object in the template is created rather than dereferenced.

use std::collections::BTreeMap;
use std::fmt;

use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// `apiVersion` of the Nexus custom resources.
pub const API_VERSION: &str = "science.sneaksanddata.com/v1";
/// Kind of an algorithm template.
pub const TEMPLATE_KIND: &str = "NexusAlgorithmTemplate";
/// Kind of a workgroup.
pub const WORKGROUP_KIND: &str = "NexusAlgorithmWorkgroup";
/// Deadline applied when a template sets none.
pub const DEFAULT_DEADLINE_SECONDS: u32 = 3600;

/// One validation problem: where, and what is wrong.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldError {
    /// Dotted path of the offending field, e.g. `spec.computeResources.cpuLimit`.
    pub path: String,
    /// What is wrong and what would be right.
    pub message: String,
}

impl fmt::Display for FieldError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.path, self.message)
    }
}

/// All validation problems of one object.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}", .0.iter().map(ToString::to_string).collect::<Vec<_>>().join("; "))]
pub struct ValidationErrors(pub Vec<FieldError>);

#[derive(Default)]
struct Collector {
    errors: Vec<FieldError>,
}

impl Collector {
    fn push(&mut self, path: impl Into<String>, message: impl Into<String>) {
        self.errors.push(FieldError {
            path: path.into(),
            message: message.into(),
        });
    }

    fn finish(self) -> Result<(), ValidationErrors> {
        if self.errors.is_empty() {
            Ok(())
        } else {
            Err(ValidationErrors(self.errors))
        }
    }
}

/// `spec.container`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Container {
    /// Image name.
    #[serde(default)]
    pub image: String,
    /// Registry host.
    #[serde(default)]
    pub registry: String,
    /// Image tag.
    #[serde(default)]
    pub version_tag: String,
    /// Service account of the pod.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = crate::crd::DNS1123_PATTERN))]
    pub service_account_name: Option<String>,
}

/// `spec.computeResources`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ComputeResources {
    /// CPU limit (Kubernetes quantity, e.g. `500m`, `2`).
    #[serde(default)]
    #[schemars(regex(pattern = crate::crd::QUANTITY_PATTERN))]
    pub cpu_limit: String,
    /// Memory limit (Kubernetes quantity, e.g. `512Mi`).
    #[serde(default)]
    #[schemars(regex(pattern = crate::crd::QUANTITY_PATTERN))]
    pub memory_limit: String,
    /// Extra resources (e.g. `nvidia.com/gpu: "1"`).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    #[schemars(schema_with = "crate::crd::quantity_map")]
    pub custom_resources: BTreeMap<String, String>,
}

/// `spec.workgroupRef`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct WorkgroupRef {
    /// Workgroup name.
    #[serde(default)]
    #[schemars(regex(pattern = crate::crd::DNS1123_PATTERN))]
    pub name: String,
    /// API group (informational).
    #[serde(default)]
    pub group: String,
    /// Kind (informational).
    #[serde(default)]
    pub kind: String,
}

/// A Kubernetes `EnvVar` (value or `valueFrom`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct EnvVar {
    /// Variable name.
    pub name: String,
    /// Literal value.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<String>,
    /// Kubernetes `valueFrom` source (secret/configmap key); honoured by the Kubernetes executor,
    /// reported as unsupported by the local one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "crate::crd::free_object")]
    pub value_from: Option<serde_json::Value>,
}

/// `spec.runtimeEnvironment`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RuntimeEnvironment {
    /// Environment variables.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub environment_variables: Vec<EnvVar>,
    /// Kubernetes `envFrom` sources.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(schema_with = "crate::crd::free_object_list")]
    pub mapped_environment_variables: Vec<serde_json::Value>,
    /// Annotations copied onto the Job and its pod.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
    /// Wall-clock limit of one run, in seconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub deadline_seconds: Option<u32>,
    /// How many times a failed process is relaunched.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub maximum_retries: Option<u32>,
}

/// `spec.errorHandlingBehaviour`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ErrorHandlingBehaviour {
    /// Exit codes after which the process is relaunched without counting against retries.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub transient_exit_codes: Vec<i32>,
    /// Exit codes that fail the run at once, whatever retries remain.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub fatal_exit_codes: Vec<i32>,
}

/// `spec.datadogIntegrationSettings`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct DatadogIntegrationSettings {
    /// Mount the DogStatsD socket into the pod.
    #[serde(default)]
    pub mount_datadog_socket: bool,
}

/// `spec.payloadConfiguration`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PayloadConfiguration {
    /// Validity of signed payload URLs (`"6h"`, `"24h"`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = crate::crd::DURATION_PATTERN))]
    pub payload_valid_for: Option<String>,
}

/// `NexusAlgorithmSpec`: the spec of a template.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema, CustomResource)]
#[kube(
    group = "science.sneaksanddata.com",
    version = "v1",
    kind = "NexusAlgorithmTemplate",
    doc = "An algorithm Nexus runs: its container, command, resources, retries and deadline.",
    plural = "nexusalgorithmtemplates",
    shortname = "nat",
    namespaced,
    status = "crate::crd::ResourceStatus",
    printcolumn = r#"{"name":"Workgroup","type":"string","jsonPath":".spec.workgroupRef.name"}"#,
    printcolumn = r#"{"name":"Command","type":"string","jsonPath":".spec.command"}"#,
    printcolumn = r#"{"name":"Deadline","type":"integer","jsonPath":".spec.runtimeEnvironment.deadlineSeconds"}"#
)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct AlgorithmSpec {
    /// Container image (required on Kubernetes; unused by the local executor).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub container: Option<Container>,
    /// Resource limits.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub compute_resources: Option<ComputeResources>,
    /// The workgroup runs are placed with.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workgroup_ref: Option<WorkgroupRef>,
    /// Command to run (split on spaces).
    #[serde(default)]
    #[schemars(length(min = 1))]
    pub command: String,
    /// Arguments; `--sas-uri=%s` / `--request-id=%s` (reference form) or `{payload_uri}` /
    /// `{request_id}` (explicit placeholders) are substituted.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub args: Vec<String>,
    /// Environment, deadline, retries.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub runtime_environment: Option<RuntimeEnvironment>,
    /// Exit-code classification.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error_handling_behaviour: Option<ErrorHandlingBehaviour>,
    /// Datadog socket mount.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub datadog_integration_settings: Option<DatadogIntegrationSettings>,
    /// Payload URL validity.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub payload_configuration: Option<PayloadConfiguration>,
}

impl AlgorithmSpec {
    /// Returns the deadline in seconds (template value or [`DEFAULT_DEADLINE_SECONDS`]).
    #[must_use]
    pub fn deadline_seconds(&self) -> u32 {
        self.runtime_environment
            .as_ref()
            .and_then(|r| r.deadline_seconds)
            .unwrap_or(DEFAULT_DEADLINE_SECONDS)
    }

    /// Returns the number of relaunches allowed after a failure (default 0).
    #[must_use]
    pub fn maximum_retries(&self) -> u32 {
        self.runtime_environment
            .as_ref()
            .and_then(|r| r.maximum_retries)
            .unwrap_or(0)
    }

    /// Returns the workgroup name, if any.
    #[must_use]
    pub fn workgroup_name(&self) -> Option<&str> {
        self.workgroup_ref
            .as_ref()
            .map(|w| w.name.as_str())
            .filter(|n| !n.is_empty())
    }

    /// Validates the spec; `prefix` is the path of the spec itself (e.g. `spec`).
    ///
    /// # Errors
    /// Returns every problem found, each with its field path.
    pub fn validate(&self, prefix: &str) -> Result<(), ValidationErrors> {
        let mut c = Collector::default();
        self.check(prefix, &mut c);
        c.finish()
    }

    fn check(&self, p: &str, c: &mut Collector) {
        if self.command.trim().is_empty() {
            c.push(
                format!("{p}.command"),
                "is required: the program to run, e.g. `python3`",
            );
        }
        match &self.workgroup_ref {
            Some(w) if !w.name.is_empty() => {
                if let Err(e) = validate_dns1123_subdomain(&w.name) {
                    c.push(format!("{p}.workgroupRef.name"), e);
                }
            }
            _ => c.push(
                format!("{p}.workgroupRef.name"),
                "is required: the workgroup runs are placed with",
            ),
        }
        if let Some(cr) = &self.compute_resources {
            if !cr.cpu_limit.is_empty()
                && let Err(e) = parse_quantity(&cr.cpu_limit)
            {
                c.push(format!("{p}.computeResources.cpuLimit"), e);
            }
            if !cr.memory_limit.is_empty()
                && let Err(e) = parse_quantity(&cr.memory_limit)
            {
                c.push(format!("{p}.computeResources.memoryLimit"), e);
            }
            for (k, v) in &cr.custom_resources {
                if let Err(e) = parse_quantity(v) {
                    c.push(format!("{p}.computeResources.customResources.{k}"), e);
                }
            }
        }
        if let Some(rt) = &self.runtime_environment {
            if rt.deadline_seconds == Some(0) {
                c.push(
                    format!("{p}.runtimeEnvironment.deadlineSeconds"),
                    "must be at least 1",
                );
            }
            for (i, e) in rt.environment_variables.iter().enumerate() {
                if !is_env_name(&e.name) {
                    c.push(
                        format!("{p}.runtimeEnvironment.environmentVariables[{i}].name"),
                        format!("'{}' is not a valid environment variable name ([A-Za-z_][A-Za-z0-9_.-]*)", e.name),
                    );
                }
                if e.value.is_some() && e.value_from.is_some() {
                    c.push(
                        format!("{p}.runtimeEnvironment.environmentVariables[{i}]"),
                        "set either value or valueFrom, not both",
                    );
                }
            }
        }
        if let Some(pc) = &self.payload_configuration
            && let Some(v) = &pc.payload_valid_for
            && let Err(e) = parse_duration(v)
        {
            c.push(format!("{p}.payloadConfiguration.payloadValidFor"), e);
        }
        if let Some(eh) = &self.error_handling_behaviour {
            for code in eh
                .transient_exit_codes
                .iter()
                .filter(|c| eh.fatal_exit_codes.contains(c))
            {
                c.push(
                    format!("{p}.errorHandlingBehaviour"),
                    format!("exit code {code} is listed as both transient and fatal"),
                );
            }
        }
        if let Some(ct) = &self.container
            && let Some(sa) = &ct.service_account_name
            && let Err(e) = validate_dns1123_subdomain(sa)
        {
            c.push(format!("{p}.container.serviceAccountName"), e);
        }
    }
}

/// `NexusAlgorithmWorkgroup` spec.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema, CustomResource)]
#[kube(
    group = "science.sneaksanddata.com",
    version = "v1",
    kind = "NexusAlgorithmWorkgroup",
    doc = "Where runs of the templates that name it are placed: the shard (cluster), tolerations, affinity.",
    plural = "nexusalgorithmworkgroups",
    shortname = "nawg",
    namespaced,
    status = "crate::crd::ResourceStatus",
    printcolumn = r#"{"name":"Cluster","type":"string","jsonPath":".spec.cluster"}"#
)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct WorkgroupSpec {
    /// Free text.
    #[serde(default)]
    pub description: String,
    /// Capability flags (`gpu`, `arm64`, …), informational.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub capabilities: BTreeMap<String, bool>,
    /// Shard (cluster) the workgroup's runs go to.
    #[serde(default)]
    #[schemars(regex(pattern = crate::crd::DNS1123_PATTERN))]
    pub cluster: String,
    /// Pod tolerations (Kubernetes executor).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(schema_with = "crate::crd::free_object_list")]
    pub tolerations: Vec<serde_json::Value>,
    /// Pod affinity (Kubernetes executor).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "crate::crd::free_object")]
    pub affinity: Option<serde_json::Value>,
    /// At most this many runs of the workgroup execute at once on one receiver (local executor);
    /// the rest wait BUFFERED. `None` uses the executor's default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub max_concurrent_runs: Option<u32>,
}

impl WorkgroupSpec {
    /// Validates the spec.
    ///
    /// # Errors
    /// Returns every problem found, each with its field path.
    pub fn validate(&self, prefix: &str) -> Result<(), ValidationErrors> {
        let mut c = Collector::default();
        if self.cluster.is_empty() {
            c.push(
                format!("{prefix}.cluster"),
                "is required: the shard (cluster) that runs this workgroup",
            );
        } else if let Err(e) = validate_dns1123_subdomain(&self.cluster) {
            c.push(format!("{prefix}.cluster"), e);
        }
        if self.max_concurrent_runs == Some(0) {
            c.push(
                format!("{prefix}.maxConcurrentRuns"),
                "must be at least 1 when set",
            );
        }
        c.finish()
    }
}

/// `metadata` of a manifest (only what Nexus reads).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ObjectMeta {
    /// Object name.
    pub name: String,
    /// Namespace (ignored by standalone).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    /// Labels.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    /// Annotations.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
}

/// A `NexusAlgorithmTemplate` manifest.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AlgorithmTemplate {
    /// Must be [`API_VERSION`].
    pub api_version: String,
    /// Must be [`TEMPLATE_KIND`].
    pub kind: String,
    /// Name etc.
    pub metadata: ObjectMeta,
    /// The spec.
    pub spec: AlgorithmSpec,
}

/// A `NexusAlgorithmWorkgroup` manifest.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Workgroup {
    /// Must be [`API_VERSION`].
    pub api_version: String,
    /// Must be [`WORKGROUP_KIND`].
    pub kind: String,
    /// Name etc.
    pub metadata: ObjectMeta,
    /// The spec.
    pub spec: WorkgroupSpec,
}

impl AlgorithmTemplate {
    /// Validates apiVersion, kind, name and spec.
    ///
    /// # Errors
    /// Returns every problem found, each with its field path.
    pub fn validate(&self) -> Result<(), ValidationErrors> {
        let mut c = Collector::default();
        check_header(
            &self.api_version,
            &self.kind,
            TEMPLATE_KIND,
            &self.metadata,
            &mut c,
        );
        self.spec.check("spec", &mut c);
        c.finish()
    }
}

impl Workgroup {
    /// A workgroup manifest named `name` placing its runs on shard `cluster`, every other
    /// field at its default.
    #[must_use]
    pub fn on_cluster(name: &str, cluster: &str) -> Self {
        Self {
            api_version: API_VERSION.into(),
            kind: WORKGROUP_KIND.into(),
            metadata: ObjectMeta {
                name: name.into(),
                ..Default::default()
            },
            spec: WorkgroupSpec {
                cluster: cluster.into(),
                ..Default::default()
            },
        }
    }

    /// Validates apiVersion, kind, name and spec.
    ///
    /// # Errors
    /// Returns every problem found, each with its field path.
    pub fn validate(&self) -> Result<(), ValidationErrors> {
        let mut c = Collector::default();
        check_header(
            &self.api_version,
            &self.kind,
            WORKGROUP_KIND,
            &self.metadata,
            &mut c,
        );
        if let Err(e) = self.spec.validate("spec") {
            c.errors.extend(e.0);
        }
        c.finish()
    }
}

fn check_header(
    api_version: &str,
    kind: &str,
    want_kind: &str,
    meta: &ObjectMeta,
    c: &mut Collector,
) {
    if api_version != API_VERSION {
        c.push(
            "apiVersion",
            format!("must be '{API_VERSION}', found '{api_version}'"),
        );
    }
    if kind != want_kind {
        c.push("kind", format!("must be '{want_kind}', found '{kind}'"));
    }
    if let Err(e) = validate_dns1123_subdomain(&meta.name) {
        c.push("metadata.name", e);
    }
}

/// Per-run overrides (`customConfiguration`): the template spec's shape with every field
/// optional. Only the fields listed in [`SpecOverride::OVERRIDABLE`] may be set; anything else set
/// to a non-empty value is refused with a message naming it (the reference silently ignored them).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SpecOverride {
    #[serde(default)]
    container: Option<Container>,
    #[serde(default)]
    compute_resources: Option<ComputeResources>,
    #[serde(default)]
    workgroup_ref: Option<WorkgroupRef>,
    #[serde(default)]
    command: Option<String>,
    #[serde(default)]
    args: Option<Vec<String>>,
    #[serde(default)]
    runtime_environment: Option<RuntimeEnvironment>,
    #[serde(default)]
    error_handling_behaviour: Option<ErrorHandlingBehaviour>,
    #[serde(default)]
    datadog_integration_settings: Option<DatadogIntegrationSettings>,
    #[serde(default)]
    payload_configuration: Option<PayloadConfiguration>,
}

impl SpecOverride {
    /// The fields a run may override.
    pub const OVERRIDABLE: &'static [&'static str] = &[
        "container.image",
        "container.registry",
        "container.versionTag",
        "computeResources.cpuLimit",
        "computeResources.memoryLimit",
        "workgroupRef.name",
        "runtimeEnvironment.deadlineSeconds",
        "runtimeEnvironment.maximumRetries",
    ];

    /// Parses overrides from the request's `customConfiguration` JSON.
    ///
    /// # Errors
    /// Returns field-path errors for unknown or non-overridable fields and bad values.
    pub fn from_json(v: &serde_json::Value) -> Result<Self, ValidationErrors> {
        let o: SpecOverride = serde_json::from_value(v.clone()).map_err(|e| {
            ValidationErrors(vec![FieldError {
                path: "customConfiguration".into(),
                message: e.to_string(),
            }])
        })?;
        let mut c = Collector::default();
        let p = "customConfiguration";
        let refuse = |c: &mut Collector, f: &str| {
            c.push(
                format!("{p}.{f}"),
                format!(
                    "cannot be overridden per run; overridable fields are: {}",
                    Self::OVERRIDABLE.join(", ")
                ),
            );
        };
        if o.command.as_deref().is_some_and(|s| !s.is_empty()) {
            refuse(&mut c, "command");
        }
        if o.args.as_ref().is_some_and(|a| !a.is_empty()) {
            refuse(&mut c, "args");
        }
        if o.container
            .as_ref()
            .and_then(|x| x.service_account_name.as_ref())
            .is_some_and(|s| !s.is_empty())
        {
            refuse(&mut c, "container.serviceAccountName");
        }
        if o.compute_resources
            .as_ref()
            .is_some_and(|x| !x.custom_resources.is_empty())
        {
            refuse(&mut c, "computeResources.customResources");
        }
        if let Some(rt) = &o.runtime_environment {
            if !rt.environment_variables.is_empty() {
                refuse(&mut c, "runtimeEnvironment.environmentVariables");
            }
            if !rt.mapped_environment_variables.is_empty() {
                refuse(&mut c, "runtimeEnvironment.mappedEnvironmentVariables");
            }
            if !rt.annotations.is_empty() {
                refuse(&mut c, "runtimeEnvironment.annotations");
            }
            if rt.deadline_seconds == Some(0) {
                c.push(
                    format!("{p}.runtimeEnvironment.deadlineSeconds"),
                    "must be at least 1",
                );
            }
        }
        if o.error_handling_behaviour
            .as_ref()
            .is_some_and(|e| *e != ErrorHandlingBehaviour::default())
        {
            refuse(&mut c, "errorHandlingBehaviour");
        }
        if o.datadog_integration_settings
            .as_ref()
            .is_some_and(|d| d.mount_datadog_socket)
        {
            refuse(&mut c, "datadogIntegrationSettings");
        }
        if o.payload_configuration
            .as_ref()
            .is_some_and(|x| x.payload_valid_for.is_some())
        {
            refuse(
                &mut c,
                "payloadConfiguration (use the request's payloadValidFor)",
            );
        }
        if let Some(cr) = &o.compute_resources {
            for (f, v) in [
                ("cpuLimit", &cr.cpu_limit),
                ("memoryLimit", &cr.memory_limit),
            ] {
                if !v.is_empty()
                    && let Err(e) = parse_quantity(v)
                {
                    c.push(format!("{p}.computeResources.{f}"), e);
                }
            }
        }
        if let Some(w) = &o.workgroup_ref
            && !w.name.is_empty()
            && let Err(e) = validate_dns1123_subdomain(&w.name)
        {
            c.push(format!("{p}.workgroupRef.name"), e);
        }
        c.finish().map(|()| o)
    }

    /// Returns the template spec with these overrides applied (a copy; the template is untouched).
    /// Sub-objects missing from the template are created, never dereferenced.
    #[must_use]
    pub fn apply(&self, template: &AlgorithmSpec) -> AlgorithmSpec {
        let mut s = template.clone();
        if let Some(o) = &self.container {
            let c = s.container.get_or_insert_with(Container::default);
            set_nonempty(&mut c.image, &o.image);
            set_nonempty(&mut c.registry, &o.registry);
            set_nonempty(&mut c.version_tag, &o.version_tag);
        }
        if let Some(o) = &self.compute_resources {
            let c = s
                .compute_resources
                .get_or_insert_with(ComputeResources::default);
            set_nonempty(&mut c.cpu_limit, &o.cpu_limit);
            set_nonempty(&mut c.memory_limit, &o.memory_limit);
        }
        if let Some(o) = &self.workgroup_ref {
            let w = s.workgroup_ref.get_or_insert_with(WorkgroupRef::default);
            set_nonempty(&mut w.name, &o.name);
            set_nonempty(&mut w.group, &o.group);
            set_nonempty(&mut w.kind, &o.kind);
        }
        if let Some(o) = &self.runtime_environment {
            let r = s
                .runtime_environment
                .get_or_insert_with(RuntimeEnvironment::default);
            if o.deadline_seconds.is_some() {
                r.deadline_seconds = o.deadline_seconds;
            }
            if o.maximum_retries.is_some() {
                r.maximum_retries = o.maximum_retries;
            }
        }
        s
    }
}

fn set_nonempty(dst: &mut String, src: &str) {
    if !src.is_empty() {
        src.clone_into(dst);
    }
}

/// Validates a DNS-1123 subdomain (what Kubernetes requires of object names): lowercase
/// alphanumerics, `-` and `.`, starting and ending alphanumeric, at most 253 characters.
///
/// # Errors
/// Returns a message saying what is wrong.
pub fn validate_dns1123_subdomain(name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err("must not be empty".into());
    }
    if name.len() > 253 {
        return Err(format!("'{name}' is longer than 253 characters"));
    }
    let ok_chars = name
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.');
    let bytes = name.as_bytes();
    let alnum = |b: u8| b.is_ascii_lowercase() || b.is_ascii_digit();
    if !ok_chars || !alnum(bytes[0]) || !alnum(bytes[bytes.len() - 1]) {
        return Err(format!(
            "'{name}' is not a valid name: use lowercase letters, digits, '-' and '.', starting and ending with a letter or digit (DNS-1123)"
        ));
    }
    Ok(())
}

fn is_env_name(s: &str) -> bool {
    let mut b = s.bytes();
    matches!(b.next(), Some(c) if c.is_ascii_alphabetic() || c == b'_')
        && b.all(|c| c.is_ascii_alphanumeric() || matches!(c, b'_' | b'.' | b'-'))
}

/// Parses a Kubernetes resource quantity (`500m`, `2`, `1.5Gi`, `1e3`) into its value in base
/// units. Never panics.
///
/// # Errors
/// Returns a message naming the accepted forms.
pub fn parse_quantity(q: &str) -> Result<f64, String> {
    let err = || {
        format!(
            "'{q}' is not a valid quantity: use a number with an optional suffix (m, k, M, G, T, P, E, Ki, Mi, Gi, Ti, Pi, Ei), e.g. 500m or 512Mi"
        )
    };
    let s = q.trim();
    if s.is_empty() || s != q {
        return Err(err());
    }
    const SUFFIXES: &[(&str, f64)] = &[
        ("Ki", 1024.0),
        ("Mi", 1_048_576.0),
        ("Gi", 1_073_741_824.0),
        ("Ti", 1_099_511_627_776.0),
        ("Pi", 1_125_899_906_842_624.0),
        ("Ei", 1_152_921_504_606_846_976.0),
        ("m", 1e-3),
        ("k", 1e3),
        ("M", 1e6),
        ("G", 1e9),
        ("T", 1e12),
        ("P", 1e15),
        ("E", 1e18),
    ];
    let (num, mult) = SUFFIXES
        .iter()
        .find_map(|(suf, m)| s.strip_suffix(suf).map(|n| (n, *m)))
        .unwrap_or((s, 1.0));
    let valid_num = !num.is_empty()
        && num
            .bytes()
            .all(|b| b.is_ascii_digit() || matches!(b, b'.' | b'e' | b'E' | b'+' | b'-'))
        && num
            .bytes()
            .next()
            .is_some_and(|b| b.is_ascii_digit() || b == b'.' || b == b'+');
    let v: f64 = if valid_num {
        num.parse().map_err(|_| err())?
    } else {
        return Err(err());
    };
    if !v.is_finite() || v < 0.0 {
        return Err(err());
    }
    Ok(v * mult)
}

/// Parses a human duration (`30s`, `6h`, `1h30m`, Go's `24h0m0s`).
///
/// # Errors
/// Returns a message with an example of the accepted form.
pub fn parse_duration(s: &str) -> Result<std::time::Duration, String> {
    let d = humantime::parse_duration(s).map_err(|e| {
        format!("'{s}' is not a valid duration ({e}): use e.g. 30s, 15m, 6h or 1h30m")
    })?;
    if d.is_zero() {
        return Err(format!("'{s}' must be longer than zero"));
    }
    Ok(d)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn template_yaml() -> &'static str {
        r#"
apiVersion: science.sneaksanddata.com/v1
kind: NexusAlgorithmTemplate
metadata:
  name: knapsack
spec:
  container: { image: demo, registry: local, versionTag: v1 }
  computeResources: { cpuLimit: "1", memoryLimit: 512Mi }
  workgroupRef: { name: default, group: science.sneaksanddata.com, kind: NexusAlgorithmWorkgroup }
  command: nexus-demo
  args: ["knapsack", "--sas-uri=%s", "--request-id=%s"]
  runtimeEnvironment:
    environmentVariables: [{ name: MODE, value: fast }]
    deadlineSeconds: 60
    maximumRetries: 2
  errorHandlingBehaviour: { transientExitCodes: [75], fatalExitCodes: [2] }
"#
    }

    #[test]
    fn template_parses_and_validates() {
        let t: AlgorithmTemplate = serde_yaml::from_str(template_yaml()).unwrap();
        t.validate().unwrap();
        assert_eq!(t.spec.deadline_seconds(), 60);
        assert_eq!(t.spec.maximum_retries(), 2);
        assert_eq!(t.spec.workgroup_name(), Some("default"));
    }

    #[test]
    fn validation_names_every_field() {
        let mut t: AlgorithmTemplate = serde_yaml::from_str(template_yaml()).unwrap();
        t.metadata.name = "Bad_Name".into();
        t.spec.command = String::new();
        t.spec.compute_resources.as_mut().unwrap().memory_limit = "lots".into();
        t.spec
            .runtime_environment
            .as_mut()
            .unwrap()
            .deadline_seconds = Some(0);
        let e = t.validate().unwrap_err();
        let paths: Vec<_> = e.0.iter().map(|f| f.path.as_str()).collect();
        assert_eq!(
            paths,
            [
                "metadata.name",
                "spec.command",
                "spec.computeResources.memoryLimit",
                "spec.runtimeEnvironment.deadlineSeconds"
            ]
        );
        assert!(e.to_string().contains("'lots' is not a valid quantity"));
    }

    #[test]
    fn override_merge_decides_workgroup_and_survives_missing_objects() {
        let base = AlgorithmSpec {
            command: "x".into(),
            workgroup_ref: Some(WorkgroupRef {
                name: "a".into(),
                ..Default::default()
            }),
            ..Default::default()
        };
        let o = SpecOverride::from_json(&serde_json::json!({
            "workgroupRef": {"name": "b"},
            "computeResources": {"cpuLimit": "2"},
            "runtimeEnvironment": {"deadlineSeconds": 5},
            "container": {"versionTag": "v2"}
        }))
        .unwrap();
        let m = o.apply(&base);
        assert_eq!(m.workgroup_name(), Some("b"));
        assert_eq!(m.compute_resources.as_ref().unwrap().cpu_limit, "2");
        assert_eq!(m.deadline_seconds(), 5);
        assert_eq!(m.container.as_ref().unwrap().version_tag, "v2");
        assert_eq!(base.workgroup_name(), Some("a"), "template untouched");
    }

    #[test]
    fn override_refuses_non_overridable_fields() {
        let e = SpecOverride::from_json(&serde_json::json!({"command": "rm -rf /", "args": []}))
            .unwrap_err();
        assert_eq!(e.0.len(), 1);
        assert_eq!(e.0[0].path, "customConfiguration.command");
        let e = SpecOverride::from_json(&serde_json::json!({"bogus": 1})).unwrap_err();
        assert!(e.to_string().contains("unknown field `bogus`"), "{e}");
    }

    #[test]
    fn quantities() {
        assert_eq!(parse_quantity("500m").unwrap(), 0.5);
        assert_eq!(parse_quantity("1Gi").unwrap(), 1_073_741_824.0);
        assert_eq!(parse_quantity("2").unwrap(), 2.0);
        assert_eq!(parse_quantity("1e3").unwrap(), 1000.0);
        for bad in ["", "abc", "-1", "1Xi", " 1", "m", "NaN", "inf"] {
            assert!(parse_quantity(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("24h0m0s").unwrap().as_secs(), 86400);
        assert_eq!(parse_duration("6h").unwrap().as_secs(), 21600);
        assert!(parse_duration("soon").unwrap_err().contains("e.g. 30s"));
        assert!(parse_duration("0s").is_err());
    }

    #[test]
    fn names() {
        assert!(validate_dns1123_subdomain("a.b-c1").is_ok());
        for bad in ["", "A", "-a", "a-", "a_b", &"a".repeat(254)] {
            assert!(validate_dns1123_subdomain(bad).is_err(), "{bad}");
        }
    }
}
