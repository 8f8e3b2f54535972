//! A guide that lets only digit tokens through until ten have been
//! committed (the example of docs/plugins/README.md; `digits-forever` never
//! stops), and misbehaves on purpose when the constraint's source names a
//! fault: `trap-on-compile`, `loop-on-compile`, `memory-on-compile`,
//! `trap-on-next` (on the third step); `slow-digits` is `digits` taking
//! tens of milliseconds over every step (a late guide).

wit_bindgen::generate!({
    path: "../../../wit",
    world: "guide-plugin",
});

use std::cell::{Cell, RefCell};

use exports::weft::plugin::guide::{Constraint, Guest, GuestSequence, Step};
use weft::plugin::types::{ConfigEntry, PluginError, TokenId};

thread_local! {
    static DIGITS: RefCell<Vec<u32>> = const { RefCell::new(Vec::new()) };
}

struct Digits;

impl Guest for Digits {
    type Sequence = Sequence;

    fn init(_config: Vec<ConfigEntry>, vocab: Vec<Vec<u8>>, _eos: Vec<TokenId>) -> Result<(), PluginError> {
        let mut mask = vec![0u32; vocab.len().div_ceil(32)];
        for (t, bytes) in vocab.iter().enumerate() {
            if !bytes.is_empty() && bytes.iter().all(u8::is_ascii_digit) {
                mask[t / 32] |= 1 << (t % 32);
            }
        }
        DIGITS.with(|d| *d.borrow_mut() = mask);
        Ok(())
    }
}

pub struct Sequence {
    committed: Cell<u32>,
    steps: Cell<u32>,
    trap_on_next: bool,
    forever: bool,
    slow: bool,
}

/// Iterations of busy work a slow step does: tens of milliseconds.
const SLOW_SPIN: u64 = 40_000_000;

impl GuestSequence for Sequence {
    fn new(constraint: Constraint) -> Self {
        match constraint.source.as_str() {
            "trap-on-compile" => panic!("the fixture traps while compiling, as asked"),
            "loop-on-compile" => loop {
                std::hint::black_box(0);
            },
            "memory-on-compile" => {
                let mut hoard: Vec<Vec<u8>> = Vec::new();
                loop {
                    hoard.push(vec![1; 1 << 20]);
                    std::hint::black_box(&hoard);
                }
            }
            source => Sequence {
                committed: Cell::new(0),
                steps: Cell::new(0),
                trap_on_next: source == "trap-on-next",
                forever: source == "digits-forever",
                slow: source == "slow-digits",
            },
        }
    }

    fn error(&self) -> Option<PluginError> {
        None
    }

    fn next(&self) -> Result<Step, PluginError> {
        self.steps.set(self.steps.get() + 1);
        if self.slow {
            let mut x = 0u64;
            for i in 0..SLOW_SPIN {
                x = std::hint::black_box(x.wrapping_add(i));
            }
        }
        if self.trap_on_next && self.steps.get() == 3 {
            panic!("the fixture traps on its third step, as asked");
        }
        if self.committed.get() == 10 && !self.forever {
            return Ok(Step::Stop);
        }
        Ok(Step::Mask(DIGITS.with(|d| d.borrow().clone())))
    }

    fn commit(&self, _token: TokenId) -> Result<(), PluginError> {
        self.committed.set(self.committed.get() + 1);
        Ok(())
    }
}

export!(Digits);
