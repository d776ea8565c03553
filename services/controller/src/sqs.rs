//! Amazon SQS as the job queue and the results destination (`aws-sdk-sqs`).
//!
//! At start-up the queues are checked ([`check_jobs_queue`], [`check_dead_letter_queue`]):
//! a misconfiguration that would cost jobs their result is refused with the queue
//! attribute at fault named. Deletes are batched (`DeleteMessageBatch`, up to 10 per call,
//! flushed every 20 ms), and each caller waits for, and learns, the outcome of its own
//! delete. FIFO queues are supported: a job's `MessageGroupId` is kept for its result, its
//! DLQ copy and a re-queued copy, and deduplication ids derive from its message id.

use crate::queue::{
    Attribute, COPY, Carried, Delivery, JobQueue, ORIGINAL_MESSAGE_ID, OWN_ATTRIBUTES,
    PublishError, QueueDepth, QueueError, ResultSink, Stored,
};
use async_trait::async_trait;
use aws_sdk_sqs::Client;
use aws_sdk_sqs::error::{DisplayErrorContext, ProvideErrorMetadata};
use aws_sdk_sqs::types::{
    DeleteMessageBatchRequestEntry, MessageAttributeValue, MessageSystemAttributeName,
    QueueAttributeName,
};
use plugworker_claim_check::{ClaimCheck, Incoming, threshold_for_max_message_size};
use plugworker_jobs::text::sqs_attribute;
use plugworker_jobs::{ErrorClass, ErrorInfo, JobResult, codes};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, oneshot};

/// SQS's ceiling for a visibility timeout (counted from the receive).
const MAX_VISIBILITY: Duration = crate::controller::MAX_INVISIBLE;
/// SQS's longest message delay.
const MAX_DELAY: Duration = Duration::from_secs(900);
/// Attempts a job gets when the jobs queue has no redrive policy (`--allow-no-dlq`).
pub const ATTEMPTS_WITHOUT_REDRIVE: u32 = 5;
/// A queue's MaximumMessageSize when it cannot be read (SQS's default before 2025).
const DEFAULT_MAX_MESSAGE_SIZE: usize = 262_144;

/// Builds an SQS client from the standard AWS configuration chain, with an optional
/// endpoint override for local emulators.
pub async fn client(endpoint: Option<&str>, region: Option<&str>) -> Client {
    let mut loader = aws_config::defaults(aws_config::BehaviorVersion::latest());
    if let Some(region) = region {
        loader = loader.region(aws_config::Region::new(region.to_string()));
    }
    let shared = loader.load().await;
    let mut config = aws_sdk_sqs::config::Builder::from(&shared);
    if let Some(endpoint) = endpoint {
        config = config.endpoint_url(endpoint);
    }
    Client::from_conf(config.build())
}

fn sdk_error(operation: &'static str, error: impl std::error::Error) -> QueueError {
    QueueError::new(operation, DisplayErrorContext(error))
}

fn seconds(duration: Duration) -> i32 {
    duration.min(MAX_VISIBILITY).as_secs() as i32
}

/// Why the controller will not start on these queues.
#[derive(Debug, thiserror::Error)]
pub enum StartupError {
    #[error("cannot read the attributes of the {queue} queue {url}: {source}")]
    Unreadable {
        queue: &'static str,
        url: String,
        source: QueueError,
    },
    /// A queue attribute that would cost jobs their result.
    #[error("{queue} queue attribute {attribute}: {problem}")]
    Attribute {
        queue: &'static str,
        attribute: &'static str,
        problem: String,
    },
    #[error("{0}")]
    Queue(#[from] QueueError),
}

/// The attributes of a queue the controller depends on.
#[derive(Clone, Debug, PartialEq)]
pub struct QueueAttributes {
    pub visibility: Duration,
    pub max_message_size: usize,
    pub fifo: bool,
    /// The raw `RedrivePolicy`, if any.
    pub redrive_policy: Option<String>,
    pub arn: Option<String>,
}

impl QueueAttributes {
    fn from_map(attributes: &HashMap<QueueAttributeName, String>, url: &str) -> Self {
        let get = |name: QueueAttributeName| attributes.get(&name);
        Self {
            visibility: get(QueueAttributeName::VisibilityTimeout)
                .and_then(|v| v.parse().ok())
                .map(Duration::from_secs)
                .unwrap_or(Duration::from_secs(30)),
            max_message_size: get(QueueAttributeName::MaximumMessageSize)
                .and_then(|v| v.parse().ok())
                .unwrap_or(DEFAULT_MAX_MESSAGE_SIZE),
            fifo: get(QueueAttributeName::FifoQueue).is_some_and(|v| v == "true")
                || url.ends_with(".fifo"),
            redrive_policy: get(QueueAttributeName::RedrivePolicy)
                .filter(|p| !p.trim().is_empty())
                .cloned(),
            arn: get(QueueAttributeName::QueueArn).cloned(),
        }
    }
}

/// Reads a queue's attributes.
pub async fn queue_attributes(
    client: &Client,
    queue: &'static str,
    url: &str,
) -> Result<QueueAttributes, StartupError> {
    let output = client
        .get_queue_attributes()
        .queue_url(url)
        .attribute_names(QueueAttributeName::All)
        .send()
        .await
        .map_err(|e| StartupError::Unreadable {
            queue,
            url: url.to_string(),
            source: sdk_error("GetQueueAttributes", e),
        })?;
    Ok(QueueAttributes::from_map(
        &output.attributes().cloned().unwrap_or_default(),
        url,
    ))
}

/// The jobs queue's redrive policy, as the controller uses it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Redrive {
    pub dead_letter_target_arn: String,
    pub max_receive_count: u32,
}

/// What the controller needs to know to run on the jobs queue, and for how long it may
/// keep a job.
#[derive(Clone, Debug)]
pub struct JobsQueueOptions {
    pub allow_no_dlq: bool,
    pub job_timeout: Duration,
    pub runner_wait: Duration,
}

