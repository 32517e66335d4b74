//! Watches for response heads in an upstream's plain bytes, so awc reads close-delimited bodies.

use std::{
    io,
    task::{ready, Poll},
};

use tokio::io::ReadBuf;

/// The longest head looked for. A head not ended within this many bytes passes on unchanged
/// (awc rejects it: its own limit is 128 KiB).
pub const MAX_HEAD: usize = 64 * 1024;

/// The most buffer a connection keeps between split heads; a larger one is freed.
const KEPT_CAPACITY: usize = 8 * 1024;

/// What a whole response head says about what follows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Head {
    /// A 1xx interim response other than 101: no body, and another head follows.
    Interim,
    /// The final head (or one not understood): what follows is the body.
    Final,
}

/// Classifies a whole head (as [`head_end`] delimits it) and, if it is an HTTP/1.1 head whose
/// body the connection's close delimits, rewrites its version to `HTTP/1.0`. That is the only
/// change it ever makes, and only to byte 7.
fn mark(head: &mut [u8]) -> Head {
    // httparse (which awc uses) wants exactly one space between version and status.
    let (minor, status) = match *head {
        [b'H', b'T', b'T', b'P', b'/', b'1', b'.', minor, b' ', a, b, c, after, ..]
            if [a, b, c].iter().all(u8::is_ascii_digit)
                && matches!(after, b' ' | b'\r' | b'\n') =>
        {
            let digit = |d: u8| u16::from(d - b'0');
            (minor, digit(a) * 100 + digit(b) * 10 + digit(c))
        }
        _ => return Head::Final,
    };
    if (100..200).contains(&status) && status != 101 {
        return Head::Interim;
    }
    if minor == b'1' && status_has_body(status) && !has_length(head) {
        head[7] = b'0';
    }
    Head::Final
}

/// Whether a response with this status has a body (RFC 9110 §6.4.1: not 1xx, 204 or 304).
pub fn status_has_body(status: u16) -> bool {
    status >= 200 && status != 204 && status != 304
}

/// Whether a head has a `Content-Length` or `Transfer-Encoding` field, any case. Runs on every
/// upstream response: lines are found with memchr, and only those that start like one of the
/// two names are looked at further.
fn has_length(head: &[u8]) -> bool {
    let mut ends = memchr::memchr_iter(b'\n', head);
    // The status line is no field.
    let Some(status_end) = ends.next() else {
        return false;
    };
    let mut start = status_end + 1;
    ends.chain(std::iter::once(head.len())).any(|end| {
        let line = &head[start.min(end)..end];
        start = end + 1;
        if !matches!(line.first(), Some(b'c' | b'C' | b't' | b'T')) {
            return false;
        }
        let Some(colon) = memchr::memchr(b':', line) else {
            return false;
        };
        // awc allows spaces between a response's field name and its colon.
        let name = line[..colon].trim_ascii_end();
        name.eq_ignore_ascii_case(b"content-length")
            || name.eq_ignore_ascii_case(b"transfer-encoding")
    })
}

/// Where the head at the start of `bytes` ends: just past the empty line closing it, with
/// lines ended by `\r\n` or `\n` as httparse accepts. `Err(from)` while it is incomplete; a
/// later search of the same bytes grown longer may resume at that `from`.
fn head_end(bytes: &[u8], from: usize) -> Result<usize, usize> {
    let from = from.min(bytes.len());
    for at in memchr::memchr_iter(b'\n', &bytes[from..]).map(|i| from + i) {
        match (bytes.get(at + 1), bytes.get(at + 2)) {
            (Some(b'\n'), _) => return Ok(at + 2),
            (Some(b'\r'), Some(b'\n')) => return Ok(at + 3),
            (None, _) | (Some(b'\r'), None) => return Err(at),
            _ => {}
        }
    }
    Err(bytes.len())
}

