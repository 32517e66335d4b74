//! An incremental server-sent events parser: bytes in as they arrive, whole events out.
//!
//! Translated streams are parsed into events; pass-through streams are only scanned for their
//! token counts, never changed. An event split across reads, or a UTF-8 character split across
//! reads, comes out whole, because only complete events are decoded.
//!
//! One unfinished event is held up to [`MAX_EVENT_BYTES`]: past that the parser gives up on the
//! stream (see [`Parser::overflowed`]) rather than grow without bound. Each byte is searched
//! for line ends once, as it arrives, and decoded once, with its event, however the stream is
//! split into reads, so the work is linear in the stream's length.

use std::borrow::Cow;

/// The most bytes of one event a [`Parser::default`] holds while waiting for its end, and so
/// the longest event it passes on. Text and tool-call deltas are a few KiB; a stream that goes
/// a MiB without ending an event is most likely broken, and holding more would let one stream
/// take the memory meant for thousands.
pub const MAX_EVENT_BYTES: usize = 1 << 20;

/// One event: its `event:` name, if any, and its `data:` lines joined with `\n`.
#[derive(Debug, PartialEq, Eq)]
pub struct Event<'a> {
    pub name: Option<&'a str>,
    pub data: Cow<'a, str>,
}

/// Splits a stream into events, holding at most `limit` bytes of the one not yet ended.
#[derive(Debug)]
pub struct Parser {
    limit: usize,
    /// The start of an event not yet ended by a blank line, already scanned for line ends.
    pending: Vec<u8>,
    /// Nothing of the current line has been seen: a line end now makes a blank line.
    at_line_start: bool,
    /// The last byte seen was a `\r` line end, so a `\n` next is the rest of that `\r\n`.
    after_cr: bool,
    overflowed: bool,
    /// Bytes examined so far, so tests can prove the work is linear without a clock.
    #[cfg(test)]
    scanned: usize,
}

impl Default for Parser {
    fn default() -> Self {
        Self::with_limit(MAX_EVENT_BYTES)
    }
}

impl Parser {
    /// A parser that overflows once one event is longer than `limit` bytes.
    pub fn with_limit(limit: usize) -> Self {
        Self {
            limit,
            pending: Vec::new(),
            at_line_start: true,
            after_cr: false,
            overflowed: false,
            #[cfg(test)]
            scanned: 0,
        }
    }