/// Checks the jobs queue's attributes; returns its redrive policy (`None` only with
/// `allow_no_dlq`).
pub fn check_jobs_queue(
    attributes: &QueueAttributes,
    options: &JobsQueueOptions,
) -> Result<Option<Redrive>, StartupError> {
    let fault = |attribute, problem: String| StartupError::Attribute {
        queue: "jobs",
        attribute,
        problem,
    };
    let redrive = match &attributes.redrive_policy {
        None if options.allow_no_dlq => None,
        None => {
            return Err(fault(
                "RedrivePolicy",
                "not set. Without a redrive policy to a dead-letter queue, a job that keeps \
                 failing is received again and again and its failure never reaches the \
                 results. Give the queue a RedrivePolicy (deadLetterTargetArn, \
                 maxReceiveCount), or pass --allow-no-dlq to run without one"
                    .into(),
            ));
        }
        Some(policy) => {
            let value: serde_json::Value = serde_json::from_str(policy)
                .map_err(|e| fault("RedrivePolicy", format!("not JSON ({e}): {policy}")))?;
            let target = value["deadLetterTargetArn"].as_str().ok_or_else(|| {
                fault(
                    "RedrivePolicy",
                    format!("has no deadLetterTargetArn: {policy}"),
                )
            })?;
            let count = match &value["maxReceiveCount"] {
                serde_json::Value::Number(n) => n.as_u64(),
                serde_json::Value::String(s) => s.parse().ok(),
                _ => None,
            }
            .filter(|&n| n >= 1)
            .ok_or_else(|| {
                fault(
                    "RedrivePolicy",
                    format!("maxReceiveCount must be a whole number of at least 1: {policy}"),
                )
            })?;
            Some(Redrive {
                dead_letter_target_arn: target.to_string(),
                max_receive_count: u32::try_from(count).unwrap_or(u32::MAX),
            })
        }
    };
    if attributes.visibility.is_zero() {
        return Err(fault(
            "VisibilityTimeout",
            "0 s: every received job would be visible to other consumers at once and run \
             several times. Set it to a few times a typical job (the controller extends it \
             while a job runs)"
                .into(),
        ));
    }
    // Fetching a claim-check body and running the job may each take --job-timeout. A
    // result that cannot be published is held only within what is left of the 12 h.
    let longest = options.job_timeout * 2 + options.runner_wait + attributes.visibility;
    if longest > MAX_VISIBILITY {
        return Err(fault(
            "VisibilityTimeout",
            format!(
                "a job may be kept {longest:?} (--job-timeout to fetch its body and again to \
                 run it, --runner-wait, the queue's VisibilityTimeout), beyond the 12 h SQS \
                 lets a message stay invisible; lower --job-timeout"
            ),
        ));
    }
    Ok(redrive)
}

/// Checks the dead-letter queue against the jobs queue; `payload_bucket`: large copies
/// can go through S3.
pub fn check_dead_letter_queue(
    jobs: &QueueAttributes,
    dlq: &QueueAttributes,
    payload_bucket: bool,
) -> Result<(), StartupError> {
    if jobs.fifo != dlq.fifo {
        return Err(StartupError::Attribute {
            queue: "dead-letter",
            attribute: "FifoQueue",
            problem: format!(
                "{} while the jobs queue is {}: SQS redrives only between queues of one type",
                kind(dlq.fifo),
                kind(jobs.fifo)
            ),
        });
    }
    if dlq.max_message_size < jobs.max_message_size && !payload_bucket {
        return Err(StartupError::Attribute {
            queue: "dead-letter",
            attribute: "MaximumMessageSize",
            problem: format!(
                "{} bytes, below the jobs queue's {}: a large failed job could not be copied \
                 there, and would be redelivered forever. Raise it to at least {}, or \
                 configure --payload-bucket to send large copies through S3",
                dlq.max_message_size, jobs.max_message_size, jobs.max_message_size
            ),
        });
    }
    Ok(())
}

fn kind(fifo: bool) -> &'static str {
    if fifo { "FIFO" } else { "standard" }
}

/// A queue's name from its URL or ARN (the last `/` or `:` segment).
fn queue_name(url_or_arn: &str) -> &str {
    url_or_arn.rsplit(['/', ':']).next().unwrap_or(url_or_arn)
}

/// SQS's size of a message: its body and, for each attribute, name, type and value.
pub fn message_size(body: &str, attributes: &[(&str, &str, &str)]) -> usize {
    body.len()
        + attributes
            .iter()
            .map(|(name, data_type, value)| name.len() + data_type.len() + value.len())
            .sum::<usize>()
}

/// A deduplication id (FIFO) for `purpose` of message `message_id`: the same every time
/// the controller does that for that message, so SQS drops repeats within its 5-minute
/// deduplication window.
fn deduplication_id(purpose: &str, message_id: &str) -> String {
    let id: String = message_id
        .chars()
        .filter(|c| c.is_ascii_graphic())
        .take(100)
        .collect();
    format!("{purpose}-{id}")
}

/// The keys that authenticate what the controller writes on a re-queued copy
/// (`plugworker_message_id`, and the attempts and unpublishable results in
/// `plugworker_copy`) together with its body: an HMAC-SHA256 in `plugworker_copy`'s
/// `signature=KEY_ID:HEX`. A producer can set
/// any attribute; a copy whose signature does not verify is its own job, under its own
/// message id. The first key signs; every key (at most two: the current one and the one
/// being rotated out) verifies.
pub struct MessageKeys {
    keys: Vec<(String, ring::hmac::Key)>,
    /// True for the per-process key made when none is configured.
    ephemeral: bool,
}

/// Why the message keys cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error(
        "message key {0:?}: expected KEY_ID:SECRET (key id of letters, digits, '.', '_', '-', at most 32)"
    )]
    Malformed(String),
    #[error(
        "message key {id:?}: the secret is {len} characters; at least {MIN_SECRET_CHARS} are needed (e.g. `openssl rand -hex 16`)"
    )]
    Short { id: String, len: usize },
    #[error("{0} message keys given; at most two (the signing key, then the one rotated out)")]
    TooMany(usize),
    #[error("message key id {0:?} given twice")]
    Duplicate(String),
    #[error("no message key given")]
    Empty,
}

/// The shortest secret accepted, in characters. The secret is used as written (not
/// decoded), so its strength is what produced it: 32 random hex digits are 128 bits (32
/// base64 characters 192); a shorter random string would be less than 128.
const MIN_SECRET_CHARS: usize = 32;
const SIGNATURE_DOMAIN: &[u8] = b"plugworker re-queued copy v1";