/// How many bytes of empty lines start `bytes`: httparse skips them before a status line.
fn empty_lines(bytes: &[u8]) -> usize {
    let mut at = 0;
    loop {
        match bytes.get(at..) {
            Some([b'\n', ..]) => at += 1,
            Some([b'\r', b'\n', ..]) => at += 2,
            _ => return at,
        }
    }
}

/// What the bytes at the start of a response hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Scan {
    /// After `drop` bytes (empty lines and interim heads, for no one), a final head, marked;
    /// or no head end within [`MAX_HEAD`]. Either way the rest is handed on as it is.
    Done { drop: usize },
    /// After `drop` bytes, a head not yet whole, whose first `searched` bytes hold no end.
    Partial { drop: usize, searched: usize },
}

/// Reads the heads at the start of `bytes` (the first bytes of a response, or more of them
/// than an earlier scan, which left off at `searched`).
fn scan(bytes: &mut [u8], mut searched: usize) -> Scan {
    let mut drop = 0;
    loop {
        let blank = empty_lines(&bytes[drop..]);
        if blank > 0 {
            drop += blank;
            searched = 0;
        }
        let rest = &mut bytes[drop..];
        let window = rest.len().min(MAX_HEAD);
        match head_end(&rest[..window], searched) {
            Ok(end) => match mark(&mut rest[..end]) {
                Head::Interim => {
                    drop += end;
                    searched = 0;
                }
                Head::Final => return Scan::Done { drop },
            },
            Err(_) if window == MAX_HEAD => return Scan::Done { drop },
            Err(searched) => return Scan::Partial { drop, searched },
        }
    }
}

/// One connection's watch for response heads, fed by every read from the socket.
///
/// awc (actix-http 3.20, `h1/decoder.rs`) reads an HTTP/1.1 response with neither
/// `Content-Length` nor `Transfer-Encoding` as having an empty body, where RFC 9112 §6.3 says
/// the body runs until the connection closes; it reads to the close only for HTTP/1.0. Some
/// OpenAI-compatible servers answer in that shape. So the bytes read back after a request are
/// held until its response head is whole ([`MAX_HEAD`] at most), and `HTTP/1.1` becomes
/// `HTTP/1.0` (same length, in place) when the body is close-delimited: awc then reads the
/// body to the end of the connection, and does not reuse it. Interim 1xx heads are dropped:
/// awc takes the first head for the answer (it expects a 100 only after sending
/// `Expect: 100-continue`, which the proxy never does). After the final head, every byte up to
/// the next request passes straight on, neither looked at nor copied.
///
/// This relies on how awc's HTTP/1 client works: it writes a whole request before it reads
/// the response, and never pipelines, so the first write of a request starts the watch and
/// the next bytes read are that request's response. It works on plain bytes only: under TLS
/// it would see ciphertext.
#[derive(Debug, Default)]
pub struct ResponseHeads {
    /// A request was written and its final response head has not been handed on yet.
    awaiting: bool,
    /// Bytes read but not handed on: a head not yet whole while `awaiting`, else what was
    /// read with it. Empty, without an allocation, unless a head came split across reads.
    held: Vec<u8>,
    /// While `awaiting`: how much of `held` holds no head end. Otherwise: how much of `held`
    /// is handed on.
    at: usize,
}

impl ResponseHeads {
    /// A request was written: the next bytes read start its response.
    pub fn request_sent(&mut self) {
        if self.awaiting {
            return;
        }
        self.awaiting = true;
        // Bytes the server sent ahead of the request: awc takes them for the response.
        self.held.drain(..self.at);
        self.at = 0;
        if !self.held.is_empty() {
            self.rescan();
        }
    }

    /// Whether bytes are ready to be handed on without a read from the socket.
    pub fn has_ready(&self) -> bool {
        !self.awaiting && self.at < self.held.len()
    }

