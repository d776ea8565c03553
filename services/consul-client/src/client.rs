//! [`ConsulClient`]: one method per Consul HTTP API endpoint it covers.

use crate::config::{HttpAuth, Setting, settings};
use crate::duration;
use crate::model::{
    AgentService, Authorization, AuthorizeRequest, CaRoots, CatalogService, LeafCert, ServiceEntry,
    ServiceRegistration,
};
use reqwest::{Method, RequestBuilder, StatusCode};
use serde::de::DeserializeOwned;
use std::collections::BTreeMap;
use std::time::Duration;
use url::Url;

pub use crate::config::ConsulConfig;

/// Errors talking to Consul.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("invalid Consul address {address:?} ({setting}): {reason}", setting = settings::HTTP_ADDR)]
    InvalidAddress { address: String, reason: String },
    /// A client setting (flag or `CONSUL_*` variable) that cannot be used.
    #[error("invalid Consul client setting {setting} = {value:?}: {reason}")]
    Config {
        setting: Setting,
        value: String,
        reason: String,
    },
    #[error("Consul request {method} {path} failed: {}", chain(.source))]
    Transport {
        method: Method,
        path: String,
        #[source]
        source: reqwest::Error,
    },
    #[error("Consul answered {method} {path} with HTTP {status}: {body}")]
    Status {
        method: Method,
        path: String,
        status: StatusCode,
        body: String,
    },
    #[error("Consul answered {path} with a body that does not parse: {source}")]
    Decode {
        path: String,
        #[source]
        source: serde_json::Error,
    },
}

/// The message of a reqwest error followed by those of its causes, each said once.
///
/// reqwest's own message is only "error sending request for url (...)"; the reason (a
/// refused connection, an unknown certificate issuer) is in its sources. A library error
/// usually leaves its causes to `source()`, but this client's callers log an error's
/// message alone (`%error` in a tracing field), so the message itself carries the
/// reason. A caller that does print the causes too (the CLI's `describe()`, with the same
/// `with_causes`) skips a cause whose text the message already contains.
fn chain(error: &reqwest::Error) -> String {
    plugworker_lifecycle::error_chain::with_causes(
        error.to_string(),
        std::iter::successors(std::error::Error::source(error), |cause| cause.source()),
    )
}

/// Blocking-query parameters (`index`, `wait`). The default asks for the current state.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct QueryOptions {
    /// Return only once the result's index exceeds this (0: return at once).
    pub index: u64,
    /// How long Consul may hold the request (Consul's default is 5 minutes).
    pub wait: Option<Duration>,
}

/// What Consul says about a read besides its body.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct QueryMeta {
    /// `X-Consul-Index`: pass it back as [`QueryOptions::index`] to block for changes.
    pub last_index: u64,
    /// `X-Consul-KnownLeader`.
    pub known_leader: bool,
}

/// Typed Consul HTTP client. Cheap to clone.
#[derive(Clone)]
pub struct ConsulClient {
    http: reqwest::Client,
    /// Scheme, host, port and path prefix of every request.
    base: Url,
    /// The address as configured, for messages (`unix:///…` stays readable).
    address: String,
    token: Option<String>,
    http_auth: Option<HttpAuth>,
    /// `ns` and `partition`, sent with every request as Consul's Go client does.
    params: Vec<(&'static str, String)>,
    request_timeout: Duration,
}

impl std::fmt::Debug for ConsulClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConsulClient")
            .field("base", &self.base.as_str())
            .field("address", &self.address)
            .field("params", &self.params)
            .finish_non_exhaustive()
    }
}

/// Where requests go: a URL, and the Unix socket to reach it through if any.
struct Target {
    base: Url,
    unix_socket: Option<std::path::PathBuf>,
}

