//! The wire format of AWS's Amazon SQS Extended Client Library, byte for byte.
//!
//! Verified against the libraries' sources:
//! - awslabs/payload-offloading-java-common-lib-for-aws,
//!   `src/main/java/software/amazon/payloadoffloading/PayloadS3Pointer.java`: Jackson with
//!   default typing `NON_FINAL` writes the pointer as a two-element array, the class name
//!   then the fields: `["software.amazon.payloadoffloading.PayloadS3Pointer",
//!   {"s3BucketName":"…","s3Key":"…"}]` (compact), and reads it ignoring unknown fields.
//! - awslabs/amazon-sqs-java-extended-client-lib,
//!   `src/main/java/com/amazon/sqs/javamessaging/SQSExtendedClientConstants.java` and
//!   `AmazonSQSExtendedClientUtil.java`: the `ExtendedPayloadSize` attribute (legacy
//!   `SQSLargePayloadSize`), type `Number`, value the UTF-8 size of the original body; at
//!   most 9 other attributes on an offloaded message; the receipt-handle markers.
//! - awslabs/amazon-sqs-python-extended-client-lib, `src/sqs_extended_client/client.py`:
//!   the same constants, the legacy class name `com.amazon.sqs.javamessaging.MessageS3Pointer`,
//!   and a reader that accepts any `[class, {"s3BucketName", "s3Key"}]` array.

use crate::Error;
use serde::{Deserialize, Serialize};

/// The class name the current Java and Python libraries write.
pub const POINTER_CLASS: &str = "software.amazon.payloadoffloading.PayloadS3Pointer";
/// The class name of version 1 of the Java library (the Python library's legacy mode).
pub const LEGACY_POINTER_CLASS: &str = "com.amazon.sqs.javamessaging.MessageS3Pointer";
/// The message attribute that marks an offloaded message; its value is the size in bytes
/// of the original body.
pub const RESERVED_ATTRIBUTE: &str = "ExtendedPayloadSize";
/// The same attribute as version 1 of the Java library named it (still read by both).
pub const LEGACY_RESERVED_ATTRIBUTE: &str = "SQSLargePayloadSize";
/// SQS allows 10 message attributes; an offloaded message needs one for itself.
pub const MAX_ATTRIBUTES_WITH_POINTER: usize = 10 - 1;
/// The extended clients decorate the receipt handles of offloaded messages with the
/// object's location, between these markers, so that `DeleteMessage` (which only gets a
/// receipt handle) can delete the object too.
pub const S3_BUCKET_NAME_MARKER: &str = "-..s3BucketName..-";
pub const S3_KEY_MARKER: &str = "-..s3Key..-";

/// Where an offloaded body is stored.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Pointer {
    #[serde(rename = "s3BucketName")]
    pub bucket: String,
    #[serde(rename = "s3Key")]
    pub key: String,
}

impl std::fmt::Display for Pointer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "s3://{}/{}", self.bucket, self.key)
    }
}

#[derive(Deserialize)]
#[serde(untagged)]
enum Wire {
    /// `[class, {fields}]`: what every current library writes.
    Typed(String, Pointer),
    /// `{fields}`: early third-party writers; accepted as the Java reader's untyped form.
    Plain(Pointer),
}

impl Pointer {
    pub fn new(bucket: impl Into<String>, key: impl Into<String>) -> Self {
        Self {
            bucket: bucket.into(),
            key: key.into(),
        }
    }

    /// The message body that carries this pointer, exactly as the Java library writes it.
    pub fn to_body(&self) -> String {
        serde_json::to_string(&(POINTER_CLASS, self)).expect("two strings always serialise")
    }

    /// Reads a pointer body written by any version of the extended clients.
    pub fn parse(body: &str) -> Result<Self, Error> {
        let malformed = |reason: String| Error::MalformedPointer { reason };
        let pointer = match serde_json::from_str::<Wire>(body) {
            Ok(Wire::Typed(class, pointer)) => {
                // The readers of both libraries accept any class name here; so do we.
                if class != POINTER_CLASS && class != LEGACY_POINTER_CLASS {
                    tracing::debug!(%class, "claim-check pointer with an unknown class name");
                }
                pointer
            }
            Ok(Wire::Plain(pointer)) => pointer,
            Err(_) => {
                let shown: String = body.chars().take(120).collect();
                return Err(malformed(format!(
                    "the body is not [\"{POINTER_CLASS}\", {{\"s3BucketName\": …, \"s3Key\": …}}] (it starts {shown:?})"
                )));
            }
        };
        if pointer.bucket.is_empty() || pointer.key.is_empty() {
            return Err(malformed(
                "s3BucketName and s3Key must not be empty".to_string(),
            ));
        }
        Ok(pointer)
    }

