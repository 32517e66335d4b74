//! An incremental server-sent events parser: bytes in as they arrive, whole events out.
//!
//! Only streams the proxy translates are parsed; pass-through streams are never looked at.
//! An event split across reads, or a UTF-8 character split across reads, comes out whole,
//! because only complete events are decoded.

use std::borrow::Cow;

/// One event: its `event:` name, if any, and its `data:` lines joined with `\n`.
#[derive(Debug, PartialEq, Eq)]
pub struct Event<'a> {
    pub name: Option<&'a str>,
    pub data: Cow<'a, str>,
}

/// Bytes of an event not yet ended by a blank line.
#[derive(Debug, Default)]
pub struct Parser {
    pending: Vec<u8>,
}

impl Parser {
    /// Feeds one chunk; calls `on_event` for each event it completes, in order. Stops at the
    /// first error `on_event` returns.
    pub fn feed<E>(
        &mut self,
        chunk: &[u8],
        mut on_event: impl FnMut(Event<'_>) -> Result<(), E>,
    ) -> Result<(), E> {
        if self.pending.is_empty() {
            // The common case: the chunk holds whole events; parse it in place.
            let used = parse_events(chunk, false, &mut on_event)?;
            self.pending.extend_from_slice(&chunk[used..]);
            return Ok(());
        }
        self.pending.extend_from_slice(chunk);
        let used = parse_events(&self.pending, false, &mut on_event)?;
        self.pending.drain(..used);
        Ok(())
    }

    /// The stream ended: an event that lacks only its closing blank line is dispatched.
    pub fn finish<E>(&mut self, on_event: impl FnMut(Event<'_>) -> Result<(), E>) -> Result<(), E> {
        let pending = std::mem::take(&mut self.pending);
        parse_events(&pending, true, on_event).map(|_| ())
    }
}

/// Parses the complete events at the start of `bytes` and returns how many bytes they used.
/// With `at_end`, a last event without its blank line counts as complete.
fn parse_events<E>(
    bytes: &[u8],
    at_end: bool,
    mut on_event: impl FnMut(Event<'_>) -> Result<(), E>,
) -> Result<usize, E> {
    let mut used = 0;
    let mut event_start = 0;
    let mut at = 0;
    while let Some((line_end, next)) = next_line(bytes, at, at_end) {
        if line_end == at {
            // A blank line ends the event that began at `event_start`.
            dispatch(&bytes[event_start..at], &mut on_event)?;
            used = next;
            event_start = next;
        }
        at = next;
    }
    if at_end && event_start < bytes.len() {
        dispatch(&bytes[event_start..], &mut on_event)?;
        used = bytes.len();
    }
    Ok(used)
}

/// The line starting at `at`: where it ends, and where the next one starts. A line ends at
/// `\n`, `\r\n` or `\r`; a `\r` that ends the buffer may be half of a `\r\n` still to come.
fn next_line(bytes: &[u8], at: usize, at_end: bool) -> Option<(usize, usize)> {
    let rest = bytes.get(at..)?;
    let end = at + rest.iter().position(|&b| b == b'\n' || b == b'\r')?;
    match (bytes[end], bytes.get(end + 1)) {
        (b'\r', Some(b'\n')) => Some((end, end + 2)),
        (b'\r', None) if !at_end => None,
        _ => Some((end, end + 1)),
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
    for line in block.split(['\n', '\r']).filter(|line| !line.is_empty()) {
        let (field, value) = match line.split_once(':') {
            Some((field, value)) => (field, value.strip_prefix(' ').unwrap_or(value)),
            None => (line, ""),
        };
        match field {
            "event" => name = Some(value),
            "data" => {
                data = Some(match data {
                    None => Cow::Borrowed(value),
                    Some(previous) => Cow::Owned(format!("{previous}\n{value}")),
                })
            }
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

    fn events_of(chunks: &[&[u8]]) -> Vec<(Option<String>, String)> {
        let mut parser = Parser::default();
        let mut events = Vec::new();
        let mut collect = |event: Event<'_>| -> Result<(), ()> {
            events.push((event.name.map(str::to_owned), event.data.into_owned()));
            Ok(())
        };
        for chunk in chunks {
            parser.feed(chunk, &mut collect).unwrap();
        }
        parser.finish(&mut collect).unwrap();
        events
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
}
