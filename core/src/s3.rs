//! S3 client builder for the lake (AWS, or any S3-compatible server).

use aws_sdk_s3::Client;
use aws_sdk_s3::config::{Credentials, Region};

use crate::config::S3Config;

/// A client for the configured endpoint. Static credentials when configured,
/// otherwise the standard AWS chain (env, profile, web identity, IMDS).
pub async fn client(cfg: &S3Config) -> Client {
    let mut loader = aws_config::defaults(aws_config::BehaviorVersion::latest())
        .region(Region::new(cfg.region.clone()));
    if !cfg.access_key_id.is_empty() {
        if cfg.has_local_stack_keys()
            && !cfg.endpoint.contains("127.0.0.1")
            && !cfg.endpoint.contains("localhost")
        {
            tracing::warn!(
                endpoint = %cfg.endpoint,
                "s3: using the local stack's built-in access key against another endpoint; set s3.access_key_id and s3.secret_access_key, or empty them to use the AWS chain (IRSA, instance profile)"
            );
        }
        loader = loader.credentials_provider(Credentials::new(
            &cfg.access_key_id,
            &cfg.secret_access_key,
            None,
            None,
            "hourglass-config",
        ));
    }
    let shared = loader.load().await;
    let mut builder =
        aws_sdk_s3::config::Builder::from(&shared).force_path_style(cfg.force_path_style);
    if !cfg.endpoint.is_empty() {
        builder = builder.endpoint_url(&cfg.endpoint);
    }
    Client::from_conf(builder.build())
}

#[derive(Debug, thiserror::Error)]
#[error("could not create bucket {bucket}: {message}")]
pub struct BucketError {
    pub bucket: String,
    pub message: String,
}

/// Create the bucket unless it already exists.
pub async fn ensure_bucket(client: &Client, bucket: &str) -> Result<(), BucketError> {
    if client.head_bucket().bucket(bucket).send().await.is_ok() {
        return Ok(());
    }
    match client.create_bucket().bucket(bucket).send().await {
        Ok(_) => Ok(()),
        Err(e) => {
            let service = e.as_service_error();
            if service
                .is_some_and(|s| s.is_bucket_already_owned_by_you() || s.is_bucket_already_exists())
            {
                return Ok(());
            }
            Err(BucketError {
                bucket: bucket.to_owned(),
                message: aws_sdk_s3::error::DisplayErrorContext(&e).to_string(),
            })
        }
    }
}
