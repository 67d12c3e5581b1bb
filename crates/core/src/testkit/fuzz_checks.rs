//! The properties the fuzz targets in `fuzz/` check, kept here so that the committed corpus and
//! every input a fuzzer ever crashed on run again as ordinary tests
//! (`crates/core/tests/fuzz_corpus.rs`) on a stable toolchain, in CI.
//!
//! Each check takes raw bytes, as the fuzzer hands them over, and panics when a property fails.

use serde_json::Value;

use crate::chunk::{MessageAccumulator, UIMessageChunk};
use crate::config::MAX_CLIENT_FRAME_BYTES;
use crate::engine::turn::chunks::ChunkBuilder;
use crate::message::UIMessage;
use crate::protocol::{ClientFrame, validate_user_message};

/// The error codes DESIGN §5 names: an error frame never carries another.
const ERROR_CODES: [&str; 8] = [
    "bad_request",
    "unauthorized",
    "forbidden",
    "not_found",
    "too_large",
    "conflict",
    "rate_limited",
    "internal",
];

/// A WebSocket text frame from a client. Parsing never panics; a refused frame becomes one
/// `error` frame with a documented code, no bigger than what came in plus a bounded message;
/// an accepted frame is within the size limit and, written back out as JSON, is accepted again
/// as the same frame.
pub fn client_frame(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    match ClientFrame::parse(text) {
        Ok(frame) => {
            assert!(
                text.len() <= MAX_CLIENT_FRAME_BYTES,
                "accepted an oversized frame"
            );
            let written = serde_json::to_string(&frame).expect("an accepted frame serializes");
            if written.len() <= MAX_CLIENT_FRAME_BYTES {
                let again = ClientFrame::parse(&written)
                    .unwrap_or_else(|e| panic!("rewritten frame refused: {:?}", e.error));
                assert_eq!(
                    serde_json::to_value(&again).expect("serializes"),
                    serde_json::to_value(&frame).expect("serializes"),
                    "a frame changed on its way through JSON"
                );
            }
        }
        Err(rejected) => {
            let reply = rejected.to_frame().to_json();
            let reply: Value = serde_json::from_str(&reply).expect("an error frame is JSON");
            assert_eq!(reply["type"], "error");
            let code = reply["code"].as_str().expect("an error frame has a code");
            assert!(ERROR_CODES.contains(&code), "undocumented code {code}");
            let message = reply["message"]
                .as_str()
                .expect("an error frame has a message");
            assert!(
                message.len() <= 1024,
                "error message of {} bytes",
                message.len()
            );
        }
    }
}

/// A `UIMessage` as a client or the store hands it over. Decoding never panics, and a message
/// that decodes (and a user message that validates) comes back from JSON unchanged: parts the
/// engine does not know are kept as they came, not rewritten.
pub fn ui_message(data: &[u8]) {
    let Ok(message) = serde_json::from_slice::<UIMessage>(data) else {
        return;
    };
    let written = serde_json::to_string(&message).expect("a decoded message serializes");
    let again: UIMessage = serde_json::from_str(&written)
        .unwrap_or_else(|e| panic!("a written message does not decode: {e}: {written}"));
    assert_eq!(
        serde_json::to_value(&again).expect("serializes"),
        serde_json::to_value(&message).expect("serializes"),
        "a message changed on its way through JSON"
    );
    if validate_user_message(&message).is_ok() {
        validate_user_message(&again).expect("a valid message stays valid through JSON");
    }
}

