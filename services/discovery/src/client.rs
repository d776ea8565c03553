//! [`ConsulClient`]: one method per Consul endpoint plugworker uses.

use crate::duration;
use crate::model::{AgentService, CatalogService, ServiceEntry, ServiceRegistration};
use reqwest::{Method, RequestBuilder, StatusCode};
use serde::de::DeserializeOwned;
use std::collections::BTreeMap;
use std::time::Duration;
use url::Url;

/// Errors talking to Consul.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("invalid Consul address {address:?}: {reason}")]
    InvalidAddress { address: String, reason: String },
    #[error("Consul request {method} {path} failed: {source}")]
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

impl Error {
    /// True for failures worth retrying (Consul unreachable, restarting or overloaded), as
    /// opposed to requests Consul rejected as wrong.
    pub fn is_transient(&self) -> bool {
        match self {
            Error::Transport { .. } => true,
            Error::Status { status, .. } => status.is_server_error() || *status == 429,
            Error::InvalidAddress { .. } | Error::Decode { .. } => false,
        }
    }
}

/// Where Consul is and how to authenticate, as the standard `CONSUL_HTTP_*` variables say.
#[derive(Clone, Debug)]
pub struct ConsulConfig {
    /// `host:port` or a full `http(s)://host:port` URL.
    pub address: String,
    /// ACL token sent as `X-Consul-Token`.
    pub token: Option<String>,
    /// Timeout of non-blocking requests.
    pub request_timeout: Duration,
}

impl Default for ConsulConfig {
    fn default() -> Self {
        Self {
            address: "127.0.0.1:8500".into(),
            token: None,
            request_timeout: Duration::from_secs(10),
        }
    }
}

impl ConsulConfig {
    /// Reads `CONSUL_HTTP_ADDR` and `CONSUL_HTTP_TOKEN`, with Consul's defaults.
    pub fn from_env() -> Self {
        let mut config = Self::default();
        if let Ok(address) = std::env::var("CONSUL_HTTP_ADDR") {
            config.address = address;
        }
        config.token = std::env::var("CONSUL_HTTP_TOKEN")
            .ok()
            .filter(|t| !t.is_empty());
        config
    }
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
#[derive(Clone, Debug)]
pub struct ConsulClient {
    http: reqwest::Client,
    base: Url,
    token: Option<String>,
    request_timeout: Duration,
}

impl ConsulClient {
    pub fn new(config: ConsulConfig) -> Result<Self, Error> {
        let with_scheme = if config.address.contains("://") {
            config.address.clone()
        } else {
            format!("http://{}", config.address)
        };
        let base = Url::parse(&with_scheme).map_err(|e| Error::InvalidAddress {
            address: config.address.clone(),
            reason: e.to_string(),
        })?;
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(3))
            .build()
            .map_err(|source| Error::Transport {
                method: Method::GET,
                path: "(client setup)".into(),
                source,
            })?;
        Ok(Self {
            http,
            base,
            token: config.token,
            request_timeout: config.request_timeout,
        })
    }

    /// The base URL requests go to.
    pub fn base_url(&self) -> &Url {
        &self.base
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
        self.query("/v1/catalog/services", &[], options).await
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

    /// `GET /v1/status/leader`: cheap reachability probe.
    pub async fn leader(&self) -> Result<String, Error> {
        let path = "/v1/status/leader";
        let response = self
            .send(self.request(Method::GET, path), Method::GET, path)
            .await?;
        decode(path, &response.bytes)
    }

    async fn query<T: DeserializeOwned>(
        &self,
        path: &str,
        params: &[(&str, &str)],
        options: QueryOptions,
    ) -> Result<(T, QueryMeta), Error> {
        let mut request = self.request(Method::GET, path).query(params);
        if options.index > 0 {
            let wait = options.wait.unwrap_or(Duration::from_secs(300));
            request = request
                .query(&[("index", options.index.to_string())])
                .query(&[("wait", duration::format(wait))])
                // Consul may add up to wait/16 of jitter before answering.
                .timeout(wait + wait / 16 + self.request_timeout);
        }
        let response = self.send(request, Method::GET, path).await?;
        Ok((decode(path, &response.bytes)?, response.meta))
    }

    fn request(&self, method: Method, path: &str) -> RequestBuilder {
        let mut url = self.base.clone();
        url.set_path(path);
        let mut request = self.http.request(method, url).timeout(self.request_timeout);
        if let Some(token) = &self.token {
            request = request.header("X-Consul-Token", token);
        }
        request
    }

    async fn send(
        &self,
        request: RequestBuilder,
        method: Method,
        path: &str,
    ) -> Result<Response, Error> {
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
        if !status.is_success() {
            return Err(Error::Status {
                method,
                path: path.to_string(),
                status,
                body: String::from_utf8_lossy(&bytes).trim().to_string(),
            });
        }
        Ok(Response { bytes, meta })
    }
}

struct Response {
    bytes: Vec<u8>,
    meta: QueryMeta,
}

fn decode<T: DeserializeOwned>(path: &str, bytes: &[u8]) -> Result<T, Error> {
    serde_json::from_slice(bytes).map_err(|source| Error::Decode {
        path: path.to_string(),
        source,
    })
}

/// Percent-encodes one path segment (service names and IDs may hold any character).
fn encode(segment: &str) -> String {
    url::form_urlencoded::byte_serialize(segment.as_bytes())
        .collect::<String>()
        .replace('+', "%20")
}
