//! The claim-check itself: bodies over the threshold stored in S3, pointers resolved,
//! the flags that configure it (the crate's documentation describes the protocol).

use crate::{
    DEFAULT_KEY_PREFIX, DEFAULT_MAX_PAYLOAD_SIZE, Error, LEGACY_RESERVED_ATTRIBUTE,
    MAX_ATTRIBUTES_WITH_POINTER, MAX_KEY_PREFIX_LEN, Pointer, RESERVED_ATTRIBUTE,
    SQS_MAXIMUM_MESSAGE_SIZE, attributes_size, message_size,
};
use aws_sdk_s3::error::{DisplayErrorContext, SdkError};
use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_sqs::types::MessageAttributeValue;
use std::collections::HashMap;
use std::sync::Arc;

/// What the claim-check needs to know.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClaimCheckConfig {
    /// Where to store bodies over the threshold; `None`: such bodies are an error.
    pub bucket: Option<String>,
    /// Messages larger than this (body and attributes, in bytes) go through S3.
    pub threshold: usize,
    /// Prefix of the keys of stored bodies (each key is the prefix and a random UUID, as
    /// the Java library makes them).
    pub key_prefix: String,
    /// Delete a stored body once its message is deleted ([`ClaimCheck::release`]).
    pub delete_after_use: bool,
}

impl ClaimCheckConfig {
    /// Checks the key prefix: the characters and length the Java library accepts.
    pub fn validate(&self) -> Result<(), Error> {
        validate_key_prefix(&self.key_prefix).map(|_| ())
    }
}

/// Checks a key prefix (also usable as a clap value parser).
pub fn validate_key_prefix(prefix: &str) -> Result<String, Error> {
    let invalid = |reason: &str| Error::KeyPrefix {
        prefix: prefix.to_string(),
        reason: reason.to_string(),
    };
    if prefix.len() > MAX_KEY_PREFIX_LEN {
        return Err(invalid("longer than 988 characters"));
    }
    if let Some(c) = prefix
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '/' | '_' | '-')))
    {
        return Err(invalid(&format!(
            "{c:?} is not allowed (letters, digits, '.', '/', '_' and '-' only)"
        )));
    }
    Ok(prefix.to_string())
}

/// An outgoing message after [`ClaimCheck::offload`].
#[derive(Clone, Debug)]
pub struct Outgoing {
    /// The body to send: the original, or the pointer.
    pub body: String,
    /// Attributes to add to the ones given to `offload` (`ExtendedPayloadSize` for a
    /// pointer; none otherwise).
    pub attributes: HashMap<String, MessageAttributeValue>,
    /// Where the body was stored, if it was.
    pub pointer: Option<Pointer>,
}

impl Outgoing {
    /// Sets this body and adds these attributes on a `SendMessage` request.
    pub fn apply(
        &self,
        mut request: aws_sdk_sqs::operation::send_message::builders::SendMessageFluentBuilder,
    ) -> aws_sdk_sqs::operation::send_message::builders::SendMessageFluentBuilder {
        request = request.message_body(&self.body);
        for (name, value) in &self.attributes {
            request = request.message_attributes(name, value.clone());
        }
        request
    }
}

/// An incoming message after [`ClaimCheck::resolve`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Incoming {
    /// The original body (fetched from S3 if the message was a pointer).
    pub body: String,
    /// Where the body was stored, if it was: pass it to [`ClaimCheck::release`] once the
    /// message is deleted.
    pub pointer: Option<Pointer>,
}

/// Offloads large bodies to S3 and resolves pointers. Cheap to clone.
#[derive(Clone)]
pub struct ClaimCheck {
    s3: Option<aws_sdk_s3::Client>,
    config: Arc<ClaimCheckConfig>,
    threshold: usize,
    max_payload_size: usize,
    /// Where pointers may point; `None`: anywhere (a reader of its own results).
    reads: Option<Arc<ReadPolicy>>,
}

