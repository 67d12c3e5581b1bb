//! `OfflineModel`: a deterministic built-in model, so chatrun runs with no API key and no
//! network. Its replies are plausible multi-sentence markdown that depends on the prompt (and on
//! how far the conversation has gone), streamed word by word at a set speed: enough to exercise
//! everything a real model does to the stream. A prompt that asks for code gets a fenced code
//! block with a language tag, so the page's highlighting has something to show. With a fixed
//! reply length (`CHAT_OFFLINE_REPLY_TOKENS`) every reply is exactly that many tokens, so a
//! benchmark fixes both the rate and the length of a turn.

use std::time::Duration;

use async_trait::async_trait;
use chatrun_core::chunk::FinishReason;
use chatrun_core::config::ModelCatalog;
use chatrun_core::error::ModelError;
use chatrun_core::message::Role;
use chatrun_core::ports::{LanguageModel, ModelEvent, ModelInfo, ModelRequest, ModelStream, Usage};
use futures::StreamExt;

/// The id `/api/models` lists.
pub use chatrun_core::config::OFFLINE_MODEL_ID;

/// The built-in model.
#[derive(Debug, Clone)]
pub struct OfflineModel {
    tokens_per_sec: f64,
    reply_tokens: Option<usize>,
    /// The models it answers as (`CHAT_MODELS`), when more than [`OFFLINE_MODEL_ID`].
    catalog: Option<ModelCatalog>,
}

impl OfflineModel {
    pub fn new(tokens_per_sec: f64) -> Self {
        OfflineModel {
            tokens_per_sec: tokens_per_sec.max(0.1),
            reply_tokens: None,
            catalog: None,
        }
    }

    /// Answers as each of the catalog's models: a reply for any id but [`OFFLINE_MODEL_ID`]
    /// opens by naming the model it answers as, so a change of model shows in the chat.
    #[must_use]
    pub fn with_models(mut self, catalog: ModelCatalog) -> Self {
        self.catalog = Some(catalog);
        self
    }

    /// Every reply exactly `tokens` tokens long (`None`: as long as the composed reply).
    #[must_use]
    pub fn with_reply_tokens(mut self, tokens: Option<usize>) -> Self {
        self.reply_tokens = tokens.map(|n| n.max(1));
        self
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
        let mut text = compose(&prompt, request.messages.len());
        if !request.model.is_empty() && request.model != OFFLINE_MODEL_ID {
            text = format!("*Answering as {}.* {text}", request.model);
        }
        split_tokens(&text)
    }

    /// The reply this model streams: the composed reply, cut or padded with more prose to the
    /// fixed length when one is set. A cut can end inside a code block; the benchmark's prompts
    /// do not ask for code.
    pub fn reply_for(&self, request: &ModelRequest) -> Vec<String> {
        let mut tokens = Self::reply_tokens(request);
        let Some(wanted) = self.reply_tokens else {
            return tokens;
        };
        let mut pick = Picker(fnv(&tokens.concat(), wanted as u64));
        while tokens.len() < wanted {
            if let Some(last) = tokens.last_mut()
                && !last.ends_with(char::is_whitespace)
            {
                last.push(' ');
            }
            tokens.extend(split_tokens(pick.pick(PADDING)));
        }
        tokens.truncate(wanted);
        tokens
    }
}

fn split_tokens(text: &str) -> Vec<String> {
    text.split_inclusive(char::is_whitespace)
        .map(str::to_owned)
        .collect()
}

/// Prose that lengthens a reply to a fixed token count.
const PADDING: &[&str] = &[
    "It is worth checking each step against a small example before trusting it.",
    "The same idea shows up in many places once you start looking for it.",
    "None of this is final, and a second look often turns up something new.",
    "Details matter here, but the overall shape matters more.",
];

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

/// Words that, with a verb like "write", make a prompt a request for code.
const CODE_NOUNS: &[&str] = &["function", "program", "class", "method", "algorithm"];
/// Words that make a prompt a request for code on their own.
const CODE_WORDS: &[&str] = &["code", "snippet", "snippets", "script"];
const CODE_VERBS: &[&str] = &["write", "implement", "show", "give", "create", "make"];

/// The programming languages a code reply can be in: the words that name each, its fence tag,
/// and the name it is called by in prose.
const LANGUAGES: &[(&[&str], &str, &str)] = &[
    (&["python", "py"], "python", "Python"),
    (&["rust"], "rust", "Rust"),
    (&["javascript", "js", "node"], "javascript", "JavaScript"),
    (&["typescript", "ts"], "typescript", "TypeScript"),
    (&["golang"], "go", "Go"),
    (&["bash", "shell", "sh"], "bash", "shell"),
    (&["sql"], "sql", "SQL"),
];

