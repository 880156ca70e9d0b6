//! Installs the Nexus CRDs ([`nexus_model::crd`]) into a cluster.

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use nexus_model::crd::{template_crd, workgroup_crd};

/// Creates both CRDs in the cluster of `client` (an existing one is replaced by this version)
/// and waits until the API server serves them (`Established`), at most `timeout`. Safe to run
/// concurrently (several processes starting at once, `nexus crd --apply` beside them).
///
/// # Errors
/// The API server refused a CRD, or it did not become established in time.
pub async fn install(client: &kube::Client, timeout: std::time::Duration) -> Result<(), String> {
    use kube::api::{Api, PostParams};
    let api: Api<CustomResourceDefinition> = Api::all(client.clone());
    for crd in [template_crd(), workgroup_crd()] {
        let name = crd.metadata.name.clone().unwrap_or_default();
        match api.create(&PostParams::default(), &crd).await {
            Ok(_) => {}
            Err(kube::Error::Api(e)) if e.code == 409 => replace(&api, &name, crd).await?,
            Err(e) => return Err(format!("the API server refused CRD {name}: {e}")),
        }
        let until = tokio::time::Instant::now() + timeout;
        loop {
            let got = api
                .get(&name)
                .await
                .map_err(|e| format!("cannot read CRD {name}: {e}"))?;
            let established = got
                .status
                .and_then(|s| s.conditions)
                .unwrap_or_default()
                .iter()
                .any(|c| c.type_ == "Established" && c.status == "True");
            if established {
                break;
            }
            if tokio::time::Instant::now() >= until {
                return Err(format!(
                    "CRD {name} was not established within {}s",
                    timeout.as_secs()
                ));
            }
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
    }
    Ok(())
}

/// How many times a replace is tried again after a conflict.
const REPLACE_ATTEMPTS: u64 = 5;

/// Replaces the existing CRD `name` with `crd`. A conflict means the object changed between
/// the read and the write (the API server's own controllers update a new CRD's status right
/// after it is created; another installer may be writing too): read it again and retry.
async fn replace(
    api: &kube::Api<CustomResourceDefinition>,
    name: &str,
    mut crd: CustomResourceDefinition,
) -> Result<(), String> {
    use kube::api::PostParams;
    let mut attempt: u64 = 1;
    loop {
        let existing = api
            .get(name)
            .await
            .map_err(|e| format!("cannot read CRD {name}: {e}"))?;
        crd.metadata.resource_version = existing.metadata.resource_version;
        match api.replace(name, &PostParams::default(), &crd).await {
            Ok(_) => return Ok(()),
            Err(kube::Error::Api(e)) if e.code == 409 && attempt < REPLACE_ATTEMPTS => {
                tracing::debug!(
                    crd = name,
                    attempt,
                    "CRD changed while being replaced, retrying"
                );
                tokio::time::sleep(std::time::Duration::from_millis(50 * attempt)).await;
                attempt += 1;
            }
            Err(e) => return Err(format!("the API server refused to update CRD {name}: {e}")),
        }
    }
}
