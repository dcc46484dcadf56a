//! gochat's client requests, interpreted against a connection's phase.

use gochat_proto::wire::{self, ClientRequest, Position};

/// Where a connection stands with authentication.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// Waiting for the auth frame (WebSocket) or op 6 (TCP).
    AwaitAuth,
    /// The token is being checked.
    Authenticating,
    /// Authenticated; its rooms are the shard's to know.
    Live { user_id: u64 },
    /// On the echo endpoint: no auth, the codec answers every message.
    Echo,
}

/// What a client message asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Request {
    /// Check the token and join the room (0: none yet), recovering from `since`; `acks`: the
    /// client acknowledges private messages.
    Auth { token: String, room_id: u64, since: Option<Position>, acks: bool },
    /// A repeated auth frame (gochat's clients may send one again): answered, nothing changes.
    Reauth { room_id: u64 },
    /// Join another room (op 10), recovering from `since`.
    Join { room_id: u64, since: Option<Position> },
    /// Leave one of its rooms (op 11).
    Leave { room_id: u64 },
    /// Send `msg` to one of the connection's rooms (0: the one it authenticated into).
    RoomSend { room_id: u64, msg: String },
    /// Private messages the client has (op 12).
    Ack { ids: Vec<u64> },
    /// Refused; reply with `message`. `fatal` closes the connection.
    Refuse { message: String, fatal: bool },
}

/// Interprets one client message of gochat's JSON protocol.
pub fn interpret(phase: Phase, body: &[u8]) -> Request {
    match serde_json::from_slice(body) {
        Ok(req) => decide(phase, req),
        Err(e) => {
            let message = wire::clip_refusal(format!("bad JSON: {e}"));
            Request::Refuse { message, fatal: phase == Phase::AwaitAuth }
        }
    }
}

/// Interprets one client message of the binary protocol: the same requests, the same answers.
pub fn interpret_binary(phase: Phase, body: &[u8]) -> Request {
    match gochat_proto::binary::client_request(body) {
        Ok(req) => decide(phase, req),
        Err(message) => Request::Refuse { message, fatal: phase == Phase::AwaitAuth },
    }
}

