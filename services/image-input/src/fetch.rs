//! Fetching `image_url`s without letting a job reach what it should not, or take longer or
//! more memory than allowed.

use crate::{ConfigError, ImageLimits, append_capped};
use futures::StreamExt;
use plugworker_kit::RunError;
use reqwest::StatusCode;
use reqwest::dns::{Addrs, Name, Resolve, Resolving};
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

/// A client that never follows redirects and, unless private addresses are allowed, only
/// connects to public addresses (checked on every DNS answer, so a name cannot be pointed
/// at an internal address after the fact).
///
/// Proxies come only from [`ImageLimits::proxy`]: reqwest would otherwise honour
/// `HTTP_PROXY`/`HTTPS_PROXY`/`ALL_PROXY`, and a proxy resolves and connects to the target
/// itself, so the guard in our resolver would never see the target's address. With a
/// configured proxy, the resolver only ever resolves the proxy (an operator's choice,
/// often on a private network), and [`fetch`] checks the target's addresses before the
/// request is sent.
pub(crate) fn client(limits: &ImageLimits) -> Result<reqwest::Client, ConfigError> {
    let mut builder = reqwest::Client::builder()
        .no_proxy()
        .redirect(reqwest::redirect::Policy::none())
        .connect_timeout(limits.connect_timeout)
        .timeout(limits.fetch_timeout)
        .user_agent(concat!(
            "plugworker-image-input/",
            env!("CARGO_PKG_VERSION")
        ));
    match &limits.proxy {
        Some(proxy) => {
            let proxy = reqwest::Proxy::all(proxy.as_str()).map_err(|e| ConfigError {
                name: "PLUGWORKER_IMAGE_PROXY",
                value: proxy.to_string(),
                reason: e.to_string(),
            })?;
            builder = builder.proxy(proxy);
        }
        None if !limits.allow_private_addresses => {
            builder = builder.dns_resolver(Arc::new(PublicOnly));
        }
        None => {}
    }
    Ok(builder
        .build()
        .expect("static reqwest configuration is valid"))
}

/// A name that resolves only to addresses the guard refuses. Its own type so that the
/// failure is told apart from connection errors, which are transient: this one is not.
#[derive(Debug)]
struct PrivateOnly(String);

impl std::fmt::Display for PrivateOnly {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} resolves only to private or reserved addresses",
            self.0
        )
    }
}

impl std::error::Error for PrivateOnly {}

/// Resolves names, keeping only public addresses.
struct PublicOnly;

impl Resolve for PublicOnly {
    fn resolve(&self, name: Name) -> Resolving {
        Box::pin(async move {
            let host = name.as_str().to_string();
            let addresses: Vec<SocketAddr> =
                tokio::net::lookup_host((host.as_str(), 0)).await?.collect();
            let public: Vec<SocketAddr> = addresses
                .iter()
                .copied()
                .filter(|a| is_public(a.ip()))
                .collect();
            if public.is_empty() {
                let refused: Box<dyn std::error::Error + Send + Sync> = Box::new(PrivateOnly(host));
                return Err(refused);
            }
            Ok(Box::new(public.into_iter()) as Addrs)
        })
    }
}

/// Whether `ip` is an ordinary public unicast address.
pub(crate) fn is_public(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => {
            let [a, b, ..] = v4.octets();
            !(v4.is_loopback()
                || v4.is_private()
                || v4.is_link_local()
                || v4.is_unspecified()
                || v4.is_multicast()
                || v4.is_broadcast()
                || v4.is_documentation()
                || a == 0
                || (a == 100 && (64..128).contains(&b)) // CGNAT
                || (a == 192 && b == 0 && v4.octets()[2] == 0) // IETF protocol assignments
                || a >= 240)
        }
        IpAddr::V6(v6) => {
            if let Some(v4) = v6.to_ipv4_mapped() {
                return is_public(IpAddr::V4(v4));
            }
            let first = v6.segments()[0];
            !(v6.is_loopback()
                || v6.is_unspecified()
                || v6.is_multicast()
                || (first & 0xfe00) == 0xfc00 // unique local
                || (first & 0xffc0) == 0xfe80) // link local
        }
    }
}

/// Statuses that say "not now" rather than "not this": another try may succeed.
fn heals(status: StatusCode) -> bool {
    matches!(status.as_u16(), 408 | 425 | 429 | 500 | 502 | 503 | 504)
}

/// With a proxy, the proxy resolves the target: check what the name points at first.
/// (The proxy resolves again later; a name re-pointed in between is the proxy's to
/// refuse. Without a proxy, the resolver checks the very addresses used.)
async fn check_target(url: &url::Url) -> Result<(), RunError> {
    let Some(url::Host::Domain(host)) = url.host() else {
        return Ok(()); // literal addresses are checked by the caller
    };
    let port = url.port_or_known_default().unwrap_or(80);
    let addresses: Vec<SocketAddr> = tokio::net::lookup_host((host, port))
        .await
        .map_err(|e| RunError::Unavailable(format!("cannot resolve {host}: {e}")))?
        .collect();
    if let Some(private) = addresses.iter().find(|a| !is_public(a.ip())) {
        return Err(RunError::Unprocessable(format!(
            "image_url host {host} resolves to {}, a private or reserved address",
            private.ip()
        )));
    }
    Ok(())
}

