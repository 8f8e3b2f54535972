//! The builtin guide plugin: constrains generation to a JSON Schema, to any
//! JSON object, to a regular expression or to a Lark grammar, with
//! `llguidance` compiled into the component.
//!
//! `init` builds the token trie once per instance and model; each
//! `sequence` compiles its constraint (bounded by llguidance's parser
//! limits, so a hostile schema, regex or grammar is refused rather than
//! left to run) and then answers one step at a time: the run of tokens the
//! constraint determines (llguidance's fast-forward, tokenized by the
//! model's own tokenizer through the host's `tokenize`), else a mask, and
//! the end once the constraint is finished. Where the host has no
//! tokenizer, only a mask allowing exactly one token forces it.

wit_bindgen::generate!({
    path: "../../wit",
    world: "guide-plugin",
});

use std::cell::RefCell;
use std::sync::Arc;

use exports::weft::plugin::guide::{Constraint, Guest, GuestSequence, Step};
use llguidance::api::{ParserLimits, TopLevelGrammar};
use llguidance::toktrie::{TokEnv, TokRxInfo, TokTrie, TokenId as TrieToken, TokenizerEnv};
use llguidance::{Matcher, ParserFactory};
use weft::plugin::types::{ConfigEntry, PluginError, TokenId};

/// The per-instance, per-model parser factory (token trie and lexer setup).
struct Setup {
    factory: ParserFactory,
    vocab_size: usize,
    eos: Vec<TokenId>,
}

thread_local! {
    static SETUP: RefCell<Option<Arc<Setup>>> = const { RefCell::new(None) };
}

fn error(code: &str, message: impl Into<String>) -> PluginError {
    PluginError { code: code.into(), message: message.into() }
}

struct Guide;

impl Guest for Guide {
    type Sequence = Sequence;

    fn init(_config: Vec<ConfigEntry>, vocab: Vec<Vec<u8>>, eos: Vec<TokenId>) -> Result<(), PluginError> {
        let first_eos = *eos.first().ok_or_else(|| error("invalid-vocabulary", "no end-of-generation token"))?;
        let info = TokRxInfo::new(vocab.len() as u32, first_eos);
        let trie = TokTrie::from(&info, &vocab);
        // The host answers `none` to everything when it has no tokenizer.
        let canonical = weft::plugin::tokenizing::tokenize(b"").is_some();
        let env: TokEnv = Arc::new(HostTokenizer { trie, canonical });
        let mut factory = ParserFactory::new_simple(&env).map_err(|e| error("invalid-vocabulary", e.to_string()))?;
        factory.quiet();
        *factory.limits_mut() = limits();
        let setup = Setup { factory, vocab_size: vocab.len(), eos };
        SETUP.with(|s| *s.borrow_mut() = Some(Arc::new(setup)));
        Ok(())
    }
}

/// The model's tokenizer, through the host: canonical tokenizations, so
/// llguidance may force the bytes a constraint determines. Text the host
/// cannot tokenize (not UTF-8) falls back to the longest-match pieces of
/// the trie; a host without a tokenizer gets no forced runs at all.
struct HostTokenizer {
    trie: TokTrie,
    canonical: bool,
}

impl TokenizerEnv for HostTokenizer {
    fn tok_trie(&self) -> &TokTrie {
        &self.trie
    }

    fn tokenize_bytes(&self, s: &[u8]) -> Vec<TrieToken> {
        weft::plugin::tokenizing::tokenize(s).unwrap_or_else(|| self.trie.greedy_tokenize(s))
    }

    fn tokenize_is_canonical(&self) -> bool {
        self.canonical
    }
}

/// llguidance's limits, kept at their defaults except for the grammar size:
/// a request body is at most a few megabytes, and a grammar that large is
/// refused at compile time instead of costing every mask.
fn limits() -> ParserLimits {
    ParserLimits { max_grammar_size: 200_000, ..ParserLimits::default() }
}

/// One sequence's compiled constraint and parser state.
pub struct Sequence {
    state: RefCell<Result<Compiled, PluginError>>,
}

struct Compiled {
    matcher: Matcher,
    setup: Arc<Setup>,
    /// The first step, computed while compiling so that a constraint that
    /// cannot start (a `$ref` cycle, an empty language) is refused there.
    first: Option<Step>,
}

impl GuestSequence for Sequence {
    fn new(constraint: Constraint) -> Self {
        let compiled = compile(&constraint).and_then(|(mut matcher, setup)| {
            let first = step(&mut matcher, &setup).map_err(|e| error("invalid-constraint", e.message))?;
            Ok(Compiled { matcher, setup, first: Some(first) })
        });
        Sequence { state: RefCell::new(compiled) }
    }

    fn error(&self) -> Option<PluginError> {
        self.state.borrow().as_ref().err().cloned()
    }

    fn next(&self) -> Result<Step, PluginError> {
        let mut state = self.state.borrow_mut();
        let compiled = state.as_mut().map_err(|e| e.clone())?;
        match compiled.first.take() {
            Some(first) => Ok(first),
            None => step(&mut compiled.matcher, &compiled.setup),
        }
    }

    fn commit(&self, token: TokenId) -> Result<(), PluginError> {
        let mut state = self.state.borrow_mut();
        let compiled = state.as_mut().map_err(|e| e.clone())?;
        compiled.first = None;
        compiled.matcher.consume_token(token).map_err(|e| error("token-rejected", first_line(&e.to_string())))
    }
}