/// Where a consumer that reads pointers from others (the controller) lets them point: its
/// own payload bucket (under its key prefix, when one was configured explicitly) and the
/// buckets an operator lists. A pointer elsewhere is refused before any S3 call, and only
/// objects in the own bucket are ever deleted.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ReadPolicy {
    /// Buckets besides the own one whose objects may be read (never deleted).
    pub extra_buckets: Vec<String>,
    /// Only keys under the configured key prefix in the own bucket (AWS's Python extended
    /// client writes bare UUID keys, so this is on only where a prefix was set).
    pub enforce_prefix: bool,
}

impl std::fmt::Debug for ClaimCheck {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClaimCheck")
            .field("s3", &self.s3.is_some())
            .field("bucket", &self.config.bucket)
            .field("threshold", &self.threshold)
            .field("key_prefix", &self.config.key_prefix)
            .field("delete_after_use", &self.config.delete_after_use)
            .field("max_payload_size", &self.max_payload_size)
            .field("reads", &self.reads)
            .finish()
    }
}

impl ClaimCheck {
    /// With an S3 client: pointers are resolved whatever their bucket (access is the IAM
    /// policy's business) unless [`restrict_reads`](Self::restrict_reads) says otherwise,
    /// and large bodies are stored if `config.bucket` is set.
    pub fn new(s3: aws_sdk_s3::Client, config: ClaimCheckConfig) -> Self {
        Self {
            s3: Some(s3),
            threshold: config.threshold,
            config: Arc::new(config),
            max_payload_size: DEFAULT_MAX_PAYLOAD_SIZE,
            reads: None,
        }
    }

    /// Resolves only pointers into the own bucket (and `policy.extra_buckets`), and
    /// releases only objects of the own bucket: for a consumer of messages anyone may send.
    pub fn restrict_reads(self, policy: ReadPolicy) -> Self {
        Self {
            reads: Some(Arc::new(policy)),
            ..self
        }
    }

    /// Whether `pointer` is in the own bucket (under the prefix, if that is enforced).
    fn is_own(&self, pointer: &Pointer, policy: &ReadPolicy) -> bool {
        self.config.bucket.as_deref() == Some(pointer.bucket.as_str())
            && (!policy.enforce_prefix || pointer.key.starts_with(&self.config.key_prefix))
    }

    /// Refuses a pointer the read policy does not allow, before any S3 call.
    fn check_read(&self, pointer: &Pointer) -> Result<(), Error> {
        let Some(policy) = &self.reads else {
            return Ok(());
        };
        if self.is_own(pointer, policy) || policy.extra_buckets.contains(&pointer.bucket) {
            return Ok(());
        }
        let mut allowed: Vec<String> = self
            .config
            .bucket
            .iter()
            .map(|bucket| match policy.enforce_prefix {
                true => format!("s3://{bucket}/{}", self.config.key_prefix),
                false => format!("s3://{bucket}/"),
            })
            .collect();
        allowed.extend(policy.extra_buckets.iter().map(|b| format!("s3://{b}/")));
        Err(Error::NotAllowed {
            pointer: pointer.clone(),
            allowed: if allowed.is_empty() {
                "none (no --payload-bucket)".to_string()
            } else {
                allowed.join(", ")
            },
        })
    }

    /// Without S3: bodies over SQS's largest limit are [`Error::TooLarge`] and pointers
    /// are [`Error::NoBucket`].
    pub fn disabled() -> Self {
        Self {
            s3: None,
            threshold: SQS_MAXIMUM_MESSAGE_SIZE,
            config: Arc::new(ClaimCheckConfig {
                bucket: None,
                threshold: SQS_MAXIMUM_MESSAGE_SIZE,
                key_prefix: DEFAULT_KEY_PREFIX.to_string(),
                delete_after_use: true,
            }),
            max_payload_size: DEFAULT_MAX_PAYLOAD_SIZE,
            reads: None,
        }
    }

    /// The same claim-check for a queue with another limit (e.g. a smaller DLQ).
    pub fn with_threshold(&self, threshold: usize) -> Self {
        Self {
            threshold,
            ..self.clone()
        }
    }

