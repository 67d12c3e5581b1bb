//! Paging a chat's history, newest page first (DESIGN §8): the cursor codec and the page
//! assembly every store shares, so that memory, SQLite and DynamoDB page alike.
//!
//! Every store numbers a chat's messages with a sequence number (`seq`) in append order and
//! reads rows newest first from a starting `seq`; [`PageReader`] takes those rows one at a
//! time, says when it has enough, and builds the [`MessagePage`]. A page ends at `limit`
//! messages or at `max_bytes` of stored JSON, whichever comes first, so a page of large
//! messages still fits in one Lambda response (6 MB).
//!
//! A cursor names the oldest message of the page it came with: its `seq` and its id, inside the
//! chat it belongs to. Reading older messages starts at that row, which must still hold that
//! message: a cursor whose message was deleted (an edit of an earlier message) is stale, and
//! the caller reloads instead of receiving messages it may already show.

use base64::Engine;
use serde::{Deserialize, Serialize};

use crate::domain::ChatId;
use crate::error::StoreError;
use crate::message::UIMessage;

/// One page of a chat's history.
#[derive(Debug, Clone, PartialEq)]
pub struct MessagePage {
    /// Oldest first.
    pub messages: Vec<UIMessage>,
    /// Opaque; pass it back as `before` for the next older page. `None` when this page starts
    /// at the chat's first message.
    pub older_cursor: Option<String>,
}

/// How much one page may hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PageLimits {
    /// At most this many messages (at least one is always returned when any is left).
    pub messages: usize,
    /// At most this many bytes of stored message JSON, unless a single message is larger.
    pub bytes: usize,
}

/// The position a cursor names: the oldest message of the page it came with.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct HistoryCursor {
    #[serde(rename = "c")]
    chat_id: String,
    #[serde(rename = "s")]
    seq: u64,
    #[serde(rename = "m")]
    message_id: String,
}

impl HistoryCursor {
    fn encode(&self) -> String {
        let json = serde_json::to_vec(self).expect("a cursor always serializes");
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(json)
    }

    /// # Errors
    /// `BadCursor` when the text is not a cursor this codec made for `chat_id`.
    fn decode(chat_id: &ChatId, text: &str) -> Result<Self, StoreError> {
        let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(text)
            .map_err(|_| StoreError::BadCursor)?;
        let cursor: HistoryCursor =
            serde_json::from_slice(&bytes).map_err(|_| StoreError::BadCursor)?;
        if cursor.chat_id != chat_id.as_str() {
            return Err(StoreError::BadCursor);
        }
        Ok(cursor)
    }
}

/// Builds one page from rows a store reads newest first, starting at [`Self::start_seq`].
#[derive(Debug)]
pub struct PageReader {
    chat_id: ChatId,
    cursor: Option<HistoryCursor>,
    limits: PageLimits,
    /// Rows taken into the page, newest first: (seq, id, JSON).
    taken: Vec<(u64, String, String)>,
    bytes: usize,
    /// Whether the cursor's own row has been seen (always true without a cursor).
    anchored: bool,
    /// Whether a row older than the page exists.
    more: bool,
}

impl PageReader {
    /// # Errors
    /// `BadCursor` when `before` was not made for this chat by [`PageReader::finish`].
    pub fn new(
        chat_id: &ChatId,
        before: Option<&str>,
        limits: PageLimits,
    ) -> Result<Self, StoreError> {
        let cursor = before
            .map(|text| HistoryCursor::decode(chat_id, text))
            .transpose()?;
        Ok(PageReader {
            chat_id: chat_id.clone(),
            anchored: cursor.is_none(),
            cursor,
            limits: PageLimits {
                messages: limits.messages.max(1),
                bytes: limits.bytes,
            },
            taken: Vec::new(),
            bytes: 0,
            more: false,
        })
    }

    /// The newest `seq` to read (inclusive), or `None` for the chat's newest message. With a
    /// cursor, the first row read must be the cursor's own message.
    pub fn start_seq(&self) -> Option<u64> {
        self.cursor.as_ref().map(|c| c.seq)
    }

    /// How many rows are still worth reading at most (a store's query limit): the rest of the
    /// page, one more to learn whether an older page exists, and the cursor's row.
    pub fn rows_wanted(&self) -> usize {
        let anchor = usize::from(!self.anchored);
        (self.limits.messages - self.taken.len()) + 1 + anchor
    }

    /// Takes the next older row.
    /// # Returns
    /// Whether to go on reading.
    /// # Errors
    /// `Conflict` when the first row is not the cursor's message (the history changed since
    /// the cursor was made).
    pub fn push(&mut self, seq: u64, message_id: &str, json: String) -> Result<bool, StoreError> {
        if !self.anchored {
            let cursor = self.cursor.as_ref().expect("unanchored only with a cursor");
            if seq != cursor.seq || message_id != cursor.message_id {
                return Err(stale());
            }
            self.anchored = true;
            return Ok(true);
        }
        let full = self.taken.len() >= self.limits.messages
            || (!self.taken.is_empty() && self.bytes + json.len() > self.limits.bytes);
        if full {
            self.more = true;
            return Ok(false);
        }
        self.bytes += json.len();
        self.taken.push((seq, message_id.to_owned(), json));
        Ok(true)
    }

