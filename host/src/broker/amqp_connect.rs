//! Opening an AMQP connection, for the broker and the `rpc://` backend alike, and the frame
//! size it asks for.
//!
//! lapin keeps 32 frames of read and of write buffer. Sized from the URL's `frame_max`, they
//! are allocated untouched and only the pages traffic reaches become resident; sized after
//! the handshake instead, lapin zero-fills them. The read buffer is a ring that a stream of
//! messages walks through whole, so its size is what a worker that has drained a queue
//! keeps resident: 4 MiB at RabbitMQ's and py-amqp's 131072-byte frames, 1 MiB at 32768.
//!
//! The broker's connection therefore asks for 32768 ([`FIRST_FRAME_MAX`]). RabbitMQ splits a
//! body across frames of that size, but not a message's headers: a message whose headers do
//! not fit arrives as a frame too large for the connection, and lapin closes it. The
//! broker then raises its [`FrameMax`] and reconnects, and the message, never acked, comes
//! again on a connection that takes it. A URL that sets `frame_max` is used as it is.

use std::sync::atomic::{AtomicU32, Ordering};

use lapin::protocol::{AMQPErrorKind, AMQPHardError};
use lapin::uri::AMQPUri;
use lapin::{Connection, ConnectionProperties, ErrorKind};

/// The frame size the broker's connection asks for first: headers up to 32 KiB fit.
pub const FIRST_FRAME_MAX: u32 = 32_768;

/// py-amqp's and RabbitMQ's default `frame_max`: the largest frame a Python client can send
/// through a RabbitMQ with default settings.
pub const CELERY_FRAME_MAX: u32 = 131_072;

/// Asking for 0 takes the server's own maximum.
const SERVERS_FRAME_MAX: u32 = 0;

/// The `frame_max` the next connection asks for, raised each time RabbitMQ sends a frame
/// larger than the last one asked for.
#[derive(Debug)]
pub struct FrameMax(AtomicU32);

impl FrameMax {
    pub fn starting_at(size: u32) -> FrameMax {
        FrameMax(AtomicU32::new(size))
    }

    pub fn get(&self) -> u32 {
        self.0.load(Ordering::Relaxed)
    }

    /// A frame did not fit on a connection that asked for `asked`: ask for Celery's size
    /// next, and past that for the server's own maximum. Returns the size the next
    /// connection asks for (0: the server's), or `None` if another report from the same
    /// connection (one per consumer) raised it already.
    pub fn raise_from(&self, asked: u32) -> Option<u32> {
        let next = match asked {
            size if size != SERVERS_FRAME_MAX && size < CELERY_FRAME_MAX => CELERY_FRAME_MAX,
            _ => SERVERS_FRAME_MAX,
        };
        self.0
            .compare_exchange(asked, next, Ordering::Relaxed, Ordering::Relaxed)
            .ok()
            .map(|_| next)
    }
}

/// The connection closed because a frame was larger than it had agreed to.
pub fn is_frame_too_large(err: &lapin::Error) -> bool {
    matches!(err.kind(), ErrorKind::ProtocolError(amqp)
        if matches!(amqp.kind(), AMQPErrorKind::Hard(AMQPHardError::FRAMEERROR)))
}

/// Connect to `url`, asking for frames of `frame_max` bytes unless the URL sets its own.
pub async fn connect(url: &str, frame_max: u32) -> lapin::Result<Connection> {
    let uri = uri_of(url, frame_max).map_err(|err| lapin::Error::from(std::io::Error::other(err)))?;
    Connection::connect_uri(uri, ConnectionProperties::default()).await
}

fn uri_of(url: &str, frame_max: u32) -> Result<AMQPUri, String> {
    let mut uri: AMQPUri = url.parse()?;
    uri.query.frame_max.get_or_insert(frame_max);
    Ok(uri)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_frame_size_is_the_one_asked_for_unless_the_url_sets_one() {
        let frame_max = |url: &str| uri_of(url, FIRST_FRAME_MAX).map(|uri| uri.query.frame_max);
        assert_eq!(
            frame_max("amqp://guest:guest@127.0.0.1:5672//"),
            Ok(Some(FIRST_FRAME_MAX))
        );
        assert_eq!(frame_max("amqp://127.0.0.1:5672/%2f?frame_max=65536"), Ok(Some(65536)));
        assert!(frame_max("not a url").is_err());
    }

    #[test]
    fn a_frame_too_large_raises_the_size_to_celerys_then_to_the_servers_once_per_connection() {
        let frame_max = FrameMax::starting_at(FIRST_FRAME_MAX);
        assert_eq!(frame_max.raise_from(FIRST_FRAME_MAX), Some(CELERY_FRAME_MAX));
        assert_eq!(
            frame_max.raise_from(FIRST_FRAME_MAX),
            None,
            "a second consumer's report"
        );
        assert_eq!(frame_max.get(), CELERY_FRAME_MAX);
        assert_eq!(frame_max.raise_from(CELERY_FRAME_MAX), Some(SERVERS_FRAME_MAX));
        assert_eq!(frame_max.raise_from(SERVERS_FRAME_MAX), Some(SERVERS_FRAME_MAX));
        assert_eq!(frame_max.get(), SERVERS_FRAME_MAX);
    }
}