    /// Fills `buf` as `read` would, from `read`, with each response head looked at first.
    /// `Ready(Ok)` with nothing added means what it means from `read`: the end of the input
    /// (or a full `buf`).
    pub fn poll_read(
        &mut self,
        buf: &mut ReadBuf<'_>,
        mut read: impl FnMut(&mut ReadBuf<'_>) -> Poll<io::Result<()>>,
    ) -> Poll<io::Result<()>> {
        loop {
            if !self.awaiting {
                if self.held.is_empty() {
                    return read(buf);
                }
                let ready = &self.held[self.at..];
                let n = ready.len().min(buf.remaining());
                buf.put_slice(&ready[..n]);
                self.at += n;
                if self.at == self.held.len() {
                    self.at = 0;
                    self.held.clear();
                    // Kept for the next split head, unless a huge one left it large.
                    if self.held.capacity() > KEPT_CAPACITY {
                        self.held = Vec::new();
                    }
                }
                return Poll::Ready(Ok(()));
            }
            if buf.remaining() == 0 {
                return Poll::Ready(Ok(()));
            }
            let before = buf.filled().len();
            ready!(read(buf))?;
            if buf.filled().len() == before {
                if self.held.is_empty() {
                    return Poll::Ready(Ok(()));
                }
                // The input ended inside a head: hand on what came, unchanged.
                self.awaiting = false;
                self.at = 0;
                continue;
            }
            if self.held.is_empty() {
                // The common case, a whole head in one read: looked at in place, not copied.
                let fresh = &mut buf.filled_mut()[before..];
                match scan(fresh, 0) {
                    Scan::Done { drop } => {
                        self.awaiting = false;
                        if drop > 0 {
                            fresh.copy_within(drop.., 0);
                            let kept = buf.filled().len() - drop;
                            buf.set_filled(kept);
                        }
                        return Poll::Ready(Ok(()));
                    }
                    Scan::Partial { drop, searched } => {
                        self.held.extend_from_slice(&fresh[drop..]);
                        self.at = searched;
                        buf.set_filled(before);
                    }
                }
            } else {
                // A head split across reads: gathered here until it is whole.
                self.held.extend_from_slice(&buf.filled()[before..]);
                buf.set_filled(before);
                self.rescan();
            }
        }
    }

    /// Looks again at the head being gathered in `held`, now that it has grown.
    fn rescan(&mut self) {
        match scan(&mut self.held, self.at) {
            Scan::Done { drop } => {
                self.held.drain(..drop);
                self.awaiting = false;
                self.at = 0;
            }
            Scan::Partial { drop, searched } => {
                self.held.drain(..drop);
                self.at = searched;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::VecDeque;

    use proptest::prelude::*;

    use super::*;

    /// The input of a fake socket: chunks that each read returns (at most what fits), and
    /// `None` for "nothing yet" (`Pending`). When the chunks run out, end of file.
    struct Input(VecDeque<Option<Vec<u8>>>);

    impl Input {
        fn of(chunks: impl IntoIterator<Item = Vec<u8>>) -> Self {
            Self(chunks.into_iter().map(Some).collect())
        }

        fn read(&mut self, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
            match self.0.front_mut() {
                None => Poll::Ready(Ok(())),
                Some(None) => {
                    self.0.pop_front();
                    Poll::Pending
                }
                Some(Some(chunk)) => {
                    let n = chunk.len().min(buf.remaining());
                    buf.put_slice(&chunk[..n]);
                    chunk.drain(..n);
                    if chunk.is_empty() {
                        self.0.pop_front();
                    }
                    Poll::Ready(Ok(()))
                }
            }
        }
    }

    /// Everything `heads` hands on from `input`, read `size` bytes at a time, until the end.
    fn read_all(heads: &mut ResponseHeads, input: &mut Input, size: usize) -> Vec<u8> {
        let mut out = Vec::new();
        let mut storage = vec![0; size];
        loop {
            let mut buf = ReadBuf::new(&mut storage);
            match heads.poll_read(&mut buf, |b| input.read(b)) {
                // Each `Pending` is used up as it is returned: read again, unless that was all.
                Poll::Pending if input.0.is_empty() => return out,
                Poll::Pending => {}
                Poll::Ready(Ok(())) if buf.filled().is_empty() => return out,
                Poll::Ready(Ok(())) => out.extend_from_slice(buf.filled()),
                Poll::Ready(Err(e)) => panic!("{e}"),
            }
        }
    }

    /// What one response, read after one request, comes out as.
    fn through(response: &[u8], chunks: &[usize], size: usize) -> Vec<u8> {
        let mut heads = ResponseHeads::default();
        heads.request_sent();
        let mut input = Input::of(split(response, chunks));
        read_all(&mut heads, &mut input, size)
    }

    /// `bytes` cut after each of `lengths` (cycled), the rest in one last piece.
    fn split(bytes: &[u8], lengths: &[usize]) -> Vec<Vec<u8>> {
        let mut pieces = Vec::new();
        let mut rest = bytes;
        for length in lengths.iter().cycle() {
            if rest.is_empty() {
                break;
            }
            let (piece, after) = rest.split_at((*length).clamp(1, rest.len()));
            pieces.push(piece.to_vec());
            rest = after;
        }
        pieces
    }

    fn once(response: &[u8]) -> Vec<u8> {
        through(response, &[response.len().max(1)], 1 << 20)
    }

    #[test]
    fn a_close_delimited_http_1_1_head_becomes_http_1_0() {
        let out = once(b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n\r\ndata: x\n\n");
        assert_eq!(
            out,
            b"HTTP/1.0 200 OK\r\nContent-Type: text/event-stream\r\n\r\ndata: x\n\n"
        );
    }

    #[test]
    fn heads_with_a_length_or_no_body_are_left_alone() {
        for head in [
            &b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"[..],
            b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nhi",
            b"HTTP/1.1 200 OK\r\nCONTENT-LENGTH : 2\r\n\r\nhi",
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
            b"HTTP/1.1 200 OK\ntransfer-encoding: chunked\n\n0\r\n\r\n",
            b"HTTP/1.1 204 No Content\r\n\r\n",
            b"HTTP/1.1 304 Not Modified\r\n\r\n",
            b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: x\r\n\r\nafter",
            b"HTTP/1.0 200 OK\r\n\r\nclosed",
            b"HTTP/2 200\r\n\r\n",
            b"HTTP/1.1  200 OK\r\n\r\n",
            b"HTTP/1.1 2000 OK\r\n\r\n",
            b"garbage\r\n\r\nHTTP/1.1 200 OK\r\n\r\n",
        ] {
            assert_eq!(once(head), head, "{}", String::from_utf8_lossy(head));
        }
    }

    #[test]
    fn any_status_with_a_body_and_no_length_is_marked() {
        for head in [
            &b"HTTP/1.1 200 OK\r\n\r\n"[..],
            b"HTTP/1.1 503\r\n\r\n",
            b"HTTP/1.1 429 Too Many Requests\nRetry-After: 1\n\n",
            b"HTTP/1.1 200 OK\r\nX-Content-Length-Hint: 5\r\nX: Content-Length: 5\r\n\r\n",
        ] {
            let mut marked = head.to_vec();
            marked[7] = b'0';
            assert_eq!(once(head), marked, "{}", String::from_utf8_lossy(head));
        }
    }

    #[test]
    fn interim_heads_and_empty_lines_before_the_answer_are_dropped() {
        let out = once(
            b"\r\nHTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\n\
              HTTP/1.1 200 OK\r\n\r\nHTTP/1.1 100 Continue\r\n\r\n",
        );
        // What follows the final head is body, however it looks.
        assert_eq!(out, b"HTTP/1.0 200 OK\r\n\r\nHTTP/1.1 100 Continue\r\n\r\n");
    }

    #[test]
    fn a_head_split_one_byte_at_a_time_is_held_then_marked() {
        let response = b"HTTP/1.1 103 Early Hints\r\n\r\nHTTP/1.1 200 OK\r\nServer: x\r\n\r\nbody";
        assert_eq!(
            through(response, &[1], 64),
            b"HTTP/1.0 200 OK\r\nServer: x\r\n\r\nbody"
        );
        assert_eq!(
            through(response, &[64], 1),
            b"HTTP/1.0 200 OK\r\nServer: x\r\n\r\nbody"
        );
    }

    #[test]
    fn a_head_longer_than_the_limit_passes_unchanged() {
        let mut response = b"HTTP/1.1 200 OK\r\nX: ".to_vec();
        response.resize(MAX_HEAD + 10, b'a');
        response.extend_from_slice(b"\r\n\r\nbody");
        assert_eq!(once(&response), response);
        let mut heads = ResponseHeads::default();
        heads.request_sent();
        let mut input = Input::of(split(&response, &[1000]));
        assert_eq!(read_all(&mut heads, &mut input, 4096), response);
        assert!(
            heads.held.capacity() <= KEPT_CAPACITY,
            "the big buffer is freed"
        );
    }

    #[test]
    fn the_input_ending_inside_a_head_hands_on_what_came() {
        assert_eq!(
            through(b"HTTP/1.1 200 OK\r\nX: y", &[3], 8),
            b"HTTP/1.1 200 OK\r\nX: y"
        );
    }

    #[test]
    fn every_response_on_a_kept_alive_connection_is_inspected_and_only_its_head() {
        let mut heads = ResponseHeads::default();
        let responses: [(&[u8], &[u8]); 4] = [
            (
                b"HTTP/1.1 200 OK\r\nContent-Length: 15\r\n\r\nHTTP/1.1 200 OK",
                b"HTTP/1.1 200 OK\r\nContent-Length: 15\r\n\r\nHTTP/1.1 200 OK",
            ),
            (
                b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
                b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
            ),
            (
                b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 204 No Content\r\n\r\n",
                b"HTTP/1.1 204 No Content\r\n\r\n",
            ),
            (
                b"HTTP/1.1 200 OK\r\n\r\nlast",
                b"HTTP/1.0 200 OK\r\n\r\nlast",
            ),
        ];
        for (response, expected) in responses {
            heads.request_sent();
            // The server waits for the next request: `Pending` once this response is read.
            let mut input = Input(split(response, &[7]).into_iter().map(Some).collect());
            input.0.push_back(None);
            assert_eq!(read_all(&mut heads, &mut input, 16), expected);
        }
    }

    #[test]
    fn body_bytes_pass_without_a_head_watch_until_the_next_request() {
        let mut heads = ResponseHeads::default();
        // No request written: nothing is held, nothing changed.
        let mut input = Input::of([b"HTTP/1.1 200 OK\r\n\r\n".to_vec()]);
        assert_eq!(
            read_all(&mut heads, &mut input, 64),
            b"HTTP/1.1 200 OK\r\n\r\n"
        );
        assert!(heads.held.capacity() == 0, "nothing was held");
    }

    #[test]
    fn a_whole_head_in_one_read_is_not_copied() {
        let mut heads = ResponseHeads::default();
        heads.request_sent();
        let mut input = Input::of([b"HTTP/1.1 200 OK\r\nA: b\r\n\r\nbody".to_vec()]);
        read_all(&mut heads, &mut input, 4096);
        assert_eq!(heads.held.capacity(), 0);
    }

    /// A response as a server could send it: empty lines, interim heads, a final head with
    /// any of the fields that decide its framing in any case, then a body of anything.
    fn response() -> impl Strategy<Value = (Vec<u8>, Vec<u8>)> {
        let field = prop_oneof![
            Just("Content-Length: 4".to_owned()),
            Just("transfer-encoding: chunked".to_owned()),
            Just("CONTENT-LENGTH : 0".to_owned()),
            Just("Content-Type: text/event-stream".to_owned()),
            "[A-Za-z-]{1,12}: [ -~]{0,20}",
        ];
        // Final statuses only: 101, and 200 and up.
        let status = prop_oneof![Just(200u16), Just(204), Just(304), Just(101), 200u16..600];
        let interim = prop_oneof![Just(100u16), 102u16..200];
        let body = prop_oneof![
            proptest::collection::vec(any::<u8>(), 0..64),
            Just(b"HTTP/1.1 200 OK\r\n\r\n".to_vec()),
            Just(b"\r\n\r\nHTTP/1.1 100 Continue\r\n\r\n".to_vec()),
        ];
        let eol = prop_oneof![Just("\r\n"), Just("\n")];
        (
            proptest::collection::vec(eol.clone(), 0..3),
            proptest::collection::vec(interim, 0..3),
            prop_oneof![Just('0'), Just('1')],
            status,
            proptest::collection::vec(field, 0..4),
            eol,
            body,
        )
            .prop_map(|(blank, interim, minor, status, fields, eol, body)| {
                let mut sent = blank.concat().into_bytes();
                for status in interim {
                    sent.extend_from_slice(format!("HTTP/1.1 {status} Early{eol}{eol}").as_bytes());
                }
                let mut head = format!("HTTP/1.{minor} {status} Reason{eol}");
                for field in &fields {
                    head.push_str(field);
                    head.push_str(eol);
                }
                head.push_str(eol);
                sent.extend_from_slice(head.as_bytes());
                sent.extend_from_slice(&body);

                let mut expected = head.into_bytes();
                let framed = fields.iter().any(|field| {
                    let field = field.to_ascii_lowercase();
                    field.starts_with("content-length") || field.starts_with("transfer-encoding")
                });
                let has_body = ![101, 204, 304].contains(&status);
                if minor == '1' && has_body && !framed {
                    expected[7] = b'0';
                }
                expected.extend_from_slice(&body);
                (sent, expected)
            })
    }

    proptest! {
        #[test]
        fn only_the_version_of_a_close_delimited_head_changes((sent, expected) in response()) {
            prop_assert_eq!(once(&sent), expected);
        }

        #[test]
        fn any_split_of_a_response_reads_as_one_read(
            (sent, _) in response(),
            chunks in proptest::collection::vec(1usize..24, 1..8),
            size in 1usize..48,
        ) {
            prop_assert_eq!(through(&sent, &chunks, size), once(&sent));
        }

        #[test]
        fn bytes_that_never_end_a_head_pass_unchanged(
            bytes in proptest::collection::vec(any::<u8>().prop_filter("no LF", |b| *b != b'\n'), 0..200),
            chunks in proptest::collection::vec(1usize..24, 1..8),
            size in 1usize..48,
        ) {
            let mut sent = b"HTTP/1.1 200 OK\r\n".to_vec();
            sent.extend_from_slice(&bytes);
            prop_assert_eq!(through(&sent, &chunks, size), sent);
        }

        #[test]
        fn any_split_of_arbitrary_bytes_reads_as_one_read(
            bytes in proptest::collection::vec(
                prop_oneof![Just(b'\r'), Just(b'\n'), Just(b' '), any::<u8>()], 0..200),
            prefix in prop_oneof![Just(&b""[..]), Just(&b"HTTP/1.1 1"[..]), Just(&b"HTTP/1.1 200"[..])],
            chunks in proptest::collection::vec(1usize..24, 1..8),
            size in 1usize..48,
        ) {
            let mut sent = prefix.to_vec();
            sent.extend_from_slice(&bytes);
            let out = once(&sent);
            // Some leading bytes dropped (empty lines, interim heads), the rest handed on,
            // with at most the version's last digit changed.
            prop_assert!(out.len() <= sent.len());
            let kept = &sent[sent.len() - out.len()..];
            for (i, (a, b)) in out.iter().zip(kept).enumerate() {
                prop_assert!(a == b || (i == 7 && (*a, *b) == (b'0', b'1')), "byte {}", i);
            }
            prop_assert_eq!(through(&sent, &chunks, size), out);
        }
    }
}
