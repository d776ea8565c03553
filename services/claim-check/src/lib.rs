//! Claim-check for SQS message bodies too large for their queue.
//!
//! A body over the threshold (by default the queue's `MaximumMessageSize` minus a little
//! headroom, see [`threshold_for_max_message_size`]) is stored in an S3 bucket and the
//! message carries a pointer to it instead, in the format of AWS's Amazon SQS Extended
//! Client Library ([`pointer`]): producers and consumers using AWS's extended clients, in
//! Java or Python, exchange messages with plugworker transparently in both directions.
//! docs/claim-check.md describes the format, the configuration and the objects' lifecycle.
//!
//! In a consumer and producer such as the controller:
//! - at start-up, [`PayloadArgs::claim_check`] with the destination queue's
//!   [`threshold_from_queue_attributes`] (or [`queue_threshold`]); a second destination
//!   with another limit gets [`ClaimCheck::with_threshold`];
//! - on receive (ask SQS for `MessageAttributeNames=All`), [`ClaimCheck::resolve`] the
//!   body; keep [`Incoming::pointer`] with the delivery;
//! - on send, [`ClaimCheck::offload`] the body with the attributes it will carry, send
//!   [`Outgoing::body`] with those attributes plus [`Outgoing::attributes`], and
//!   [`ClaimCheck::discard`] the pointer if the send fails;
//! - a copy of a received pointer message (to a dead-letter queue) sends the same pointer
//!   body and `ExtendedPayloadSize` again, and does not release the object;
//! - after the final delete of a message, [`ClaimCheck::release`] its pointer (a failure
//!   only deserves a warning: the bucket's lifecycle rule expires the object).
//!
//! [`ClaimCheck::disabled`] is for queues that never meet S3 (in-process queues, tests).
//!
//! The `aws` feature (on by default) builds all of the above. Without it only the pointer
//! format ([`pointer`]) and [`Error`] are built, for builds that never meet SQS or S3
//! (`plugworker dev`'s in-process queue) and so need no AWS SDK.

pub mod pointer;
#[cfg(feature = "aws")]
pub mod size;
#[cfg(feature = "aws")]
mod store;

pub use pointer::{
    LEGACY_POINTER_CLASS, LEGACY_RESERVED_ATTRIBUTE, MAX_ATTRIBUTES_WITH_POINTER, POINTER_CLASS,
    Pointer, RESERVED_ATTRIBUTE, split_receipt_handle,
};
#[cfg(feature = "aws")]
pub use size::{
    ATTRIBUTE_HEADROOM, SQS_MAXIMUM_MESSAGE_SIZE, attributes_size, message_size,
    queue_max_message_size, queue_threshold, threshold_for_max_message_size,
    threshold_from_queue_attributes,
};
#[cfg(feature = "aws")]
pub use store::{
    ClaimCheck, ClaimCheckConfig, Incoming, Outgoing, PayloadArgs, ReadPolicy, s3_client,
    s3_client_from, validate_key_prefix,
};

/// The key prefix payloads are stored under unless configured otherwise (the terraform
/// grants the controller this prefix only).
pub const DEFAULT_KEY_PREFIX: &str = "payloads/";

/// The largest body [`ClaimCheck::resolve`] fetches unless configured otherwise: a pointer
/// is a promise by whoever sent it, and a 5 GB object must not take the process's memory.
pub const DEFAULT_MAX_PAYLOAD_SIZE: usize = 256 * 1024 * 1024;

/// A key prefix the Java library would also accept (`[a-zA-Z0-9./_-]`, at most 988
/// characters: `SQSExtendedClientConstants.java`), so the keys are safe in any tool.
pub const MAX_KEY_PREFIX_LEN: usize = 1024 - 36;

/// Why a body could not be offloaded or resolved.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(
        "the message is {size} bytes (body and attributes), {over} bytes over the {threshold}-byte limit of its queue, and no payload bucket is configured: set --payload-bucket (PLUGWORKER_PAYLOAD_BUCKET) to send it through S3",
        over = excess(.size, .threshold)
    )]
    TooLarge { size: usize, threshold: usize },
    #[error(
        "the message is a claim-check pointer to s3://{bucket}/{key}, but S3 payload support is not configured: set --payload-bucket (PLUGWORKER_PAYLOAD_BUCKET)"
    )]
    NoBucket { bucket: String, key: String },
    #[error(
        "message attribute {0} is reserved for the claim-check pointer (AWS's SQS extended client format)"
    )]
    ReservedAttribute(String),
    #[error(
        "the message has {count} attributes; one sent through S3 may have at most {max} (SQS allows 10, the pointer needs one)",
        max = MAX_ATTRIBUTES_WITH_POINTER
    )]
    TooManyAttributes { count: usize },
    #[error(
        "the message's attributes alone take {size} bytes, over the {threshold}-byte limit; only the body can go through S3"
    )]
    AttributesTooLarge { size: usize, threshold: usize },
    #[error("malformed claim-check pointer: {reason}")]
    MalformedPointer { reason: String },
    #[error(
        "the payload at {pointer} is {size} bytes, more than the {limit} bytes this process fetches"
    )]
    PayloadTooLarge {
        pointer: Pointer,
        size: u64,
        limit: usize,
    },
    /// The pointer names a bucket (or key) this consumer does not read from.
    #[error("the payload at {pointer} is outside what this consumer reads ({allowed})")]
    NotAllowed { pointer: Pointer, allowed: String },
    #[error("the payload at {pointer} is not UTF-8 text")]
    NotUtf8 { pointer: Pointer },
    #[error("{operation} {pointer} failed: {message}")]
    S3 {
        operation: &'static str,
        pointer: Pointer,
        message: String,
        /// Retrying cannot help (the object or bucket does not exist, access is denied,
        /// the request is invalid).
        permanent: bool,
    },
    #[error("invalid payload key prefix {prefix:?}: {reason}")]
    KeyPrefix { prefix: String, reason: String },
    #[error("{reason}")]
    QueueAttribute { reason: String },
}

fn excess(size: &usize, threshold: &usize) -> usize {
    size.saturating_sub(*threshold)
}

impl Error {
    /// Whether the same request can never succeed: the caller should report the message
    /// as failed instead of retrying it.
    pub fn is_permanent(&self) -> bool {
        match self {
            Error::S3 { permanent, .. } => *permanent,
            Error::QueueAttribute { .. } => false,
            _ => true,
        }
    }
}
