//! Paged-attention decode against an f64 softmax(q·K/sqrt(d))·V reference
//! over the same shuffled block tables.

use weft_kernels_cuda::{DecodeBatch, KvCacheShape};

use crate::common::{Rng, check, gpu, poisoned};

fn case(name: &str, n_heads: usize, n_kv: usize, hd: usize, block: usize, lens: &[u32], seed: u64) {
    let k = gpu("paged_attention").expect("checked by caller");
    let mut rng = Rng::new(seed);
    let n_seqs = lens.len();
    let max_blocks = lens
        .iter()
        .map(|&l| (l as usize).div_ceil(block))
        .max()
        .unwrap()
        + 1;
    let total: usize = lens.iter().map(|&l| (l as usize).div_ceil(block)).sum();
    let num_blocks = total + 5; // a few blocks nobody uses
    // Hand out blocks in a shuffled order so tables are not contiguous.
    let mut free: Vec<u32> = (0..num_blocks as u32).collect();
    for i in (1..free.len()).rev() {
        free.swap(i, rng.below(i + 1));
    }
    let mut tables = vec![0u32; n_seqs * max_blocks];
    for (s, &l) in lens.iter().enumerate() {
        for b in 0..(l as usize).div_ceil(block) {
            tables[s * max_blocks + b] = free.pop().unwrap();
        }
        // Unused slots hold an id far out of range: the kernel must not read them.
        for b in (l as usize).div_ceil(block)..max_blocks {
            tables[s * max_blocks + b] = u32::MAX;
        }
    }
    let shape = KvCacheShape {
        num_blocks,
        block_size: block,
        n_kv_heads: n_kv,
        head_dim: hd,
    };
    let kc = rng.vec(shape.elements(), 1.0);
    let vc = rng.vec(shape.elements(), 1.0);
    // Larger q makes the softmax peaked, which stresses the max-subtraction.
    let q = rng.vec(n_seqs * n_heads * hd, 2.0);
    let (kd, vd, qd) = (
        k.upload(&kc).unwrap(),
        k.upload(&vc).unwrap(),
        k.upload(&q).unwrap(),
    );
    let mut out = poisoned(k, n_seqs * n_heads * hd);
    let batch = DecodeBatch {
        seq_lens: lens,
        block_tables: &tables,
        max_blocks_per_seq: max_blocks,
    };
    k.paged_attention_decode(&qd, &kd, &vd, &shape, n_heads, &batch, &mut out)
        .unwrap();
    let got = k.download(&out).unwrap();

    let group = n_heads / n_kv;
    let scale = 1.0 / (hd as f64).sqrt();
    let at = |t: usize, s: usize, kvh: usize| {
        let blk = tables[s * max_blocks + t / block] as usize;
        ((blk * block + t % block) * n_kv + kvh) * hd
    };
    let mut want = vec![0.0f64; got.len()];
    for s in 0..n_seqs {
        let len = lens[s] as usize;
        for h in 0..n_heads {
            let kvh = h / group;
            let qh = &q[(s * n_heads + h) * hd..][..hd];
            let scores: Vec<f64> = (0..len)
                .map(|t| {
                    qh.iter()
                        .zip(&kc[at(t, s, kvh)..][..hd])
                        .map(|(&a, &b)| a as f64 * b as f64)
                        .sum::<f64>()
                        * scale
                })
                .collect();
            let m = scores.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
            let e: Vec<f64> = scores.iter().map(|&v| (v - m).exp()).collect();
            let z: f64 = e.iter().sum();
            let o = &mut want[(s * n_heads + h) * hd..][..hd];
            for (t, &p) in e.iter().enumerate() {
                for (d, &v) in vc[at(t, s, kvh)..][..hd].iter().enumerate() {
                    o[d] += p / z * v as f64;
                }
            }
        }
    }
    check("paged_attention", name, &got, &want, 1e-5);
}

#[test]
fn paged_attention_matches_f64_reference_smollm() {
    if gpu("paged_attention_matches_f64_reference_smollm").is_none() {
        return;
    }
    // SmolLM2-135M: 9 heads, 3 kv heads, head_dim 64.
    case(
        "smollm h9 kv3 d64 bs16",
        9,
        3,
        64,
        16,
        &[1, 17, 300, 1029],
        0x5EED_0020,
    );
}

#[test]
fn paged_attention_matches_f64_reference_8b() {
    if gpu("paged_attention_matches_f64_reference_8b").is_none() {
        return;
    }
    // 8B shape: 32 heads, 8 kv heads, head_dim 128; one long sequence spans
    // many partitions.
    case(
        "8b h32 kv8 d128 bs16",
        32,
        8,
        128,
        16,
        &[1, 33, 2048, 4097],
        0x5EED_0021,
    );
    case(
        "8b single seq 8000 bs32",
        32,
        8,
        128,
        32,
        &[8000],
        0x5EED_0022,
    );
}

#[test]
fn paged_attention_rejects_blocks_outside_the_cache() {
    let Some(k) = gpu("paged_attention_rejects_blocks_outside_the_cache") else {
        return;
    };
    let shape = KvCacheShape {
        num_blocks: 4,
        block_size: 16,
        n_kv_heads: 1,
        head_dim: 32,
    };
    let kc = k.zeros::<f32>(shape.elements()).unwrap();
    let q = k.zeros::<f32>(32).unwrap();
    let mut out = k.zeros::<f32>(32).unwrap();
    let batch = DecodeBatch {
        seq_lens: &[20],
        block_tables: &[0, 4],
        max_blocks_per_seq: 2,
    };
    let err = k
        .paged_attention_decode(&q, &kc, &kc, &shape, 1, &batch, &mut out)
        .unwrap_err();
    assert!(err.to_string().contains("block 4"), "{err}");
}
