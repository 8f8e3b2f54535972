//! The GGUF reader on well-formed and hostile files built byte by byte.
//!
//! Every malformed case must produce a clear error (never a panic, never an
//! allocation proportional to a lying length field).

use weft_engine::gguf::{GgufError, TensorType, Value, parse_header};
use weft_kernels_cpu::WeightType;

/// Builds GGUF v3 files for tests.
#[derive(Default)]
struct Builder {
    kv: Vec<u8>,
    kv_count: u64,
    tensors: Vec<u8>,
    tensor_count: u64,
    data: Vec<u8>,
    version: u32,
}

fn string(out: &mut Vec<u8>, s: &str) {
    out.extend((s.len() as u64).to_le_bytes());
    out.extend(s.as_bytes());
}

impl Builder {
    fn new() -> Self {
        Self { version: 3, ..Self::default() }
    }

    fn kv(mut self, key: &str, ty: u32, payload: &[u8]) -> Self {
        string(&mut self.kv, key);
        self.kv.extend(ty.to_le_bytes());
        self.kv.extend(payload);
        self.kv_count += 1;
        self
    }

    fn tensor(mut self, name: &str, dims: &[u64], ty: u32, data: &[u8]) -> Self {
        let offset = self.data.len() as u64;
        self = self.tensor_at(name, dims, ty, offset);
        self.data.extend(data);
        while self.data.len() % 32 != 0 {
            self.data.push(0);
        }
        self
    }

    fn tensor_at(mut self, name: &str, dims: &[u64], ty: u32, offset: u64) -> Self {
        string(&mut self.tensors, name);
        self.tensors.extend((dims.len() as u32).to_le_bytes());
        for d in dims {
            self.tensors.extend(d.to_le_bytes());
        }
        self.tensors.extend(ty.to_le_bytes());
        self.tensors.extend(offset.to_le_bytes());
        self.tensor_count += 1;
        self
    }

    fn build(&self) -> Vec<u8> {
        let mut out = b"GGUF".to_vec();
        out.extend(self.version.to_le_bytes());
        out.extend(self.tensor_count.to_le_bytes());
        out.extend(self.kv_count.to_le_bytes());
        out.extend(&self.kv);
        out.extend(&self.tensors);
        while out.len() % 32 != 0 {
            out.push(0);
        }
        out.extend(&self.data);
        out
    }
}

