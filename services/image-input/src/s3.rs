//! `image_s3`: images by reference to an S3 object, read with the runner's own AWS
//! credentials (the standard chain: environment, profile, web identity, ECS task role,
//! instance metadata), under the same byte cap and time limit as URLs.
//!
//! The endpoint is AWS's unless `AWS_ENDPOINT_URL_S3` or `AWS_ENDPOINT_URL` names another
//! (an S3-compatible store, or moto in tests); with such an endpoint, requests use path
//! style (`endpoint/bucket/key`), which every S3-compatible server answers, instead of a
//! bucket host name.
//!
//! Reading the object needs the AWS SDK, which the `s3` feature (on by default) brings
//! ([`sdk`]). Without it references are still parsed and checked, and reading one is a
//! clear, permanent error ([`unsupported`]).

#[cfg(feature = "s3")]
mod sdk;
#[cfg(feature = "s3")]
pub(crate) use sdk::{client_from_env, fetch};

use crate::shown;
use plugworker_kit::RunError;
use schemars::JsonSchema;
use serde::Deserialize;

/// Longest S3 key, in bytes (S3's own limit).
const MAX_KEY_BYTES: usize = 1024;
/// Longest piece of a caller's string repeated in an error message.
const SHOWN_CHARS: usize = 120;

/// An S3 object as a job names it: `"s3://bucket/key"` or `{"bucket": ..., "key": ...}`.
/// The syntax is checked by [`S3Reference::location`], so that a mistake gets a message
/// saying what is wrong rather than a schema mismatch.
#[derive(Clone, Debug, Deserialize, JsonSchema, PartialEq, Eq)]
#[serde(untagged)]
pub enum S3Reference {
    /// `s3://bucket/key`; the key is taken literally (no percent-decoding), as the AWS CLI
    /// does.
    Uri(String),
    Object(S3Object),
}

/// `{"bucket": ..., "key": ...}`.
#[derive(Clone, Debug, Deserialize, JsonSchema, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct S3Object {
    /// Bucket name (3–63 lowercase letters, digits, dots and hyphens).
    pub bucket: String,
    /// Object key (1–1024 bytes).
    pub key: String,
}

/// A syntactically valid bucket and key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct S3Location {
    pub bucket: String,
    pub key: String,
}

impl std::fmt::Display for S3Location {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let key: String = self.key.chars().take(SHOWN_CHARS).collect();
        let more = if key.len() < self.key.len() {
            "…"
        } else {
            ""
        };
        write!(f, "s3://{}/{key}{more}", self.bucket)
    }
}

impl S3Reference {
    /// The bucket and key, or `INVALID_ARGUMENT` saying what is wrong with them.
    pub fn location(&self) -> Result<S3Location, RunError> {
        let (bucket, key) = match self {
            Self::Uri(uri) => {
                let Some(rest) = uri.strip_prefix("s3://") else {
                    return Err(RunError::InvalidInput(format!(
                        "image_s3 must be s3://bucket/key or {{\"bucket\": ..., \"key\": ...}}, not {}",
                        shown(uri, SHOWN_CHARS)
                    )));
                };
                match rest.split_once('/') {
                    Some((bucket, key)) => (bucket, key),
                    None => (rest, ""),
                }
            }
            Self::Object(object) => (object.bucket.as_str(), object.key.as_str()),
        };
        check_bucket(bucket)?;
        if key.is_empty() {
            return Err(RunError::InvalidInput(format!(
                "image_s3 names bucket {bucket} but no key (s3://bucket/key)"
            )));
        }
        if key.len() > MAX_KEY_BYTES {
            return Err(RunError::InvalidInput(format!(
                "image_s3 key is {} bytes, more than S3's {MAX_KEY_BYTES}",
                key.len()
            )));
        }
        Ok(S3Location {
            bucket: bucket.to_string(),
            key: key.to_string(),
        })
    }
}

