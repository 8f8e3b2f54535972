//! The paged KV cache: block storage, a block pool with reference counts,
//! and content-addressed prefix blocks.
//!
//! Keys and values live in fixed-size blocks of `block_size` token slots per
//! layer. A sequence owns a block table (block ids in position order). Full
//! blocks are named by a hash chain — SHA-256 over the previous block's hash
//! and this block's tokens, rooted in a per-tenant salt — so a later request
//! with the same prefix *from the same tenant* reuses the blocks instead of
//! recomputing them, and tenants can neither share nor time each other's
//! cache. A released block keeps its contents and hash until the pool hands
//! it out again (least recently released first), so prefixes survive their
//! request.

use std::collections::{BTreeMap, HashMap};

use half::f16;
use half::slice::HalfBitsSliceExt;
use sha2::{Digest, Sha256};

/// Content address of a full block: the hash chain up to and including it.
pub type BlockHash = [u8; 32];

/// The hash that roots a tenant's chains.
pub fn chain_root(tenant_salt: &str) -> BlockHash {
    let mut h = Sha256::new();
    h.update(b"weft-kv-prefix-v1\0");
    h.update(tenant_salt.as_bytes());
    h.finalize().into()
}

/// The hash of a full block given its predecessor's hash and its tokens.
pub fn chain_next(prev: &BlockHash, tokens: &[u32]) -> BlockHash {
    let mut h = Sha256::new();
    h.update(prev);
    for t in tokens {
        h.update(t.to_le_bytes());
    }
    h.finalize().into()
}

/// How keys and values are stored.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KvPrecision {
    /// Half precision, as llama.cpp's default cache: half the memory, and
    /// the numbers the GGUF reference sees.
    F16,
    /// Full precision, for models checked against float32 references.
    F32,
}

/// Per-layer planes. f16 values are kept as their `u16` bits so the
/// allocation can be zeroed lazily by the OS (see `KvStorage::new`).
enum Planes {
    F16(Vec<Vec<u16>>),
    F32(Vec<Vec<f32>>),
}

/// Key and value storage for every layer, addressed by slot
/// (`block × block_size + offset`).
pub struct KvStorage {
    block_size: usize,
    kv_dim: usize,
    keys: Planes,
    values: Planes,
}

impl std::fmt::Debug for KvStorage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "KvStorage({:?}, slots of {})", self.precision(), self.kv_dim)
    }
}

/// One layer's keys and values, every slot, `kv_dim` values per slot.
#[derive(Clone, Copy, Debug)]
pub enum KvLayer<'a> {
    F16 { keys: &'a [f16], values: &'a [f16] },
    F32 { keys: &'a [f32], values: &'a [f32] },
}

impl KvStorage {
    pub fn new(layers: usize, num_blocks: usize, block_size: usize, kv_dim: usize, precision: KvPrecision) -> Self {
        let len = num_blocks * block_size * kv_dim;
        // One zeroed allocation per layer (not clones of one) of a primitive
        // type (so `vec!` asks the allocator for zeroed memory instead of
        // writing it): the pages stay unmapped until a block is first
        // written, and resident memory grows with use rather than with the
        // configured capacity.
        let planes = || match precision {
            KvPrecision::F16 => Planes::F16((0..layers).map(|_| vec![0u16; len]).collect()),
            KvPrecision::F32 => Planes::F32((0..layers).map(|_| vec![0f32; len]).collect()),
        };
        Self { block_size, kv_dim, keys: planes(), values: planes() }
    }

    /// Bytes one token occupies across all layers.
    pub fn bytes_per_token(layers: usize, kv_dim: usize, precision: KvPrecision) -> usize {
        let elem = match precision {
            KvPrecision::F16 => 2,
            KvPrecision::F32 => 4,
        };
        2 * layers * kv_dim * elem
    }

    pub fn precision(&self) -> KvPrecision {
        match self.keys {
            Planes::F16(_) => KvPrecision::F16,
            Planes::F32(_) => KvPrecision::F32,
        }
    }

    pub fn block_size(&self) -> usize {
        self.block_size
    }

    /// Store a token's key and value (rounded to the storage precision).
    pub fn write(&mut self, layer: usize, slot: usize, key: &[f32], value: &[f32]) {
        let r = slot * self.kv_dim..(slot + 1) * self.kv_dim;
        for (planes, src) in [(&mut self.keys, key), (&mut self.values, value)] {
            match planes {
                Planes::F16(p) => p[layer][r.clone()].iter_mut().zip(src).for_each(|(d, s)| *d = f16::from_f32(*s).to_bits()),
                Planes::F32(p) => p[layer][r.clone()].copy_from_slice(src),
            }
        }
    }

