//! `OfflineModel`: a deterministic built-in model, so chatrun runs with no API key and no
//! network. Its replies are plausible multi-sentence markdown that depends on the prompt (and on
//! how far the conversation has gone), streamed word by word at a set speed: enough to exercise
//! everything a real model does to the stream.

use std::time::Duration;

use async_trait::async_trait;
use chatrun_core::chunk::FinishReason;
use chatrun_core::error::ModelError;
use chatrun_core::message::Role;
use chatrun_core::ports::{LanguageModel, ModelEvent, ModelInfo, ModelRequest, ModelStream, Usage};
use futures::StreamExt;

/// The id `/api/models` lists.
pub const OFFLINE_MODEL_ID: &str = "offline";

/// The built-in model.
#[derive(Debug, Clone)]
pub struct OfflineModel {
    tokens_per_sec: f64,
}

impl OfflineModel {
    pub fn new(tokens_per_sec: f64) -> Self {
        OfflineModel {
            tokens_per_sec: tokens_per_sec.max(0.1),
        }
    }

    /// The full reply to a history, as the tokens it streams (each a word with the whitespace
    /// that follows it).
    pub fn reply_tokens(request: &ModelRequest) -> Vec<String> {
        let prompt = request
            .messages
            .iter()
            .rev()
            .find(|m| m.role == Role::User)
            .map(|m| m.text())
            .unwrap_or_default();
        let text = compose(&prompt, request.messages.len());
        text.split_inclusive(char::is_whitespace)
            .map(str::to_owned)
            .collect()
    }
}

/// FNV-1a: a stable hash, so the same prompt gets the same reply on every machine.
fn fnv(text: &str, salt: u64) -> u64 {
    let mut hash = 0xcbf2_9ce4_8422_2325u64 ^ salt;
    for byte in text.bytes() {
        hash ^= u64::from(byte);
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
    hash
}

struct Picker(u64);

impl Picker {
    fn pick<'a>(&mut self, options: &[&'a str]) -> &'a str {
        self.0 = self
            .0
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        options[((self.0 >> 33) % options.len() as u64) as usize]
    }
}

const STOP_WORDS: &[&str] = &[
    "about", "after", "again", "also", "and", "are", "but", "can", "could", "does", "for", "from",
    "have", "how", "into", "just", "like", "me", "more", "now", "please", "should", "tell", "that",
    "the", "their", "then", "there", "these", "this", "what", "when", "where", "which", "who",
    "why", "will", "with", "would", "you", "your",
];

/// The prompt's most telling words: long ones first, no stop words, as they were written.
fn keywords(prompt: &str) -> Vec<String> {
    let mut words: Vec<String> = prompt
        .split(|c: char| !c.is_alphanumeric() && c != '-')
        .filter(|w| w.chars().count() > 2 && !STOP_WORDS.contains(&w.to_lowercase().as_str()))
        .map(str::to_owned)
        .collect();
    words.sort_by_key(|w| std::cmp::Reverse(w.chars().count()));
    let mut seen = Vec::new();
    for w in words {
        if !seen.iter().any(|s: &String| s.eq_ignore_ascii_case(&w)) {
            seen.push(w);
        }
    }
    seen.truncate(4);
    seen
}

fn compose(prompt: &str, history_len: usize) -> String {
    let mut pick = Picker(fnv(prompt, history_len as u64));
    let keys = keywords(prompt);
    let topic = keys.first().cloned().unwrap_or_else(|| "that".into());
    let second = keys.get(1).cloned().unwrap_or_else(|| "the details".into());
    let third = keys
        .get(2)
        .cloned()
        .unwrap_or_else(|| "the bigger picture".into());
    let opener = pick.pick(&[
        "Good question.",
        "Happy to help with that.",
        "Here is how I would think about it.",
        "Let me walk through it.",
        "Short answer first, then the details.",
    ]);
    let framing = pick.pick(&[
        "is easiest to understand by starting from what it is for",
        "comes down to a few ideas that fit together",
        "looks complicated at first, but the core is simple",
        "depends mostly on context, so it helps to be concrete",
    ]);
    let detail = pick.pick(&[
        "The part people usually miss is how {b} shapes the outcome.",
        "In practice, {b} matters more than it first appears.",
        "A useful way in is to ask what changes when {b} changes.",
        "Most of the interesting behaviour comes from the way {b} and {c} interact.",
    ]);
    let mut reply = format!(
        "{opener} **{topic}** {framing}. {}\n\n",
        detail.replace("{b}", &second).replace("{c}", &third)
    );
    if pick.pick(&["list", "prose", "list"]) == "list" {
        reply.push_str(pick.pick(&[
            "A few points to keep in mind:",
            "Three things stand out:",
            "Worth noting:",
        ]));
        reply.push('\n');
        for (i, key) in [&topic, &second, &third].iter().enumerate() {
            let line = pick.pick(&[
                "- **{k}**: start small and check your assumptions.\n",
                "- **{k}**: it is shaped by what surrounds it.\n",
                "- **{k}**: the simplest explanation is usually the right one.\n",
                "- **{k}**: look at a concrete example before generalising.\n",
            ]);
            reply.push_str(&line.replace("{k}", key));
            if i == 2 {
                reply.push('\n');
            }
        }
    } else {
        reply.push_str(pick.pick(&[
            "One way to see it is as a series of small steps, each easy on its own, that add up to something that looks surprising from the outside.",
            "Think of it like a river carving a canyon: nothing dramatic happens on any single day, yet the result is unmistakable over time.",
            "It also helps to separate what is known for sure from what is a reasonable guess, and to be honest about which is which.",
        ]));
        reply.push_str("\n\n");
    }
    reply.push_str(pick.pick(&[
        "If you tell me more about what you are after, I can go deeper on any of these.",
        "Would you like an example, or a more detailed explanation of one part?",
        "I am the built-in offline model, so treat this as a sketch rather than an authority.",
    ]));
    reply
}

