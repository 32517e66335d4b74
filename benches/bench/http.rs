//! Just enough HTTP/1.1 for the load generator and the mock: one keep-alive connection, bodies
//! framed by `Content-Length` or chunked, no pipelining. Hand-written so that neither side
//! costs much next to the proxy.

use std::{
    io::{self, ErrorKind},
    net::SocketAddr,
    time::Instant,
};

use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
};

use crate::mock;

/// The start line and the framing of a request or response.
pub struct Head {
    /// `POST /path HTTP/1.1` or `HTTP/1.1 200 OK`.
    pub start_line: String,
    pub content_length: Option<usize>,
    pub chunked: bool,
    /// Whether the request's `X-Request-Id` starts with [`mock::TEXT_STAMPS_ID`]: the caller
    /// asks the mock for stamps inside the stream's text.
    pub text_stamps: bool,
    /// A stream's length and pacing other than the mock's default, asked for in the request's
    /// `X-Request-Id` (see [`mock::StreamShape::request_id`]).
    pub shape: Option<mock::StreamShape>,
}

impl Head {
    /// The status code of a response head (0 when the line is not a status line).
    pub fn status(&self) -> u16 {
        self.start_line
            .split(' ')
            .nth(1)
            .and_then(|code| code.parse().ok())
            .unwrap_or(0)
    }
}

/// One TCP connection with its read buffer: bytes `buf[start..]` are read but not yet used.
pub struct Conn {
    stream: TcpStream,
    buf: Vec<u8>,
    start: usize,
    /// When the last read returned: the arrival time of everything it brought.
    pub last_read_at: Instant,
}

impl Conn {
    /// Connects with Nagle off: every small write goes out at once, as the proxy's do.
    pub async fn open(addr: SocketAddr) -> io::Result<Conn> {
        let stream = TcpStream::connect(addr).await?;
        Ok(Conn::new(stream))
    }

    pub fn new(stream: TcpStream) -> Conn {
        // Best effort: a connection that keeps Nagle on is slower, not wrong.
        let _ = stream.set_nodelay(true);
        Conn {
            stream,
            buf: Vec::with_capacity(16 * 1024),
            start: 0,
            last_read_at: Instant::now(),
        }
    }

    pub async fn write_all(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.stream.write_all(bytes).await
    }

    /// Reads the next head. `Ok(None)` is the peer closing between two messages.
    pub async fn read_head(&mut self) -> io::Result<Option<Head>> {
        loop {
            if let Some(end) = find(&self.buf[self.start..], b"\r\n\r\n") {
                let head = parse_head(&self.buf[self.start..self.start + end])?;
                self.start += end + 4;
                return Ok(Some(head));
            }
            if !self.read_more().await? {
                if self.start == self.buf.len() {
                    return Ok(None);
                }
                return Err(ErrorKind::UnexpectedEof.into());
            }
        }
    }

    /// Reads the body that `head` frames, handing each piece to `on_data` as it is decoded,
    /// with [`Conn::last_read_at`] as its arrival time.
    pub async fn read_body(
        &mut self,
        head: &Head,
        mut on_data: impl FnMut(&[u8], Instant),
    ) -> io::Result<()> {
        if head.chunked {
            self.read_chunked(&mut on_data).await
        } else {
            self.read_exactly(head.content_length.unwrap_or(0), &mut on_data)
                .await
        }
    }

    async fn read_chunked(&mut self, on_data: &mut impl FnMut(&[u8], Instant)) -> io::Result<()> {
        loop {
            let line = self.read_line().await?;
            let size = parse_chunk_size(&line)?;
            if size == 0 {
                // No trailers: the blank line that ends the body.
                self.read_line().await?;
                return Ok(());
            }
            self.read_exactly(size, on_data).await?;
            self.read_line().await?;
        }
    }

    async fn read_exactly(
        &mut self,
        mut left: usize,
        on_data: &mut impl FnMut(&[u8], Instant),
    ) -> io::Result<()> {
        while left > 0 {
            if self.start == self.buf.len() && !self.read_more().await? {
                return Err(ErrorKind::UnexpectedEof.into());
            }
            let take = left.min(self.buf.len() - self.start);
            on_data(&self.buf[self.start..self.start + take], self.last_read_at);
            self.start += take;
            left -= take;
        }
        Ok(())
    }

    /// One `\r\n`-terminated line, without its terminator.
    async fn read_line(&mut self) -> io::Result<Vec<u8>> {
        loop {
            if let Some(end) = find(&self.buf[self.start..], b"\r\n") {
                let line = self.buf[self.start..self.start + end].to_vec();
                self.start += end + 2;
                return Ok(line);
            }
            if !self.read_more().await? {
                return Err(ErrorKind::UnexpectedEof.into());
            }
        }
    }

    /// Appends what the socket has; `false` at end of file.
    async fn read_more(&mut self) -> io::Result<bool> {
        if self.start == self.buf.len() {
            self.buf.clear();
            self.start = 0;
        } else if self.start > self.buf.capacity() / 2 {
            self.buf.drain(..self.start);
            self.start = 0;
        }
        self.buf.reserve(4096);
        let read = self.stream.read_buf(&mut self.buf).await?;
        self.last_read_at = Instant::now();
        Ok(read > 0)
    }
}

fn parse_head(bytes: &[u8]) -> io::Result<Head> {
    let text = std::str::from_utf8(bytes).map_err(|_| invalid("a head that is not UTF-8"))?;
    let mut lines = text.split("\r\n");
    let start_line = lines.next().unwrap_or_default().to_owned();
    let mut head = Head {
        start_line,
        content_length: None,
        chunked: false,
        text_stamps: false,
        shape: None,
    };
    for line in lines {
        let Some((name, value)) = line.split_once(':') else {
            continue;
        };
        let value = value.trim();
        if name.eq_ignore_ascii_case("content-length") {
            head.content_length = Some(value.parse().map_err(|_| invalid("a bad length"))?);
        } else if name.eq_ignore_ascii_case("transfer-encoding") {
            head.chunked = value.eq_ignore_ascii_case("chunked");
        } else if name.eq_ignore_ascii_case("x-request-id") {
            head.text_stamps = value.starts_with(mock::TEXT_STAMPS_ID);
            head.shape = mock::StreamShape::from_request_id(value);
        }
    }
    Ok(head)
}

fn parse_chunk_size(line: &[u8]) -> io::Result<usize> {
    let text = std::str::from_utf8(line).map_err(|_| invalid("a bad chunk size"))?;
    let digits = text.split(';').next().unwrap_or_default().trim();
    usize::from_str_radix(digits, 16).map_err(|_| invalid("a bad chunk size"))
}

/// One body chunk of a chunked response, framed.
pub fn chunk(data: &[u8]) -> Vec<u8> {
    let mut framed = format!("{:x}\r\n", data.len()).into_bytes();
    framed.extend_from_slice(data);
    framed.extend_from_slice(b"\r\n");
    framed
}

/// Where `needle` first occurs in `haystack`.
pub fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack
        .windows(needle.len())
        .position(|window| window == needle)
}

fn invalid(what: &str) -> io::Error {
    io::Error::new(ErrorKind::InvalidData, format!("HTTP: {what}"))
}
