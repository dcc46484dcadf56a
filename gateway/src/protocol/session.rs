//! gochat's client requests, interpreted against a connection's phase.

use gochat_proto::wire::{self, ClientRequest};

/// Where a connection stands with authentication.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// Waiting for the auth frame (WebSocket) or op 6 (TCP).
    AwaitAuth,
    /// The token is being checked.
    Authenticating { room_id: u64 },
    /// Authenticated and in a room.
    Live { user_id: u64, room_id: u64 },
    /// On the echo endpoint: no auth, the codec answers every message.
    Echo,
}

/// What a client message asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Request {
    /// Check the token and join the room.
    Auth { token: String, room_id: u64 },
    /// A repeated auth for the room the connection is already in: nothing to do.
    AlreadyJoined,
    /// Send `msg` to the connection's room, as the connection's user.
    RoomSend { msg: String },
    /// Refused; reply with `message`. `fatal` closes the connection.
    Refuse { message: String, fatal: bool },
}

/// Interprets one client message.
pub fn interpret(phase: Phase, body: &[u8]) -> Request {
    let req: ClientRequest = match serde_json::from_slice(body) {
        Ok(r) => r,
        Err(e) => {
            let message = wire::clip_refusal(format!("bad JSON: {e}"));
            return Request::Refuse { message, fatal: phase == Phase::AwaitAuth };
        }
    };
    match phase {
        Phase::AwaitAuth => match req.op {
            None | Some(wire::OP_BUILD_TCP_CONN) if !req.auth_token.is_empty() => {
                Request::Auth { token: req.auth_token, room_id: req.room_id }
            }
            None | Some(wire::OP_BUILD_TCP_CONN) => {
                Request::Refuse { message: "authToken is required".into(), fatal: true }
            }
            Some(_) => Request::Refuse {
                message: "authenticate first: send authToken and roomId (TCP: op 6)".into(),
                fatal: true,
            },
        },
        Phase::Authenticating { .. } => {
            Request::Refuse { message: "authentication is in progress".into(), fatal: false }
        }
        Phase::Echo => Request::Refuse { message: "echo connections take no requests".into(), fatal: false },
        Phase::Live { room_id, .. } => match (req.op, req.msg) {
            (Some(wire::OP_ROOM_SEND), Some(msg)) if req.room_id == room_id || req.room_id == 0 => {
                Request::RoomSend { msg }
            }
            (Some(wire::OP_ROOM_SEND), Some(_)) => Request::Refuse {
                message: format!("this connection is in room {room_id}, not {}", req.room_id),
                fatal: false,
            },
            (Some(wire::OP_ROOM_SEND), None) => {
                Request::Refuse { message: "op 3 needs msg".into(), fatal: false }
            }
            (None | Some(wire::OP_BUILD_TCP_CONN), _) if !req.auth_token.is_empty() => {
                if req.room_id == room_id {
                    Request::AlreadyJoined
                } else {
                    Request::Refuse {
                        message: format!(
                            "this connection is in room {room_id}; reconnect to join room {}",
                            req.room_id
                        ),
                        fatal: false,
                    }
                }
            }
            _ => Request::Refuse { message: "unknown request".into(), fatal: false },
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIVE: Phase = Phase::Live { user_id: 1, room_id: 1 };

    #[test]
    fn auth_frames() {
        assert_eq!(
            interpret(Phase::AwaitAuth, br#"{"authToken":"t","roomId":1}"#),
            Request::Auth { token: "t".into(), room_id: 1 }
        );
        assert_eq!(
            interpret(Phase::AwaitAuth, br#"{"authToken":"t","roomId":2,"op":6}"#),
            Request::Auth { token: "t".into(), room_id: 2 }
        );
        assert!(matches!(
            interpret(Phase::AwaitAuth, br#"{"roomId":1}"#),
            Request::Refuse { fatal: true, .. }
        ));
        assert!(matches!(interpret(Phase::AwaitAuth, b"garbage"), Request::Refuse { fatal: true, .. }));
        assert!(matches!(
            interpret(Phase::AwaitAuth, br#"{"op":3,"msg":"x"}"#),
            Request::Refuse { fatal: true, .. }
        ));
    }

    #[test]
    fn live_requests() {
        assert_eq!(interpret(LIVE, br#"{"authToken":"t","roomId":1}"#), Request::AlreadyJoined);
        assert!(matches!(
            interpret(LIVE, br#"{"authToken":"t","roomId":2}"#),
            Request::Refuse { fatal: false, .. }
        ));
        assert_eq!(
            interpret(LIVE, br#"{"op":3,"msg":"hi","roomId":1,"fromUserId":99}"#),
            Request::RoomSend { msg: "hi".into() }
        );
        assert!(matches!(interpret(LIVE, b"{bad"), Request::Refuse { fatal: false, .. }));
        assert!(matches!(interpret(LIVE, br#"{"op":42}"#), Request::Refuse { fatal: false, .. }));
    }

    #[test]
    fn a_refusal_does_not_grow_with_the_request() {
        // serde quotes a value of the wrong type whole: this one came to 260 bytes when found.
        let body = format!(r#""{}"authTo1"#, "!".repeat(10_000));
        let Request::Refuse { message, .. } = interpret(LIVE, body.as_bytes()) else { panic!("refused") };
        assert!(message.len() <= wire::MAX_REFUSAL, "{} bytes", message.len());
        assert!(message.starts_with("bad JSON: invalid type: string \"!!!"), "{message}");
        assert!(message.ends_with("expected struct ClientRequest at line 1 column 10002"), "{message}");
    }
}
