//! A turn, from the user's message to the stored reply, split by job:
//!
//! - [`start`]: onChatStart/onTurnStart (`send-message`: a new message, an edit, a
//!   regeneration) and `stop`.
//! - [`session`]: the session's conditional steps (begin, claim, finish, release).
//! - [`chunks`]: a pure builder from model events to UI message stream chunks.
//! - [`sink`]: the frame sink, which persists each frame before posting it.
//! - [`runner`]: the loop that ties them together (onTurnComplete), with error classification.
//!
//! Every write that must happen once is conditional, so a redelivered job never stores a
//! second reply.

pub mod chunks;
pub mod runner;
pub mod session;
pub mod sink;
pub mod start;

pub use runner::{TurnOutcome, end_turn_with_error, fail_turn, run_turn};
pub use start::{send_message, stop, title_from};
