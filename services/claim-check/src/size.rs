//! How big a message is, as SQS and the extended clients count it, and the default
//! threshold derived from a queue's `MaximumMessageSize`.

use crate::Error;
use aws_sdk_sqs::types::{MessageAttributeValue, QueueAttributeName};
use std::collections::HashMap;

/// Bytes kept free under a queue's `MaximumMessageSize` when deriving the threshold (or an
/// eighth of the limit, for queues smaller than 8 KiB). Offloading already counts the
/// attributes it is given, like the extended clients do; the headroom is for what is added
/// after that decision (the `ExtendedPayloadSize` attribute itself, a trace context
/// attribute set later), so a message that stays inline never lands within a few bytes of
/// the limit.
pub const ATTRIBUTE_HEADROOM: usize = 1024;

/// The limit AWS gives a queue that does not set `MaximumMessageSize` (1 MiB since 2025),
/// and moto's default.
pub const SQS_MAXIMUM_MESSAGE_SIZE: usize = 1_048_576;

/// The bytes message attributes count for: each name, data type and string or binary
/// value (`getMsgAttributesSize` in the Java library's `AmazonSQSExtendedClientUtil.java`,
/// `_get_message_attributes_size` in the Python library's `client.py`; SQS counts the same
/// towards `MaximumMessageSize`).
pub fn attributes_size(attributes: &HashMap<String, MessageAttributeValue>) -> usize {
    attributes
        .iter()
        .map(|(name, value)| {
            name.len()
                + value.data_type().len()
                + value.string_value().map_or(0, str::len)
                + value.binary_value().map_or(0, |b| b.as_ref().len())
        })
        .sum()
}

/// The size of a message: its body's UTF-8 bytes plus its attributes.
pub fn message_size(body: &str, attributes: &HashMap<String, MessageAttributeValue>) -> usize {
    body.len() + attributes_size(attributes)
}

/// The default threshold for a queue whose `MaximumMessageSize` is `maximum`: a message
/// larger than this (body and attributes) goes through S3.
pub fn threshold_for_max_message_size(maximum: usize) -> usize {
    maximum - ATTRIBUTE_HEADROOM.min(maximum / 8)
}

/// The default threshold from a queue's attributes (`GetQueueAttributes` with
/// `MaximumMessageSize` or `All`).
pub fn threshold_from_queue_attributes(
    attributes: &HashMap<QueueAttributeName, String>,
) -> Result<usize, Error> {
    let value = attributes
        .get(&QueueAttributeName::MaximumMessageSize)
        .ok_or_else(|| Error::QueueAttribute {
            reason: "the queue's attributes have no MaximumMessageSize".to_string(),
        })?;
    let maximum: usize = value.parse().map_err(|_| Error::QueueAttribute {
        reason: format!("MaximumMessageSize {value:?} is not a number of bytes"),
    })?;
    Ok(threshold_for_max_message_size(maximum))
}

/// Reads the queue's `MaximumMessageSize`.
pub async fn queue_max_message_size(
    sqs: &aws_sdk_sqs::Client,
    queue_url: &str,
) -> Result<usize, Error> {
    let output = sqs
        .get_queue_attributes()
        .queue_url(queue_url)
        .attribute_names(QueueAttributeName::MaximumMessageSize)
        .send()
        .await
        .map_err(|e| Error::QueueAttribute {
            reason: format!(
                "cannot read MaximumMessageSize of {queue_url}: {}",
                aws_sdk_sqs::error::DisplayErrorContext(e)
            ),
        })?;
    let attributes = output.attributes().cloned().unwrap_or_default();
    let value = attributes
        .get(&QueueAttributeName::MaximumMessageSize)
        .ok_or_else(|| Error::QueueAttribute {
            reason: format!("{queue_url} reports no MaximumMessageSize"),
        })?;
    value.parse().map_err(|_| Error::QueueAttribute {
        reason: format!("MaximumMessageSize {value:?} of {queue_url} is not a number of bytes"),
    })
}

/// The default threshold of a queue, read from SQS.
pub async fn queue_threshold(sqs: &aws_sdk_sqs::Client, queue_url: &str) -> Result<usize, Error> {
    Ok(threshold_for_max_message_size(
        queue_max_message_size(sqs, queue_url).await?,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn attribute(data_type: &str, value: &str) -> MessageAttributeValue {
        MessageAttributeValue::builder()
            .data_type(data_type)
            .string_value(value)
            .build()
            .unwrap()
    }

    #[test]
    fn counts_bytes_as_the_extended_clients_do() {
        let mut attributes = HashMap::new();
        attributes.insert(
            "traceparent".to_string(),
            attribute("String", "00-ab-cd-01"),
        );
        let binary = MessageAttributeValue::builder()
            .data_type("Binary")
            .binary_value(aws_sdk_sqs::primitives::Blob::new(vec![0u8; 7]))
            .build()
            .unwrap();
        attributes.insert("raw".to_string(), binary);
        // "traceparent" 11 + "String" 6 + 11, "raw" 3 + "Binary" 6 + 7.
        assert_eq!(attributes_size(&attributes), 28 + 16);
        // UTF-8 bytes, not characters: "é" is 2 bytes, "😀" 4.
        assert_eq!(message_size("aé😀", &attributes), 7 + 44);
    }

    #[test]
    fn the_threshold_leaves_headroom_under_the_queue_limit() {
        assert_eq!(threshold_for_max_message_size(262_144), 262_144 - 1024);
        assert_eq!(threshold_for_max_message_size(1_048_576), 1_048_576 - 1024);
        // The smallest queue SQS allows keeps most of its room for the body.
        assert_eq!(threshold_for_max_message_size(1024), 1024 - 128);
        let mut attributes = HashMap::new();
        attributes.insert(QueueAttributeName::MaximumMessageSize, "2048".to_string());
        assert_eq!(
            threshold_from_queue_attributes(&attributes).unwrap(),
            2048 - 256
        );
        attributes.insert(QueueAttributeName::MaximumMessageSize, "lots".to_string());
        assert!(
            threshold_from_queue_attributes(&attributes)
                .unwrap_err()
                .to_string()
                .contains("MaximumMessageSize \"lots\"")
        );
        assert!(threshold_from_queue_attributes(&HashMap::new()).is_err());
    }
}