/// Reads the address as Consul's Go client does (`api.NewClient`): `host:port` takes the
/// scheme `CONSUL_HTTP_SSL` says; `http://` becomes HTTPS too when SSL is asked for
/// ("never revert to http if TLS was explicitly requested"); `https://` is HTTPS;
/// `unix://` is a socket path; a path after the host is a prefix for every request (an
/// agent behind a reverse proxy).
fn target(address: &str, ssl: bool) -> Result<Target, Error> {
    let invalid = |reason: String| Error::InvalidAddress {
        address: address.to_string(),
        reason,
    };
    let secure = if ssl { "https" } else { "http" };
    let (scheme, rest) = match address.split_once("://") {
        Some(("http", rest)) => (secure, rest),
        Some(("https", rest)) => ("https", rest),
        Some(("unix", path)) => {
            if path.is_empty() {
                return Err(invalid("a unix:// address needs a socket path".into()));
            }
            if !cfg!(unix) {
                return Err(invalid(
                    "Unix sockets are not supported on this platform".into(),
                ));
            }
            // The host is a placeholder: every connection goes to the socket.
            let base = Url::parse(&format!("{secure}://localhost/"))
                .map_err(|e| invalid(e.to_string()))?;
            return Ok(Target {
                base,
                unix_socket: Some(path.into()),
            });
        }
        Some((other, _)) => {
            return Err(invalid(format!(
                "unknown scheme {other:?} (expected http://, https:// or unix://)"
            )));
        }
        None => (secure, address),
    };
    if rest.is_empty() {
        return Err(invalid("no host".into()));
    }
    let base = Url::parse(&format!("{scheme}://{rest}")).map_err(|e| invalid(e.to_string()))?;
    if base.host_str().is_none_or(str::is_empty) {
        return Err(invalid("no host".into()));
    }
    if base.query().is_some() || base.fragment().is_some() {
        return Err(invalid("a query or fragment has no meaning here".into()));
    }
    Ok(Target {
        base,
        unix_socket: None,
    })
}

/// Whether `url` names this machine's loopback: `localhost` or a loopback address (Go's
/// `http.ProxyFromEnvironment` rule, which Consul's own client follows).
pub fn is_loopback(url: &Url) -> bool {
    match url.host() {
        Some(url::Host::Domain(name)) => name.eq_ignore_ascii_case("localhost"),
        Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
        Some(url::Host::Ipv6(ip)) => {
            ip.is_loopback() || ip.to_ipv4_mapped().is_some_and(|v4| v4.is_loopback())
        }
        None => false,
    }
}

/// The token file wins over the token when it holds one (Consul's Go client).
fn token(config: &ConsulConfig) -> Result<Option<String>, Error> {
    if let Some(file) = &config.token_file {
        let text = std::fs::read_to_string(file).map_err(|e| Error::Config {
            setting: settings::HTTP_TOKEN_FILE,
            value: file.display().to_string(),
            reason: format!("cannot read the token file: {e}"),
        })?;
        let token = text.trim();
        if !token.is_empty() {
            return Ok(Some(token.to_string()));
        }
    }
    Ok(config.token.clone().filter(|t| !t.is_empty()))
}

fn setup_error(setting: Setting, value: String) -> impl FnOnce(reqwest::Error) -> Error {
    move |e| Error::Config {
        setting,
        value,
        reason: format!("cannot set up the HTTP client: {}", chain(&e)),
    }
}

impl ConsulClient {
    /// A client for `config`. Fails, naming the setting, on an address that does not parse
    /// and on token, CA or client certificate files that cannot be read or used; it does
    /// not contact Consul.
    pub fn new(config: ConsulConfig) -> Result<Self, Error> {
        let Target { base, unix_socket } = target(&config.address, config.ssl)?;
        let token = token(&config)?;
        let mut builder = reqwest::Client::builder().connect_timeout(Duration::from_secs(3));
        if base.scheme() == "https" {
            builder = builder.use_preconfigured_tls(crate::tls::client_config(&config.tls)?);
        }
        // Proxy variables (`HTTP_PROXY`, `HTTPS_PROXY`, `ALL_PROXY`, `NO_PROXY`) are honoured
        // as Consul's Go client honours them, with its exception: an agent on loopback (or
        // a Unix socket) is never reached through a proxy, which cannot reach it anyway.
        if unix_socket.is_some() || is_loopback(&base) {
            builder = builder.no_proxy();
        }
        #[cfg(unix)]
        if let Some(path) = unix_socket {
            builder = builder.unix_socket(path);
        }
        #[cfg(not(unix))]
        let _ = unix_socket;
        let http = builder
            .build()
            .map_err(setup_error(settings::HTTP_ADDR, config.address.clone()))?;
        let mut params = Vec::new();
        if let Some(namespace) = config.namespace.filter(|n| !n.is_empty()) {
            params.push(("ns", namespace));
        }
        if let Some(partition) = config.partition.filter(|p| !p.is_empty()) {
            params.push(("partition", partition));
        }
        Ok(Self {
            http,
            base,
            address: config.address,
            token,
            http_auth: config.http_auth,
            params,
            request_timeout: config.request_timeout,
        })
    }