    /// A receipt handle carrying this pointer, as the extended clients hand them out:
    /// `-..s3BucketName..-BUCKET-..s3BucketName..--..s3Key..-KEY-..s3Key..-HANDLE`.
    pub fn decorate_receipt_handle(&self, receipt_handle: &str) -> String {
        format!(
            "{S3_BUCKET_NAME_MARKER}{}{S3_BUCKET_NAME_MARKER}{S3_KEY_MARKER}{}{S3_KEY_MARKER}{receipt_handle}",
            self.bucket, self.key
        )
    }
}

/// Splits a receipt handle decorated by an extended client into the pointer and the
/// handle SQS issued; an undecorated handle comes back unchanged with no pointer.
pub fn split_receipt_handle(handle: &str) -> (Option<Pointer>, &str) {
    let between = |text: &str, marker: &str| -> Option<(usize, usize)> {
        let start = text.find(marker)? + marker.len();
        let end = start + text[start..].find(marker)?;
        Some((start, end))
    };
    if !(handle.contains(S3_BUCKET_NAME_MARKER) && handle.contains(S3_KEY_MARKER)) {
        return (None, handle);
    }
    let (Some(bucket), Some(key)) = (
        between(handle, S3_BUCKET_NAME_MARKER),
        between(handle, S3_KEY_MARKER),
    ) else {
        return (None, handle);
    };
    // As the Python library does (`split(S3_KEY_MARKER)[-1]`): the SQS handle is what
    // follows the closing key marker.
    let original = &handle[key.1 + S3_KEY_MARKER.len()..];
    (
        Some(Pointer::new(
            &handle[bucket.0..bucket.1],
            &handle[key.0..key.1],
        )),
        original,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_what_the_java_library_writes() {
        let pointer = Pointer::new("my-bucket", "payloads/0b6c7f0e-6a1f-4d0e-9a3e-2f1c5d8e7a90");
        assert_eq!(
            pointer.to_body(),
            r#"["software.amazon.payloadoffloading.PayloadS3Pointer",{"s3BucketName":"my-bucket","s3Key":"payloads/0b6c7f0e-6a1f-4d0e-9a3e-2f1c5d8e7a90"}]"#
        );
    }

    #[test]
    fn reads_every_known_form() {
        let expected = Pointer::new("b", "k");
        for body in [
            // Java (compact), Python (json.dumps spacing), Python legacy mode, untyped,
            // and with an unknown field (Jackson ignores those).
            r#"["software.amazon.payloadoffloading.PayloadS3Pointer",{"s3BucketName":"b","s3Key":"k"}]"#,
            r#"["software.amazon.payloadoffloading.PayloadS3Pointer", {"s3BucketName": "b", "s3Key": "k"}]"#,
            r#"["com.amazon.sqs.javamessaging.MessageS3Pointer", {"s3BucketName": "b", "s3Key": "k"}]"#,
            r#"{"s3BucketName":"b","s3Key":"k"}"#,
            r#"["software.amazon.payloadoffloading.PayloadS3Pointer",{"s3BucketName":"b","s3Key":"k","x":1}]"#,
        ] {
            assert_eq!(Pointer::parse(body).unwrap(), expected, "{body}");
        }
    }

    #[test]
    fn refuses_what_is_not_a_pointer() {
        for body in [
            r#"{"algorithm":"echo"}"#,
            r#"["software.amazon.payloadoffloading.PayloadS3Pointer"]"#,
            r#"["software.amazon.payloadoffloading.PayloadS3Pointer",{"s3BucketName":"","s3Key":"k"}]"#,
            "not json",
        ] {
            let error = Pointer::parse(body).unwrap_err();
            assert!(
                matches!(error, Error::MalformedPointer { .. }),
                "{body}: {error}"
            );
        }
    }

    #[test]
    fn receipt_handles_round_trip_like_the_extended_clients() {
        let pointer = Pointer::new("bucket-1", "payloads/abc");
        let decorated = pointer.decorate_receipt_handle("AQEB+handle==");
        assert_eq!(
            decorated,
            "-..s3BucketName..-bucket-1-..s3BucketName..--..s3Key..-payloads/abc-..s3Key..-AQEB+handle=="
        );
        assert_eq!(
            split_receipt_handle(&decorated),
            (Some(pointer), "AQEB+handle==")
        );
        assert_eq!(split_receipt_handle("AQEB+plain"), (None, "AQEB+plain"));
    }
}
