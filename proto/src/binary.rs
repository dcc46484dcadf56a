//! The binary client protocol (`proto/client.proto`), for WebSocket clients that negotiate the
//! subprotocol [`SUBPROTOCOL`]: gochat's JSON op bodies as protobuf [`ServerFrame`]s, and
//! [`ClientFrame`]s read into the same [`ClientRequest`] a JSON frame is, so both protocols
//! take one path through the gateway.
//!
//! Control produces every body as JSON; a gateway turns a batch into this protocol once, for
//! all its binary members, and only when it has any.

use std::collections::BTreeMap;

use prost::Message as _;
use serde::Deserialize;

use crate::client::{
    self, client_frame, server_frame, AuthOk, ClientFrame, Joined, Presence, RoomCount, RoomInfo, RoomReply,
    ServerFrame,
};
use crate::wire::{self, lenient_id, ClientRequest};

/// The `Sec-WebSocket-Protocol` a client offers to speak this protocol.
pub const SUBPROTOCOL: &str = "gochat-pb";

/// Every field any server → client JSON body has.
#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase", default)]
struct Body {
    op: i32,
    code: i32,
    msg: String,
    from_user_id: u64,
    from_user_name: String,
    to_user_id: u64,
    to_user_name: String,
    room_id: u64,
    create_time: String,
    #[serde(deserialize_with = "lenient_id")]
    msg_id: u64,
    seq: Option<u64>,
    epoch: String,
    recovered: Option<bool>,
    count: u64,
    room_user_info: BTreeMap<String, String>,
    user_id: u64,
    user_name: String,
    pending: u32,
    message: String,
    joined: BTreeMap<String, String>,
    left: Vec<String>,
    more: u64,
}

impl Body {
    fn joined(&self) -> Option<Joined> {
        let position = (!self.epoch.is_empty())
            .then(|| client::Position { epoch: self.epoch.clone(), seq: self.seq.unwrap_or(0) });
        (position.is_some() || self.recovered.is_some())
            .then_some(Joined { position, recovered: self.recovered })
    }
}

fn ids<'a>(
    map: impl IntoIterator<Item = (&'a String, &'a String)>,
) -> std::collections::HashMap<u64, String> {
    map.into_iter().filter_map(|(id, name)| Some((id.parse().ok()?, name.clone()))).collect()
}

/// A server → client JSON body (any op) as a protobuf [`ServerFrame`]. A body this protocol has
/// no message for travels as its JSON.
pub fn server_frame(json: &[u8]) -> Vec<u8> {
    let Ok(b) = serde_json::from_slice::<Body>(json) else {
        return ServerFrame { op: 0, body: Some(server_frame::Body::Json(json.to_vec())) }.encode_to_vec();
    };
    let body = match b.op {
        wire::OP_SINGLE_SEND | wire::OP_ROOM_SEND => server_frame::Body::Message(client::Message {
            code: b.code,
            msg: b.msg,
            from_user_id: b.from_user_id,
            from_user_name: b.from_user_name,
            to_user_id: b.to_user_id,
            to_user_name: b.to_user_name,
            room_id: b.room_id,
            create_time: b.create_time,
            msg_id: b.msg_id,
            seq: b.seq,
            epoch: b.epoch,
        }),
        wire::OP_ROOM_COUNT => server_frame::Body::Count(RoomCount { room_id: b.room_id, count: b.count }),
        wire::OP_ROOM_INFO => server_frame::Body::RoomInfo(RoomInfo {
            room_id: b.room_id,
            count: b.count,
            members: ids(&b.room_user_info),
        }),
        wire::OP_AUTH_OK => server_frame::Body::AuthOk(AuthOk {
            joined: b.joined(),
            user_id: b.user_id,
            user_name: b.user_name,
            room_id: b.room_id,
            pending: b.pending,
        }),
        wire::OP_ERROR => server_frame::Body::Error(client::Error { code: b.code, message: b.message }),
        wire::OP_PRESENCE => server_frame::Body::Presence(Presence {
            room_id: b.room_id,
            count: b.count,
            joined: ids(&b.joined),
            left: b.left.iter().filter_map(|id| id.parse().ok()).collect(),
            more: b.more,
        }),
        wire::OP_JOIN | wire::OP_LEAVE => {
            server_frame::Body::Room(RoomReply { joined: b.joined(), room_id: b.room_id })
        }
        _ => server_frame::Body::Json(json.to_vec()),
    };
    ServerFrame { op: b.op, body: Some(body) }.encode_to_vec()
}

/// A client's protobuf [`ClientFrame`] as the request a JSON frame would make; why not, when
/// it is not one.
pub fn client_request(bytes: &[u8]) -> Result<ClientRequest, String> {
    let frame = ClientFrame::decode(bytes).map_err(|e| wire::clip_refusal(format!("bad frame: {e}")))?;
    let mut req = ClientRequest::default();
    let mut since = |p: Option<client::Position>| {
        if let Some(p) = p {
            (req.epoch, req.seq) = (Some(p.epoch), Some(p.seq));
        }
    };
    match frame.kind.ok_or("bad frame: empty")? {
        client_frame::Kind::Auth(a) => {
            since(a.since);
            (req.auth_token, req.room_id, req.acks) = (a.auth_token, a.room_id, a.acks);
        }
        client_frame::Kind::Send(s) => {
            (req.op, req.room_id, req.msg) = (Some(wire::OP_ROOM_SEND), s.room_id, Some(s.msg));
        }
        client_frame::Kind::Join(j) => {
            since(j.since);
            (req.op, req.room_id) = (Some(wire::OP_JOIN), j.room_id);
        }
        client_frame::Kind::Leave(l) => (req.op, req.room_id) = (Some(wire::OP_LEAVE), l.room_id),
        client_frame::Kind::Ack(a) => {
            if a.msg_ids.len() > wire::MAX_ACK_IDS {
                return Err(format!("at most {} ids at once", wire::MAX_ACK_IDS));
            }
            (req.op, req.msg_ids) = (Some(wire::OP_ACK), a.msg_ids);
        }
    }
    Ok(req)
}

