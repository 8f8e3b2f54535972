//! Feeds arbitrary bytes to the GGUF header parser: it must return an error
//! or a header whose every tensor lies inside the input, and never panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use weft_engine::gguf::parse_header;

fuzz_target!(|data: &[u8]| {
    if let Ok(h) = parse_header(data) {
        for t in &h.tensors {
            let end = h.data_offset + t.offset + t.size_bytes;
            assert!(end <= data.len() as u64, "tensor {} ends past the input", t.name);
        }
    }
});