impl MessageKeys {
    /// `KEY_ID:SECRET[,KEY_ID:SECRET]`, the signing key first.
    pub fn parse(spec: &str) -> Result<Self, KeyError> {
        let mut keys: Vec<(String, ring::hmac::Key)> = Vec::new();
        for entry in spec
            .split([',', '\n'])
            .map(str::trim)
            .filter(|e| !e.is_empty())
        {
            let (id, secret) = entry
                .split_once(':')
                .ok_or_else(|| KeyError::Malformed(entry.chars().take(40).collect()))?;
            let (id, secret) = (id.trim(), secret.trim());
            if id.is_empty()
                || id.len() > 32
                || !id
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
            {
                return Err(KeyError::Malformed(id.chars().take(40).collect()));
            }
            if secret.chars().count() < MIN_SECRET_CHARS {
                return Err(KeyError::Short {
                    id: id.to_string(),
                    len: secret.chars().count(),
                });
            }
            if keys.iter().any(|(known, _)| known == id) {
                return Err(KeyError::Duplicate(id.to_string()));
            }
            keys.push((
                id.to_string(),
                ring::hmac::Key::new(ring::hmac::HMAC_SHA256, secret.as_bytes()),
            ));
        }
        match keys.len() {
            0 => Err(KeyError::Empty),
            1 | 2 => Ok(Self {
                keys,
                ephemeral: false,
            }),
            n => Err(KeyError::TooMany(n)),
        }
    }

    /// A random key known to this process only: its own re-queued copies keep their
    /// message id when it receives them again; another controller treats them as new jobs.
    pub fn ephemeral() -> Self {
        use rand::Rng;
        let secret: [u8; 32] = rand::rng().random();
        Self {
            keys: vec![(
                "process".to_string(),
                ring::hmac::Key::new(ring::hmac::HMAC_SHA256, &secret),
            )],
            ephemeral: true,
        }
    }

    pub fn is_ephemeral(&self) -> bool {
        self.ephemeral
    }

    /// The signing key's id.
    pub fn key_id(&self) -> &str {
        &self.keys[0].0
    }

    /// The bytes signed: each field length-prefixed, so no two different sets of fields
    /// sign alike.
    fn signed_bytes(fields: &SignedFields<'_>) -> Vec<u8> {
        let attempts = fields.attempts.to_string();
        let unpublished = fields.unpublished.to_string();
        let parts = [
            SIGNATURE_DOMAIN,
            fields.message_id.as_bytes(),
            attempts.as_bytes(),
            unpublished.as_bytes(),
            fields.body.as_bytes(),
        ];
        let mut bytes = Vec::with_capacity(parts.iter().map(|p| p.len() + 8).sum());
        for part in parts {
            bytes.extend_from_slice(&(part.len() as u64).to_be_bytes());
            bytes.extend_from_slice(part);
        }
        bytes
    }

    /// `KEY_ID:HEX` for these fields, with the signing key.
    fn sign(&self, fields: &SignedFields<'_>) -> String {
        let (id, key) = &self.keys[0];
        let tag = ring::hmac::sign(key, &Self::signed_bytes(fields));
        let hex: String = tag.as_ref().iter().map(|b| format!("{b:02x}")).collect();
        format!("{id}:{hex}")
    }

    /// Whether `signature` is a valid `KEY_ID:HEX` for these fields under a known key
    /// (compared in constant time by ring).
    fn verify(&self, signature: &str, fields: &SignedFields<'_>) -> bool {
        let Some((id, hex)) = signature.split_once(':') else {
            return false;
        };
        let Some((_, key)) = self.keys.iter().find(|(known, _)| known == id) else {
            return false;
        };
        let Some(tag) = decode_hex(hex) else {
            return false;
        };
        ring::hmac::verify(key, &Self::signed_bytes(fields), &tag).is_ok()
    }
}

impl std::fmt::Debug for MessageKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let ids: Vec<&str> = self.keys.iter().map(|(id, _)| id.as_str()).collect();
        f.debug_struct("MessageKeys")
            .field("key_ids", &ids)
            .field("ephemeral", &self.ephemeral)
            .finish()
    }
}

/// What the signature in `plugworker_copy` covers.
struct SignedFields<'a> {
    message_id: &'a str,
    attempts: u32,
    unpublished: u32,
    /// The body as it travels on the queue (a pointer for a job that came through S3).
    body: &'a str,
}

fn decode_hex(hex: &str) -> Option<Vec<u8>> {
    if !hex.len().is_multiple_of(2) || !hex.is_ascii() {
        return None;
    }
    (0..hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).ok())
        .collect()
}

/// The jobs queue, with its dead-letter queue.
pub struct SqsJobQueue {
    client: Client,
    queue_url: String,
    /// Resolves claim-check pointers of received jobs, releases their objects.
    claim: ClaimCheck,
    /// The DLQ: its URL, size limit, and claim-check at its threshold.
    dlq: Option<(String, usize, ClaimCheck)>,
    wait: Duration,
    visibility: Duration,
    fifo: bool,
    max_attempts: u32,
    deletes: mpsc::Sender<(String, oneshot::Sender<Result<(), QueueError>>)>,
    batcher: tokio::task::JoinHandle<()>,
    /// Sign and verify what the controller writes on re-queued copies.
    keys: Arc<MessageKeys>,
}

