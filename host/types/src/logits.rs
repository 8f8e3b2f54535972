//! One step's logits rows, wherever the backend keeps them, and the choice
//! of a token from a row without bringing the row to the caller.
//!
//! The CPU backend's rows are host memory; the CUDA backend's stay on the
//! GPU. Samplers (native or plugin) see a row through [`LogitsRows`]: they
//! describe a choice as a [`Pick`] (a guide's mask, sparse [`LogitEdit`]s,
//! the [`Cuts`] and the draw's uniform) and the rows' owner carries it out
//! where the rows are. A full row comes to the host only when someone asks
//! for it ([`LogitsRows::row`]): prompt scores, log-probabilities, or a
//! plugin that reads it.

use std::borrow::Cow;

use thiserror::Error;

use crate::{SamplingParams, TokenId, is_greedy_choice};

/// The device holding the rows failed to answer.
#[derive(Clone, Debug, Error, PartialEq)]
#[error("reading logits: {0}")]
pub struct LogitsError(pub String);

/// One change to one logit. A row's edits are applied in order; each
/// touches only its own token, so edits of different tokens commute.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum LogitEdit {
    /// `logit += delta` (a bias, or a presence / frequency penalty).
    Add(f32),
    /// CTRL's repetition penalty: a positive logit divided by it, a
    /// negative one multiplied.
    Penalize(f32),
    /// The token cannot be chosen (`logit = -inf`).
    Ban,
}

impl LogitEdit {
    /// This edit applied to `logit`.
    pub fn apply(self, logit: f32) -> f32 {
        match self {
            Self::Add(delta) => logit + delta,
            Self::Penalize(p) => {
                if logit > 0.0 {
                    logit / p
                } else {
                    logit * p
                }
            }
            Self::Ban => f32::NEG_INFINITY,
        }
    }
}

/// Apply `edits` to `logits` in order (ids outside the row are skipped).
pub fn apply_edits(logits: &mut [f32], edits: &[(TokenId, LogitEdit)]) {
    for &(t, edit) in edits {
        if let Some(l) = logits.get_mut(t as usize) {
            *l = edit.apply(*l);
        }
    }
}

/// Rule out the tokens a guide's mask does not allow: bit `t % 32` of word
/// `t / 32` allows token `t`.
pub fn apply_mask(logits: &mut [f32], mask: &[u32]) {
    for (t, logit) in logits.iter_mut().enumerate() {
        if mask.get(t / 32).is_none_or(|w| w >> (t % 32) & 1 == 0) {
            *logit = f32::NEG_INFINITY;
        }
    }
}

/// `into` = `raw` with `mask` and then `edits` applied: the row a pick
/// chooses from, built on the host.
pub fn edited_row(into: &mut Vec<f32>, raw: &[f32], mask: Option<&[u32]>, edits: &[(TokenId, LogitEdit)]) {
    into.clear();
    into.extend_from_slice(raw);
    edit_row(into, mask, edits);
}

/// Apply `mask` and then `edits` to `row` in place (a row already copied
/// to the host needs no second copy).
pub fn edit_row(row: &mut [f32], mask: Option<&[u32]>, edits: &[(TokenId, LogitEdit)]) {
    if let Some(mask) = mask {
        apply_mask(row, mask);
    }
    apply_edits(row, edits);
}

/// How a token is drawn from an edited row: scaled by `1 / temperature`,
/// cut to the `top_k` most likely (0: no cut), then to tokens weighing at
/// least `min_p` of the top one, then to the smallest most-likely-first
/// prefix holding `top_p` of the mass. Greedy (the largest logit) when
/// [`is_greedy_choice`] says so.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Cuts {
    pub temperature: f32,
    pub top_k: u32,
    pub top_p: f32,
    pub min_p: f32,
}

impl Cuts {
    /// The cuts a sequence's own parameters ask for.
    pub fn of(params: &SamplingParams) -> Self {
        Self { temperature: params.temperature, top_k: params.top_k, top_p: params.top_p, min_p: params.min_p }
    }

    pub fn is_greedy(&self) -> bool {
        is_greedy_choice(self.temperature, self.top_k)
    }
}