    /// Feeds one chunk; calls `on_event` for each event it completes, in order. Stops at the
    /// first error `on_event` returns, dropping the rest of that chunk.
    pub fn feed<E>(
        &mut self,
        chunk: &[u8],
        mut on_event: impl FnMut(Event<'_>) -> Result<(), E>,
    ) -> Result<(), E> {
        if self.overflowed {
            return Ok(());
        }
        // Where the event being read begins in `chunk`; any earlier part of it is in `pending`.
        let mut event_start = 0;
        let mut at = 0;
        while at < chunk.len() {
            if std::mem::take(&mut self.after_cr) && chunk[at] == b'\n' {
                // The `\n` of a `\r\n` that ended an event belongs to neither event.
                if event_start == at && self.pending.is_empty() {
                    event_start += 1;
                }
                at += 1;
                continue;
            }
            let Some(offset) = memchr::memchr2(b'\n', b'\r', &chunk[at..]) else {
                self.examined(chunk.len() - at);
                self.at_line_start = false;
                break;
            };
            self.examined(offset + 1);
            let end = at + offset;
            let blank = self.at_line_start && offset == 0;
            self.at_line_start = true;
            // A `\r` ends its line at once, so an event ended by `\r\r` is not held back
            // waiting to learn whether a `\n` follows.
            self.after_cr = chunk[end] == b'\r';
            at = end + 1;
            if !blank {
                continue;
            }
            let event_len = self.pending.len() + (end - event_start);
            // Checked here too, not only on what is held, so that an event too long is refused
            // however the stream happens to be split into reads.
            if event_len > self.limit {
                self.overflow();
                return Ok(());
            }
            self.examined(event_len);
            let dispatched = if self.pending.is_empty() {
                // The common case: the event lies within this chunk; decode it in place.
                dispatch(&chunk[event_start..end], &mut on_event)
            } else {
                self.pending.extend_from_slice(&chunk[event_start..end]);
                let dispatched = dispatch(&self.pending, &mut on_event);
                self.pending.clear();
                dispatched
            };
            event_start = at;
            dispatched?;
        }
        let rest = &chunk[event_start..];
        if self.pending.len() + rest.len() > self.limit {
            self.overflow();
            return Ok(());
        }
        self.pending.extend_from_slice(rest);
        Ok(())
    }

    /// The stream ended: an event that lacks only its closing blank line is dispatched.
    pub fn finish<E>(
        &mut self,
        mut on_event: impl FnMut(Event<'_>) -> Result<(), E>,
    ) -> Result<(), E> {
        if self.overflowed {
            return Ok(());
        }
        let pending = std::mem::take(&mut self.pending);
        self.at_line_start = true;
        self.after_cr = false;
        self.examined(pending.len());
        dispatch(&pending, &mut on_event)
    }

    /// Whether an event grew past the limit. From then on the parser holds nothing and
    /// dispatches nothing: every `feed` and `finish` returns `Ok(())` at once. A stream that
    /// lost an event cannot be translated faithfully any more, and looking on for the next
    /// event boundary would spend time on it for nothing; the caller decides whether to end
    /// the stream with an error or let its bytes flow unparsed.
    pub fn overflowed(&self) -> bool {
        self.overflowed
    }

    /// How many bytes of an unfinished event are held now; never more than the limit.
    pub fn buffered(&self) -> usize {
        self.pending.len()
    }

    fn overflow(&mut self) {
        self.overflowed = true;
        // Give the memory back now: the parser may live as long as its stream does.
        self.pending = Vec::new();
    }

    #[inline]
    fn examined(&mut self, _bytes: usize) {
        #[cfg(test)]
        {
            self.scanned += _bytes;
        }
    }
}

/// Builds the event from its lines and hands it on; comments and empty events are skipped.
fn dispatch<E>(
    block: &[u8],
    on_event: &mut impl FnMut(Event<'_>) -> Result<(), E>,
) -> Result<(), E> {
    // Events with invalid UTF-8 are dropped, as the SSE spec's decoder would mangle them.
    let Ok(block) = std::str::from_utf8(block) else {
        return Ok(());
    };
    let mut name = None;
    let mut data: Option<Cow<'_, str>> = None;
    // Lines end at `\n` or `\r` (a `\r\n` leaves an empty line between, skipped). memchr
    // rather than `str::split` with a char array, which decodes and compares every char: that
    // was the most expensive step of a translated stream's event.
    let mut rest = block;
    while !rest.is_empty() {
        let end = memchr::memchr2(b'\n', b'\r', rest.as_bytes()).unwrap_or(rest.len());
        let line = &rest[..end];
        rest = rest.get(end + 1..).unwrap_or_default();
        if line.is_empty() {
            continue;
        }
        let (field, value) = match line.split_once(':') {
            Some((field, value)) => (field, value.strip_prefix(' ').unwrap_or(value)),
            None => (line, ""),
        };
        match field {
            "event" => name = Some(value),
            "data" => match &mut data {
                None => data = Some(Cow::Borrowed(value)),
                // One growing string, so an event of many data lines is joined in linear time.
                Some(joined) => {
                    let joined = joined.to_mut();
                    joined.push('\n');
                    joined.push_str(value);
                }
            },
            _ => {}
        }
    }
    match data {
        Some(data) => on_event(Event { name, data }),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn events_of(chunks: &[&[u8]]) -> Vec<(Option<String>, String)> {
        parse_with(Parser::default(), chunks).0
    }

    fn named(name: &str, data: &str) -> (Option<String>, String) {
        (Some(name.into()), data.into())
    }

    fn unnamed(data: &str) -> (Option<String>, String) {
        (None, data.into())
    }

    #[test]
    fn whole_events_in_one_chunk() {
        let events = events_of(&[b"event: a\ndata: {\"x\":1}\n\ndata: [DONE]\n\n"]);
        assert_eq!(events, [named("a", "{\"x\":1}"), unnamed("[DONE]")]);
    }

    #[test]
    fn an_event_split_at_every_byte_comes_out_whole() {
        let stream = "event: delta\ndata: {\"text\":\"¡Hola 👋!\"}\n\n".as_bytes();
        let chunks: Vec<&[u8]> = stream.chunks(1).collect();
        assert_eq!(
            events_of(&chunks),
            [named("delta", "{\"text\":\"¡Hola 👋!\"}")]
        );
    }

    #[test]
    fn crlf_and_cr_line_endings_work_even_when_split_between_reads() {
        let events = events_of(&[
            b"data: one\r",
            b"\n\r",
            b"\ndata: two\r\rdata: three\r\n\r\n",
        ]);
        assert_eq!(events, [unnamed("one"), unnamed("two"), unnamed("three")]);
    }

    #[test]
    fn multi_line_data_is_joined_and_comments_are_skipped() {
        let events = events_of(&[b": keep-alive\n\ndata: a\ndata:b\nid: 7\n\n"]);
        assert_eq!(events, [unnamed("a\nb")]);
    }

    #[test]
    fn a_last_event_without_its_blank_line_is_dispatched_at_the_end() {
        assert_eq!(events_of(&[b"data: tail"]), [unnamed("tail")]);
        assert_eq!(events_of(&[b"data: tail\n"]), [unnamed("tail")]);
    }

    #[test]
    fn feeding_stops_at_the_first_error() {
        let mut parser = Parser::default();
        let mut seen = 0;
        let result = parser.feed(b"data: 1\n\ndata: 2\n\n", |_| {
            seen += 1;
            Err("stop")
        });
        assert_eq!(result, Err("stop"));
        assert_eq!(seen, 1);
    }

    type Owned = (Option<String>, String);

    /// Every event of `chunks` fed to `parser` in turn, then whether it overflowed; checks the
    /// bound after each read.
    fn parse_with(mut parser: Parser, chunks: &[&[u8]]) -> (Vec<Owned>, bool) {
        let limit = parser.limit;
        let mut events = Vec::new();
        let mut collect = |event: Event<'_>| -> Result<(), ()> {
            events.push((event.name.map(str::to_owned), event.data.into_owned()));
            Ok(())
        };
        for chunk in chunks {
            parser.feed(chunk, &mut collect).unwrap();
            assert!(
                parser.buffered() <= limit,
                "{} > {limit}",
                parser.buffered()
            );
        }
        parser.finish(&mut collect).unwrap();
        (events, parser.overflowed())
    }

    /// `bytes` cut at each of `cuts` (positions taken modulo its length).
    fn split<'a>(bytes: &'a [u8], cuts: &[prop::sample::Index]) -> Vec<&'a [u8]> {
        let mut at: Vec<usize> = cuts.iter().map(|cut| cut.index(bytes.len() + 1)).collect();
        at.push(0);
        at.push(bytes.len());
        at.sort_unstable();
        at.windows(2).map(|w| &bytes[w[0]..w[1]]).collect()
    }

    /// Streams built from the pieces SSE is made of, and some that break it.
    fn sse_ish() -> impl Strategy<Value = Vec<u8>> {
        let piece = prop_oneof![
            3 => prop_oneof![Just("\n"), Just("\r"), Just("\r\n")].prop_map(|s| s.as_bytes().to_vec()),
            2 => prop_oneof![
                Just("data:"),
                Just("data: "),
                Just("event: x"),
                Just(": comment"),
                Just("id: 1"),
            ]
            .prop_map(|s| s.as_bytes().to_vec()),
            2 => "[a-z :]{0,8}".prop_map(String::into_bytes),
            1 => Just("é👋".as_bytes().to_vec()),
            1 => any::<u8>().prop_map(|b| vec![b]),
        ];
        prop::collection::vec(piece, 0..64).prop_map(|pieces| pieces.concat())
    }

    proptest! {
        #[test]
        fn a_stream_split_anywhere_yields_the_events_of_the_whole(
            stream in sse_ish(),
            cuts in prop::collection::vec(any::<prop::sample::Index>(), 0..16),
        ) {
            let whole = parse_with(Parser::with_limit(stream.len() + 1), &[&stream]);
            let pieces = parse_with(Parser::with_limit(stream.len() + 1), &split(&stream, &cuts));
            prop_assert!(!whole.1);
            prop_assert_eq!(pieces, whole);
        }

        #[test]
        fn any_bytes_in_any_chunks_stay_within_the_limit_and_overflow_alike(
            stream in prop_oneof![prop::collection::vec(any::<u8>(), 0..2048), sse_ish()],
            cuts in prop::collection::vec(any::<prop::sample::Index>(), 0..32),
            limit in 0..128usize,
        ) {
            // `parse_with` asserts the bound after every read.
            let whole = parse_with(Parser::with_limit(limit), &[&stream]);
            let pieces = parse_with(Parser::with_limit(limit), &split(&stream, &cuts));
            prop_assert_eq!(pieces, whole);
        }

        #[test]
        fn serialized_events_parse_back_to_themselves(
            events in prop::collection::vec(
                (
                    prop::option::of("[^\r\n]{0,8}"),
                    prop::collection::vec("[^\r\n]{0,12}", 1..4),
                ),
                0..8,
            ),
            line_ends in prop::collection::vec(prop_oneof![Just("\n"), Just("\r"), Just("\r\n")], 1..8),
            cuts in prop::collection::vec(any::<prop::sample::Index>(), 0..16),
        ) {
            let mut ends = line_ends.iter().cycle();
            let mut stream = String::new();
            let mut end_line = |stream: &mut String| {
                let end = ends.next().copied().unwrap_or("\n");
                // A `\r` then `\n` would read as one `\r\n`, losing a line.
                let end = if stream.ends_with('\r') && end == "\n" { "\r\n" } else { end };
                stream.push_str(end);
            };
            for (name, lines) in &events {
                if let Some(name) = name {
                    stream.push_str("event: ");
                    stream.push_str(name);
                    end_line(&mut stream);
                }
                for line in lines {
                    stream.push_str("data: ");
                    stream.push_str(line);
                    end_line(&mut stream);
                }
                end_line(&mut stream);
            }
            let expected: Vec<Owned> = events
                .iter()
                .map(|(name, lines)| (name.clone(), lines.join("\n")))
                .collect();
            let parsed = parse_with(Parser::default(), &split(stream.as_bytes(), &cuts));
            prop_assert_eq!(parsed, (expected, false));
        }
    }

    #[test]
    fn fifty_megabytes_without_an_event_boundary_overflow_and_are_never_held() {
        // Data lines that never meet a blank line: one event that does not end.
        let line = b"data: 0123456789abcdef0123456789abcdef\n";
        let chunk: Vec<u8> = line.iter().copied().cycle().take(16 * 1024).collect();
        let mut parser = Parser::default();
        let mut dispatched = 0;
        let mut count = |_: Event<'_>| -> Result<(), ()> {
            dispatched += 1;
            Ok(())
        };
        for _ in 0..(50 << 20) / chunk.len() {
            parser.feed(&chunk, &mut count).unwrap();
            assert!(parser.buffered() <= MAX_EVENT_BYTES);
        }
        assert!(parser.overflowed());
        assert_eq!(parser.buffered(), 0);
        // Not even a boundary arriving later revives the stream.
        parser.feed(b"\n\ndata: late\n\n", &mut count).unwrap();
        parser.finish(&mut count).unwrap();
        assert_eq!(dispatched, 0);
        assert!(parser.overflowed());
    }