impl SqsJobQueue {
    /// Connects to the queue, checks it and its dead-letter queue (`dlq_url` if given,
    /// else the redrive policy's target), and reads what the controller needs of them.
    /// `claim` resolves received pointers (restricted to where the controller reads, and
    /// capped at `--max-job-bytes`); `keys` sign re-queued copies.
    #[allow(clippy::too_many_arguments)]
    pub async fn connect(
        client: Client,
        queue_url: String,
        dlq_url: Option<String>,
        wait: Duration,
        visibility_override: Option<Duration>,
        options: &JobsQueueOptions,
        claim: ClaimCheck,
        keys: MessageKeys,
    ) -> Result<Self, StartupError> {
        let mut attributes = queue_attributes(&client, "jobs", &queue_url).await?;
        // The visibility the controller works with is checked, whichever gave it.
        if let Some(visibility) = visibility_override {
            attributes.visibility = visibility;
        }
        let redrive = check_jobs_queue(&attributes, options)?;
        let dlq_url = match (&redrive, dlq_url) {
            (Some(redrive), Some(url))
                if queue_name(&redrive.dead_letter_target_arn) != queue_name(&url) =>
            {
                return Err(StartupError::Attribute {
                    queue: "jobs",
                    attribute: "RedrivePolicy",
                    problem: format!(
                        "its deadLetterTargetArn {} is not the --dlq-url {url}: jobs would end \
                         up in two places. Drop --dlq-url or make them agree",
                        redrive.dead_letter_target_arn
                    ),
                });
            }
            (_, Some(url)) => Some(url),
            (Some(redrive), None) => Some(
                client
                    .get_queue_url()
                    .queue_name(queue_name(&redrive.dead_letter_target_arn))
                    .send()
                    .await
                    .map_err(|e| StartupError::Attribute {
                        queue: "jobs",
                        attribute: "RedrivePolicy",
                        problem: format!(
                            "its deadLetterTargetArn {} cannot be found: {}",
                            redrive.dead_letter_target_arn,
                            DisplayErrorContext(e)
                        ),
                    })?
                    .queue_url()
                    .unwrap_or_default()
                    .to_string(),
            ),
            (None, None) => None,
        };
        let dlq = match dlq_url {
            Some(url) => {
                let dlq_attributes = queue_attributes(&client, "dead-letter", &url).await?;
                check_dead_letter_queue(&attributes, &dlq_attributes, claim.bucket().is_some())?;
                let dlq_claim = claim.with_threshold(threshold_for_max_message_size(
                    dlq_attributes.max_message_size,
                ));
                Some((url, dlq_attributes.max_message_size, dlq_claim))
            }
            None => None,
        };
        let max_attempts = match &redrive {
            Some(redrive) => redrive.max_receive_count,
            None => {
                tracing::warn!(
                    queue = %queue_url,
                    attempts = ATTEMPTS_WITHOUT_REDRIVE,
                    dlq = dlq.is_some(),
                    "--allow-no-dlq: the jobs queue has NO redrive policy. Failed jobs still get a final error result (after {ATTEMPTS_WITHOUT_REDRIVE} attempts for transient failures), but if this controller cannot act on a message (it crashes on it, results cannot be published) nothing stops it from being received forever"
                );
                ATTEMPTS_WITHOUT_REDRIVE
            }
        };
        let (deletes, receiver) = mpsc::channel(1024);
        let batcher = tokio::spawn(delete_batches(client.clone(), queue_url.clone(), receiver));
        Ok(Self {
            client,
            queue_url,
            claim,
            dlq,
            wait,
            visibility: attributes.visibility,
            fifo: attributes.fifo,
            max_attempts,
            deletes,
            batcher,
            keys: Arc::new(keys),
        })
    }

    pub fn dlq_url(&self) -> Option<&str> {
        self.dlq.as_ref().map(|(url, _, _)| url.as_str())
    }

    pub fn is_fifo(&self) -> bool {
        self.fifo
    }

    fn string_attribute(value: &str) -> Result<MessageAttributeValue, QueueError> {
        MessageAttributeValue::builder()
            .data_type("String")
            .string_value(if value.is_empty() { "-" } else { value })
            .build()
            .map_err(|e| QueueError::new("SendMessage", e))
    }

    fn carried(delivery: &Delivery) -> Result<Vec<(String, MessageAttributeValue)>, QueueError> {
        delivery
            .attributes
            .iter()
            .map(|a| {
                MessageAttributeValue::builder()
                    .data_type(&a.data_type)
                    .string_value(&a.value)
                    .build()
                    .map(|v| (a.name.clone(), v))
                    .map_err(|e| QueueError::new("SendMessage", e))
            })
            .collect()
    }
}

impl SqsJobQueue {
    /// `delivery` with its body fetched from S3 if it is a claim-check pointer. A pointer
    /// that cannot be read (or is too large, or somewhere the controller does not read)
    /// makes the delivery `unreadable`, permanent or transient as the cause is.
    async fn resolved(&self, delivery: &Delivery) -> Option<Delivery> {
        let is_pointer = delivery.attributes.iter().any(|a| {
            a.name == plugworker_claim_check::RESERVED_ATTRIBUTE
                || a.name == plugworker_claim_check::LEGACY_RESERVED_ATTRIBUTE
        });
        if !is_pointer {
            return None;
        }
        let attributes: HashMap<String, MessageAttributeValue> = delivery
            .attributes
            .iter()
            .filter_map(|a| {
                let value = MessageAttributeValue::builder()
                    .data_type(&a.data_type)
                    .string_value(&a.value)
                    .build()
                    .ok()?;
                Some((a.name.clone(), value))
            })
            .collect();
        let mut delivery = delivery.clone();
        match self.claim.resolve(&delivery.body, &attributes).await {
            Ok(Incoming {
                body,
                pointer: Some(pointer),
            }) => {
                let wire_body = std::mem::replace(&mut delivery.body, body);
                delivery.stored = Some(Stored { pointer, wire_body });
            }
            Ok(Incoming { pointer: None, .. }) => {}
            Err(error) => {
                let class = if error.is_permanent() {
                    ErrorClass::Permanent
                } else {
                    ErrorClass::Transient
                };
                let code = match error {
                    plugworker_claim_check::Error::PayloadTooLarge { .. } => {
                        codes::PAYLOAD_TOO_LARGE
                    }
                    _ => codes::PAYLOAD_UNAVAILABLE,
                };
                tracing::warn!(message_id = %delivery.message_id, %error, "the job's body cannot be read from S3");
                delivery.unreadable = Some(ErrorInfo::new(code, class, error.to_string()));
            }
        }
        Some(delivery)
    }
}

/// The body a copy of `delivery` sends: the pointer if it came through S3.
fn wire_body(delivery: &Delivery) -> &str {
    delivery
        .stored
        .as_ref()
        .map_or(delivery.body.as_str(), |s| s.wire_body.as_str())
}

impl Drop for SqsJobQueue {
    fn drop(&mut self) {
        self.batcher.abort();
    }
}

