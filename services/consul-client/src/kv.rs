//! Consul's KV store (`/v1/kv/`): reading a key or a prefix (blocking or not), and
//! writing a key (optionally check-and-set) and deleting one.
//! A missing key (or an empty prefix) is Consul's 404, read here as nothing found, with
//! the index a blocking read continues from.

use crate::client::{ConsulClient, Error, QueryMeta, QueryOptions, encode_key};
use base64::Engine;
use reqwest::Method;
use serde::Deserialize;

/// One KV entry as Consul returns it (`Value` is base64 on the wire; decoded here).
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct KvPair {
    pub key: String,
    #[serde(deserialize_with = "base64_value")]
    pub value: Vec<u8>,
    pub flags: u64,
    pub create_index: u64,
    pub modify_index: u64,
    pub lock_index: u64,
}

fn base64_value<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
    let text: Option<String> = Option::deserialize(d)?;
    match text {
        None => Ok(Vec::new()),
        Some(text) => base64::engine::general_purpose::STANDARD
            .decode(text)
            .map_err(serde::de::Error::custom),
    }
}

impl ConsulClient {
    /// `GET /v1/kv/:key`: the entry, or `None` if the key does not exist. Blocking with
    /// [`QueryOptions::index`] returns when the key changes (or is created or deleted).
    pub async fn kv_get(
        &self,
        key: &str,
        options: QueryOptions,
    ) -> Result<(Option<KvPair>, QueryMeta), Error> {
        let path = format!("/v1/kv/{}", encode_key(key));
        let (entries, meta) = self.kv_read(&path, &[], options).await?;
        Ok((entries.into_iter().next(), meta))
    }

    /// `GET /v1/kv/:prefix?recurse`: every entry under `prefix`, in key order. Blocking
    /// with [`QueryOptions::index`] returns when any of them changes, appears or goes.
    pub async fn kv_list(
        &self,
        prefix: &str,
        options: QueryOptions,
    ) -> Result<(Vec<KvPair>, QueryMeta), Error> {
        let path = format!("/v1/kv/{}", encode_key(prefix));
        self.kv_read(&path, &[("recurse", "true")], options).await
    }

    /// `PUT /v1/kv/:key`, with `?cas=` when `cas` is given (0: only if the key does not
    /// exist yet). False when Consul did not apply it (the check-and-set index no longer
    /// matched).
    pub async fn kv_put(&self, key: &str, value: &[u8], cas: Option<u64>) -> Result<bool, Error> {
        let path = format!("/v1/kv/{}", encode_key(key));
        let mut request = self.request(Method::PUT, &path).body(value.to_vec());
        if let Some(cas) = cas {
            request = request.query(&[("cas", cas.to_string())]);
        }
        let response = self.send(request, Method::PUT, &path).await?;
        Ok(parse_bool(&response.bytes))
    }

    /// `DELETE /v1/kv/:key` (one key). True also when the key did not exist.
    pub async fn kv_delete(&self, key: &str) -> Result<bool, Error> {
        let path = format!("/v1/kv/{}", encode_key(key));
        let response = self
            .send(self.request(Method::DELETE, &path), Method::DELETE, &path)
            .await?;
        Ok(parse_bool(&response.bytes))
    }

    async fn kv_read(
        &self,
        path: &str,
        params: &[(&str, &str)],
        options: QueryOptions,
    ) -> Result<(Vec<KvPair>, QueryMeta), Error> {
        let (entries, meta) = self.query_found(path, params, options).await?;
        Ok((entries.unwrap_or_default(), meta))
    }
}

/// Consul answers writes with `true` or `false`.
fn parse_bool(bytes: &[u8]) -> bool {
    std::str::from_utf8(bytes).is_ok_and(|text| text.trim() == "true")
}
