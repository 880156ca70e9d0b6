//! The `NexusAlgorithmTemplate` and `NexusAlgorithmWorkgroup` CustomResourceDefinitions, generated
//! from the Rust spec types ([`crate::spec::AlgorithmSpec`], [`crate::spec::WorkgroupSpec`]) with
//! kube's derive and schemars, so the manifests Kubernetes validates and the types Nexus reads can
//! never drift apart.
//!
//! Same group (`science.sneaksanddata.com`), version (`v1`), kinds, plurals, scope (namespaced) and
//! spec fields as the reference, with a status subresource. Unlike the reference, the schema
//! refuses a bad manifest when it is applied rather than when a run starts: required fields
//! (`container.{image,registry,versionTag}`, `command`, `workgroupRef.name`, a workgroup's
//! `cluster`), Kubernetes quantities (`cpuLimit`, `memoryLimit`, `customResources`), Go durations
//! (`payloadValidFor`), DNS-1123 names and positive counts are checked by the API server. Fields
//! that carry Kubernetes objects (tolerations, affinity, `valueFrom`, `envFrom`) are kept as
//! objects with unknown fields preserved. `nexus crd` prints both.

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::CustomResourceExt;
use schemars::{JsonSchema, Schema, SchemaGenerator, json_schema};
use serde::{Deserialize, Serialize};

use crate::spec::{NexusAlgorithmTemplate, NexusAlgorithmWorkgroup};

/// A Kubernetes quantity (`500m`, `2`, `1.5Gi`, `1e3`), as the API server's own pattern.
pub(crate) const QUANTITY_PATTERN: &str = r"^(\+|-)?(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))(([KMGTPE]i)|[numkMGTPE]|([eE](\+|-)?(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))))?$";
/// A Go duration (`90s`, `6h`, `1h30m`).
pub(crate) const DURATION_PATTERN: &str = r"^([0-9]+(\.[0-9]+)?(ns|us|µs|ms|s|m|h))+$";
/// A DNS-1123 subdomain (Kubernetes object names).
pub(crate) const DNS1123_PATTERN: &str =
    r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$";

/// The known key closest to the last segment of `path` (a dotted path into a manifest of `kind`,
/// as `spec.runtimeEnvironment.deadlineSecond`), from the CRD's schema: same name ignoring case,
/// or at most two edits away. `None` when the path leaves the schema or nothing is close.
#[must_use]
pub fn suggest_field(kind: &str, path: &str) -> Option<String> {
    use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::{
        JSONSchemaProps, JSONSchemaPropsOrArray,
    };
    let crd = match kind {
        crate::spec::TEMPLATE_KIND => template_crd(),
        crate::spec::WORKGROUP_KIND => workgroup_crd(),
        _ => return None,
    };
    let mut node: JSONSchemaProps = crd
        .spec
        .versions
        .first()?
        .schema
        .clone()?
        .open_api_v3_schema?;
    let segments: Vec<&str> = path.split('.').collect();
    let (last, parents) = segments.split_last()?;
    for seg in parents {
        if seg.parse::<usize>().is_ok() {
            node = match node.items? {
                JSONSchemaPropsOrArray::Schema(s) => *s,
                JSONSchemaPropsOrArray::Schemas(mut v) if !v.is_empty() => v.remove(0),
                JSONSchemaPropsOrArray::Schemas(_) => return None,
            };
        } else {
            node = node.properties?.remove(*seg)?;
        }
    }
    let known = node.properties?;
    known
        .keys()
        .map(|k| (edit_distance(&k.to_lowercase(), &last.to_lowercase()), k))
        .filter(|(d, _)| *d <= 2)
        .min()
        .map(|(_, k)| k.clone())
}

/// Levenshtein distance (short field names only).
fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut cur = vec![i + 1];
        for (j, cb) in b.iter().enumerate() {
            let sub = prev[j] + usize::from(ca != *cb);
            cur.push(sub.min(prev[j + 1] + 1).min(cur[j] + 1));
        }
        prev = cur;
    }
    prev[b.len()]
}

/// `status` of both kinds: conditions written by controllers (e.g. type `Ready`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ResourceStatus {
    /// `metav1.Condition`s.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(schema_with = "free_object_list")]
    pub conditions: Vec<serde_json::Value>,
    /// Clusters the resource was synchronised to (reference field).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub synced_to_clusters: Vec<String>,
}

/// Schema of a field holding a Kubernetes object Nexus passes through (affinity, `valueFrom`).
pub(crate) fn free_object(_: &mut SchemaGenerator) -> Schema {
    json_schema!({
        "type": "object",
        "x-kubernetes-preserve-unknown-fields": true
    })
}

/// Schema of a list of Kubernetes objects Nexus passes through (tolerations, `envFrom`).
pub(crate) fn free_object_list(_: &mut SchemaGenerator) -> Schema {
    json_schema!({
        "type": "array",
        "items": {"type": "object", "x-kubernetes-preserve-unknown-fields": true}
    })
}

/// Schema of `customResources`: resource name → quantity.
pub(crate) fn quantity_map(_: &mut SchemaGenerator) -> Schema {
    json_schema!({
        "type": "object",
        "additionalProperties": {"type": "string", "pattern": QUANTITY_PATTERN}
    })
}