/// A delivery from a received message: the controller's own attributes (on re-queued
/// copies) say which message it stands for, how many attempts it has had and how many of
/// its results could not be published, if `keys` verify their signature. Otherwise (a
/// producer set them, or a controller with other keys) they are ignored: the message is
/// its own job, so no attribute a producer sets can make another message's job look done.
fn delivery(message: &aws_sdk_sqs::types::Message, keys: &MessageKeys) -> Delivery {
    let attributes = message.message_attributes();
    let string = |name: &str| {
        attributes
            .and_then(|a| a.get(name))
            .and_then(|v| v.string_value())
    };
    let sqs_id = message.message_id().unwrap_or_default();
    let body = message.body().unwrap_or_default();
    let copy = string(COPY).unwrap_or_default();
    let field = |name: &str| {
        copy.split_whitespace()
            .find_map(|pair| pair.strip_prefix(name)?.strip_prefix('='))
    };
    let number = |name: &str| field(name).and_then(|v| v.parse::<u32>().ok()).unwrap_or(0);
    let own = string(ORIGINAL_MESSAGE_ID)
        // Only a plausible id: it becomes the result's key and a deduplication id.
        .filter(|id| !id.is_empty() && id.len() <= 128 && id.chars().all(|c| c.is_ascii_graphic()))
        .and_then(|message_id| {
            let fields = SignedFields {
                message_id,
                attempts: number("attempts"),
                unpublished: number("unpublished"),
                body,
            };
            let signature = field("signature").unwrap_or_default();
            if keys.verify(signature, &fields) {
                Some(fields)
            } else {
                tracing::warn!(message_id = %sqs_id, claimed = %message_id, "the message carries a plugworker_message_id this controller did not sign (a producer's, or another key's); it is run as its own job");
                None
            }
        });
    let system = message.attributes();
    // SQS hands attributes over as a map: sorted by name, so which ones a full DLQ copy
    // keeps does not depend on a hash order.
    let mut carried: Vec<Attribute> = attributes
        .into_iter()
        .flatten()
        .filter(|(name, _)| !OWN_ATTRIBUTES.contains(&name.as_str()))
        .filter_map(|(name, value)| {
            Some(Attribute {
                name: name.clone(),
                data_type: value.data_type().to_string(),
                value: value.string_value()?.to_string(),
            })
        })
        .collect();
    carried.sort_by(|a, b| a.name.cmp(&b.name));
    Delivery {
        message_id: own.as_ref().map_or(sqs_id, |f| f.message_id).to_string(),
        body: body.to_string(),
        receive_count: system
            .and_then(|a| a.get(&MessageSystemAttributeName::ApproximateReceiveCount))
            .and_then(|c| c.parse().ok())
            .unwrap_or(1),
        prior_attempts: own.as_ref().map_or(0, |f| f.attempts),
        unpublished: own.as_ref().map_or(0, |f| f.unpublished),
        receipt: message.receipt_handle().unwrap_or_default().to_string(),
        traceparent: string("traceparent").map(str::to_owned),
        group_id: system
            .and_then(|a| a.get(&MessageSystemAttributeName::MessageGroupId))
            .cloned(),
        attributes: carried,
        stored: None,
        unreadable: None,
    }
}

#[async_trait]
impl JobQueue for SqsJobQueue {
    async fn receive(&self, max: usize) -> Result<Vec<Delivery>, QueueError> {
        let output = self
            .client
            .receive_message()
            .queue_url(&self.queue_url)
            .max_number_of_messages(max.clamp(1, 10) as i32)
            .wait_time_seconds(self.wait.as_secs().min(20) as i32)
            .message_system_attribute_names(MessageSystemAttributeName::ApproximateReceiveCount)
            .message_system_attribute_names(MessageSystemAttributeName::MessageGroupId)
            .message_attribute_names("All")
            .send()
            .await
            .map_err(|e| sdk_error("ReceiveMessage", e))?;
        // Bodies behind pointers are fetched by each job's own task (`load`), not here: a
        // slow S3 must not hold up the other jobs of the batch, nor their visibility.
        Ok(output
            .messages()
            .iter()
            .map(|m| delivery(m, &self.keys))
            .collect())
    }

    async fn load(&self, delivery: &Delivery) -> Option<Delivery> {
        self.resolved(delivery).await
    }

    async fn complete(&self, delivery: &Delivery) -> Result<(), QueueError> {
        let (reply, outcome) = oneshot::channel();
        self.deletes
            .send((delivery.receipt.clone(), reply))
            .await
            .map_err(|_| QueueError::new("DeleteMessage", "delete batcher stopped"))?;
        outcome
            .await
            .map_err(|_| QueueError::new("DeleteMessage", "delete batcher stopped"))?
    }

    async fn retry_later(&self, delivery: &Delivery, delay: Duration) -> Result<(), QueueError> {
        const OPERATION: &str = "ChangeMessageVisibility";
        self.client
            .change_message_visibility()
            .queue_url(&self.queue_url)
            .receipt_handle(&delivery.receipt)
            .visibility_timeout(seconds(delay))
            .send()
            .await
            .map_err(|e| {
                let stale = e
                    .as_service_error()
                    .and_then(|s| s.code())
                    .is_some_and(|code| {
                        code.contains("ReceiptHandleIsInvalid")
                            || code.contains("MessageNotInflight")
                    });
                match stale {
                    true => QueueError::stale_receipt(OPERATION, DisplayErrorContext(e)),
                    false => sdk_error(OPERATION, e),
                }
            })?;
        Ok(())
    }

    async fn requeue(
        &self,
        delivery: &Delivery,
        carried: Carried,
        delay: Duration,
    ) -> Result<(), QueueError> {
        if self.fifo {
            // A copy would go to the back of its group, after jobs sent later: a release
            // keeps the order, at the price of one receive.
            return self.retry_later(delivery, delay).await;
        }
        let signature = self.keys.sign(&SignedFields {
            message_id: &delivery.message_id,
            attempts: carried.attempts,
            unpublished: carried.unpublished,
            body: wire_body(delivery),
        });
        let mut request = self
            .client
            .send_message()
            .queue_url(&self.queue_url)
            .message_body(wire_body(delivery))
            .delay_seconds(delay.min(MAX_DELAY).as_secs() as i32)
            .message_attributes(
                ORIGINAL_MESSAGE_ID,
                Self::string_attribute(&delivery.message_id)?,
            )
            .message_attributes(
                COPY,
                Self::string_attribute(&format!(
                    "attempts={} unpublished={} signature={signature}",
                    carried.attempts, carried.unpublished
                ))?,
            );
        for (name, value) in Self::carried(delivery)? {
            request = request.message_attributes(name, value);
        }
        if let Err(error) = request.send().await {
            // No copy: the original goes back as it is, at the price of a receive and
            // what it would have carried, rather than staying invisible for a timeout.
            tracing::warn!(error = %DisplayErrorContext(error), message_id = %delivery.message_id, "could not send the re-queued copy; releasing the message instead");
            return self.retry_later(delivery, delay).await;
        }
        // The copy is in: the original goes (its S3 object stays: the copy refers to it).
        // Should this delete fail, both copies exist and the job may run twice (same
        // message id): see docs/delivery.md.
        self.complete(delivery).await
    }

    async fn extend(&self, delivery: &Delivery, visibility: Duration) -> Result<(), QueueError> {
        self.retry_later(delivery, visibility).await
    }

