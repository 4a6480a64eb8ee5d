//! Faults the simulator serves on demand: Torn's transient failures and the network's.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::Body;
use tokio::io::{AsyncRead, ReadBuf};
use tokio_util::codec::{BytesCodec, FramedRead};

/// One fault, [queued](crate::sim::SimHandle::inject) for the next request that passes every
/// check (IP, key, key state, the owner's window): it is counted in the owner's window like
/// any request Torn receives, then answered this way.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Fault {
    /// Answer this Torn error code (HTTP 200, Torn's error body), e.g. 17 or 0.
    Code(u16),
    /// Wait this long, then answer normally.
    Slow(Duration),
    /// Answer this HTTP status with a plain-text body, as a proxy in front of Torn might. A
    /// status outside 200–599 is served as 500.
    Http(u16),
    /// Answer HTTP 200 with the normal JSON cut short.
    MalformedJson,
    /// Close the connection without a complete response: the client's request fails.
    DropConnection,
    /// Answer as Cloudflare does when it challenges a client: HTTP 403 with
    /// `cf-mitigated: challenge` and an HTML page.
    Challenge,
    /// Answer normally, but without `info.user` in a `/v2/key/info` answer, as Torn's
    /// answer sometimes is (other paths answer as usual).
    KeyInfoWithoutUser,
}

/// A body that fails on its first read: hyper then aborts the connection, and the client
/// sees it close before a complete response (in practice before the head).
pub(crate) fn dropped_body() -> Body {
    Body::from_stream(FramedRead::new(FailingReader, BytesCodec::new()))
}

struct FailingReader;

impl AsyncRead for FailingReader {
    fn poll_read(
        self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
        _buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Poll::Ready(Err(io::Error::new(
            io::ErrorKind::ConnectionAborted,
            "simulated dropped connection",
        )))
    }
}
