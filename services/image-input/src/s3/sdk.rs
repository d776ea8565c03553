//! Reading `image_s3` objects with the AWS SDK (the `s3` feature): the client, the
//! capped and timed GetObject, and what each failure means for the job.

use super::S3Location;
use crate::{ImageLimits, append_capped};
use aws_sdk_s3::error::{DisplayErrorContext, ProvideErrorMetadata, SdkError};
use aws_sdk_s3::operation::get_object::GetObjectError;
use plugworker_kit::RunError;

/// A client from the standard AWS configuration of the environment.
pub(crate) async fn client_from_env() -> aws_sdk_s3::Client {
    let shared = aws_config::defaults(aws_config::BehaviorVersion::latest())
        .load()
        .await;
    let custom_endpoint = ["AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL"]
        .iter()
        .any(|name| std::env::var_os(name).is_some_and(|v| !v.is_empty()));
    let config = aws_sdk_s3::config::Builder::from(&shared)
        .force_path_style(custom_endpoint)
        .build();
    tracing::info!(
        region = ?config.region(),
        custom_endpoint,
        "S3 client for image_s3 configured"
    );
    aws_sdk_s3::Client::from_conf(config)
}

/// The object's bytes, at most `limits.max_bytes` of them, within `limits.fetch_timeout`.
pub(crate) async fn fetch(
    client: &aws_sdk_s3::Client,
    limits: &ImageLimits,
    location: &S3Location,
) -> Result<Vec<u8>, RunError> {
    let read = async {
        let object = client
            .get_object()
            .bucket(&location.bucket)
            .key(&location.key)
            .send()
            .await
            .map_err(|e| classify(e, location))?;
        // Refused on the declared size before any of the body is read; dropping the
        // response closes the connection, so the rest is never downloaded.
        if let Some(length) = object.content_length()
            && u64::try_from(length).unwrap_or(0) > limits.max_bytes as u64
        {
            return Err(RunError::Unprocessable(format!(
                "image_s3 {location} is {length} bytes, more than the {} allowed",
                limits.max_bytes
            )));
        }
        let capacity = object
            .content_length()
            .and_then(|l| usize::try_from(l).ok())
            .unwrap_or(0)
            .min(limits.max_bytes);
        let mut body = Vec::with_capacity(capacity);
        let mut stream = object.body;
        // And capped while reading, whatever the declared length said.
        while let Some(chunk) = stream.try_next().await.map_err(|e| {
            RunError::Unavailable(format!(
                "reading image_s3 {location} failed: {}",
                DisplayErrorContext(&e)
            ))
        })? {
            if !append_capped(&mut body, &chunk, limits.max_bytes) {
                return Err(RunError::Unprocessable(format!(
                    "image_s3 {location} is more than the {} bytes allowed",
                    limits.max_bytes
                )));
            }
        }
        Ok(body)
    };
    tokio::time::timeout(limits.fetch_timeout, read)
        .await
        .unwrap_or_else(|_| {
            Err(RunError::Unavailable(format!(
                "image_s3 {location}: timed out after {:?}",
                limits.fetch_timeout
            )))
        })
}

/// S3 error codes that can heal on their own: throttling, S3's own trouble, and
/// credentials the runner is about to refresh.
const TRANSIENT_CODES: &[&str] = &[
    "SlowDown",
    "Throttling",
    "ThrottlingException",
    "RequestLimitExceeded",
    "RequestTimeout",
    "InternalError",
    "ServiceUnavailable",
    "ExpiredToken",
    "TokenRefreshRequired",
];

/// Errors that concern the runner's own credentials, not the job: another runner (or
/// this one, once its credentials are fixed or refreshed) may succeed.
const RUNNER_CREDENTIAL_CODES: &[&str] = &[
    "InvalidAccessKeyId",
    "SignatureDoesNotMatch",
    "InvalidToken",
];

/// Which class a failed GetObject belongs to, with the bucket and key named.
fn classify(error: SdkError<GetObjectError>, location: &S3Location) -> RunError {
    let detail = DisplayErrorContext(&error).to_string();
    match &error {
        SdkError::ServiceError(service) => {
            let status = service.raw().status().as_u16();
            let code = service.err().code().unwrap_or_default();
            let is_no_such_key = matches!(service.err(), GetObjectError::NoSuchKey(_));
            match code {
                _ if is_no_such_key || code == "NoSuchKey" => RunError::Unprocessable(format!(
                    "image_s3 {location}: no such key in bucket {} (NoSuchKey)",
                    location.bucket
                )),
                "NoSuchBucket" => RunError::Unprocessable(format!(
                    "image_s3 {location}: bucket {} does not exist (NoSuchBucket)",
                    location.bucket
                )),
                "AccessDenied" | "AllAccessDisabled" => RunError::Unprocessable(format!(
                    "image_s3 {location}: access denied ({code}); the runner's credentials may not read this object"
                )),
                "InvalidObjectState" => RunError::Unprocessable(format!(
                    "image_s3 {location}: the object is archived and must be restored first (InvalidObjectState)"
                )),
                "PermanentRedirect" | "AuthorizationHeaderMalformed" => {
                    RunError::Unprocessable(format!(
                        "image_s3 {location}: bucket {} is not in the runner's region ({code})",
                        location.bucket
                    ))
                }
                _ if RUNNER_CREDENTIAL_CODES.contains(&code) => {
                    tracing::error!(%location, code, "S3 refused the runner's credentials");
                    RunError::Unavailable(format!(
                        "image_s3 {location}: S3 refused this runner's credentials ({code})"
                    ))
                }
                _ if status == 429 || status >= 500 || TRANSIENT_CODES.contains(&code) => {
                    RunError::Unavailable(format!(
                        "image_s3 {location}: S3 answered HTTP {status} {code}; try again"
                    ))
                }
                _ => RunError::Unprocessable(format!(
                    "image_s3 {location}: S3 answered HTTP {status} {code}: {}",
                    service.err().message().unwrap_or_default()
                )),
            }
        }
        SdkError::TimeoutError(_) => {
            RunError::Unavailable(format!("image_s3 {location}: S3 timed out: {detail}"))
        }
        SdkError::DispatchFailure(_) | SdkError::ResponseError(_) => {
            RunError::Unavailable(format!("image_s3 {location}: cannot reach S3: {detail}"))
        }
        // No region, no credentials: the runner's setup, not the job.
        SdkError::ConstructionFailure(_) => RunError::Internal(format!(
            "image_s3 {location}: cannot make the S3 request (is the runner's AWS configuration complete?): {detail}"
        )),
        _ => RunError::Unavailable(format!("image_s3 {location}: {detail}")),
    }
}
