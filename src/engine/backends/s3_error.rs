//! How an S3 call's failure reads: the service's code and message, or the transport's story,
//! with the driver error kept as the cause. Shared by the S3 store and its Object Lock calls.

use aws_sdk_s3::error::{ProvideErrorMetadata, SdkError};

use crate::engine::error::{Error, Failure};

pub(super) fn s3_err<E, R>(op: &str, key: &str, e: SdkError<E, R>) -> Error
where
    E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
    R: std::fmt::Debug + Send + Sync + 'static,
{
    let detail = match &e {
        SdkError::ServiceError(s) => format!(
            "{}: {}",
            s.err().code().unwrap_or("error"),
            s.err().message().unwrap_or("no message")
        ),
        other => aws_smithy_types::error::display::DisplayErrorContext(other).to_string(),
    };
    Error::payload(Failure::new(format!("{op} {key}: {detail}"), e))
}