    /// The page, oldest first, with the cursor of the next older page.
    /// # Errors
    /// `Conflict` when a cursor's message no longer exists; `Backend` for a row that is not a
    /// message.
    pub fn finish(self) -> Result<MessagePage, StoreError> {
        if !self.anchored {
            return Err(stale());
        }
        let older_cursor = if self.more {
            self.taken.last().map(|(seq, id, _)| {
                HistoryCursor {
                    chat_id: self.chat_id.to_string(),
                    seq: *seq,
                    message_id: id.clone(),
                }
                .encode()
            })
        } else {
            None
        };
        let messages = self
            .taken
            .iter()
            .rev()
            .map(|(_, _, json)| {
                serde_json::from_str(json).map_err(|e| {
                    StoreError::Backend(format!("a stored message does not parse: {e}"))
                })
            })
            .collect::<Result<_, _>>()?;
        Ok(MessagePage {
            messages,
            older_cursor,
        })
    }
}

fn stale() -> StoreError {
    StoreError::Conflict(
        "the history changed since this cursor was made: load the chat again".into(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chat() -> ChatId {
        ChatId::parse("c1").unwrap()
    }

    fn row(i: u64) -> String {
        format!(r#"{{"id":"m{i}","role":"user","parts":[{{"type":"text","text":"{i}"}}]}}"#)
    }

    fn read(
        before: Option<&str>,
        limits: PageLimits,
        newest: u64,
    ) -> Result<MessagePage, StoreError> {
        let mut reader = PageReader::new(&chat(), before, limits)?;
        let start = reader.start_seq().unwrap_or(newest);
        for seq in (0..=start.min(newest)).rev() {
            if !reader.push(seq, &format!("m{seq}"), row(seq))? {
                break;
            }
        }
        reader.finish()
    }

    fn ids(page: &MessagePage) -> Vec<String> {
        page.messages.iter().map(|m| m.id.clone()).collect()
    }

    #[test]
    fn pages_walk_back_to_the_first_message() {
        let limits = PageLimits {
            messages: 2,
            bytes: 1 << 20,
        };
        let first = read(None, limits, 4).unwrap();
        assert_eq!(ids(&first), ["m3", "m4"]);
        let second = read(first.older_cursor.as_deref(), limits, 4).unwrap();
        assert_eq!(ids(&second), ["m1", "m2"]);
        let last = read(second.older_cursor.as_deref(), limits, 4).unwrap();
        assert_eq!(ids(&last), ["m0"]);
        assert_eq!(last.older_cursor, None);
    }

    #[test]
    fn a_page_stops_at_its_byte_budget_but_holds_at_least_one_message() {
        let one = row(9).len();
        let page = read(
            None,
            PageLimits {
                messages: 10,
                bytes: one * 2 + 1,
            },
            9,
        )
        .unwrap();
        assert_eq!(ids(&page), ["m8", "m9"]);
        assert!(page.older_cursor.is_some());
        let tiny = PageLimits {
            messages: 10,
            bytes: 1,
        };
        let single = read(page.older_cursor.as_deref(), tiny, 9).unwrap();
        assert_eq!(ids(&single), ["m7"]);
    }

    #[test]
    fn cursors_are_checked() {
        let limits = PageLimits {
            messages: 2,
            bytes: 1 << 20,
        };
        for bad in ["", "abc", "%%%", "eyJ4IjoxfQ"] {
            assert!(
                matches!(read(Some(bad), limits, 4), Err(StoreError::BadCursor)),
                "{bad}"
            );
        }
        let other = HistoryCursor {
            chat_id: "c2".into(),
            seq: 2,
            message_id: "m2".into(),
        }
        .encode();
        assert!(matches!(
            read(Some(&other), limits, 4),
            Err(StoreError::BadCursor)
        ));
        // A cursor whose message is gone, or replaced by another at its place, is stale.
        let moved = HistoryCursor {
            chat_id: "c1".into(),
            seq: 2,
            message_id: "m-edited-away".into(),
        }
        .encode();
        assert!(matches!(
            read(Some(&moved), limits, 4),
            Err(StoreError::Conflict(_))
        ));
        let past_the_end = HistoryCursor {
            chat_id: "c1".into(),
            seq: 9,
            message_id: "m9".into(),
        }
        .encode();
        assert!(matches!(
            read(Some(&past_the_end), limits, 4),
            Err(StoreError::Conflict(_))
        ));
    }
}