impl std::fmt::Debug for client::Auth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Auth")
            .field("auth_token", &"<redacted>")
            .field("room_id", &self.room_id)
            .field("since", &self.since)
            .field("acks", &self.acks)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decode(bytes: &[u8]) -> ServerFrame {
        ServerFrame::decode(bytes).unwrap()
    }

    #[test]
    fn every_op_gochat_rs_sends_has_its_message() {
        let chat = br#"{"code":0,"msg":"hi","fromUserId":1,"fromUserName":"a","toUserId":0,"toUserName":"","roomId":7,"op":3,"createTime":"2026-01-01 00:00:00","msgId":"99","seq":5,"epoch":"e"}"#;
        let f = decode(&server_frame(chat));
        let Some(server_frame::Body::Message(m)) = f.body else { panic!("{f:?}") };
        assert_eq!((f.op, m.msg.as_str(), m.msg_id, m.seq, m.epoch.as_str()), (3, "hi", 99, Some(5), "e"));
        let cases: [(&[u8], i32); 7] = [
            (br#"{"count":3,"op":4,"roomId":7}"#, 4),
            (br#"{"op":5,"roomId":7,"count":1,"roomUserInfo":{"12":"bob"}}"#, 5),
            (br#"{"op":7,"userId":1,"userName":"a","roomId":7,"epoch":"e","seq":4,"recovered":true}"#, 7),
            (br#"{"op":8,"code":1,"message":"no"}"#, 8),
            (br#"{"op":9,"roomId":7,"count":2,"joined":{"3":"c"},"left":["4"]}"#, 9),
            (br#"{"op":10,"roomId":7,"epoch":"e","seq":0}"#, 10),
            (br#"{"op":11,"roomId":7}"#, 11),
        ];
        for (json, op) in cases {
            let f = decode(&server_frame(json));
            assert_eq!(f.op, op);
            match f.body.unwrap() {
                server_frame::Body::Count(c) => assert_eq!((c.room_id, c.count), (7, 3)),
                server_frame::Body::RoomInfo(i) => assert_eq!(i.members, [(12, "bob".to_string())].into()),
                server_frame::Body::AuthOk(a) => {
                    let joined = a.joined.unwrap();
                    assert_eq!((joined.position.unwrap().seq, joined.recovered), (4, Some(true)));
                }
                server_frame::Body::Error(e) => assert_eq!(e.message, "no"),
                server_frame::Body::Presence(p) => assert_eq!((p.joined.len(), p.left), (1, vec![4])),
                server_frame::Body::Room(r) => assert_eq!(r.room_id, 7),
                other => panic!("{op}: {other:?}"),
            }
        }
        let unknown = br#"{"op":42,"x":1}"#;
        assert_eq!(decode(&server_frame(unknown)).body, Some(server_frame::Body::Json(unknown.to_vec())));
        assert_eq!(decode(&server_frame(b"not json")).op, 0);
    }

    #[test]
    fn client_frames_read_as_the_json_requests() {
        let frame = |kind| ClientFrame { kind: Some(kind) }.encode_to_vec();
        let auth = client::Auth {
            auth_token: "t".into(),
            room_id: 3,
            since: Some(client::Position { epoch: "e".into(), seq: 9 }),
            acks: true,
        };
        let req = client_request(&frame(client_frame::Kind::Auth(auth))).unwrap();
        let json: ClientRequest =
            serde_json::from_str(r#"{"authToken":"t","roomId":3,"epoch":"e","seq":9,"acks":true}"#).unwrap();
        assert_eq!(req, json);
        let send =
            client_request(&frame(client_frame::Kind::Send(client::Send { room_id: 0, msg: "m".into() })));
        assert_eq!((send.as_ref().unwrap().op, send.unwrap().msg), (Some(3), Some("m".into())));
        let ack =
            client_request(&frame(client_frame::Kind::Ack(client::Ack { msg_ids: vec![1, 2] }))).unwrap();
        assert_eq!((ack.op, ack.msg_ids), (Some(wire::OP_ACK), vec![1, 2]));
        let many = client::Ack { msg_ids: vec![1; wire::MAX_ACK_IDS + 1] };
        assert!(client_request(&frame(client_frame::Kind::Ack(many))).is_err());
        assert_eq!(client_request(&[]), Err("bad frame: empty".into()));
        assert!(client_request(b"\xff\xff\xff").unwrap_err().starts_with("bad frame: "));
        let token = format!(
            "{:?}",
            ClientFrame::decode(&*frame(client_frame::Kind::Auth(client::Auth {
                auth_token: "secret".into(),
                ..Default::default()
            })))
            .unwrap()
        );
        assert!(!token.contains("secret"), "{token}");
    }
}