fn f32s(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

fn valid() -> Builder {
    let mut nested = Vec::new();
    nested.extend(9u32.to_le_bytes()); // array of arrays
    nested.extend(2u64.to_le_bytes());
    for inner in [[1u32, 2], [3, 4]] {
        nested.extend(4u32.to_le_bytes());
        nested.extend(2u64.to_le_bytes());
        for v in inner {
            nested.extend(v.to_le_bytes());
        }
    }
    let mut name = Vec::new();
    string(&mut name, "tiny");
    Builder::new()
        .kv("general.name", 8, &name)
        .kv("u8", 0, &[7])
        .kv("i8", 1, &[0xFF])
        .kv("u16", 2, &500u16.to_le_bytes())
        .kv("i16", 3, &(-5i16).to_le_bytes())
        .kv("u32", 4, &70000u32.to_le_bytes())
        .kv("i32", 5, &(-70000i32).to_le_bytes())
        .kv("f32", 6, &1.5f32.to_le_bytes())
        .kv("bool", 7, &[1])
        .kv("u64", 10, &(1u64 << 40).to_le_bytes())
        .kv("i64", 11, &(-1i64).to_le_bytes())
        .kv("f64", 12, &2.25f64.to_le_bytes())
        .kv("nested", 9, &nested)
        .tensor("a", &[4], 0, &f32s(&[1.0, 2.0, 3.0, 4.0]))
        .tensor("b", &[32, 2], 8, &[0u8; 68])
}

fn err(bytes: &[u8]) -> String {
    parse_header(bytes).expect_err("must be rejected").to_string()
}

#[test]
fn a_well_formed_file_parses_every_value_type_and_tensor() {
    let bytes = valid().build();
    let h = parse_header(&bytes).unwrap();
    assert_eq!(h.version, 3);
    let get = |k: &str| h.metadata.iter().find(|(key, _)| key == k).map(|(_, v)| v.clone()).unwrap();
    assert_eq!(get("general.name"), Value::String("tiny".into()));
    assert_eq!(get("i8"), Value::I8(-1));
    assert_eq!(get("u64"), Value::U64(1 << 40));
    assert_eq!(get("f64"), Value::F64(2.25));
    assert_eq!(get("bool"), Value::Bool(true));
    assert_eq!(
        get("nested"),
        Value::Array(vec![Value::Array(vec![Value::U32(1), Value::U32(2)]), Value::Array(vec![Value::U32(3), Value::U32(4)])])
    );
    assert_eq!(h.tensors.len(), 2);
    assert_eq!(h.tensors[1].ty, TensorType::Supported(WeightType::Q8_0));
    assert_eq!(h.tensors[1].size_bytes, 68);
    assert_eq!(h.data_offset % 32, 0);
}

#[test]
fn version_2_files_are_read() {
    let mut b = valid();
    b.version = 2;
    assert!(parse_header(&b.build()).is_ok());
}

#[test]
fn every_truncation_is_an_error_not_a_panic() {
    let bytes = valid().build();
    let h = parse_header(&bytes).unwrap();
    // Past the last tensor's data only alignment padding remains.
    let end = h.tensors.iter().map(|t| h.data_offset + t.offset + t.size_bytes).max().unwrap() as usize;
    for len in 0..end {
        assert!(parse_header(&bytes[..len]).is_err(), "truncated to {len} bytes");
    }
}

#[test]
fn bad_magic_old_versions_and_big_endian_files_are_refused() {
    let mut bytes = valid().build();
    bytes[0] = b'X';
    assert!(matches!(parse_header(&bytes), Err(GgufError::BadMagic)));
    let mut b = valid();
    b.version = 1;
    assert!(err(&b.build()).contains("version 1"));
    b.version = 3u32.swap_bytes();
    assert!(err(&b.build()).contains("big-endian"));
}

#[test]
fn tensor_data_past_the_end_of_the_file_is_refused() {
    let b = Builder::new().tensor_at("w", &[1024], 0, 0);
    assert!(err(&b.build()).contains("runs past the end"));
    let b = Builder::new().tensor("ok", &[4], 0, &f32s(&[0.0; 4])).tensor_at("w", &[8], 0, u64::MAX - 16);
    assert!(err(&b.build()).contains("\"w\""));
}

#[test]
fn dimensions_whose_product_overflows_are_refused() {
    let b = Builder::new().tensor_at("w", &[1 << 32, 1 << 32, 1 << 8], 0, 0);
    assert!(err(&b.build()).contains("overflow"));
    // The element count fits but the byte count does not.
    let b = Builder::new().tensor_at("w", &[1 << 62, 2], 0, 0);
    assert!(err(&b.build()).contains("overflow"));
}

#[test]
fn lengths_beyond_the_file_are_refused_before_allocating() {
    // A string claiming 2^60 bytes.
    let mut payload = (1u64 << 60).to_le_bytes().to_vec();
    payload.extend(b"abc");
    assert!(err(&Builder::new().kv("s", 8, &payload).build()).contains("exceeds the file"));
    // An array claiming 2^61 u64 elements.
    let mut payload = 10u32.to_le_bytes().to_vec();
    payload.extend((1u64 << 61).to_le_bytes());
    assert!(err(&Builder::new().kv("a", 9, &payload).build()).contains("exceeds the file"));
    // Counts in the header beyond the file.
    let mut bytes = Builder::new().build();
    bytes[8..16].copy_from_slice(&u64::MAX.to_le_bytes());
    assert!(err(&bytes).contains("tensor count"));
    let mut bytes = Builder::new().build();
    bytes[16..24].copy_from_slice(&(1u64 << 50).to_le_bytes());
    assert!(err(&bytes).contains("metadata count"));
}

#[test]
fn unknown_types_are_refused() {
    assert!(err(&Builder::new().kv("x", 13, &[0; 8]).build()).contains("unknown metadata value type 13"));
    let b = Builder::new().tensor("w", &[4], 99, &[0; 16]);
    assert!(err(&b.build()).contains("unknown tensor type id 99"));
    let mut payload = 77u32.to_le_bytes().to_vec();
    payload.extend(1u64.to_le_bytes());
    assert!(err(&Builder::new().kv("a", 9, &payload).build()).contains("unknown array element type"));
}

#[test]
fn duplicate_names_are_refused() {
    let b = Builder::new().tensor("w", &[4], 0, &f32s(&[0.0; 4])).tensor("w", &[4], 0, &f32s(&[0.0; 4]));
    assert!(err(&b.build()).contains("duplicate tensor name"));
    let b = Builder::new().kv("k", 0, &[1]).kv("k", 0, &[2]);
    assert!(err(&b.build()).contains("duplicate metadata key"));
}

#[test]
fn misaligned_offsets_partial_blocks_and_bad_dimension_counts_are_refused() {
    let b = Builder::new().tensor("a", &[4], 0, &f32s(&[0.0; 4])).tensor_at("w", &[4], 0, 4);
    assert!(err(&b.build()).contains("alignment"));
    let b = Builder::new().tensor_at("w", &[33], 8, 0);
    assert!(err(&b.build()).contains("block"));
    let b = Builder::new().tensor_at("w", &[1, 1, 1, 1, 1], 0, 0);
    assert!(err(&b.build()).contains("dimensions"));
    let b = Builder::new().kv("general.alignment", 4, &3u32.to_le_bytes());
    assert!(err(&b.build()).contains("power of two"));
}

#[test]
fn deeply_nested_arrays_are_refused() {
    let mut payload = Vec::new();
    for _ in 0..64 {
        payload.extend(9u32.to_le_bytes());
        payload.extend(1u64.to_le_bytes());
    }
    payload.extend(0u32.to_le_bytes());
    payload.extend(0u64.to_le_bytes());
    assert!(err(&Builder::new().kv("deep", 9, &payload).build()).contains("nested"));
}