#[async_trait]
impl LanguageModel for OfflineModel {
    async fn stream(&self, request: ModelRequest) -> Result<ModelStream, ModelError> {
        let tokens = Self::reply_tokens(&request);
        let input_tokens = request
            .messages
            .iter()
            .map(|m| m.text().split_whitespace().count() as u64)
            .sum::<u64>()
            * 4
            / 3;
        let output_tokens = tokens.len() as u64;
        let delay = Duration::from_secs_f64(1.0 / self.tokens_per_sec);
        let words = futures::stream::iter(tokens.into_iter().enumerate()).then(
            move |(i, token)| async move {
                // The first token comes at once, as a fast model's would.
                if i > 0 {
                    tokio::time::sleep(delay).await;
                }
                Ok(ModelEvent::TextDelta(token))
            },
        );
        let finish = futures::stream::once(async move {
            Ok(ModelEvent::Finish {
                reason: FinishReason::Stop,
                usage: Some(Usage {
                    input_tokens: Some(input_tokens),
                    output_tokens: Some(output_tokens),
                    total_tokens: Some(input_tokens + output_tokens),
                    reasoning_tokens: Some(0),
                    cached_input_tokens: Some(0),
                }),
            })
        });
        Ok(words.chain(finish).boxed())
    }

    fn models(&self) -> Vec<ModelInfo> {
        vec![ModelInfo {
            id: OFFLINE_MODEL_ID.into(),
            label: "Offline (built-in)".into(),
            offline: true,
        }]
    }

    fn default_model(&self) -> String {
        OFFLINE_MODEL_ID.into()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chatrun_core::message::UIMessage;

    fn request(text: &str) -> ModelRequest {
        ModelRequest {
            model: OFFLINE_MODEL_ID.into(),
            messages: vec![UIMessage::user_text("u", text)],
        }
    }

    #[test]
    fn replies_are_deterministic_plausible_and_depend_on_the_prompt() {
        let a = OfflineModel::reply_tokens(&request("How do tide pools form on rocky coasts?"))
            .concat();
        let b = OfflineModel::reply_tokens(&request("How do tide pools form on rocky coasts?"))
            .concat();
        let c =
            OfflineModel::reply_tokens(&request("Explain quantum entanglement simply")).concat();
        assert_eq!(a, b);
        assert_ne!(a, c);
        assert!(
            a.contains("coasts") || a.contains("tide") || a.contains("pools"),
            "{a}"
        );
        assert!(c.contains("entanglement") || c.contains("quantum"), "{c}");
        assert!(
            a.matches(". ").count() + a.matches(".\n").count() >= 2,
            "multi-sentence: {a}"
        );
        assert!(a.split_whitespace().count() > 30);
    }

    #[tokio::test]
    async fn streams_at_the_set_pace_and_finishes_with_usage() {
        let model = OfflineModel::new(400.0);
        let started = std::time::Instant::now();
        let events: Vec<_> = model
            .stream(request("pace test please"))
            .await
            .unwrap()
            .collect()
            .await;
        let deltas = events
            .iter()
            .filter(|e| matches!(e, Ok(ModelEvent::TextDelta(_))))
            .count();
        assert!(deltas > 30);
        let min = Duration::from_secs_f64((deltas - 1) as f64 / 400.0);
        assert!(
            started.elapsed() >= min.mul_f64(0.9),
            "paced: {:?} < {:?}",
            started.elapsed(),
            min
        );
        match events.last() {
            Some(Ok(ModelEvent::Finish {
                reason: FinishReason::Stop,
                usage: Some(u),
            })) => {
                assert_eq!(u.output_tokens, Some(deltas as u64))
            }
            other => panic!("ends with finish: {other:?}"),
        }
    }
}