pub(crate) async fn fetch(
    http: &reqwest::Client,
    limits: &ImageLimits,
    raw: &str,
) -> Result<Vec<u8>, RunError> {
    let url = url::Url::parse(raw)
        .map_err(|e| RunError::InvalidInput(format!("image_url is not a URL: {e}")))?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(RunError::InvalidInput(format!(
            "image_url must be http or https, not {}",
            url.scheme()
        )));
    }
    let literal = match url.host() {
        Some(url::Host::Ipv4(ip)) => Some(IpAddr::V4(ip)),
        Some(url::Host::Ipv6(ip)) => Some(IpAddr::V6(ip)),
        Some(url::Host::Domain(_)) => None,
        None => return Err(RunError::InvalidInput("image_url has no host".into())),
    };
    if let Some(ip) = literal
        && !limits.allow_private_addresses
        && !is_public(ip)
    {
        return Err(RunError::InvalidInput(format!(
            "image_url points at {ip}, a private or reserved address"
        )));
    }
    if limits.proxy.is_some() && !limits.allow_private_addresses {
        check_target(&url).await?;
    }

    // Timeouts and connection failures heal (a busy or restarting server); a name that
    // resolves only to private addresses, or a malformed exchange, does not.
    let failed = |e: reqwest::Error| {
        if let Some(refused) = find_cause::<PrivateOnly>(&e) {
            return RunError::Unprocessable(format!("cannot fetch image_url {url}: {refused}"));
        }
        if e.is_timeout() {
            RunError::Unavailable(format!(
                "cannot fetch image_url {url}: timed out after {:?}",
                limits.fetch_timeout
            ))
        } else if e.is_connect() || e.is_body() || e.is_decode() || is_io(&e) {
            RunError::Unavailable(format!("cannot fetch image_url {url}: {}", root_cause(&e)))
        } else {
            RunError::Unprocessable(format!("cannot fetch image_url {url}: {}", root_cause(&e)))
        }
    };
    let response = http.get(url.clone()).send().await.map_err(&failed)?;
    let status = response.status();
    if status.is_redirection() {
        let target = response
            .headers()
            .get(reqwest::header::LOCATION)
            .and_then(|l| l.to_str().ok())
            .unwrap_or("?");
        return Err(RunError::Unprocessable(format!(
            "image_url {url} redirects (HTTP {status}) to {}; redirects are not followed",
            crate::shown(target, 200)
        )));
    }
    if !status.is_success() {
        let message = format!("image_url {url} answered HTTP {status}");
        return Err(if heals(status) {
            RunError::Unavailable(message)
        } else {
            RunError::Unprocessable(message)
        });
    }
    if let Some(length) = response.content_length()
        && length > limits.max_bytes as u64
    {
        return Err(RunError::Unprocessable(format!(
            "image_url {url} is {length} bytes, more than the {} allowed",
            limits.max_bytes
        )));
    }
    let mut body = Vec::new();
    let mut stream = response.bytes_stream();
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(&failed)?;
        if !append_capped(&mut body, &chunk, limits.max_bytes) {
            return Err(RunError::Unprocessable(format!(
                "image_url {url} sent more than the {} bytes allowed",
                limits.max_bytes
            )));
        }
    }
    Ok(body)
}

/// The first error of type `E` in `error`'s chain.
fn find_cause<'a, E: std::error::Error + 'static>(
    error: &'a (dyn std::error::Error + 'static),
) -> Option<&'a E> {
    let mut cause = Some(error);
    while let Some(current) = cause {
        if let Some(found) = current.downcast_ref::<E>() {
            return Some(found);
        }
        cause = current.source();
    }
    None
}

/// Whether an I/O error (a reset connection, say) is somewhere in the chain.
fn is_io(error: &reqwest::Error) -> bool {
    find_cause::<std::io::Error>(error).is_some()
}

fn root_cause(error: &(dyn std::error::Error + 'static)) -> String {
    let mut cause = error;
    while let Some(next) = cause.source() {
        cause = next;
    }
    cause.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_public_unicast_addresses_are_public() {
        for private in [
            "127.0.0.1",
            "10.1.2.3",
            "172.16.0.1",
            "192.168.1.1",
            "169.254.169.254",
            "0.0.0.0",
            "100.64.0.1",
            "224.0.0.1",
            "255.255.255.255",
            "::1",
            "fc00::1",
            "fe80::1",
            "::ffff:127.0.0.1",
        ] {
            assert!(!is_public(private.parse().unwrap()), "{private}");
        }
        for public in [
            "93.184.216.34",
            "8.8.8.8",
            "2606:4700::1111",
            "::ffff:8.8.8.8",
        ] {
            assert!(is_public(public.parse().unwrap()), "{public}");
        }
    }

    #[test]
    fn statuses_that_can_heal_are_told_apart() {
        for transient in [408, 425, 429, 500, 502, 503, 504] {
            assert!(
                heals(StatusCode::from_u16(transient).unwrap()),
                "{transient}"
            );
        }
        for permanent in [400, 401, 403, 404, 410, 413, 415, 451, 501, 505] {
            assert!(
                !heals(StatusCode::from_u16(permanent).unwrap()),
                "{permanent}"
            );
        }
    }
}
