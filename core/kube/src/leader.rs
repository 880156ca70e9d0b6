//! Leader election through a Kubernetes `coordination.k8s.io/v1` Lease: a
//! [`nexus_store::leader::Leadership`] for supervisors that run in a cluster, with client-go's
//! `leaderelection` rules.

use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use k8s_openapi::chrono::Utc;
use kube::Api;
use kube::api::PostParams;
use nexus_store::leader::Leadership;

/// A `coordination.k8s.io/v1` Lease as the leadership, with client-go's rules: the holder renews
/// `spec.renewTime`; a standby counts a lease as lapsed only when it has seen the same
/// `resourceVersion` for `leaseDurationSeconds` on its own clock (so clocks of the holders need
/// not agree); every write carries the `resourceVersion` it read, so two standbys cannot both
/// take a lapsed lease. Needs `get`, `create` and `update` on `leases` in the namespace.
#[derive(Debug)]
pub struct KubeLease {
    api: Api<Lease>,
    name: String,
    /// The record last seen: its resourceVersion and when this process first saw it.
    observed: Mutex<Option<(String, Instant)>>,
}

impl KubeLease {
    /// The Lease `name` behind `api` (usually `Api::default_namespaced`).
    pub fn new(api: Api<Lease>, name: impl Into<String>) -> Self {
        Self {
            api,
            name: name.into(),
            observed: Mutex::new(None),
        }
    }

    /// Records that `version` was seen now, unless it was already seen; returns since when.
    fn observe(&self, version: &str) -> Instant {
        let mut o = self.observed.lock().unwrap_or_else(PoisonError::into_inner);
        match &*o {
            Some((v, at)) if v == version => *at,
            _ => {
                let now = Instant::now();
                *o = Some((version.to_owned(), now));
                now
            }
        }
    }

    fn err(&self, what: &str, e: &kube::Error) -> String {
        format!("Lease {}: cannot {what}: {e}", self.name)
    }
}

/// `ttl` as whole seconds, rounded up, at least 1 (the Lease's unit).
fn lease_seconds(ttl: Duration) -> i32 {
    let s = ttl.as_secs() + u64::from(ttl.subsec_nanos() > 0);
    i32::try_from(s.max(1)).unwrap_or(i32::MAX)
}

fn is_conflict(e: &kube::Error) -> bool {
    matches!(e, kube::Error::Api(s) if s.code == 409)
}

#[async_trait]
impl Leadership for KubeLease {
    async fn try_lead(&self, holder: &str, ttl: Duration) -> Result<bool, String> {
        let now = MicroTime(Utc::now());
        let seconds = lease_seconds(ttl);
        let Some(current) = self
            .api
            .get_opt(&self.name)
            .await
            .map_err(|e| self.err("read it", &e))?
        else {
            let lease = Lease {
                metadata: ObjectMeta {
                    name: Some(self.name.clone()),
                    ..ObjectMeta::default()
                },
                spec: Some(LeaseSpec {
                    holder_identity: Some(holder.to_owned()),
                    lease_duration_seconds: Some(seconds),
                    acquire_time: Some(now.clone()),
                    renew_time: Some(now),
                    lease_transitions: Some(0),
                    ..LeaseSpec::default()
                }),
            };
            return match self.api.create(&PostParams::default(), &lease).await {
                Ok(created) => {
                    self.observe(&created.metadata.resource_version.unwrap_or_default());
                    Ok(true)
                }
                Err(e) if is_conflict(&e) => Ok(false), // another created it first
                Err(e) => Err(self.err("create it", &e)),
            };
        };
        let version = current
            .metadata
            .resource_version
            .clone()
            .unwrap_or_default();
        let seen_since = self.observe(&version);
        let spec = current.spec.clone().unwrap_or_default();
        let held_by = spec.holder_identity.as_deref().filter(|h| !h.is_empty());
        let ours = held_by == Some(holder);
        if let Some(other) = held_by
            && !ours
        {
            let duration = u64::try_from(spec.lease_duration_seconds.unwrap_or(0)).unwrap_or(0);
            if seen_since.elapsed() < Duration::from_secs(duration) {
                tracing::trace!(lease = %self.name, holder = other, "held by another");
                return Ok(false);
            }
        }
        let mut next = current;
        next.spec = Some(LeaseSpec {
            holder_identity: Some(holder.to_owned()),
            lease_duration_seconds: Some(seconds),
            acquire_time: if ours {
                spec.acquire_time
            } else {
                Some(now.clone())
            },
            renew_time: Some(now),
            lease_transitions: Some(
                spec.lease_transitions.unwrap_or(0) + i32::from(!ours && held_by.is_some()),
            ),
            ..spec
        });
        match self
            .api
            .replace(&self.name, &PostParams::default(), &next)
            .await
        {
            Ok(written) => {
                self.observe(&written.metadata.resource_version.unwrap_or_default());
                Ok(true)
            }
            Err(e) if is_conflict(&e) => Ok(false), // changed since read: someone else wrote it
            Err(e) => Err(self.err("renew or take it", &e)),
        }
    }

    async fn resign(&self, holder: &str) -> Result<(), String> {
        let Some(mut current) = self
            .api
            .get_opt(&self.name)
            .await
            .map_err(|e| self.err("read it", &e))?
        else {
            return Ok(());
        };
        let Some(spec) = current.spec.as_mut() else {
            return Ok(());
        };
        if spec.holder_identity.as_deref() != Some(holder) {
            return Ok(()); // not ours (any more)
        }
        spec.holder_identity = None;
        spec.lease_duration_seconds = Some(1);
        spec.renew_time = Some(MicroTime(Utc::now()));
        match self
            .api
            .replace(&self.name, &PostParams::default(), &current)
            .await
        {
            Ok(_) => Ok(()),
            Err(e) if is_conflict(&e) => Ok(()), // taken over meanwhile
            Err(e) => Err(self.err("release it", &e)),
        }
    }

    fn describe(&self) -> String {
        let ns = self.api.namespace().unwrap_or("default");
        format!("Lease {ns}/{}", self.name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lease_seconds_round_up_and_are_at_least_one() {
        assert_eq!(lease_seconds(Duration::from_millis(1)), 1);
        assert_eq!(lease_seconds(Duration::ZERO), 1);
        assert_eq!(lease_seconds(Duration::from_secs(15)), 15);
        assert_eq!(lease_seconds(Duration::from_millis(15_001)), 16);
        assert_eq!(lease_seconds(Duration::from_secs(u64::MAX)), i32::MAX);
    }
}