/// When the prompt asks for code, the language of the fence (tag, name): the one the prompt
/// names, else Python.
fn code_language(prompt: &str) -> Option<(&'static str, &'static str)> {
    let words: Vec<String> = prompt
        .split(|c: char| !c.is_alphanumeric())
        .filter(|w| !w.is_empty())
        .map(str::to_lowercase)
        .collect();
    let has = |set: &[&str]| words.iter().any(|w| set.contains(&w.as_str()));
    let named = LANGUAGES
        .iter()
        .find(|(names, _, _)| has(names))
        .map(|(_, tag, name)| (*tag, *name));
    let asks = has(CODE_WORDS) || (has(CODE_VERBS) && (has(CODE_NOUNS) || named.is_some()));
    asks.then(|| named.unwrap_or(("python", "Python")))
}

/// A short function in `tag`'s language named after the prompt's subject.
fn code_sample(tag: &str, name: &str) -> String {
    match tag {
        "rust" => format!(
            "fn {name}(items: &[&str]) -> Vec<String> {{\n    items\n        .iter()\n        .filter(|item| !item.is_empty())\n        .map(|item| item.to_string())\n        .collect()\n}}\n\nfn main() {{\n    println!(\"{{:?}}\", {name}(&[\"a\", \"\", \"b\"]));\n}}\n"
        ),
        "javascript" | "typescript" => {
            let ty = if tag == "typescript" {
                ": string[]"
            } else {
                ""
            };
            let camel = camel_case(name);
            format!(
                "function {camel}(items{ty}){ty} {{\n  return items.filter((item) => item.length > 0);\n}}\n\nconsole.log({camel}([\"a\", \"\", \"b\"]));\n"
            )
        }
        "go" => format!(
            "func {name}(items []string) []string {{\n\tvar out []string\n\tfor _, item := range items {{\n\t\tif item != \"\" {{\n\t\t\tout = append(out, item)\n\t\t}}\n\t}}\n\treturn out\n}}\n"
        ),
        "bash" => format!(
            "{name}() {{\n  for item in \"$@\"; do\n    [ -n \"$item\" ] && echo \"$item\"\n  done\n}}\n\n{name} a \"\" b\n"
        ),
        "sql" => format!("SELECT id, name\nFROM {name}\nWHERE name <> ''\nORDER BY id;\n"),
        _ => format!(
            "def {name}(items):\n    \"\"\"Keep the items that are not empty.\"\"\"\n    return [item for item in items if item]\n\n\nif __name__ == \"__main__\":\n    print({name}([\"a\", \"\", \"b\"]))\n"
        ),
    }
}

fn camel_case(snake: &str) -> String {
    let mut out = String::new();
    for (i, part) in snake.split('_').enumerate() {
        let mut chars = part.chars();
        match chars.next() {
            Some(first) if i > 0 => {
                out.extend(first.to_uppercase());
                out.push_str(chars.as_str());
            }
            _ => out.push_str(part),
        }
    }
    out
}

/// A code reply: a sentence, the fenced block with its language tag, a sentence on how it works.
fn compose_code(prompt: &str, tag: &str, language: &str, pick: &mut Picker) -> String {
    let subject = code_subject(prompt)
        .map(|w| {
            w.chars()
                .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
                .collect::<String>()
        })
        .filter(|w| w.starts_with(|c: char| c.is_ascii_alphabetic()))
        .unwrap_or_else(|| "keep_items".into());
    let opener = pick.pick(&[
        "Here is a small version you can start from.",
        "Sure. Here is one way to write it.",
        "This is a compact version; adjust the names to fit your code.",
    ]);
    let after = pick.pick(&[
        "It keeps the logic in one small function, so it is easy to test on its own.",
        "Try it on a few inputs, including an empty one, before relying on it.",
        "The example call at the end shows the expected input and output.",
    ]);
    format!(
        "{opener} In {language}:\n\n```{tag}\n{}```\n\n{after} I am the built-in offline model, so check it before you use it.",
        code_sample(tag, &subject)
    )
}

/// The prompt's longest word that is not a stop word, a language or a word asking for code.
fn code_subject(prompt: &str) -> Option<String> {
    let ignored = |lower: &str| {
        STOP_WORDS.contains(&lower)
            || [CODE_NOUNS, CODE_WORDS, CODE_VERBS]
                .iter()
                .any(|set| set.contains(&lower))
            || LANGUAGES.iter().any(|(names, _, _)| names.contains(&lower))
    };
    prompt
        .split(|c: char| !c.is_alphanumeric() && c != '_')
        .map(str::to_lowercase)
        .filter(|w| w.chars().count() > 2 && !ignored(w))
        .rev()
        .max_by_key(|w| w.chars().count())
}

