//! The caller's deadline, from the `grpc-timeout` header (gRPC over HTTP/2 spec:
//! up to 8 digits and a unit H, M, S, m, u or n).

use std::time::{Duration, Instant};
use tonic::metadata::MetadataMap;

/// tonic's server applies the same header with its own timer and answers `CANCELLED` when
/// it fires. The kit's deadline fires this much earlier, so callers get the
/// `DEADLINE_EXCEEDED` the contract promises.
const AHEAD_OF_TRANSPORT: Duration = Duration::from_millis(3);

/// When a request's headers arrived, stamped by [`stamp_arrival`] before the body is read.
#[derive(Clone, Copy, Debug)]
pub(crate) struct ArrivedAt(pub Instant);

/// Tower middleware body: records [`ArrivedAt`] on every request.
pub(crate) fn stamp_arrival<B>(mut request: http::Request<B>) -> http::Request<B> {
    request.extensions_mut().insert(ArrivedAt(Instant::now()));
    request
}

/// The deadline of a request that arrived at `arrived`, if the caller set one.
pub(crate) fn deadline(metadata: &MetadataMap, arrived: Instant) -> Option<Instant> {
    let timeout = grpc_timeout(metadata)?;
    Some(arrived + timeout.saturating_sub(AHEAD_OF_TRANSPORT))
}

fn grpc_timeout(metadata: &MetadataMap) -> Option<Duration> {
    parse(metadata.get("grpc-timeout")?.to_str().ok()?)
}

fn parse(value: &str) -> Option<Duration> {
    if value.len() < 2 || value.len() > 9 {
        return None;
    }
    let (digits, unit) = value.split_at(value.len() - 1);
    let amount: u64 = digits.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(amount.checked_mul(3600)?),
        "M" => Duration::from_secs(amount.checked_mul(60)?),
        "S" => Duration::from_secs(amount),
        "m" => Duration::from_millis(amount),
        "u" => Duration::from_micros(amount),
        "n" => Duration::from_nanos(amount),
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_grpc_timeout_format() {
        assert_eq!(parse("5S"), Some(Duration::from_secs(5)));
        assert_eq!(parse("250m"), Some(Duration::from_millis(250)));
        assert_eq!(parse("2H"), Some(Duration::from_secs(7200)));
        assert_eq!(parse("10u"), Some(Duration::from_micros(10)));
        for bad in ["", "S", "5", "5s", "123456789S", "-1S"] {
            assert_eq!(parse(bad), None, "{bad:?}");
        }
    }
}