/// One token to choose from row `row`: the row with `mask` applied (if
/// any), then `edits` in order, chosen by `cuts` with the draw `uniform`
/// in `[0, 1)` (unused when the cuts are greedy).
#[derive(Clone, Copy, Debug)]
pub struct Pick<'a> {
    pub row: usize,
    pub mask: Option<&'a [u32]>,
    pub edits: &'a [(TokenId, LogitEdit)],
    pub cuts: Cuts,
    pub uniform: f64,
}

/// Log-probabilities read from one row: `log softmax(row)` at a token, and
/// at the row's most likely tokens.
#[derive(Clone, Debug, PartialEq)]
pub struct LogProbs {
    pub token: f32,
    /// The most likely tokens with theirs, most likely first (ties by
    /// lower id).
    pub top: Vec<(TokenId, f32)>,
}

/// The logits of one step's rows, `vocab` each, where a backend left them.
///
/// Row indices are below [`LogitsRows::len`]; token ids in edits are below
/// [`LogitsRows::vocab`] (callers check both).
pub trait LogitsRows {
    fn vocab(&self) -> usize;

    fn len(&self) -> usize;

    fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Row `i` on the host: borrowed where it already is, copied from the
    /// device otherwise.
    fn row(&self, i: usize) -> Result<Cow<'_, [f32]>, LogitsError>;

    /// One token per pick, in order, chosen where the rows are.
    fn choose(&self, picks: &[Pick<'_>]) -> Result<Vec<TokenId>, LogitsError>;

    /// Row `i`'s raw log-probability of `token` and its `top` most likely
    /// tokens (what prompt scores and reported log-probabilities read),
    /// computed where the row is.
    fn log_probs(&self, i: usize, token: TokenId, top: usize) -> Result<LogProbs, LogitsError>;

    /// The `k` largest logits of row `i` with `mask` and then `edits`
    /// applied, largest first (ties by lower id), computed where the row
    /// is (a sampler plugin's `top-k`).
    fn top_k(&self, i: usize, mask: Option<&[u32]>, edits: &[(TokenId, LogitEdit)], k: usize) -> Result<Vec<(TokenId, f32)>, LogitsError>;
}

/// One token per `(rows, pick)`, in order, with each distinct set of rows
/// asked once for all of its picks: a batch whose rows come from one step
/// is one call to its backend.
pub fn choose_across(picks: &[(&dyn LogitsRows, Pick<'_>)]) -> Result<Vec<TokenId>, LogitsError> {
    let mut chosen = vec![0; picks.len()];
    let mut done = vec![false; picks.len()];
    for first in 0..picks.len() {
        if done[first] {
            continue;
        }
        let source = picks[first].0;
        let same: Vec<usize> = (first..picks.len()).filter(|&i| !done[i] && same_rows(picks[i].0, source)).collect();
        let group: Vec<Pick<'_>> = same.iter().map(|&i| picks[i].1).collect();
        let tokens = source.choose(&group)?;
        if tokens.len() != same.len() {
            return Err(LogitsError(format!("{} tokens chosen for {} picks", tokens.len(), same.len())));
        }
        for (&i, token) in same.iter().zip(tokens) {
            chosen[i] = token;
            done[i] = true;
        }
    }
    Ok(chosen)
}

/// Whether two trait objects are the same rows (their data addresses).
fn same_rows(a: &dyn LogitsRows, b: &dyn LogitsRows) -> bool {
    std::ptr::addr_eq(a as *const dyn LogitsRows, b as *const dyn LogitsRows)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn edits_apply_in_order_and_bans_stick() {
        let mut row = [2.0f32, -2.0, 1.0];
        apply_edits(
            &mut row,
            &[(0, LogitEdit::Penalize(2.0)), (0, LogitEdit::Add(-1.5)), (1, LogitEdit::Penalize(2.0)), (2, LogitEdit::Ban), (2, LogitEdit::Add(5.0)), (9, LogitEdit::Ban)],
        );
        assert_eq!(row, [-0.5, -4.0, f32::NEG_INFINITY]);
    }

    #[test]
    fn masks_keep_only_the_allowed_tokens() {
        let mut row = vec![1.0f32; 40];
        apply_mask(&mut row, &[1 << 3, 1 << 1]);
        let kept: Vec<usize> = (0..40).filter(|&t| row[t].is_finite()).collect();
        assert_eq!(kept, vec![3, 33]);
    }
}