    async fn dead_letter(
        &self,
        delivery: &Delivery,
        error: &ErrorInfo,
    ) -> Result<bool, QueueError> {
        let Some((dlq_url, max_size, dlq_claim)) = &self.dlq else {
            return Ok(false);
        };
        let code = sqs_attribute(&error.code, 64);
        let mut message = sqs_attribute(&error.message, 1000);
        let mut carried = Self::carried(delivery)?;
        let reserved = |name: &str| {
            name == plugworker_claim_check::RESERVED_ATTRIBUTE
                || name == plugworker_claim_check::LEGACY_RESERVED_ATTRIBUTE
        };
        // A job that came through S3 is copied as its pointer (same object, whose
        // ExtendedPayloadSize is among the carried attributes); a pointer that could not
        // be read is copied as it came, too. Any other job whose copy does not fit goes
        // through S3 now, if a bucket is configured.
        let is_pointer = delivery.stored.is_some() || carried.iter().any(|(n, _)| reserved(n));
        let offloadable = !is_pointer && dlq_claim.bucket().is_some();
        // SQS takes 10 attributes; the error takes 3 and a pointer made here 1. The
        // pointer's own size attribute stays, then the producer's in name order.
        carried.sort_by_key(|(name, _)| !reserved(name));
        carried.truncate(if offloadable { 6 } else { 7 });
        let size = |message: &str, carried: &[(String, MessageAttributeValue)]| {
            let mut attributes = vec![
                ("plugworker_error_code", "String", &*code),
                ("plugworker_error_message", "String", message),
                (
                    "plugworker_original_message_id",
                    "String",
                    delivery.message_id.as_str(),
                ),
            ];
            attributes.extend(carried.iter().map(|(name, value)| {
                (
                    name.as_str(),
                    value.data_type(),
                    value.string_value().unwrap_or_default(),
                )
            }));
            message_size(wire_body(delivery), &attributes)
        };
        // Without S3 the copy must fit as it is (SQS counts the attributes too): the error
        // is in the results, so its message goes first, then the producer's attributes;
        // the error code and the message id always stay.
        if !offloadable && size(&message, &carried) > *max_size {
            message = "(see the job's error result)".into();
            if size(&message, &carried) > *max_size {
                carried.retain(|(name, _)| reserved(name));
            }
            if size(&message, &carried) > *max_size {
                tracing::error!(message_id = %delivery.message_id, size = size(&message, &carried), max = *max_size, "the job's DLQ copy does not fit the dead-letter queue even with its error attributes trimmed; configure --payload-bucket");
            }
        }
        let message: &str = &message;
        let mut attributes: HashMap<String, MessageAttributeValue> = carried.into_iter().collect();
        attributes.insert(
            "plugworker_error_code".into(),
            Self::string_attribute(&code)?,
        );
        attributes.insert(
            "plugworker_error_message".into(),
            Self::string_attribute(message)?,
        );
        attributes.insert(
            "plugworker_original_message_id".into(),
            Self::string_attribute(&delivery.message_id)?,
        );
        let outgoing = match offloadable {
            // Over the DLQ's threshold (its limit less headroom), through S3.
            true => dlq_claim
                .offload(delivery.body.clone(), &attributes)
                .await
                .map_err(|e| QueueError::new("SendMessage (dead-letter queue)", e))?,
            false => plugworker_claim_check::Outgoing {
                body: wire_body(delivery).to_string(),
                attributes: HashMap::new(),
                pointer: None,
            },
        };
        let mut request = outgoing.apply(self.client.send_message().queue_url(dlq_url));
        for (name, value) in attributes {
            request = request.message_attributes(name, value);
        }
        if self.fifo {
            request = request
                .message_group_id(delivery.group_id.as_deref().unwrap_or("plugworker"))
                .message_deduplication_id(deduplication_id("dlq", &delivery.message_id));
        }
        if let Err(error) = request.send().await {
            if let Some(pointer) = &outgoing.pointer {
                let _ = dlq_claim.discard(pointer).await;
            }
            return Err(sdk_error("SendMessage (dead-letter queue)", error));
        }
        Ok(true)
    }

    async fn release_payload(&self, delivery: &Delivery) {
        if let Some(stored) = &delivery.stored
            && let Err(error) = self.claim.release(&stored.pointer).await
        {
            tracing::warn!(%error, message_id = %delivery.message_id, "could not delete the job's body from S3; the bucket's lifecycle rule expires it");
        }
    }

    fn max_attempts(&self) -> u32 {
        self.max_attempts
    }

    fn visibility_timeout(&self) -> Duration {
        self.visibility
    }

    async fn depth(&self) -> Result<Option<QueueDepth>, QueueError> {
        let output = self
            .client
            .get_queue_attributes()
            .queue_url(&self.queue_url)
            .attribute_names(QueueAttributeName::ApproximateNumberOfMessages)
            .attribute_names(QueueAttributeName::ApproximateNumberOfMessagesNotVisible)
            .send()
            .await
            .map_err(|e| sdk_error("GetQueueAttributes", e))?;
        let get = |name: QueueAttributeName| {
            output
                .attributes()
                .and_then(|a| a.get(&name))
                .and_then(|v| v.parse().ok())
                .unwrap_or(0)
        };
        Ok(Some(QueueDepth {
            visible: get(QueueAttributeName::ApproximateNumberOfMessages),
            in_flight: get(QueueAttributeName::ApproximateNumberOfMessagesNotVisible),
        }))
    }
}

type PendingDelete = (String, oneshot::Sender<Result<(), QueueError>>);

async fn delete_batches(
    client: Client,
    queue_url: String,
    mut receiver: mpsc::Receiver<PendingDelete>,
) {
    while let Some(first) = receiver.recv().await {
        let mut batch = vec![first];
        let deadline = tokio::time::Instant::now() + Duration::from_millis(20);
        while batch.len() < 10 {
            match tokio::time::timeout_at(deadline, receiver.recv()).await {
                Ok(Some(next)) => batch.push(next),
                _ => break,
            }
        }
        let entries: Vec<_> = batch
            .iter()
            .enumerate()
            .filter_map(|(i, (receipt, _))| {
                DeleteMessageBatchRequestEntry::builder()
                    .id(i.to_string())
                    .receipt_handle(receipt)
                    .build()
                    .ok()
            })
            .collect();
        let result = client
            .delete_message_batch()
            .queue_url(&queue_url)
            .set_entries(Some(entries))
            .send()
            .await;
        match result {
            Ok(output) => {
                let failed: HashMap<String, String> = output
                    .failed()
                    .iter()
                    .map(|f| {
                        (
                            f.id().to_string(),
                            f.message().unwrap_or_default().to_string(),
                        )
                    })
                    .collect();
                for (i, (_, reply)) in batch.into_iter().enumerate() {
                    let outcome = match failed.get(&i.to_string()) {
                        Some(message) => Err(QueueError::new("DeleteMessageBatch", message)),
                        None => Ok(()),
                    };
                    let _ = reply.send(outcome);
                }
            }
            Err(error) => {
                let message = DisplayErrorContext(error).to_string();
                for (_, reply) in batch {
                    let _ = reply.send(Err(QueueError::new("DeleteMessageBatch", &message)));
                }
            }
        }
    }
}