/// What a client's request asks for, in the connection's phase.
fn decide(phase: Phase, req: ClientRequest) -> Request {
    let refuse = |message: &str| Request::Refuse { message: message.into(), fatal: false };
    match phase {
        Phase::AwaitAuth => match req.op {
            None | Some(wire::OP_BUILD_TCP_CONN) if req.auth_token.len() > wire::MAX_TOKEN_BYTES => {
                let message = format!("authToken is too long (max {} bytes)", wire::MAX_TOKEN_BYTES);
                Request::Refuse { message, fatal: true }
            }
            None | Some(wire::OP_BUILD_TCP_CONN) if !req.auth_token.is_empty() => Request::Auth {
                since: req.since(),
                acks: req.acks,
                room_id: req.room_id,
                token: req.auth_token,
            },
            None | Some(wire::OP_BUILD_TCP_CONN) => {
                Request::Refuse { message: "authToken is required".into(), fatal: true }
            }
            Some(_) => Request::Refuse {
                message: "authenticate first: send authToken and roomId (TCP: op 6)".into(),
                fatal: true,
            },
        },
        Phase::Authenticating => refuse("authentication is in progress"),
        Phase::Echo => refuse("echo connections take no requests"),
        Phase::Live { .. } => match req.op {
            Some(wire::OP_ROOM_SEND) => match req.msg {
                Some(msg) => Request::RoomSend { room_id: req.room_id, msg },
                None => refuse("op 3 needs msg"),
            },
            Some(wire::OP_JOIN) if req.room_id == 0 => refuse("op 10 needs a roomId above 0"),
            Some(wire::OP_JOIN) => Request::Join { room_id: req.room_id, since: req.since() },
            Some(wire::OP_LEAVE) if req.room_id == 0 => refuse("op 11 needs a roomId above 0"),
            Some(wire::OP_LEAVE) => Request::Leave { room_id: req.room_id },
            Some(wire::OP_ACK) if req.msg_ids.is_empty() => refuse("op 12 needs msgIds"),
            Some(wire::OP_ACK) => Request::Ack { ids: req.msg_ids },
            None | Some(wire::OP_BUILD_TCP_CONN) if !req.auth_token.is_empty() => {
                Request::Reauth { room_id: req.room_id }
            }
            _ => refuse("unknown request"),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIVE: Phase = Phase::Live { user_id: 1 };

    fn auth(token: &str, room_id: u64) -> Request {
        Request::Auth { token: token.into(), room_id, since: None, acks: false }
    }

    #[test]
    fn auth_frames() {
        assert_eq!(interpret(Phase::AwaitAuth, br#"{"authToken":"t","roomId":1}"#), auth("t", 1));
        assert_eq!(interpret(Phase::AwaitAuth, br#"{"authToken":"t","roomId":2,"op":6}"#), auth("t", 2));
        assert_eq!(
            interpret(
                Phase::AwaitAuth,
                br#"{"authToken":"t","roomId":2,"epoch":"ab","seq":"7","acks":true}"#
            ),
            Request::Auth {
                token: "t".into(),
                room_id: 2,
                since: Some(Position { epoch: "ab".into(), seq: 7 }),
                acks: true
            }
        );
        assert_eq!(
            interpret(Phase::AwaitAuth, br#"{"authToken":"t","roomId":2,"seq":7}"#),
            auth("t", 2),
            "a seq without its epoch is no position"
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
    fn an_oversized_token_is_refused_before_it_goes_anywhere() {
        let at_limit = "t".repeat(wire::MAX_TOKEN_BYTES);
        let frame = format!(r#"{{"authToken":"{at_limit}","roomId":1}}"#);
        assert_eq!(interpret(Phase::AwaitAuth, frame.as_bytes()), auth(&at_limit, 1));
        let over = format!(r#"{{"authToken":"{at_limit}t","roomId":1}}"#);
        match interpret(Phase::AwaitAuth, over.as_bytes()) {
            Request::Refuse { message, fatal: true } => assert!(message.contains("too long"), "{message}"),
            other => panic!("an oversized token was taken: {other:?}"),
        }
        // A quoted epoch longer than any issued one becomes one that matches none.
        let long_epoch = format!(r#"{{"authToken":"t","roomId":1,"epoch":"{}","seq":3}}"#, "e".repeat(100));
        let Request::Auth { since, .. } = interpret(Phase::AwaitAuth, long_epoch.as_bytes()) else {
            panic!("not an auth")
        };
        assert_eq!(since, Some(Position { epoch: String::new(), seq: 3 }));
    }

    #[test]
    fn live_requests() {
        assert_eq!(interpret(LIVE, br#"{"authToken":"t","roomId":1}"#), Request::Reauth { room_id: 1 });
        assert_eq!(
            interpret(LIVE, br#"{"op":3,"msg":"hi","roomId":1,"fromUserId":99}"#),
            Request::RoomSend { room_id: 1, msg: "hi".into() }
        );
        assert_eq!(
            interpret(LIVE, br#"{"op":3,"msg":"hi"}"#),
            Request::RoomSend { room_id: 0, msg: "hi".into() }
        );
        assert_eq!(
            interpret(LIVE, br#"{"op":10,"roomId":"5","epoch":"e","seq":0}"#),
            Request::Join { room_id: 5, since: Some(Position { epoch: "e".into(), seq: 0 }) }
        );
        assert_eq!(interpret(LIVE, br#"{"op":11,"roomId":5}"#), Request::Leave { room_id: 5 });
        assert_eq!(interpret(LIVE, br#"{"op":12,"msgIds":["12",13]}"#), Request::Ack { ids: vec![12, 13] });
        for bad in [
            r#"{"op":10}"#,
            r#"{"op":11,"roomId":0}"#,
            r#"{"op":12}"#,
            r#"{"op":12,"msgIds":"1"}"#,
            r#"{"op":12,"msgIds":[-1]}"#,
            r#"{"op":10,"roomId":1,"seq":-3}"#,
        ] {
            assert!(
                matches!(interpret(LIVE, bad.as_bytes()), Request::Refuse { fatal: false, .. }),
                "{bad} was taken"
            );
        }
        let many = format!(r#"{{"op":12,"msgIds":[{}1]}}"#, "1,".repeat(wire::MAX_ACK_IDS));
        let Request::Refuse { message, .. } = interpret(LIVE, many.as_bytes()) else { panic!("taken") };
        assert!(message.contains("at most 256 ids"), "{message}");
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