    /// Caps the bodies [`resolve`](Self::resolve) fetches (default
    /// [`DEFAULT_MAX_PAYLOAD_SIZE`]).
    pub fn with_max_payload_size(self, max_payload_size: usize) -> Self {
        Self {
            max_payload_size,
            ..self
        }
    }

    pub fn threshold(&self) -> usize {
        self.threshold
    }

    pub fn bucket(&self) -> Option<&str> {
        self.config.bucket.as_deref()
    }

    pub fn config(&self) -> &ClaimCheckConfig {
        &self.config
    }

    /// Whether a message of this body and attributes is over the threshold.
    pub fn is_large(
        &self,
        body: &str,
        attributes: &HashMap<String, MessageAttributeValue>,
    ) -> bool {
        message_size(body, attributes) > self.threshold
    }

    /// The body to send, and the attributes to add to `attributes`: unchanged when the
    /// message (body and attributes, counted as SQS and the extended clients count them)
    /// is within the threshold; else the body is stored in S3 and replaced by the pointer,
    /// with `ExtendedPayloadSize` set to its size in bytes.
    ///
    /// If the message is then not sent, [`discard`](Self::discard) the pointer.
    pub async fn offload(
        &self,
        body: String,
        attributes: &HashMap<String, MessageAttributeValue>,
    ) -> Result<Outgoing, Error> {
        if let Some(reserved) = [RESERVED_ATTRIBUTE, LEGACY_RESERVED_ATTRIBUTE]
            .into_iter()
            .find(|name| attributes.contains_key(*name))
        {
            return Err(Error::ReservedAttribute(reserved.to_string()));
        }
        let size = message_size(&body, attributes);
        if size <= self.threshold {
            return Ok(Outgoing {
                body,
                attributes: HashMap::new(),
                pointer: None,
            });
        }
        let (Some(s3), Some(bucket)) = (&self.s3, &self.config.bucket) else {
            return Err(Error::TooLarge {
                size,
                threshold: self.threshold,
            });
        };
        // The extended clients' checks on offloaded messages (checkMessageAttributes).
        if attributes.len() > MAX_ATTRIBUTES_WITH_POINTER {
            return Err(Error::TooManyAttributes {
                count: attributes.len(),
            });
        }
        let attributes_size = attributes_size(attributes);
        if attributes_size > self.threshold {
            return Err(Error::AttributesTooLarge {
                size: attributes_size,
                threshold: self.threshold,
            });
        }
        let pointer = Pointer::new(
            bucket,
            format!("{}{}", self.config.key_prefix, uuid::Uuid::new_v4()),
        );
        let length = body.len();
        s3.put_object()
            .bucket(&pointer.bucket)
            .key(&pointer.key)
            .content_length(length as i64)
            .content_type("text/plain; charset=utf-8")
            .body(ByteStream::from(body.into_bytes()))
            .send()
            .await
            .map_err(|e| s3_error("PutObject", &pointer, e))?;
        tracing::debug!(%pointer, bytes = length, "message body stored in S3");
        let size_attribute = MessageAttributeValue::builder()
            .data_type("Number")
            .string_value(length.to_string())
            .build()
            .expect("data type is set");
        Ok(Outgoing {
            body: pointer.to_body(),
            attributes: HashMap::from([(RESERVED_ATTRIBUTE.to_string(), size_attribute)]),
            pointer: Some(pointer),
        })
    }

