//! permessage-deflate's inflater on arbitrary bytes: the output never passes its bound, a
//! refusal holds nothing and says why (1007 or 1009), and whatever the compressor makes of the
//! input inflates back to it.
#![no_main]

use gochat_gateway::protocol::deflate;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    for max in [0, 100, 4096, 1 << 20] {
        let mut out = b"kept".to_vec();
        match deflate::inflate(data, max, &mut out) {
            Ok(()) => assert!(out.len() - 4 <= max, "{} bytes out, bound {max}", out.len() - 4),
            Err(v) => {
                assert_eq!(out, b"kept", "a refused message leaves nothing behind");
                assert!(matches!(v.code, 1007 | 1009), "close code {}", v.code);
            }
        }
    }
    let (bits, level) = (9 + data.first().map_or(0, |b| b % 7), 1 + data.get(1).map_or(0, |b| b % 9));
    let mut z = Vec::new();
    deflate::deflate(data, bits, level, &mut z);
    let mut back = Vec::new();
    deflate::inflate(&z, data.len(), &mut back).expect("the compressor's output inflates");
    assert_eq!(back, data);
});
