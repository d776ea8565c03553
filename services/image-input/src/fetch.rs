//! Fetching `image_url`s without letting a job reach what it should not, or take longer or
//! more memory than allowed.

use crate::ImageLimits;
use futures::StreamExt;
use plugworker_kit::RunError;
use reqwest::dns::{Addrs, Name, Resolve, Resolving};
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

/// A client that never follows redirects and, unless private addresses are allowed, only
/// connects to public addresses (checked on every DNS answer, so a name cannot be pointed
/// at an internal address after the fact).
pub(crate) fn client(limits: &ImageLimits) -> reqwest::Client {
    let mut builder = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .connect_timeout(limits.connect_timeout)
        .timeout(limits.fetch_timeout)
        .user_agent(concat!(
            "plugworker-image-input/",
            env!("CARGO_PKG_VERSION")
        ));
    if !limits.allow_private_addresses {
        builder = builder.dns_resolver(Arc::new(PublicOnly));
    }
    builder
        .build()
        .expect("static reqwest configuration is valid")
}

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
                let message = format!("{host} resolves only to private or reserved addresses");
                return Err(message.into());
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

    let failed = |e: reqwest::Error| {
        let reason = if e.is_timeout() {
            format!("timed out after {:?}", limits.fetch_timeout)
        } else if e.is_connect() {
            format!("cannot connect: {}", root_cause(&e))
        } else {
            root_cause(&e)
        };
        RunError::Unprocessable(format!("cannot fetch image_url {url}: {reason}"))
    };
    let response = http.get(url.clone()).send().await.map_err(failed)?;
    let status = response.status();
    if status.is_redirection() {
        let target = response
            .headers()
            .get(reqwest::header::LOCATION)
            .and_then(|l| l.to_str().ok())
            .unwrap_or("?");
        return Err(RunError::Unprocessable(format!(
            "image_url {url} redirects (HTTP {status}) to {target}; redirects are not followed"
        )));
    }
    if !status.is_success() {
        return Err(RunError::Unprocessable(format!(
            "image_url {url} answered HTTP {status}"
        )));
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
        let chunk = chunk.map_err(failed)?;
        if body.len() + chunk.len() > limits.max_bytes {
            return Err(RunError::Unprocessable(format!(
                "image_url {url} sent more than the {} bytes allowed",
                limits.max_bytes
            )));
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
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
}