    /// The original body of a received message: when it carries `ExtendedPayloadSize`
    /// (or the legacy `SQSLargePayloadSize`), the body is a pointer and the object is
    /// fetched; otherwise the body is returned as it is.
    pub async fn resolve(
        &self,
        body: &str,
        attributes: &HashMap<String, MessageAttributeValue>,
    ) -> Result<Incoming, Error> {
        let Some(declared) = [RESERVED_ATTRIBUTE, LEGACY_RESERVED_ATTRIBUTE]
            .into_iter()
            .find_map(|name| attributes.get(name))
        else {
            return Ok(Incoming {
                body: body.to_string(),
                pointer: None,
            });
        };
        let pointer = Pointer::parse(body)?;
        let declared: Option<u64> = declared.string_value().and_then(|v| v.trim().parse().ok());
        self.check_read(&pointer)?;
        let Some(s3) = &self.s3 else {
            return Err(Error::NoBucket {
                bucket: pointer.bucket,
                key: pointer.key,
            });
        };
        let limit = self.max_payload_size;
        let too_large = |size: u64| Error::PayloadTooLarge {
            pointer: pointer.clone(),
            size,
            limit,
        };
        if let Some(size) = declared.filter(|&size| size > limit as u64) {
            return Err(too_large(size));
        }
        let output = s3
            .get_object()
            .bucket(&pointer.bucket)
            .key(&pointer.key)
            .send()
            .await
            .map_err(|e| s3_error("GetObject", &pointer, e))?;
        // The real length, from the response's head: the body is dropped unread.
        if let Some(length) = output.content_length().filter(|&l| l > limit as i64) {
            return Err(too_large(length as u64));
        }
        let mut bytes = Vec::with_capacity(output.content_length().unwrap_or(0).max(0) as usize);
        let mut stream = output.body;
        while let Some(chunk) = stream.next().await {
            let chunk = chunk.map_err(|e| Error::S3 {
                operation: "GetObject",
                pointer: pointer.clone(),
                message: format!("reading the object: {e}"),
                permanent: false,
            })?;
            if bytes.len() + chunk.len() > limit {
                return Err(too_large((bytes.len() + chunk.len()) as u64));
            }
            bytes.extend_from_slice(&chunk);
        }
        if let Some(size) = declared.filter(|&size| size != bytes.len() as u64) {
            // The extended clients do not check this; a difference means the object was
            // replaced or written by a client that counts differently. The body is used.
            tracing::warn!(%pointer, declared = size, actual = bytes.len(), "payload size differs from ExtendedPayloadSize");
        }
        let body = String::from_utf8(bytes).map_err(|_| Error::NotUtf8 {
            pointer: pointer.clone(),
        })?;
        tracing::debug!(%pointer, bytes = body.len(), "message body fetched from S3");
        Ok(Incoming {
            body,
            pointer: Some(pointer),
        })
    }

    /// Deletes the object behind a pointer once its message has been deleted, when the
    /// configuration says so (`delete_after_use`); otherwise the bucket's lifecycle rule
    /// expires it.
    ///
    /// With a read policy ([`restrict_reads`](Self::restrict_reads)), only an object of
    /// the own bucket is deleted: one read from a bucket an operator listed is someone
    /// else's to delete.
    pub async fn release(&self, pointer: &Pointer) -> Result<(), Error> {
        if !self.config.delete_after_use {
            return Ok(());
        }
        if let Some(policy) = &self.reads
            && !self.is_own(pointer, policy)
        {
            tracing::debug!(%pointer, "not the payload bucket's object: left in place");
            return Ok(());
        }
        self.delete(pointer).await
    }

    /// Deletes the object of an offloaded message that was never sent, whatever
    /// `delete_after_use` says: nothing refers to it.
    pub async fn discard(&self, pointer: &Pointer) -> Result<(), Error> {
        self.delete(pointer).await
    }

    async fn delete(&self, pointer: &Pointer) -> Result<(), Error> {
        let Some(s3) = &self.s3 else {
            return Err(Error::NoBucket {
                bucket: pointer.bucket.clone(),
                key: pointer.key.clone(),
            });
        };
        s3.delete_object()
            .bucket(&pointer.bucket)
            .key(&pointer.key)
            .send()
            .await
            .map_err(|e| s3_error("DeleteObject", pointer, e))?;
        tracing::debug!(%pointer, "payload deleted from S3");
        Ok(())
    }
}