/// S3's naming rules for (general purpose and directory) buckets.
fn check_bucket(bucket: &str) -> Result<(), RunError> {
    let refuse = |why: &str| {
        Err(RunError::InvalidInput(format!(
            "image_s3 bucket {} is not a valid S3 bucket name: {why}",
            shown(bucket, SHOWN_CHARS)
        )))
    };
    if !(3..=63).contains(&bucket.len()) {
        return refuse("it must be 3 to 63 characters long");
    }
    if !bucket
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'.' || b == b'-')
    {
        return refuse("only lowercase letters, digits, dots and hyphens are allowed");
    }
    let alphanumeric = |b: u8| b.is_ascii_lowercase() || b.is_ascii_digit();
    let bytes = bucket.as_bytes();
    if !alphanumeric(bytes[0]) || !alphanumeric(bytes[bytes.len() - 1]) {
        return refuse("it must start and end with a letter or digit");
    }
    if bucket.contains("..") {
        return refuse("it must not contain two dots in a row");
    }
    if bucket.parse::<std::net::Ipv4Addr>().is_ok() {
        return refuse("it must not look like an IP address");
    }
    Ok(())
}

/// The answer to an `image_s3` input in a build without the `s3` feature: the job cannot
/// run on this runner, and saying why beats a generic failure.
#[cfg(not(feature = "s3"))]
pub(crate) fn unsupported(location: &S3Location) -> RunError {
    RunError::Unprocessable(format!(
        "image_s3 {location} cannot be read: this runner was built without S3 support (cargo feature `s3`, on by default; scripts/demo.sh builds without it). Send the image as image_base64 or image_url, or run a default build"
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn invalid(reference: S3Reference) -> String {
        match reference.location() {
            Err(RunError::InvalidInput(message)) => message,
            other => panic!("{reference:?} should be invalid, got {other:?}"),
        }
    }

    #[test]
    fn both_forms_name_a_bucket_and_a_key() {
        let uri: S3Reference = serde_json::from_value(serde_json::json!(
            "s3://my-bucket.example/inputs/2024/cat 1.jpg"
        ))
        .unwrap();
        let object: S3Reference = serde_json::from_value(serde_json::json!(
            {"bucket": "my-bucket.example", "key": "inputs/2024/cat 1.jpg"}
        ))
        .unwrap();
        let expected = S3Location {
            bucket: "my-bucket.example".into(),
            key: "inputs/2024/cat 1.jpg".into(),
        };
        assert_eq!(uri.location().unwrap(), expected);
        assert_eq!(object.location().unwrap(), expected);
        assert_eq!(
            expected.to_string(),
            "s3://my-bucket.example/inputs/2024/cat 1.jpg"
        );
        // Keys are literal: slashes after the first belong to the key.
        let nested = S3Reference::Uri("s3://b12/a//b/".into())
            .location()
            .unwrap();
        assert_eq!(nested.key, "a//b/");
    }

    #[test]
    fn bad_syntax_is_said_clearly() {
        let object = |bucket: &str, key: &str| {
            S3Reference::Object(S3Object {
                bucket: bucket.into(),
                key: key.into(),
            })
        };
        for (reference, fragment) in [
            (
                S3Reference::Uri("https://b.s3.amazonaws.com/k".into()),
                "must be s3://bucket/key",
            ),
            (S3Reference::Uri("s3://bucket".into()), "no key"),
            (S3Reference::Uri("s3://bucket/".into()), "no key"),
            (S3Reference::Uri("s3:///key".into()), "3 to 63"),
            (object("ab", "k"), "3 to 63"),
            (object(&"a".repeat(64), "k"), "3 to 63"),
            (object("My_Bucket", "k"), "lowercase letters"),
            (object("-bucket", "k"), "start and end"),
            (object("bucket.", "k"), "start and end"),
            (object("my..bucket", "k"), "two dots"),
            (object("192.168.1.1", "k"), "IP address"),
            (object("bucket", &"k".repeat(1025)), "1024"),
        ] {
            let message = invalid(reference.clone());
            assert!(message.contains(fragment), "{reference:?}: {message}");
        }
        // A long wrong value is not repeated whole.
        let message = invalid(S3Reference::Uri("x".repeat(10_000)));
        assert!(message.len() < 400, "{message}");
    }

    #[test]
    fn unknown_fields_are_refused() {
        let parsed: Result<S3Reference, _> = serde_json::from_value(
            serde_json::json!({"bucket": "b", "key": "k", "region": "eu-west-1"}),
        );
        assert!(parsed.is_err());
    }
}
