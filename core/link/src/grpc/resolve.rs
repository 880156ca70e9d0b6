//! Finding a shard's receivers: an endpoint whose host is a DNS name (in Kubernetes, a headless
//! Service with one A record per ready receiver pod) stands for every address the name resolves
//! to, re-resolved every `resolve_interval`; an endpoint whose host is an IP literal stands for
//! itself and is never resolved.
//!
//! [`Resolver`] is the seam: [`Resolver::dns`] asks the system resolver
//! (`tokio::net::lookup_host`), tests give [`Resolver::from_fn`] a closure. It must not decide
//! what to do with an answer: the client keeps the last known addresses on a failure or an empty
//! answer.

use std::fmt;
use std::future::Future;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use tonic::codegen::http::Uri;

/// Shortest accepted `resolve_interval` (shorter values are raised to it).
pub const RESOLVE_INTERVAL_MIN: Duration = Duration::from_secs(1);
/// Longest accepted `resolve_interval` (longer values are lowered to it).
pub const RESOLVE_INTERVAL_MAX: Duration = Duration::from_secs(600);

/// What a [`Resolver`] returns: the addresses of a host name, in any order.
pub type ResolveFuture = Pin<Box<dyn Future<Output = io::Result<Vec<IpAddr>>> + Send>>;

/// Resolves a host name to its addresses (the seam between the gRPC client and DNS).
#[derive(Clone)]
pub struct Resolver(Arc<dyn Fn(&str) -> ResolveFuture + Send + Sync>);

impl fmt::Debug for Resolver {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Resolver")
    }
}

impl Default for Resolver {
    fn default() -> Self {
        Self::dns()
    }
}

impl Resolver {
    /// Returns the system resolver (`tokio::net::lookup_host`: `/etc/hosts`, then DNS).
    #[must_use]
    pub fn dns() -> Self {
        Self::from_fn(|host| {
            let host = host.to_owned();
            async move {
                let addrs = tokio::net::lookup_host((host.as_str(), 0)).await?;
                Ok(addrs.map(|a| a.ip()).collect())
            }
        })
    }

    /// Returns a resolver answering with `f` (tests feed resolutions without DNS).
    pub fn from_fn<F, Fut>(f: F) -> Self
    where
        F: Fn(&str) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = io::Result<Vec<IpAddr>>> + Send + 'static,
    {
        Self(Arc::new(move |host| Box::pin(f(host))))
    }

    /// Returns the addresses of `host`, sorted, without duplicates.
    ///
    /// # Errors
    /// The resolver's error (no such name, resolver unreachable, …).
    pub async fn resolve(&self, host: &str) -> io::Result<Vec<IpAddr>> {
        let mut ips = (self.0)(host).await?;
        ips.sort_unstable();
        ips.dedup();
        Ok(ips)
    }
}

/// One configured endpoint URL, taken apart.
#[derive(Debug, Clone)]
pub(crate) struct Target {
    /// The URL as configured.
    pub(crate) url: String,
    /// `http` or `https`.
    pub(crate) scheme: &'static str,
    /// The host, without the brackets of an IPv6 literal.
    pub(crate) host: String,
    pub(crate) port: u16,
    /// Path and query after the authority, when not just `/`.
    pub(crate) path: String,
    /// The address when the host is an IP literal (never resolved).
    pub(crate) ip: Option<IpAddr>,
    pub(crate) uri: Uri,
}

impl Target {
    /// Parses an `http://` / `https://` endpoint URL.
    pub(crate) fn parse(url: &str) -> Result<Self, String> {
        let uri: Uri = url.parse().map_err(|e| format!("is not a URL: {e}"))?;
        let scheme = match uri.scheme_str() {
            Some("https") => "https",
            Some("http") => "http",
            _ => return Err("must start with http:// or https://".into()),
        };
        let Some(raw_host) = uri.host().filter(|h| !h.is_empty()) else {
            return Err("has no host".into());
        };
        let host = raw_host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_owned();
        let port = uri
            .port_u16()
            .unwrap_or(if scheme == "https" { 443 } else { 80 });
        let path = uri
            .path_and_query()
            .map(|p| p.as_str())
            .filter(|p| *p != "/")
            .unwrap_or_default()
            .to_owned();
        Ok(Self {
            url: url.to_owned(),
            scheme,
            ip: host.parse().ok(),
            host,
            port,
            path,
            uri,
        })
    }

    /// Returns the endpoint URL of one resolved address (same scheme, port and path).
    pub(crate) fn url_for(&self, ip: IpAddr) -> String {
        format!(
            "{}://{}{}",
            self.scheme,
            SocketAddr::new(ip, self.port),
            self.path
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_tell_names_from_ip_literals_and_keep_scheme_port_and_path() {
        let t = Target::parse("http://receivers.nexus.svc:9091").unwrap();
        assert_eq!(
            (t.scheme, t.host.as_str(), t.port, t.ip),
            ("http", "receivers.nexus.svc", 9091, None)
        );
        assert_eq!(
            t.url_for("10.0.0.7".parse().unwrap()),
            "http://10.0.0.7:9091"
        );
        let t = Target::parse("https://r.example/").unwrap();
        assert_eq!(t.port, 443);
        assert_eq!(t.url_for("::1".parse().unwrap()), "https://[::1]:443");
        let t = Target::parse("http://[::1]:7").unwrap();
        assert_eq!(t.ip, Some("::1".parse().unwrap()));
        let t = Target::parse("http://127.0.0.1:7").unwrap();
        assert_eq!(t.ip, Some("127.0.0.1".parse().unwrap()));
        assert!(Target::parse("tcp://x:1").is_err());
    }

    #[tokio::test]
    async fn resolutions_are_sorted_and_deduplicated() {
        let r = Resolver::from_fn(|_| async {
            Ok(vec![
                "10.0.0.2".parse().unwrap(),
                "10.0.0.1".parse().unwrap(),
                "10.0.0.2".parse().unwrap(),
            ])
        });
        let ips = r.resolve("x").await.unwrap();
        assert_eq!(
            ips,
            vec![
                "10.0.0.1".parse::<IpAddr>().unwrap(),
                "10.0.0.2".parse().unwrap()
            ]
        );
        // The system resolver answers for localhost without a network (/etc/hosts).
        assert!(
            !Resolver::dns()
                .resolve("localhost")
                .await
                .unwrap()
                .is_empty()
        );
    }
}
