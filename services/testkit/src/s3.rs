//! S3 on the test's moto server: moto serves S3 and SQS on the same port, so a test that
//! started [`crate::sqs::Sqs`] has S3 too. Path-style addressing, as for any emulator.

use crate::sqs::Sqs;
use aws_sdk_s3::Client;
use aws_sdk_s3::config::{BehaviorVersion, Credentials, Region};

/// An S3 client on a moto server.
#[derive(Clone)]
pub struct S3 {
    pub endpoint: String,
    pub client: Client,
}

impl S3 {
    /// S3 on the moto server of `sqs`.
    pub fn on(sqs: &Sqs) -> Self {
        Self::at(&sqs.endpoint)
    }

    /// S3 at `endpoint` (a moto server).
    pub fn at(endpoint: &str) -> Self {
        let config = aws_sdk_s3::Config::builder()
            .behavior_version(BehaviorVersion::latest())
            .region(Region::new("us-east-1"))
            .credentials_provider(Credentials::new(
                "test",
                "test",
                None,
                None,
                "plugworker-tests",
            ))
            .endpoint_url(endpoint)
            .force_path_style(true)
            .build();
        Self {
            endpoint: endpoint.to_string(),
            client: Client::from_conf(config),
        }
    }

    pub async fn create_bucket(&self, name: &str) {
        self.client
            .create_bucket()
            .bucket(name)
            .send()
            .await
            .unwrap_or_else(|e| {
                panic!(
                    "cannot create bucket {name}: {}",
                    aws_sdk_s3::error::DisplayErrorContext(e)
                )
            });
    }

    /// Every key in `bucket`, sorted.
    pub async fn keys(&self, bucket: &str) -> Vec<String> {
        let mut keys = Vec::new();
        let mut pages = self
            .client
            .list_objects_v2()
            .bucket(bucket)
            .into_paginator()
            .send();
        while let Some(page) = pages.next().await {
            let page = page.unwrap_or_else(|e| {
                panic!(
                    "cannot list {bucket}: {}",
                    aws_sdk_s3::error::DisplayErrorContext(e)
                )
            });
            keys.extend(
                page.contents()
                    .iter()
                    .filter_map(|o| o.key().map(str::to_owned)),
            );
        }
        keys.sort();
        keys
    }

    /// The object's bytes, or `None` if it does not exist.
    pub async fn get(&self, bucket: &str, key: &str) -> Option<Vec<u8>> {
        match self
            .client
            .get_object()
            .bucket(bucket)
            .key(key)
            .send()
            .await
        {
            Ok(output) => Some(output.body.collect().await.unwrap().into_bytes().to_vec()),
            Err(e) if e.as_service_error().is_some_and(|e| e.is_no_such_key()) => None,
            Err(e) => panic!(
                "cannot get s3://{bucket}/{key}: {}",
                aws_sdk_s3::error::DisplayErrorContext(e)
            ),
        }
    }

    pub async fn put(&self, bucket: &str, key: &str, bytes: Vec<u8>) {
        self.client
            .put_object()
            .bucket(bucket)
            .key(key)
            .body(bytes.into())
            .send()
            .await
            .unwrap_or_else(|e| {
                panic!(
                    "cannot put s3://{bucket}/{key}: {}",
                    aws_sdk_s3::error::DisplayErrorContext(e)
                )
            });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Conditional writes of one key arriving at once let exactly one through, as with
    /// real S3: creations (`If-None-Match: *`), then replacements of the version they
    /// all read (`If-Match`). Plain moto checks the condition and then writes, with no
    /// lock: two writers could both win (seen as two gallery publishers both replacing
    /// `current`; 4-6 of 6 per key here).
    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn conditional_writes_of_one_key_at_once_let_exactly_one_through() {
        // Each read of an object (the condition's check among them) takes 50 ms more:
        // writes of one key sent together all reach their check before any has written.
        let moto = Sqs::start_with(&[("PLUGWORKER_MOTO_S3_READ_DELAY", "0.05")]).await;
        let s3 = S3::on(&moto);
        s3.create_bucket("race").await;
        let (keys, writers) = (4, 6);
        let mut etags = vec![None; keys];
        for round in ["If-None-Match", "If-Match"] {
            let mut puts = Vec::new();
            for (key, etag) in etags.iter().enumerate() {
                for writer in 0..writers {
                    let (client, etag) = (s3.client.clone(), etag.clone());
                    puts.push(tokio::spawn(async move {
                        let request = client
                            .put_object()
                            .bucket("race")
                            .key(format!("key-{key}"))
                            .body(format!("{round} {writer}").into_bytes().into());
                        let request = match etag {
                            Some(etag) => request.if_match(etag),
                            None => request.if_none_match("*"),
                        };
                        let answer = match request.send().await {
                            Ok(output) => Ok(output.e_tag().unwrap().to_string()),
                            Err(e) => Err(e.raw_response().map(|r| r.status().as_u16())),
                        };
                        (key, answer)
                    }));
                }
            }
            let mut won = vec![0; keys];
            for put in puts {
                match put.await.unwrap() {
                    (key, Ok(etag)) => {
                        won[key] += 1;
                        etags[key] = Some(etag);
                    }
                    (_, Err(Some(412))) => {}
                    (key, Err(status)) => panic!("{round} put of key-{key}: {status:?}"),
                }
            }
            assert_eq!(won, vec![1; keys], "{round}: one writer through per key");
        }
    }
}