    #[test]
    fn an_event_just_under_the_limit_comes_out_whole() {
        let data = "x".repeat(MAX_EVENT_BYTES - "data: \n".len());
        let stream = format!("data: {data}\n\n");
        for chunk_size in [16 * 1024, stream.len()] {
            let chunks: Vec<&[u8]> = stream.as_bytes().chunks(chunk_size).collect();
            let (events, overflowed) = parse_with(Parser::default(), &chunks);
            assert!(!overflowed);
            assert_eq!(events, [unnamed(&data)]);
        }
    }

    #[test]
    fn an_event_one_byte_over_the_limit_overflows_however_it_is_split() {
        let stream = b"data: 12345\n\ndata: 123456\n\ndata: after\n\n";
        let limit = "data: 12345\n".len();
        for chunk_size in [1, 7, stream.len()] {
            let chunks: Vec<&[u8]> = stream.chunks(chunk_size).collect();
            let (events, overflowed) = parse_with(Parser::with_limit(limit), &chunks);
            assert!(overflowed, "in chunks of {chunk_size}");
            assert_eq!(events, [unnamed("12345")], "in chunks of {chunk_size}");
        }
    }

    #[test]
    fn an_unended_line_fed_in_small_pieces_is_scanned_in_linear_time() {
        let data = "x".repeat(512 * 1024);
        let stream = format!("data: {data}");
        for chunk_size in [1, 7] {
            let mut parser = Parser::default();
            let mut events = Vec::new();
            for chunk in stream.as_bytes().chunks(chunk_size) {
                parser.feed(chunk, |_| Ok::<_, ()>(())).unwrap();
            }
            parser
                .finish(|event| {
                    events.push(event.data.len());
                    Ok::<_, ()>(())
                })
                .unwrap();
            assert_eq!(events, [data.len()]);
            // Rescanning what is held on every read would be some 2^37 bytes here.
            assert!(
                parser.scanned <= 4 * stream.len(),
                "{} bytes scanned for {} in chunks of {chunk_size}",
                parser.scanned,
                stream.len()
            );
        }
    }

    #[test]
    fn an_event_of_many_data_lines_joins_them_in_order() {
        // Some 50,000 lines, well within the limit.
        let lines: Vec<String> = (0..50_000).map(|i| i.to_string()).collect();
        let mut stream: String = lines.iter().map(|line| format!("data: {line}\n")).collect();
        stream.push('\n');
        let chunks: Vec<&[u8]> = stream.as_bytes().chunks(4096).collect();
        let (events, overflowed) = parse_with(Parser::default(), &chunks);
        assert!(!overflowed);
        assert_eq!(events.len(), 1);
        assert!(events[0] == unnamed(&lines.join("\n")), "the lines differ");
    }

    #[test]
    fn an_event_ended_by_a_carriage_return_is_dispatched_without_waiting_for_more() {
        let mut parser = Parser::default();
        let mut events = Vec::new();
        parser
            .feed(b"data: now\r\r", |event| {
                events.push(event.data.into_owned());
                Ok::<_, ()>(())
            })
            .unwrap();
        assert_eq!(events, ["now"]);
        assert_eq!(parser.buffered(), 0);
    }
}