    /// The base URL requests go to (over the socket, for a `unix://` address).
    pub fn base_url(&self) -> &Url {
        &self.base
    }

    /// The address as configured (`CONSUL_HTTP_ADDR`), for messages.
    pub fn address(&self) -> &str {
        &self.address
    }

    /// `PUT /v1/agent/service/register`. Registering an existing ID replaces it.
    pub async fn register_service(&self, registration: &ServiceRegistration) -> Result<(), Error> {
        let path = "/v1/agent/service/register";
        let request = self.request(Method::PUT, path).json(registration);
        self.send(request, Method::PUT, path).await.map(drop)
    }

    /// `PUT /v1/agent/service/deregister/:id`.
    pub async fn deregister_service(&self, service_id: &str) -> Result<(), Error> {
        let path = format!("/v1/agent/service/deregister/{}", encode(service_id));
        let request = self.request(Method::PUT, &path);
        self.send(request, Method::PUT, &path).await.map(drop)
    }

    /// `GET /v1/agent/service/:id`; `None` when the agent does not know the service.
    pub async fn agent_service(&self, service_id: &str) -> Result<Option<AgentService>, Error> {
        let path = format!("/v1/agent/service/{}", encode(service_id));
        let request = self.request(Method::GET, &path);
        match self.send(request, Method::GET, &path).await {
            Ok(response) => Ok(Some(decode(&path, &response.bytes)?)),
            Err(Error::Status { status, .. }) if status == StatusCode::NOT_FOUND => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// `PUT /v1/agent/check/{pass,warn,fail}/:check_id`: report a TTL check's state.
    pub async fn update_ttl_check(
        &self,
        check_id: &str,
        status: crate::CheckStatus,
        note: &str,
    ) -> Result<(), Error> {
        let verb = match status {
            crate::CheckStatus::Passing => "pass",
            crate::CheckStatus::Warning => "warn",
            _ => "fail",
        };
        let path = format!("/v1/agent/check/{verb}/{}", encode(check_id));
        let request = self.request(Method::PUT, &path).query(&[("note", note)]);
        self.send(request, Method::PUT, &path).await.map(drop)
    }

    /// `GET /v1/catalog/services`: every service name with the union of its tags.
    pub async fn catalog_services(
        &self,
        options: QueryOptions,
    ) -> Result<(BTreeMap<String, Vec<String>>, QueryMeta), Error> {
        // Agents before 0.3 answered `"consul": null` for a service without tags.
        let (services, meta): (BTreeMap<String, Option<Vec<String>>>, _) =
            self.query("/v1/catalog/services", &[], options).await?;
        let services = services
            .into_iter()
            .map(|(name, tags)| (name, tags.unwrap_or_default()))
            .collect();
        Ok((services, meta))
    }

    /// `GET /v1/catalog/service/:name`, optionally filtered to instances carrying all `tags`.
    pub async fn catalog_service(
        &self,
        name: &str,
        tags: &[&str],
        options: QueryOptions,
    ) -> Result<(Vec<CatalogService>, QueryMeta), Error> {
        let path = format!("/v1/catalog/service/{}", encode(name));
        let params: Vec<(&str, &str)> = tags.iter().map(|t| ("tag", *t)).collect();
        self.query(&path, &params, options).await
    }

    /// `GET /v1/health/service/:name`: instances with their checks; `passing` keeps only
    /// instances whose every check passes; `tags` keeps instances carrying all of them.
    pub async fn health_service(
        &self,
        name: &str,
        tags: &[&str],
        passing: bool,
        options: QueryOptions,
    ) -> Result<(Vec<ServiceEntry>, QueryMeta), Error> {
        let path = format!("/v1/health/service/{}", encode(name));
        let mut params: Vec<(&str, &str)> = tags.iter().map(|t| ("tag", *t)).collect();
        if passing {
            params.push(("passing", "true"));
        }
        self.query(&path, &params, options).await
    }

    /// `GET /v1/health/connect/:service`: like [`ConsulClient::health_service`], but only
    /// the instances that accept Connect mTLS (Connect-native services and sidecar proxies).
    pub async fn health_connect(
        &self,
        name: &str,
        tags: &[&str],
        passing: bool,
        options: QueryOptions,
    ) -> Result<(Vec<ServiceEntry>, QueryMeta), Error> {
        let path = format!("/v1/health/connect/{}", encode(name));
        let mut params: Vec<(&str, &str)> = tags.iter().map(|t| ("tag", *t)).collect();
        if passing {
            params.push(("passing", "true"));
        }
        self.query(&path, &params, options).await
    }

    /// `GET /v1/agent/connect/ca/roots`: the Connect CA roots. Blocking with
    /// [`QueryOptions::index`] returns when the roots change (a rotation).
    pub async fn connect_ca_roots(
        &self,
        options: QueryOptions,
    ) -> Result<(CaRoots, QueryMeta), Error> {
        self.query("/v1/agent/connect/ca/roots", &[], options).await
    }

    /// `GET /v1/agent/connect/ca/leaf/:service`: a leaf certificate for `service` (the
    /// token needs `service:write` on it). Blocking with [`QueryOptions::index`] returns
    /// once the agent holds a newer leaf: it renews before expiry and after a root rotation.
    pub async fn connect_ca_leaf(
        &self,
        service: &str,
        options: QueryOptions,
    ) -> Result<(LeafCert, QueryMeta), Error> {
        let path = format!("/v1/agent/connect/ca/leaf/{}", encode(service));
        self.query(&path, &[], options).await
    }

    /// `POST /v1/agent/connect/authorize`: do the intentions let this client certificate
    /// connect to `request.target`? (The token needs `service:write` on the target.)
    pub async fn connect_authorize(
        &self,
        request: &AuthorizeRequest,
    ) -> Result<Authorization, Error> {
        let path = "/v1/agent/connect/authorize";
        let response = self
            .send(
                self.request(Method::POST, path).json(request),
                Method::POST,
                path,
            )
            .await?;
        decode(path, &response.bytes)
    }

    /// The Consul namespace requests are made in (`CONSUL_NAMESPACE`), if one is set.
    pub fn namespace(&self) -> Option<&str> {
        self.params
            .iter()
            .find(|(name, _)| *name == "ns")
            .map(|(_, value)| value.as_str())
    }

    /// `GET /v1/status/leader`: cheap reachability probe.
    pub async fn leader(&self) -> Result<String, Error> {
        let path = "/v1/status/leader";
        let response = self
            .send(self.request(Method::GET, path), Method::GET, path)
            .await?;
        decode(path, &response.bytes)
    }

    async fn query<T: DeserializeOwned + Default>(
        &self,
        path: &str,
        params: &[(&str, &str)],
        options: QueryOptions,
    ) -> Result<(T, QueryMeta), Error> {
        let request = self.read_request(path, params, options);
        let response = self.send(request, Method::GET, path).await?;
        Ok((decode(path, &response.bytes)?, response.meta))
    }

    /// Like [`Self::query`], but a 404 (a KV key or prefix with nothing in it) is `None`
    /// with its index, which a blocking read continues from.
    pub(crate) async fn query_found<T: DeserializeOwned + Default>(
        &self,
        path: &str,
        params: &[(&str, &str)],
        options: QueryOptions,
    ) -> Result<(Option<T>, QueryMeta), Error> {
        let request = self.read_request(path, params, options);
        let (status, response) = self.send_raw(request, Method::GET, path).await?;
        if status == StatusCode::NOT_FOUND {
            return Ok((None, response.meta));
        }
        let response = Self::check(status, response, Method::GET, path)?;
        Ok((Some(decode(path, &response.bytes)?), response.meta))
    }

    /// A GET, blocking when `options` has an index.
    fn read_request(
        &self,
        path: &str,
        params: &[(&str, &str)],
        options: QueryOptions,
    ) -> RequestBuilder {
        let mut request = self.request(Method::GET, path).query(params);
        if options.index > 0 {
            let wait = options.wait.unwrap_or(Duration::from_secs(300));
            request = request
                .query(&[("index", options.index.to_string())])
                .query(&[("wait", duration::format(wait))])
                // Consul may add up to wait/16 of jitter before answering.
                .timeout(wait + wait / 16 + self.request_timeout);
        }
        request
    }

    pub(crate) fn request(&self, method: Method, path: &str) -> RequestBuilder {
        let mut url = self.base.clone();
        url.set_path(&format!("{}{path}", self.base.path().trim_end_matches('/')));
        let mut request = self.http.request(method, url).timeout(self.request_timeout);
        if !self.params.is_empty() {
            request = request.query(&self.params);
        }
        if let Some(token) = &self.token {
            request = request.header("X-Consul-Token", token);
        }
        if let Some(auth) = &self.http_auth {
            request = request.basic_auth(&auth.username, auth.password.as_ref());
        }
        request
    }

    pub(crate) async fn send(
        &self,
        request: RequestBuilder,
        method: Method,
        path: &str,
    ) -> Result<Response, Error> {
        let (status, response) = self.send_raw(request, method.clone(), path).await?;
        Self::check(status, response, method, path)
    }

    /// The response, whatever its status.
    async fn send_raw(
        &self,
        request: RequestBuilder,
        method: Method,
        path: &str,
    ) -> Result<(StatusCode, Response), Error> {
        let transport = |source| Error::Transport {
            method: method.clone(),
            path: path.to_string(),
            source,
        };
        let response = request.send().await.map_err(transport)?;
        let status = response.status();
        let header = |name: &str| {
            response
                .headers()
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned)
        };
        let meta = QueryMeta {
            last_index: header("X-Consul-Index")
                .and_then(|v| v.parse().ok())
                .unwrap_or(0),
            known_leader: header("X-Consul-KnownLeader").as_deref() == Some("true"),
        };
        let bytes = response.bytes().await.map_err(transport)?.to_vec();
        Ok((status, Response { bytes, meta }))
    }

    /// The response if its status is a success, else [`Error::Status`].
    fn check(
        status: StatusCode,
        response: Response,
        method: Method,
        path: &str,
    ) -> Result<Response, Error> {
        if !status.is_success() {
            return Err(Error::Status {
                method,
                path: path.to_string(),
                status,
                body: String::from_utf8_lossy(&response.bytes).trim().to_string(),
            });
        }
        Ok(response)
    }
}

pub(crate) struct Response {
    pub(crate) bytes: Vec<u8>,
    meta: QueryMeta,
}

/// Parses a body; `null` reads as the empty value, as in Go (a nil slice or map encodes
/// as `null`).
fn decode<T: DeserializeOwned + Default>(path: &str, bytes: &[u8]) -> Result<T, Error> {
    serde_json::from_slice::<Option<T>>(bytes)
        .map(Option::unwrap_or_default)
        .map_err(|source| Error::Decode {
            path: path.to_string(),
            source,
        })
}

/// Percent-encodes a KV key for the URL path, keeping its `/` separators.
pub(crate) fn encode_key(key: &str) -> String {
    key.split('/').map(encode).collect::<Vec<_>>().join("/")
}

/// Percent-encodes one path segment (service names and IDs may hold any character).
fn encode(segment: &str) -> String {
    url::form_urlencoded::byte_serialize(segment.as_bytes())
        .collect::<String>()
        .replace('+', "%20")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_null_body_is_an_empty_answer() {
        let entries: Vec<ServiceEntry> = decode("/v1/health/service/x", b"null").unwrap();
        assert!(entries.is_empty());
        let services: BTreeMap<String, Option<Vec<String>>> =
            decode("/v1/catalog/services", br#"{"consul": null, "web": ["a"]}"#).unwrap();
        assert_eq!(services["consul"], None);
        let error = decode::<Vec<ServiceEntry>>("/v1/health/service/x", b"{").unwrap_err();
        assert!(
            error.to_string().contains("/v1/health/service/x"),
            "{error}"
        );
    }

    #[test]
    fn loopback_is_localhost_or_a_loopback_address() {
        for loopback in [
            "http://127.0.0.1:8500",
            "http://127.8.9.10:8500",
            "http://localhost:8500",
            "https://LOCALHOST:8501",
            "http://[::1]:8500",
            "http://[::ffff:127.0.0.1]:8500",
        ] {
            assert!(is_loopback(&Url::parse(loopback).unwrap()), "{loopback}");
        }
        for remote in [
            "http://10.0.0.5:8500",
            "http://consul.service.consul:8500",
            "http://localhost.example.com:8500",
            "http://[::2]:8500",
            "http://0.0.0.0:8500",
        ] {
            assert!(!is_loopback(&Url::parse(remote).unwrap()), "{remote}");
        }
    }

    #[test]
    fn transport_errors_carry_their_cause() {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        // A port nothing listens on: the refusal must be in the message itself.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .unwrap()
            .port();
        let client = ConsulClient::new(ConsulConfig {
            address: format!("127.0.0.1:{port}"),
            ..ConsulConfig::default()
        })
        .unwrap();
        let error = runtime.block_on(client.leader()).unwrap_err();
        assert!(matches!(error, Error::Transport { .. }), "{error:?}");
        let text = error.to_string();
        assert!(text.to_lowercase().contains("refused"), "{text}");
    }
}