/// The results queue.
pub struct SqsResults {
    client: Client,
    queue_url: String,
    max_message_size: usize,
    fifo: bool,
    /// Offloads results over the queue's threshold to S3 (if a bucket is configured).
    claim: ClaimCheck,
}

/// Error codes with which SQS refuses a message's content, not the request as such.
const CONTENT_REFUSED: [&str; 5] = [
    "InvalidMessageContents",
    "InvalidParameterValue",
    "MessageTooLong",
    "InvalidAttributeValue",
    "InvalidAttributeName",
];

impl SqsResults {
    /// Reads the results queue's size limit and type; `claim` gets the queue's threshold
    /// unless it was configured (`--payload-threshold`).
    pub async fn connect(
        client: Client,
        queue_url: String,
        claim: ClaimCheck,
        threshold_configured: bool,
    ) -> Result<Self, StartupError> {
        let attributes = queue_attributes(&client, "results", &queue_url).await?;
        let claim = if threshold_configured {
            claim
        } else {
            claim.with_threshold(threshold_for_max_message_size(attributes.max_message_size))
        };
        Ok(Self {
            client,
            queue_url,
            max_message_size: attributes.max_message_size,
            fifo: attributes.fifo,
            claim,
        })
    }

    pub fn max_message_size(&self) -> usize {
        self.max_message_size
    }
}

#[async_trait]
impl ResultSink for SqsResults {
    async fn publish(&self, result: &JobResult, delivery: &Delivery) -> Result<(), PublishError> {
        let body = result
            .to_body()
            .map_err(|e| PublishError::Rejected(QueueError::new("serialise result", e)))?;
        let status = match result.status {
            plugworker_jobs::Status::Ok => "ok",
            plugworker_jobs::Status::Error => "error",
        };
        let message_id = sqs_attribute(&result.message_id, 128);
        let algorithm = result
            .algorithm
            .as_deref()
            .filter(|a| !a.is_empty())
            .map(|a| sqs_attribute(a, plugworker_jobs::MAX_ALGORITHM_CHARS));
        let mut attributes = vec![
            ("status", "String", status),
            ("message_id", "String", &*message_id),
        ];
        if let Some(algorithm) = &algorithm {
            attributes.push(("algorithm", "String", &**algorithm));
        }
        let mut values = HashMap::new();
        for (name, _, value) in &attributes {
            values.insert(
                name.to_string(),
                SqsJobQueue::string_attribute(value).map_err(PublishError::Rejected)?,
            );
        }
        // Over the threshold: through S3 if a bucket is configured (consumers using AWS's
        // extended client read it transparently), else too large.
        let size = message_size(&body, &attributes);
        let outgoing = match self.claim.offload(body, &values).await {
            Ok(outgoing) => outgoing,
            Err(plugworker_claim_check::Error::TooLarge { .. }) => {
                return Err(PublishError::TooLarge {
                    size,
                    max: self.claim.threshold().min(self.max_message_size),
                });
            }
            Err(error) if error.is_permanent() => {
                return Err(PublishError::Rejected(QueueError::new(
                    "S3 claim-check",
                    error,
                )));
            }
            Err(error) => {
                return Err(PublishError::Unavailable(QueueError::new(
                    "S3 claim-check",
                    error,
                )));
            }
        };
        let mut request = outgoing.apply(self.client.send_message().queue_url(&self.queue_url));
        for (name, value) in values {
            request = request.message_attributes(name, value);
        }
        if self.fifo {
            // The job's group keeps its order among results; a job from a standard queue
            // has no order to keep, so its own id is its group.
            request = request
                .message_group_id(
                    delivery
                        .group_id
                        .clone()
                        .unwrap_or_else(|| deduplication_id("job", &result.message_id)),
                )
                .message_deduplication_id(deduplication_id("result", &result.message_id));
        }
        // One attempt: deliver() retries under the message's lease, and an SDK retry
        // could start after the lease ran out.
        let sent = request
            .customize()
            .config_override(
                aws_sdk_sqs::config::Builder::default()
                    .retry_config(aws_sdk_sqs::config::retry::RetryConfig::disabled()),
            )
            .send()
            .await;
        if sent.is_err()
            && let Some(pointer) = &outgoing.pointer
        {
            let _ = self.claim.discard(pointer).await;
        }
        sent.map_err(|e| {
            let code = e.code().map(str::to_owned);
            let error = sdk_error("SendMessage (results queue)", e);
            if code.is_some_and(|c| CONTENT_REFUSED.contains(&c.as_str())) {
                PublishError::Rejected(error)
            } else {
                PublishError::Unavailable(error)
            }
        })?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn attributes() -> QueueAttributes {
        QueueAttributes {
            visibility: Duration::from_secs(30),
            max_message_size: 262_144,
            fifo: false,
            redrive_policy: Some(
                r#"{"deadLetterTargetArn":"arn:aws:sqs:us-east-1:1:x-dlq","maxReceiveCount":"3"}"#
                    .into(),
            ),
            arn: None,
        }
    }

    fn options() -> JobsQueueOptions {
        JobsQueueOptions {
            allow_no_dlq: false,
            job_timeout: Duration::from_secs(300),
            runner_wait: Duration::from_secs(10),
        }
    }

    fn attribute_at_fault(result: Result<impl std::fmt::Debug, StartupError>) -> &'static str {
        match result.unwrap_err() {
            StartupError::Attribute { attribute, .. } => attribute,
            other => panic!("{other}"),
        }
    }

