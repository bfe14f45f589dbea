//! Reading the head of an HTTP answer off a connection that carries something else right
//! after it (a proxy's CONNECT tunnel, a WebSocket): byte by byte, so nothing past the head
//! is taken from the connection.

use tokio::io::{AsyncRead, AsyncReadExt};

/// Why no head was read.
#[derive(Debug)]
pub enum HeadError {
    /// More than the limit came without the blank line that ends a head.
    TooLong,
    /// The connection ended first.
    Closed,
    Io(std::io::Error),
}

/// The head, up to and with the blank line; at most `max` bytes are read.
pub async fn read<S: AsyncRead + Unpin>(stream: &mut S, max: usize) -> Result<Vec<u8>, HeadError> {
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        if head.len() >= max {
            return Err(HeadError::TooLong);
        }
        let mut byte = [0u8; 1];
        match stream.read(&mut byte).await {
            Ok(0) => return Err(HeadError::Closed),
            Ok(_) => head.push(byte[0]),
            Err(e) => return Err(HeadError::Io(e)),
        }
    }
    Ok(head)
}
