//! The WebSocket close codes the gateway sends (RFC 6455 §7.4), each with when it is sent (for
//! clients: the close codes in docs/protocol.md). A TCP client gets no code: it is told the
//! reason in an op 8 error frame.

/// Echoed to a client whose close frame carried no code.
pub const NORMAL: u16 = 1000;
/// The peer was silent past the idle timeout, or the gateway shuts down without a drain.
pub const GOING_AWAY: u16 = 1001;
/// A frame that breaks RFC 6455: unmasked, reserved bits, an unknown opcode, a fragmented or
/// long control frame, a continuation out of place, an invalid close payload.
pub const PROTOCOL_ERROR: u16 = 1002;
/// A text message, or a close reason, that is not UTF-8.
pub const INVALID_DATA: u16 = 1007;
/// Policy: an auth frame missing, malformed or refused by logic, no auth in time, a flooding
/// client, a logout. Logic's link tells this refusal (the client's fault) from the others.
pub const POLICY_VIOLATION: u16 = 1008;
/// A frame or an assembled message over the size limits.
pub const TOO_BIG: u16 = 1009;
/// Logic answered an authentication call with a different number of answers than sockets.
pub const INTERNAL_ERROR: u16 = 1011;
/// Reconnect, elsewhere if need be: the gateway drains, or logic took it for dead and forgot
/// its connections.
pub const SERVICE_RESTART: u16 = 1012;
/// Logic could not be reached to authenticate the client: try again later.
pub const TRY_AGAIN_LATER: u16 = 1013;
