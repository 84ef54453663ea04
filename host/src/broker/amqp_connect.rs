//! Opening an AMQP connection, for the broker and the `rpc://` backend alike.
//!
//! The worker asks for py-amqp's frame size, 131072 bytes, unless the URL sets
//! `frame_max`. Against RabbitMQ's default the handshake settles on the same size as when
//! the client proposes none, but lapin sizes its read and write rings (32 frames each,
//! 4 MiB at this size) from the URL: known up front, they are allocated untouched, and
//! only the pages traffic reaches become resident. With results stored elsewhere than
//! `rpc://`, a worker's write ring carries little more than acks, so an idle worker holds
//! about 4 MiB less than when lapin grows the rings (zero-filling them) after the handshake.

use lapin::uri::AMQPUri;
use lapin::{Connection, ConnectionProperties};

/// py-amqp's and RabbitMQ's default `frame_max`.
pub const CELERY_FRAME_MAX: u32 = 131_072;

/// Connect to `url`, proposing [`CELERY_FRAME_MAX`] unless the URL sets `frame_max`.
pub async fn connect(url: &str) -> lapin::Result<Connection> {
    let uri = uri_of(url).map_err(|err| lapin::Error::from(std::io::Error::other(err)))?;
    Connection::connect_uri(uri, ConnectionProperties::default()).await
}

fn uri_of(url: &str) -> Result<AMQPUri, String> {
    let mut uri: AMQPUri = url.parse()?;
    uri.query.frame_max.get_or_insert(CELERY_FRAME_MAX);
    Ok(uri)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_frame_size_is_celerys_unless_the_url_sets_one() {
        let frame_max = |url: &str| uri_of(url).map(|uri| uri.query.frame_max);
        assert_eq!(
            frame_max("amqp://guest:guest@127.0.0.1:5672//"),
            Ok(Some(CELERY_FRAME_MAX))
        );
        assert_eq!(frame_max("amqp://127.0.0.1:5672/%2f?frame_max=65536"), Ok(Some(65536)));
        assert!(frame_max("not a url").is_err());
    }
}