/// Marks `fields` required in the object schema at `path` (property names from the root); a
/// required string must also be non-empty.
fn require(root: &mut serde_json::Value, path: &[&str], fields: &[&str]) {
    let mut node = root;
    for p in path {
        node = &mut node["properties"][*p];
    }
    let list: Vec<serde_json::Value> = fields.iter().map(|f| (*f).into()).collect();
    node["required"] = serde_json::Value::Array(list);
    for f in fields {
        let field = &mut node["properties"][*f];
        if field["type"] == "string" && field.get("minLength").is_none() {
            field["minLength"] = 1.into();
        }
        if let Some(o) = field.as_object_mut() {
            // A required field is never `null`.
            o.remove("nullable");
        }
    }
}

/// Makes the schema structural as Kubernetes wants it: no `additionalProperties: false` beside
/// `properties` (the API server prunes unknown fields itself and `kubectl` reports them), and no
/// `default`s (serde's empty defaults would satisfy `required` before validation; Nexus applies
/// its own defaults when it reads a manifest).
fn make_structural(node: &mut serde_json::Value) {
    match node {
        serde_json::Value::Object(o) => {
            if o.contains_key("properties") && o.get("additionalProperties") == Some(&false.into())
            {
                o.remove("additionalProperties");
            }
            o.remove("default");
            for v in o.values_mut() {
                make_structural(v);
            }
        }
        serde_json::Value::Array(a) => a.iter_mut().for_each(make_structural),
        _ => {}
    }
}

fn with_required(
    mut crd: CustomResourceDefinition,
    rules: &[(&[&str], &[&str])],
) -> CustomResourceDefinition {
    for v in &mut crd.spec.versions {
        let Some(schema) = v.schema.as_mut().and_then(|s| s.open_api_v3_schema.take()) else {
            continue;
        };
        let mut json = serde_json::to_value(schema).expect("a schema serializes");
        make_structural(&mut json);
        for (path, fields) in rules {
            require(&mut json, path, fields);
        }
        v.schema.as_mut().expect("checked above").open_api_v3_schema =
            Some(serde_json::from_value(json).expect("the schema it came from"));
    }
    crd
}

/// The `NexusAlgorithmTemplate` CRD.
#[must_use]
pub fn template_crd() -> CustomResourceDefinition {
    with_required(
        NexusAlgorithmTemplate::crd(),
        &[
            (&[], &["spec"]),
            (&["spec"], &["container", "command", "workgroupRef"]),
            (&["spec", "container"], &["image", "registry", "versionTag"]),
            (&["spec", "workgroupRef"], &["name"]),
        ],
    )
}

/// The `NexusAlgorithmWorkgroup` CRD.
#[must_use]
pub fn workgroup_crd() -> CustomResourceDefinition {
    with_required(
        NexusAlgorithmWorkgroup::crd(),
        &[(&[], &["spec"]), (&["spec"], &["cluster"])],
    )
}