fn s3_error<E>(
    operation: &'static str,
    pointer: &Pointer,
    error: SdkError<E, aws_sdk_s3::config::http::HttpResponse>,
) -> Error
where
    E: std::error::Error + aws_sdk_s3::error::ProvideErrorMetadata + Send + Sync + 'static,
{
    let permanent = match &error {
        // The request could not even be built (e.g. an invalid bucket name).
        SdkError::ConstructionFailure(_) => true,
        SdkError::ServiceError(service) => {
            let status = service.raw().status().as_u16();
            let code = service.err().code().unwrap_or_default();
            // 4xx are the request's fault, except timeouts and throttling.
            (400..500).contains(&status)
                && !matches!(status, 408 | 429)
                && !matches!(code, "RequestTimeout" | "SlowDown" | "ExpiredToken")
        }
        // Timeouts, connection and response errors can heal.
        _ => false,
    };
    Error::S3 {
        operation,
        pointer: pointer.clone(),
        message: DisplayErrorContext(error).to_string(),
        permanent,
    }
}

/// Whether an endpoint override for S3 is in effect: the argument, or the standard
/// `AWS_ENDPOINT_URL_S3` / `AWS_ENDPOINT_URL` variables (which the AWS SDK reads itself,
/// unless `AWS_IGNORE_CONFIGURED_ENDPOINT_URLS` is true).
fn endpoint_overridden(endpoint: Option<&str>) -> bool {
    let set = |name: &str| std::env::var(name).is_ok_and(|v| !v.trim().is_empty());
    let ignored = std::env::var("AWS_IGNORE_CONFIGURED_ENDPOINT_URLS")
        .is_ok_and(|v| v.eq_ignore_ascii_case("true"));
    endpoint.is_some() || (!ignored && (set("AWS_ENDPOINT_URL_S3") || set("AWS_ENDPOINT_URL")))
}

/// An S3 client from a loaded AWS configuration. Endpoints come from the standard
/// `AWS_ENDPOINT_URL_S3` / `AWS_ENDPOINT_URL` variables (or `endpoint`, which wins); with
/// any override, addressing is path-style, which emulators (moto) and hosts without
/// wildcard DNS need.
pub fn s3_client_from(
    shared: &aws_config::SdkConfig,
    endpoint: Option<&str>,
) -> aws_sdk_s3::Client {
    let mut config = aws_sdk_s3::config::Builder::from(shared);
    if let Some(endpoint) = endpoint {
        config = config.endpoint_url(endpoint);
    }
    if endpoint_overridden(endpoint) {
        config = config.force_path_style(true);
    }
    aws_sdk_s3::Client::from_conf(config.build())
}

/// An S3 client from the standard AWS configuration chain (see [`s3_client_from`]).
pub async fn s3_client(endpoint: Option<&str>, region: Option<&str>) -> aws_sdk_s3::Client {
    let mut loader = aws_config::defaults(aws_config::BehaviorVersion::latest());
    if let Some(region) = region {
        loader = loader.region(aws_config::Region::new(region.to_string()));
    }
    s3_client_from(&loader.load().await, endpoint)
}

/// The claim-check flags, shared by every command that sends or receives through a
/// queue (flatten into the command's arguments).
#[derive(clap::Args, Debug, Clone, PartialEq, Eq)]
pub struct PayloadArgs {
    /// S3 bucket for message bodies too large for their queue (claim-check, in the format
    /// of AWS's SQS Extended Client Library). Without it, such a message is an error.
    /// Endpoint: AWS_ENDPOINT_URL_S3 or AWS_ENDPOINT_URL (path-style when set).
    #[arg(long, env = "PLUGWORKER_PAYLOAD_BUCKET")]
    pub payload_bucket: Option<String>,
    /// Key prefix of stored bodies (letters, digits, '.', '/', '_', '-') [default:
    /// payloads/]. When set explicitly, the controller also reads only pointers under it in
    /// the payload bucket (unset, it reads any key there: AWS's Python extended client
    /// writes bare UUID keys).
    #[arg(long, env = "PLUGWORKER_PAYLOAD_KEY_PREFIX", value_parser = validate_key_prefix)]
    pub payload_key_prefix: Option<String>,
    /// Other buckets the controller may read job bodies from (comma-separated; never
    /// deleted from). A pointer to any other bucket is a permanent error, before any S3
    /// call.
    #[arg(long, env = "PLUGWORKER_PAYLOAD_READ_BUCKETS", value_delimiter = ',')]
    pub payload_read_buckets: Vec<String>,
    /// Keep stored bodies after their message is deleted (default: delete them; the
    /// bucket's lifecycle rule expires whatever is left).
    #[arg(long, env = "PLUGWORKER_KEEP_PAYLOADS")]
    pub keep_payloads: bool,
    /// Messages over this many bytes (body and attributes) go through S3 (default: the
    /// queue's MaximumMessageSize minus headroom for attributes).
    #[arg(long, env = "PLUGWORKER_PAYLOAD_THRESHOLD")]
    pub payload_threshold: Option<usize>,
}