/// The next step of a matcher: the tokens it forces, its mask, or the end.
fn step(matcher: &mut Matcher, setup: &Setup) -> Result<Step, PluginError> {
    if matcher.is_stopped() {
        return stopped(matcher);
    }
    let forced = matcher.compute_ff_tokens();
    if !forced.is_empty() {
        return Ok(Step::Force(forced));
    }
    let mask = matcher.compute_mask().map_err(|e| error("guide-failed", first_line(&e.to_string())))?;
    let allowed: Vec<TokenId> = mask.iter().collect();
    match allowed.as_slice() {
        [] => Err(error("guide-failed", "the constraint allows no token")),
        // Only end-of-generation is left: the constraint is satisfied.
        [only] if setup.eos.contains(only) => Ok(Step::Stop),
        [only] => Ok(Step::Force(vec![*only])),
        _ => {
            let mut words = vec![0u32; setup.vocab_size.div_ceil(32)];
            for t in allowed {
                words[t as usize / 32] |= 1 << (t % 32);
            }
            Ok(Step::Mask(words))
        }
    }
}

/// Refuses a repetition applied directly to a repetition (`a**`, `a+*`):
/// most engines reject it, and it never means what its author wanted.
fn check_regex(pattern: &str) -> Result<(), PluginError> {
    use regex_syntax::ast::Ast;
    fn walk(ast: &Ast) -> Result<(), PluginError> {
        match ast {
            Ast::Repetition(rep) => {
                if let Ast::Repetition(inner) = &*rep.ast {
                    return Err(error(
                        "invalid-constraint",
                        format!("invalid regular expression: a repetition of a repetition at byte {}", inner.span.end.offset),
                    ));
                }
                walk(&rep.ast)
            }
            Ast::Group(group) => walk(&group.ast),
            Ast::Concat(concat) => concat.asts.iter().try_for_each(walk),
            Ast::Alternation(alt) => alt.asts.iter().try_for_each(walk),
            _ => Ok(()),
        }
    }
    match regex_syntax::ast::parse::Parser::new().parse(pattern) {
        Ok(ast) => walk(&ast),
        // The full parse below reports it.
        Err(_) => Ok(()),
    }
}

/// llguidance's messages end with a dump of the parser state: people need
/// the first line.
fn first_line(message: &str) -> String {
    message.lines().next().unwrap_or_default().to_string()
}

fn stopped(matcher: &Matcher) -> Result<Step, PluginError> {
    match matcher.get_error() {
        Some(e) => Err(error("guide-failed", first_line(&e))),
        None => Ok(Step::Stop),
    }
}

/// Compiles a constraint against the instance's vocabulary.
fn compile(constraint: &Constraint) -> Result<(Matcher, Arc<Setup>), PluginError> {
    let setup = SETUP
        .with(|s| s.borrow().clone())
        .ok_or_else(|| error("not-initialised", "init was not called"))?;
    let grammar = match constraint.kind.as_str() {
        "json-schema" => {
            let mut schema: serde_json::Value = serde_json::from_str(&constraint.source)
                .map_err(|e| error("invalid-constraint", format!("the schema is not JSON: {e}")))?;
            compact_json(&mut schema);
            TopLevelGrammar::from_json_schema(schema)
        }
        "json-object" => {
            let mut schema = serde_json::json!({ "type": "object" });
            compact_json(&mut schema);
            TopLevelGrammar::from_json_schema(schema)
        }
        "regex" => {
            // llguidance reads some malformed patterns (`foo**`) leniently;
            // refuse anything a standard parser refuses.
            check_regex(&constraint.source)?;
            regex_syntax::Parser::new().parse(&constraint.source).map_err(|e| {
                let why = match &e {
                    regex_syntax::Error::Parse(e) => format!("{} at byte {}", e.kind(), e.span().start.offset),
                    regex_syntax::Error::Translate(e) => format!("{} at byte {}", e.kind(), e.span().start.offset),
                    other => first_line(&other.to_string()),
                };
                error("invalid-constraint", format!("invalid regular expression: {why}"))
            })?;
            TopLevelGrammar::from_regex(&constraint.source)
        }
        "lark" => TopLevelGrammar::from_lark(constraint.source.clone()),
        other => {
            return Err(error(
                "unsupported-constraint",
                format!("unknown constraint kind {other:?} (json-schema, json-object, regex, lark)"),
            ));
        }
    };
    let parser = setup.factory.create_parser(grammar).map_err(|e| error("invalid-constraint", first_line(&e.to_string())))?;
    let matcher = Matcher::new(Ok(parser));
    if let Some(e) = matcher.get_error() {
        return Err(error("invalid-constraint", first_line(&e)));
    }
    Ok((matcher, setup))
}

/// JSON is generated compactly (`{"a": 1, "b": 2}` spacing, no free
/// whitespace): a small model given the freedom loops on newlines.
fn compact_json(schema: &mut serde_json::Value) {
    if let Some(object) = schema.as_object_mut() {
        object.entry("x-guidance").or_insert_with(|| {
            serde_json::json!({ "whitespace_flexible": false, "item_separator": ", ", "key_separator": ": " })
        });
    }
}

export!(Guide);