fn compose(prompt: &str, history_len: usize) -> String {
    let mut pick = Picker(fnv(prompt, history_len as u64));
    if let Some((tag, language)) = code_language(prompt) {
        return compose_code(prompt, tag, language, &mut pick);
    }
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
        let tokens = self.reply_for(&request);
        let input_tokens = request
            .messages
            .iter()
            .map(|m| m.text().split_whitespace().count() as u64)
            .sum::<u64>()
            * 4
            / 3;
        let output_tokens = tokens.len() as u64;
        // Held for the whole reply as one string and each token's span, not a `String` per
        // token: about 4 KB less per streaming chat at 85 tokens.
        let mut text = String::with_capacity(tokens.iter().map(String::len).sum());
        let mut spans = Vec::with_capacity(tokens.len());
        for token in tokens {
            let start = text.len();
            text.push_str(&token);
            spans.push((start as u32, text.len() as u32));
        }
        let text: std::sync::Arc<str> = text.into();
        let delay = Duration::from_secs_f64(1.0 / self.tokens_per_sec);
        let words =
            futures::stream::iter(spans.into_iter().enumerate()).then(move |(i, (start, end))| {
                let text = text.clone();
                async move {
                    // The first token comes at once, as a fast model's would.
                    if i > 0 {
                        tokio::time::sleep(delay).await;
                    }
                    Ok(ModelEvent::TextDelta(
                        text[start as usize..end as usize].to_owned(),
                    ))
                }
            });
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
        if let Some(catalog) = &self.catalog {
            return catalog.models().to_vec();
        }
        vec![ModelInfo {
            id: OFFLINE_MODEL_ID.into(),
            label: "Offline (built-in)".into(),
            offline: true,
        }]
    }

    fn default_model(&self) -> String {
        self.catalog
            .as_ref()
            .map_or(OFFLINE_MODEL_ID, ModelCatalog::default_model)
            .into()
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

    fn stream_text(events: &[Result<ModelEvent, ModelError>]) -> (usize, String) {
        let mut text = String::new();
        let mut deltas = 0;
        for event in events {
            if let Ok(ModelEvent::TextDelta(t)) = event {
                deltas += 1;
                text.push_str(t);
            }
        }
        (deltas, text)
    }

    #[tokio::test]
    async fn a_fixed_reply_length_streams_exactly_that_many_tokens() {
        for (prompt, wanted) in [
            ("pace test please", 85),
            ("How do tide pools form on rocky coasts?", 5),
            ("hi", 500),
            ("write a python function that reverses a string", 300),
        ] {
            let model = OfflineModel::new(100_000.0).with_reply_tokens(Some(wanted));
            let events: Vec<_> = model.stream(request(prompt)).await.unwrap().collect().await;
            let (deltas, text) = stream_text(&events);
            assert_eq!(deltas, wanted, "{prompt}");
            match events.last() {
                Some(Ok(ModelEvent::Finish { usage: Some(u), .. })) => {
                    assert_eq!(u.output_tokens, Some(wanted as u64))
                }
                other => panic!("ends with finish: {other:?}"),
            }
            // Padded replies stay prose: words separated by whitespace, never glued together.
            assert!(!text.contains(".It"), "{text}");
            let again: Vec<_> = model.stream(request(prompt)).await.unwrap().collect().await;
            assert_eq!(stream_text(&again).1, text, "deterministic");
        }
        let free = OfflineModel::new(1.0).with_reply_tokens(None);
        assert_eq!(
            free.reply_for(&request("pace test please")),
            OfflineModel::reply_tokens(&request("pace test please"))
        );
    }

    #[tokio::test]
    async fn it_answers_as_any_listed_model_and_says_which() {
        let settings = chatrun_core::config::ModelSettings::Offline {
            tokens_per_sec: 100_000.0,
        };
        let catalog = ModelCatalog::new(&settings, &["offline-large".to_owned()]).unwrap();
        let model = OfflineModel::new(100_000.0).with_models(catalog);
        let ids: Vec<String> = model.models().into_iter().map(|m| m.id).collect();
        assert_eq!(ids, ["offline", "offline-large"]);
        assert_eq!(model.default_model(), "offline");
        let mut as_large = request("How do tide pools form?");
        as_large.model = "offline-large".into();
        let events: Vec<_> = model.stream(as_large).await.unwrap().collect().await;
        let (_, text) = stream_text(&events);
        assert!(text.starts_with("*Answering as offline-large.* "), "{text}");
        let plain = OfflineModel::reply_tokens(&request("How do tide pools form?")).concat();
        assert!(!plain.contains("Answering as"), "{plain}");
    }

    #[test]
    fn a_request_for_code_gets_a_fenced_block_with_its_language() {
        for (prompt, tag) in [
            ("write a python function that reverses a string", "python"),
            ("Show me code for binary search", "python"),
            ("code for a retry loop in Rust", "rust"),
            ("Can you implement debounce in TypeScript?", "typescript"),
            ("write a javascript function to sum an array", "javascript"),
            ("give me a bash script that backs up a folder", "bash"),
        ] {
            let reply = OfflineModel::reply_tokens(&request(prompt)).concat();
            let open = format!("```{tag}\n");
            let start = reply
                .find(&open)
                .unwrap_or_else(|| panic!("{prompt}: {reply}"));
            let body = &reply[start + open.len()..];
            let end = body
                .find("\n```")
                .unwrap_or_else(|| panic!("closed: {reply}"));
            assert!(body[..end].lines().count() >= 2, "{reply}");
            assert_eq!(reply.matches("```").count(), 2, "{reply}");
        }
        for prompt in [
            "How does the liver function?",
            "Explain quantum entanglement simply",
            "How do tide pools form on rocky coasts?",
        ] {
            let reply = OfflineModel::reply_tokens(&request(prompt)).concat();
            assert!(!reply.contains("```"), "{prompt}: {reply}");
        }
    }
}