impl PayloadArgs {
    /// The configuration, with `default_threshold` unless `--payload-threshold` is given.
    pub fn config(&self, default_threshold: usize) -> ClaimCheckConfig {
        ClaimCheckConfig {
            bucket: self.payload_bucket.clone().filter(|b| !b.is_empty()),
            threshold: self.payload_threshold.unwrap_or(default_threshold),
            key_prefix: self
                .payload_key_prefix
                .clone()
                .unwrap_or_else(|| DEFAULT_KEY_PREFIX.to_string()),
            delete_after_use: !self.keep_payloads,
        }
    }

    /// Where received pointers may point: the payload bucket (under an explicitly set
    /// prefix) and `--payload-read-buckets`.
    pub fn read_policy(&self) -> ReadPolicy {
        ReadPolicy {
            extra_buckets: self
                .payload_read_buckets
                .iter()
                .map(|b| b.trim().to_string())
                .filter(|b| !b.is_empty())
                .collect(),
            enforce_prefix: self.payload_key_prefix.is_some(),
        }
    }

    /// A claim-check with an S3 client from the standard chain: it resolves pointers even
    /// without a bucket of its own (producers may use theirs) unless restricted with
    /// [`ClaimCheck::restrict_reads`] and [`PayloadArgs::read_policy`].
    pub async fn claim_check(&self, region: Option<&str>, default_threshold: usize) -> ClaimCheck {
        ClaimCheck::new(
            s3_client(None, region).await,
            self.config(default_threshold),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_prefixes_follow_the_java_library() {
        assert_eq!(validate_key_prefix("payloads/").unwrap(), "payloads/");
        assert_eq!(validate_key_prefix("").unwrap(), "");
        assert!(
            validate_key_prefix("a b/")
                .unwrap_err()
                .to_string()
                .contains("' '")
        );
        assert!(validate_key_prefix(&"a".repeat(989)).is_err());
    }

    #[derive(clap::Parser)]
    struct Cli {
        #[command(flatten)]
        payload: PayloadArgs,
    }

    #[test]
    fn flags_make_the_configuration() {
        use clap::Parser;
        let cli = Cli::try_parse_from([
            "test",
            "--payload-bucket",
            "bucket-1",
            "--keep-payloads",
            "--payload-threshold",
            "0",
        ])
        .unwrap();
        assert_eq!(
            cli.payload.config(4096),
            ClaimCheckConfig {
                bucket: Some("bucket-1".to_string()),
                threshold: 0,
                key_prefix: "payloads/".to_string(),
                delete_after_use: false,
            }
        );
        let cli = Cli::try_parse_from(["test", "--payload-bucket", ""]).unwrap();
        let config = cli.payload.config(4096);
        assert_eq!((config.bucket, config.threshold), (None, 4096));
        assert!(config.delete_after_use);
        let error = Cli::try_parse_from(["test", "--payload-key-prefix", "my payloads/"])
            .err()
            .unwrap();
        assert!(error.to_string().contains("' ' is not allowed"), "{error}");
    }

    /// The attributes of a pointer message declaring `size` bytes.
    fn pointer_attributes(size: u64) -> HashMap<String, MessageAttributeValue> {
        let size = MessageAttributeValue::builder()
            .data_type("Number")
            .string_value(size.to_string())
            .build()
            .unwrap();
        HashMap::from([(RESERVED_ATTRIBUTE.to_string(), size)])
    }

    #[tokio::test]
    async fn a_restricted_reader_refuses_pointers_elsewhere_before_any_s3_call() {
        // No endpoint answers here: a refusal cannot have come from S3.
        let s3 = aws_sdk_s3::Client::from_conf(
            aws_sdk_s3::Config::builder()
                .behavior_version(aws_sdk_s3::config::BehaviorVersion::latest())
                .region(aws_sdk_s3::config::Region::new("us-east-1"))
                .endpoint_url("http://127.0.0.1:9")
                .build(),
        );
        let config = ClaimCheckConfig {
            bucket: Some("own".into()),
            threshold: 1000,
            key_prefix: "payloads/".into(),
            delete_after_use: true,
        };
        let attributes = pointer_attributes(5);
        let reader = |policy| ClaimCheck::new(s3.clone(), config.clone()).restrict_reads(policy);
        let open = ReadPolicy {
            extra_buckets: vec!["shared".into()],
            enforce_prefix: false,
        };
        let strict = ReadPolicy {
            enforce_prefix: true,
            ..open.clone()
        };
        for (policy, bucket, key, allowed) in [
            (&open, "other", "x", false),
            (&open, "own", "bare-uuid", true),
            (&open, "shared", "x", true),
            (&strict, "own", "bare-uuid", false),
            (&strict, "own", "payloads/x", true),
        ] {
            let error = reader(policy.clone())
                .resolve(&Pointer::new(bucket, key).to_body(), &attributes)
                .await
                .unwrap_err();
            assert_eq!(
                matches!(error, Error::NotAllowed { .. }),
                !allowed,
                "{bucket}/{key}: {error}"
            );
            assert!(error.is_permanent() || allowed, "{error}");
        }
        // Only the own bucket's objects are released; others stay (no S3 call).
        reader(open.clone())
            .release(&Pointer::new("shared", "x"))
            .await
            .unwrap();
        assert!(
            reader(open)
                .release(&Pointer::new("own", "x"))
                .await
                .is_err(),
            "the own bucket's object is deleted (here: tried, nothing answers)"
        );
    }

    #[tokio::test]
    async fn disabled_refuses_large_bodies_and_pointers_clearly() {
        let claim_check = ClaimCheck::disabled().with_threshold(100);
        let small = claim_check
            .offload("x".repeat(100), &HashMap::new())
            .await
            .unwrap();
        assert_eq!((small.body.len(), small.pointer), (100, None));
        assert!(small.attributes.is_empty());
        let error = claim_check
            .offload("x".repeat(150), &HashMap::new())
            .await
            .unwrap_err();
        assert!(matches!(
            error,
            Error::TooLarge {
                size: 150,
                threshold: 100
            }
        ));
        assert!(
            error
                .to_string()
                .contains("50 bytes over the 100-byte limit"),
            "{error}"
        );
        assert!(
            error.to_string().contains("PLUGWORKER_PAYLOAD_BUCKET"),
            "{error}"
        );

        let attributes = pointer_attributes(5);
        let error = claim_check
            .resolve(&Pointer::new("b", "k").to_body(), &attributes)
            .await
            .unwrap_err();
        assert!(matches!(error, Error::NoBucket { .. }));
        assert!(error.to_string().contains("s3://b/k"), "{error}");
        // The reserved attribute is refused on the way out, like the extended clients do.
        let error = claim_check
            .offload("x".into(), &attributes)
            .await
            .unwrap_err();
        assert!(matches!(error, Error::ReservedAttribute(_)));
        // Without the attribute, a body that looks like a pointer is just a body.
        let body = Pointer::new("b", "k").to_body();
        let plain = claim_check.resolve(&body, &HashMap::new()).await.unwrap();
        assert_eq!(
            plain,
            Incoming {
                body,
                pointer: None
            }
        );
    }
}