    /// Width of one slot (`kv_heads × head_dim`).
    pub fn kv_dim(&self) -> usize {
        self.kv_dim
    }

    /// A layer's planes, for attention.
    pub fn layer(&self, layer: usize) -> KvLayer<'_> {
        match (&self.keys, &self.values) {
            (Planes::F16(k), Planes::F16(v)) => {
                KvLayer::F16 { keys: k[layer].reinterpret_cast(), values: v[layer].reinterpret_cast() }
            }
            (Planes::F32(k), Planes::F32(v)) => KvLayer::F32 { keys: &k[layer], values: &v[layer] },
            _ => unreachable!("keys and values are built with one precision"),
        }
    }
}

/// Hands out blocks, counts their users and remembers full blocks by hash.
#[derive(Debug)]
pub struct BlockPool {
    ref_count: Vec<u32>,
    hash_of: Vec<Option<BlockHash>>,
    cached: HashMap<BlockHash, u32>,
    /// Unreferenced blocks keyed by release order (oldest first).
    free: BTreeMap<u64, u32>,
    free_key: Vec<Option<u64>>,
    clock: u64,
}

impl BlockPool {
    pub fn new(num_blocks: usize) -> Self {
        let free: BTreeMap<u64, u32> = (0..num_blocks as u32).map(|b| (b as u64, b)).collect();
        Self {
            ref_count: vec![0; num_blocks],
            hash_of: vec![None; num_blocks],
            cached: HashMap::new(),
            free,
            free_key: (0..num_blocks as u64).map(Some).collect(),
            clock: num_blocks as u64,
        }
    }

    pub fn num_blocks(&self) -> usize {
        self.ref_count.len()
    }

    /// Blocks nobody references (cached prefix blocks included: they are
    /// reclaimed on demand).
    pub fn num_free(&self) -> usize {
        self.free.len()
    }

    /// Take a block for new contents, evicting the least recently released
    /// cached block if need be.
    pub fn allocate(&mut self) -> Option<u32> {
        let (_, block) = self.free.pop_first()?;
        self.free_key[block as usize] = None;
        if let Some(h) = self.hash_of[block as usize].take() {
            self.cached.remove(&h);
        }
        self.ref_count[block as usize] = 1;
        Some(block)
    }

    /// Reuse the cached block named `hash`, if there is one.
    pub fn acquire_cached(&mut self, hash: &BlockHash) -> Option<u32> {
        let block = *self.cached.get(hash)?;
        if let Some(key) = self.free_key[block as usize].take() {
            self.free.remove(&key);
        }
        self.ref_count[block as usize] += 1;
        Some(block)
    }

    /// Name a full, computed block so later sequences can reuse it.
    pub fn register(&mut self, block: u32, hash: BlockHash) {
        if self.hash_of[block as usize].is_none() && !self.cached.contains_key(&hash) {
            self.hash_of[block as usize] = Some(hash);
            self.cached.insert(hash, block);
        }
    }

    /// Drop one reference; the block becomes free when none are left.
    pub fn release(&mut self, block: u32) {
        let rc = &mut self.ref_count[block as usize];
        debug_assert!(*rc > 0, "double release of block {block}");
        *rc = rc.saturating_sub(1);
        if *rc == 0 {
            self.clock += 1;
            self.free.insert(self.clock, block);
            self.free_key[block as usize] = Some(self.clock);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn released_blocks_are_reused_least_recent_first_and_cached_ones_survive() {
        let mut pool = BlockPool::new(3);
        let a = pool.allocate().unwrap();
        let b = pool.allocate().unwrap();
        let h = chain_next(&chain_root("t"), &[1, 2, 3]);
        pool.register(a, h);
        pool.release(a);
        pool.release(b);
        assert_eq!(pool.num_free(), 3);
        assert_eq!(pool.acquire_cached(&h), Some(a));
        assert_eq!(pool.num_free(), 2);
        pool.release(a);
        // The never-used block goes first, then b, then the cached a.
        assert_eq!(pool.allocate(), Some(2));
        assert_eq!(pool.allocate(), Some(b));
        assert_eq!(pool.allocate(), Some(a));
        assert_eq!(pool.acquire_cached(&h), None, "evicted block is no longer addressable");
    }

    #[test]
    fn tenants_get_different_chains_for_the_same_tokens() {
        let t = [5u32; 16];
        assert_ne!(chain_next(&chain_root("alice"), &t), chain_next(&chain_root("bob"), &t));
    }
}