/// A UI message stream as a client receives it: one chunk per line, any order, any ids.
/// Accumulating never panics, a chunk once written reads back the same every time, the
/// message it builds serializes and decodes back unchanged,
/// and feeding the same chunks to a copy made half-way gives the same message.
pub fn chunk_stream(data: &[u8]) {
    let chunks: Vec<UIMessageChunk> = data
        .split(|b| *b == b'\n')
        .filter_map(|line| serde_json::from_slice(line).ok())
        .collect();
    for chunk in &chunks {
        // A chunk as stored and replayed: once written, it reads back the same every time.
        // (Not necessarily the same as it first came: a malformed `text-delta`, with a
        // duplicate key say, is kept whole as an unknown chunk and reads back typed, without
        // its unknown fields. Only the engine's own builder writes chunks, never such input.)
        let written = serde_json::to_string(chunk).expect("a chunk serializes");
        let again: UIMessageChunk = serde_json::from_str(&written)
            .unwrap_or_else(|e| panic!("a written chunk does not decode: {e}: {written}"));
        let rewritten = serde_json::to_string(&again).expect("a chunk serializes");
        let third: UIMessageChunk = serde_json::from_str(&rewritten)
            .unwrap_or_else(|e| panic!("a rewritten chunk does not decode: {e}: {rewritten}"));
        assert_eq!(third, again, "a stored chunk changes on every read");
    }
    let mut whole = MessageAccumulator::new("m");
    let half = chunks.len() / 2;
    whole.apply_all(&chunks[..half]);
    let mut resumed = whole.clone();
    whole.apply_all(&chunks[half..]);
    resumed.apply_all(&chunks[half..]);
    assert_eq!(whole.message(), resumed.message());
    let message = whole.into_message();
    let written = serde_json::to_string(&message).expect("the built message serializes");
    let again: UIMessage = serde_json::from_str(&written)
        .unwrap_or_else(|e| panic!("the built message does not decode: {e}: {written}"));
    assert_eq!(
        serde_json::to_value(&again).expect("serializes"),
        serde_json::to_value(&message).expect("serializes"),
    );
}

/// A model's reply as the turn runner sees it, read from bytes as a little program: text and
/// reasoning deltas, frame boundaries (`take`), and an ending (finish, error or stop). The
/// chunks the builder emits, applied in frame order by the client's accumulator, give exactly
/// the text the model wrote (on a stop: the text of the frames taken before it), and every
/// stream ends with one `finish`.
pub fn turn_chunks(data: &[u8]) {
    let mut builder = ChunkBuilder::new("reply", "offline");
    let mut frames: Vec<Vec<UIMessageChunk>> = Vec::new();
    let mut written_text = String::new();
    let mut taken_text = String::new();
    let mut pending_text = String::new();
    let mut rest = data;
    let mut ending = 0u8;
    while let Some((&op, tail)) = rest.split_first() {
        let len = usize::from(tail.first().copied().unwrap_or(0) % 16);
        let body = tail.get(1..).unwrap_or_default();
        let piece = &body[..len.min(body.len())];
        rest = &body[piece.len()..];
        let delta = String::from_utf8_lossy(piece).into_owned();
        match op % 4 {
            0 => {
                pending_text.push_str(&delta);
                written_text.push_str(&delta);
                builder.text(delta);
            }
            1 => builder.reasoning(delta),
            2 => {
                frames.push(builder.take());
                taken_text.push_str(&std::mem::take(&mut pending_text));
            }
            _ => ending = piece.first().copied().unwrap_or(op),
        }
    }
    let expected = match ending % 3 {
        0 => {
            builder.finish(None, None);
            written_text
        }
        1 => {
            builder.error("the model failed");
            written_text
        }
        _ => {
            builder.abort();
            taken_text
        }
    };
    frames.push(builder.take());
    let chunks: Vec<&UIMessageChunk> = frames.iter().flatten().collect();
    let finishes = chunks.iter().filter(|c| c.is_finish()).count();
    assert_eq!(finishes, 1, "a stream ends with exactly one finish");
    assert!(
        chunks.last().is_some_and(|c| c.is_finish()),
        "finish comes last"
    );
    let mut client = MessageAccumulator::new("reply");
    client.apply_all(chunks.iter().copied());
    assert!(client.is_finished());
    assert_eq!(client.message().text(), expected);
}
