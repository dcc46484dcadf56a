//! The binary protocol through real sockets against `gochat up` (both gateway drivers:
//! GOCHAT_TEST_DRIVER): a WebSocket client that offers the `gochat-pb` subprotocol speaks
//! protobuf both ways, beside JSON clients in the same rooms, with every operation.

use crate::common;

use std::time::Duration;

use common::Server;
use futures_util::{SinkExt, StreamExt};
use gochat_proto::client::{self, client_frame, server_frame, ClientFrame, ServerFrame};
use gochat_proto::wire;
use prost::Message as _;
use serde_json::json;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::Message;

struct Binary(tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>);

impl Binary {
    async fn connect(s: &Server) -> Self {
        let mut request = s.ws_url().into_client_request().unwrap();
        request.headers_mut().insert("Sec-WebSocket-Protocol", "gochat-pb".parse().unwrap());
        let (stream, response) = tokio_tungstenite::connect_async(request).await.expect("ws connects");
        assert_eq!(response.headers()["Sec-WebSocket-Protocol"], "gochat-pb");
        Self(stream)
    }

    async fn send(&mut self, kind: client_frame::Kind) {
        let frame = ClientFrame { kind: Some(kind) }.encode_to_vec();
        self.0.send(Message::binary(frame)).await.unwrap();
    }

    /// The next server frame with `op`, skipping others; every one is a binary frame.
    async fn recv_op(&mut self, op: i32) -> ServerFrame {
        loop {
            let msg = tokio::time::timeout(common::WAIT, self.0.next()).await.expect("a frame in time");
            match msg {
                Some(Ok(Message::Binary(b))) => {
                    let frame = ServerFrame::decode(&b[..]).expect("a ServerFrame");
                    if frame.op == op {
                        return frame;
                    }
                }
                Some(Ok(Message::Text(t))) => panic!("a text frame to a binary client: {t}"),
                Some(Ok(_)) => {}
                other => panic!("socket ended waiting for op {op}: {other:?}"),
            }
        }
    }

    async fn message(&mut self) -> client::Message {
        match self.recv_op(wire::OP_ROOM_SEND).await.body {
            Some(server_frame::Body::Message(m)) => m,
            other => panic!("{other:?}"),
        }
    }
}

fn auth(token: &str, room_id: u64, since: Option<client::Position>, acks: bool) -> client_frame::Kind {
    client_frame::Kind::Auth(client::Auth { auth_token: token.into(), room_id, since, acks })
}

#[tokio::test]
async fn a_binary_client_does_everything_a_json_client_does() {
    let s = Server::start().await;
    let (a, b) = (s.user("a").await, s.user("b").await);
    let mut json_client = s.ws(&b, 1).await;
    let mut bin = Binary::connect(&s).await;
    bin.send(auth(&a.token, 1, None, true)).await;
    let Some(server_frame::Body::AuthOk(ok)) = bin.recv_op(wire::OP_AUTH_OK).await.body else {
        panic!("auth")
    };
    assert_eq!((ok.user_id, ok.room_id), (a.id, 1));
    let start = ok.joined.unwrap().position.unwrap();

    // Room messages both ways, the same fields as JSON's.
    s.push_room(&b, 1, "to both").await;
    let m = bin.message().await;
    let j = json_client.recv_op(wire::OP_ROOM_SEND).await;
    assert_eq!((m.msg.as_str(), m.from_user_id, m.room_id), ("to both", b.id, 1));
    assert_eq!(
        (m.msg_id.to_string(), m.seq, m.epoch.as_str()),
        (j["msgId"].as_str().unwrap().to_string(), j["seq"].as_u64(), j["epoch"].as_str().unwrap())
    );
    bin.send(client_frame::Kind::Send(client::Send { room_id: 0, msg: "from binary".into() })).await;
    assert_eq!(json_client.recv_op(wire::OP_ROOM_SEND).await["msg"], "from binary");
    assert_eq!(bin.message().await.msg, "from binary");

    // Join, leave, presence.
    bin.send(client_frame::Kind::Join(client::Join { room_id: 2, since: None })).await;
    let joined = bin.recv_op(wire::OP_JOIN).await;
    assert!(matches!(joined.body, Some(server_frame::Body::Room(r)) if r.room_id == 2));
    let presence = bin.recv_op(wire::OP_PRESENCE).await;
    assert!(matches!(presence.body, Some(server_frame::Body::Presence(p)) if p.count >= 1));
    bin.send(client_frame::Kind::Leave(client::Leave { room_id: 2 })).await;
    bin.recv_op(wire::OP_LEAVE).await;

    // Private messages with acknowledgements.
    s.api("/push/push", json!({"authToken": b.token, "msg": "private", "toUserId": a.id.to_string()})).await;
    let Some(server_frame::Body::Message(p)) = bin.recv_op(wire::OP_SINGLE_SEND).await.body else { panic!() };
    assert_eq!(p.msg, "private");
    bin.send(client_frame::Kind::Ack(client::Ack { msg_ids: vec![p.msg_id] })).await;

    // Bad frames are answered in kind, and the socket stays.
    bin.0.send(Message::binary(vec![0xff, 0xff])).await.unwrap();
    let Some(server_frame::Body::Error(e)) = bin.recv_op(wire::OP_ERROR).await.body else { panic!() };
    assert!(e.message.starts_with("bad frame"), "{}", e.message);

    // A reconnect recovers, in protobuf too; the acknowledged message is not sent again.
    tokio::time::sleep(Duration::from_millis(200)).await;
    bin.0.close(None).await.unwrap();
    s.push_room(&b, 1, "while away").await;
    while json_client.recv_op(wire::OP_ROOM_SEND).await["msg"] != "while away" {}
    let mut bin = Binary::connect(&s).await;
    let since = client::Position { epoch: start.epoch.clone(), seq: start.seq + 2 };
    bin.send(auth(&a.token, 1, Some(since), true)).await;
    let Some(server_frame::Body::AuthOk(ok)) = bin.recv_op(wire::OP_AUTH_OK).await.body else { panic!() };
    assert_eq!(ok.joined.unwrap().recovered, Some(true));
    assert_eq!(ok.pending, 0);
    assert_eq!(bin.message().await.msg, "while away");
    s.shutdown().await;
}
