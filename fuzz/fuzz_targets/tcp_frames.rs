//! The TCP `v1` deframer on arbitrary bytes.
#![no_main]

use gochat_fuzz::check_stream;
use gochat_gateway::protocol::Transport;
use gochat_proto::wire;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    check_stream(Transport::Tcp, data, false);
    // A frame that decodes is the one its body encodes to.
    if let Ok(Some((body, len))) = wire::decode_tcp_frame(data, usize::MAX) {
        let mut again = Vec::new();
        match wire::encode_tcp_frame(&data[body.clone()], &mut again) {
            Ok(()) => assert_eq!(again, data[..len]),
            Err(e) => assert!(body.len() > wire::TCP_MAX_BODY, "{e}"),
        }
    }
});