    #[test]
    fn the_redrive_policy_gives_the_attempts() {
        let redrive = check_jobs_queue(&attributes(), &options())
            .unwrap()
            .unwrap();
        assert_eq!(redrive.max_receive_count, 3);
        assert_eq!(queue_name(&redrive.dead_letter_target_arn), "x-dlq");
        let numeric = QueueAttributes {
            redrive_policy: Some(r#"{"deadLetterTargetArn":"a:b","maxReceiveCount":7}"#.into()),
            ..attributes()
        };
        assert_eq!(
            check_jobs_queue(&numeric, &options())
                .unwrap()
                .unwrap()
                .max_receive_count,
            7
        );
    }

    #[test]
    fn a_queue_without_a_redrive_policy_is_refused_unless_allowed() {
        let none = QueueAttributes {
            redrive_policy: None,
            ..attributes()
        };
        let error = check_jobs_queue(&none, &options()).unwrap_err().to_string();
        assert!(
            error.starts_with("jobs queue attribute RedrivePolicy: not set"),
            "{error}"
        );
        assert!(error.contains("--allow-no-dlq"), "{error}");
        let allowed = JobsQueueOptions {
            allow_no_dlq: true,
            ..options()
        };
        assert_eq!(check_jobs_queue(&none, &allowed).unwrap(), None);
    }

    #[test]
    fn broken_attributes_are_named() {
        for policy in [
            "not json",
            r#"{"maxReceiveCount": 3}"#,
            r#"{"deadLetterTargetArn":"a","maxReceiveCount":0}"#,
            r#"{"deadLetterTargetArn":"a"}"#,
        ] {
            let broken = QueueAttributes {
                redrive_policy: Some(policy.into()),
                ..attributes()
            };
            assert_eq!(
                attribute_at_fault(check_jobs_queue(&broken, &options())),
                "RedrivePolicy",
                "{policy}"
            );
        }
        let zero = QueueAttributes {
            visibility: Duration::ZERO,
            ..attributes()
        };
        assert_eq!(
            attribute_at_fault(check_jobs_queue(&zero, &options())),
            "VisibilityTimeout"
        );
        let endless = JobsQueueOptions {
            job_timeout: Duration::from_secs(13 * 3600),
            ..options()
        };
        assert_eq!(
            attribute_at_fault(check_jobs_queue(&attributes(), &endless)),
            "VisibilityTimeout"
        );
        // Fetching the body may take a --job-timeout too: two of 6.5 h do not fit.
        let fetch_and_run = JobsQueueOptions {
            job_timeout: Duration::from_secs(6 * 3600 + 1800),
            ..options()
        };
        assert_eq!(
            attribute_at_fault(check_jobs_queue(&attributes(), &fetch_and_run)),
            "VisibilityTimeout"
        );
        let half_day = JobsQueueOptions {
            job_timeout: Duration::from_secs(5 * 3600),
            ..options()
        };
        assert!(check_jobs_queue(&attributes(), &half_day).is_ok());
    }

    #[test]
    fn the_dead_letter_queue_must_take_every_job() {
        let jobs = attributes();
        assert!(check_dead_letter_queue(&jobs, &attributes(), false).is_ok());
        let small = QueueAttributes {
            max_message_size: 65_536,
            ..attributes()
        };
        assert!(
            check_dead_letter_queue(&jobs, &small, true).is_ok(),
            "large copies go through S3"
        );
        let error = check_dead_letter_queue(&jobs, &small, false)
            .unwrap_err()
            .to_string();
        assert!(
            error.starts_with("dead-letter queue attribute MaximumMessageSize: 65536 bytes"),
            "{error}"
        );
        let fifo = QueueAttributes {
            fifo: true,
            ..attributes()
        };
        assert_eq!(
            attribute_at_fault(check_dead_letter_queue(&jobs, &fifo, true)),
            "FifoQueue"
        );
    }

    #[test]
    fn only_copies_signed_with_a_known_key_are_believed() {
        let keys = MessageKeys::parse(
            "k2:0123456789abcdef0123456789abcdef, k1:fedcba9876543210fedcba9876543210",
        )
        .unwrap();
        assert_eq!(keys.key_id(), "k2");
        let fields = |message_id, attempts, body| SignedFields {
            message_id,
            attempts,
            unpublished: 2,
            body,
        };
        let signature = keys.sign(&fields("m-1", 1, "{}"));
        assert!(signature.starts_with("k2:"), "{signature}");
        assert!(keys.verify(&signature, &fields("m-1", 1, "{}")));
        // Any field changed, another body, another key: refused.
        assert!(!keys.verify(&signature, &fields("m-2", 1, "{}")));
        assert!(!keys.verify(&signature, &fields("m-1", 0, "{}")));
        assert!(!keys.verify(&signature, &fields("m-1", 1, "{ }")));
        for forged in ["", "k2:", "k2:zz", "k3:00", "nonsense"] {
            assert!(!keys.verify(forged, &fields("m-1", 1, "{}")), "{forged}");
        }
        // Rotation: a copy signed with the old key still verifies while both are given.
        let old = MessageKeys::parse("k1:fedcba9876543210fedcba9876543210").unwrap();
        assert!(keys.verify(&old.sign(&fields("m-1", 1, "{}")), &fields("m-1", 1, "{}")));
        assert!(!MessageKeys::ephemeral().verify(&signature, &fields("m-1", 1, "{}")));
        for (spec, expected) in [
            ("", "no message key"),
            ("k1", "expected KEY_ID:SECRET"),
            ("k 1:0123456789abcdef", "expected KEY_ID:SECRET"),
            ("k1:short", "at least 32"),
            // 16 bytes written as characters are not 16 random bytes.
            ("k1:0123456789abcdef", "at least 32"),
            (
                "a:0123456789abcdef0123456789abcdef,b:0123456789abcdef0123456789abcdef,\
                 c:0123456789abcdef0123456789abcdef",
                "at most two",
            ),
            (
                "a:0123456789abcdef0123456789abcdef,a:0123456789abcdef0123456789abcdeg",
                "twice",
            ),
        ] {
            let error = MessageKeys::parse(spec).unwrap_err().to_string();
            assert!(error.contains(expected), "{spec}: {error}");
        }
    }

    #[test]
    fn sizes_and_deduplication_ids() {
        assert_eq!(message_size("abc", &[("n", "String", "v")]), 3 + 1 + 6 + 1);
        assert_eq!(
            deduplication_id("result", "9c1e-ab"),
            deduplication_id("result", "9c1e-ab")
        );
        assert!(deduplication_id("r", &"é x".repeat(100)).len() <= 128);
        assert_eq!(queue_name("https://sqs.x/123/jobs"), "jobs");
        assert_eq!(queue_name("arn:aws:sqs:r:1:jobs-dlq"), "jobs-dlq");
    }
}