/// Both CRDs as one multi-document YAML stream (what `nexus crd` prints).
///
/// # Errors
/// Never in practice (serialization of generated values).
pub fn crds_yaml() -> Result<String, serde_yaml::Error> {
    let mut out = String::new();
    for crd in [template_crd(), workgroup_crd()] {
        out.push_str("---\n");
        out.push_str(&serde_yaml::to_string(&crd)?);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn schema(crd: &CustomResourceDefinition) -> serde_json::Value {
        let v = &crd.spec.versions[0];
        serde_json::to_value(
            v.schema
                .as_ref()
                .unwrap()
                .open_api_v3_schema
                .as_ref()
                .unwrap(),
        )
        .unwrap()
    }

    #[test]
    fn names_group_version_and_scope_match_the_reference() {
        let t = template_crd();
        assert_eq!(
            t.metadata.name.as_deref(),
            Some("nexusalgorithmtemplates.science.sneaksanddata.com")
        );
        assert_eq!(t.spec.group, "science.sneaksanddata.com");
        assert_eq!(t.spec.scope, "Namespaced");
        assert_eq!(t.spec.names.kind, "NexusAlgorithmTemplate");
        assert_eq!(t.spec.versions[0].name, "v1");
        assert!(t.spec.versions[0].served && t.spec.versions[0].storage);
        assert!(
            t.spec.versions[0]
                .subresources
                .as_ref()
                .and_then(|s| s.status.as_ref())
                .is_some(),
            "status subresource"
        );
        let w = workgroup_crd();
        assert_eq!(
            w.metadata.name.as_deref(),
            Some("nexusalgorithmworkgroups.science.sneaksanddata.com")
        );
        assert_eq!(w.spec.names.plural, "nexusalgorithmworkgroups");
    }

    #[test]
    fn the_schema_requires_and_checks_what_a_run_needs() {
        let s = schema(&template_crd());
        let spec = &s["properties"]["spec"];
        assert_eq!(
            spec["required"],
            serde_json::json!(["container", "command", "workgroupRef"])
        );
        assert_eq!(
            spec["properties"]["container"]["required"],
            serde_json::json!(["image", "registry", "versionTag"])
        );
        let cr = &spec["properties"]["computeResources"]["properties"];
        assert_eq!(cr["cpuLimit"]["pattern"], QUANTITY_PATTERN);
        assert_eq!(
            cr["customResources"]["additionalProperties"]["pattern"],
            QUANTITY_PATTERN
        );
        let rt = &spec["properties"]["runtimeEnvironment"]["properties"];
        assert_eq!(rt["deadlineSeconds"]["minimum"].as_f64(), Some(1.0));
        assert_eq!(
            spec["properties"]["payloadConfiguration"]["properties"]["payloadValidFor"]["pattern"],
            DURATION_PATTERN
        );
        assert_eq!(spec["properties"]["command"]["minLength"], 1);
        let wg = schema(&workgroup_crd());
        assert_eq!(
            wg["properties"]["spec"]["required"],
            serde_json::json!(["cluster"])
        );
        assert_eq!(
            wg["properties"]["spec"]["properties"]["tolerations"]["items"]["x-kubernetes-preserve-unknown-fields"],
            true
        );
    }

    #[test]
    fn the_patterns_agree_with_nexus_own_parsers() {
        // What the API server accepts at apply time, Nexus accepts at run time, and the bad
        // quantities the API server refuses are the ones Nexus would refuse too.
        let q = regex_lite::Regex::new(QUANTITY_PATTERN).unwrap();
        for ok in ["500m", "2", "1.5Gi", "512Mi", "1e3", "0.5", "100k"] {
            assert!(q.is_match(ok), "{ok}");
            assert!(crate::spec::parse_quantity(ok).is_ok(), "{ok}");
        }
        for bad in ["", "lots", "5 Gi", "-", "1.5GB", "Mi"] {
            assert!(!q.is_match(bad), "{bad}");
            assert!(crate::spec::parse_quantity(bad).is_err(), "{bad}");
        }
        let d = regex_lite::Regex::new(DURATION_PATTERN).unwrap();
        for ok in ["90s", "6h", "1h30m", "250ms"] {
            assert!(d.is_match(ok), "{ok}");
            assert!(crate::spec::parse_duration(ok).is_ok(), "{ok}");
        }
        // Nexus' own parser is more lenient ("6 h"); the API server keeps manifests to the Go
        // form the reference documents. What passes the schema always passes Nexus.
        for bad in ["", "6 h", "soon", "h", "5d"] {
            assert!(!d.is_match(bad), "{bad}");
        }
        let n = regex_lite::Regex::new(DNS1123_PATTERN).unwrap();
        for (name, ok) in [
            ("shard-a", true),
            ("a.b-c", true),
            ("Shard_A", false),
            ("-a", false),
        ] {
            assert_eq!(n.is_match(name), ok, "{name}");
            assert_eq!(
                crate::spec::validate_dns1123_subdomain(name).is_ok(),
                ok,
                "{name}"
            );
        }
    }

    #[test]
    fn the_schemas_are_structural() {
        fn walk(v: &serde_json::Value, path: &str) {
            if let Some(o) = v.as_object() {
                assert!(
                    !(o.contains_key("properties") && o.contains_key("additionalProperties")),
                    "{path}: properties and additionalProperties together"
                );
                assert!(!o.contains_key("default"), "{path}: default");
                for (k, c) in o {
                    walk(c, &format!("{path}.{k}"));
                }
            }
        }
        walk(&schema(&template_crd()), "template");
        walk(&schema(&workgroup_crd()), "workgroup");
        let s = schema(&template_crd());
        let image = &s["properties"]["spec"]["properties"]["container"]["properties"]["image"];
        assert_eq!(image["minLength"], 1, "a required string is non-empty");
    }

    #[test]
    fn the_checked_in_crds_are_the_generated_ones() {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../../deploy/crds/nexus-crds.yaml");
        let file = std::fs::read_to_string(&path).unwrap();
        assert!(
            file == crds_yaml().unwrap(),
            "{} is stale: regenerate it with `cargo run -p nexus-cli -- crd > deploy/crds/nexus-crds.yaml`",
            path.display()
        );
    }

    #[test]
    fn the_example_manifests_parse_as_the_custom_resources() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/templates");
        let mut seen = 0;
        for e in std::fs::read_dir(dir).unwrap() {
            let text = std::fs::read_to_string(e.unwrap().path()).unwrap();
            if text.contains("kind: NexusAlgorithmTemplate") {
                let t: NexusAlgorithmTemplate = serde_yaml::from_str(&text).unwrap();
                assert!(!t.spec.command.is_empty());
            } else {
                let w: NexusAlgorithmWorkgroup = serde_yaml::from_str(&text).unwrap();
                assert!(!w.spec.cluster.is_empty());
            }
            seen += 1;
        }
        assert!(seen >= 3);
    }

    #[test]
    fn yaml_has_both_documents() {
        let y = crds_yaml().unwrap();
        assert_eq!(y.matches("kind: CustomResourceDefinition").count(), 2);
        assert!(y.contains("x-kubernetes-preserve-unknown-fields: true"));
    }
}
