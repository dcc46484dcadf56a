//! gochat's client wire formats: JSON op bodies and the TCP `v1` framing.

use std::collections::BTreeMap;

use std::io::Write;

use serde::{Deserialize, Deserializer, Serialize};

/// Private message (server → client).
pub const OP_SINGLE_SEND: i32 = 2;
/// Room message (server → client; TCP client → server).
pub const OP_ROOM_SEND: i32 = 3;
/// Room online count (server → client).
pub const OP_ROOM_COUNT: i32 = 4;
/// Room member list (server → client).
pub const OP_ROOM_INFO: i32 = 5;
/// Authenticate and join a room (TCP client → server).
pub const OP_BUILD_TCP_CONN: i32 = 6;
/// Reply to an accepted socket auth (additive: gochat's clients ignore unknown ops).
pub const OP_AUTH_OK: i32 = 7;
/// A request from the client the server could not act on (additive).
pub const OP_ERROR: i32 = 8;
/// Who joined and left a room since the last update, coalesced (server → client, additive).
pub const OP_PRESENCE: i32 = 9;
/// Join a room on an open socket (client → server), and its answer (server → client).
pub const OP_JOIN: i32 = 10;
/// Leave a room on an open socket (client → server), and its answer (server → client).
pub const OP_LEAVE: i32 = 11;
/// Acknowledge private messages (client → server): they are not kept for the user any more.
pub const OP_ACK: i32 = 12;

/// Where a room's history stands: `seq` counts the room's messages within `epoch`. A new epoch
/// (the history was lost or expired) starts counting again, so positions of another epoch say
/// nothing about this one.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Position {
    pub epoch: String,
    pub seq: u64,
}

/// An op 2 / op 3 message body, as gochat's clients render it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ChatMessage {
    pub code: i32,
    pub msg: String,
    pub from_user_id: u64,
    pub from_user_name: String,
    pub to_user_id: u64,
    pub to_user_name: String,
    pub room_id: u64,
    pub op: i32,
    /// Local time as `YYYY-MM-DD HH:MM:SS`.
    pub create_time: String,
    /// The message's unique id, as a decimal string (JavaScript numbers lose 64-bit ids); the
    /// same message delivered twice has the same id (additive: not in gochat).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub msg_id: String,
    /// Room messages of a room that keeps history: the message's number in the room and the
    /// history's epoch (additive). Always the last fields, so a store can append them to a body
    /// it already holds ([`with_position`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seq: Option<u64>,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub epoch: String,
}

/// `body` (a JSON object serialized without a position) with `"seq"` and `"epoch"` as its last
/// fields: the same bytes as serializing it with them set.
pub fn with_position(body: &[u8], seq: u64, epoch: &str) -> Vec<u8> {
    let open = body.strip_suffix(b"}").unwrap_or(body);
    let mut out = Vec::with_capacity(open.len() + 40 + epoch.len());
    out.extend_from_slice(open);
    let _ = write!(out, r#","seq":{seq},"epoch":"#);
    serde_json::to_writer(&mut out, epoch).expect("a string serializes");
    out.push(b'}');
    out
}

/// Op 4.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RoomCount {
    pub count: u64,
    pub op: i32,
    /// Which room (additive: gochat's clients are in one room; a socket may be in several).
    #[serde(rename = "roomId", default)]
    pub room_id: u64,
}

/// Op 5.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RoomInfo {
    pub op: i32,
    pub room_id: u64,
    pub count: u64,
    /// user id (as a string) → user name.
    pub room_user_info: BTreeMap<String, String>,
}

/// Op 7: the socket is authenticated and in the room.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AuthOk {
    pub op: i32,
    pub user_id: u64,
    /// Omitted when an already-joined connection repeats its auth frame.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub user_name: String,
    pub room_id: u64,
    /// The room's position and, when the client asked to recover, whether it got every message
    /// it missed (flattened: `epoch`, `seq`, `recovered`).
    #[serde(flatten)]
    pub joined: JoinedRoom,
    /// Private messages still waiting for the user after the ones sent with this reply (a
    /// client that acknowledges gets them as it acknowledges).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub pending: u32,
}

fn is_zero(n: &u32) -> bool {
    *n == 0
}

/// Where a room a socket joined stands, and whether what it missed was recovered.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct JoinedRoom {
    /// Unset when the room keeps no history.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub epoch: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seq: Option<u64>,
    /// Only when the client asked to recover: true when the missed messages follow (as op 3,
    /// oldest first); false when the gap is too old or of another epoch, so the client must
    /// reload the room (`/push/history`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub recovered: Option<bool>,
}

/// Op 10 (joined) and op 11 (left): the answer to a join or leave on an open socket.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RoomReply {
    pub op: i32,
    pub room_id: u64,
    #[serde(flatten)]
    pub joined: JoinedRoom,
}

/// Op 9: who joined and left a room since its last update, coalesced per room: a user who left
/// and came back (or the reverse) within one update is in neither list.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Presence {
    pub op: i32,
    pub room_id: u64,
    /// Users online in the room now.
    pub count: u64,
    /// user id (as a string) → user name.
    pub joined: BTreeMap<String, String>,
    /// user ids, as strings.
    pub left: Vec<String>,
    /// Joins and leaves not listed, beyond the per-update cap (a client that shows members
    /// should fetch the list with `/push/getRoomInfo`).
    #[serde(default, skip_serializing_if = "is_zero_u64")]
    pub more: u64,
}

fn is_zero_u64(n: &u64) -> bool {
    *n == 0
}

/// Op 8: a client request was refused; the connection stays open unless said otherwise.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorReply {
    pub op: i32,
    pub code: i32,
    pub message: String,
}

/// What a client sends on a socket: the WebSocket auth frame `{"authToken","roomId"}`, or a TCP
/// body (`op` 6 to authenticate, `op` 3 with `msg` to send to the room). Other fields gochat's
/// clients send (`fromUserId`, …) are ignored: the sender is always the token's user.
#[derive(Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ClientRequest {
    #[serde(default)]
    pub auth_token: String,
    #[serde(default, deserialize_with = "lenient_id")]
    pub room_id: u64,
    #[serde(default)]
    pub op: Option<i32>,
    #[serde(default)]
    pub msg: Option<String>,
    /// Auth and join: the last position the client saw in the room, to get what it missed.
    #[serde(default)]
    pub epoch: Option<String>,
    #[serde(default, deserialize_with = "lenient_opt_id")]
    pub seq: Option<u64>,
    /// Auth: this client acknowledges private messages (op 12), so they are kept until it does.
    #[serde(default)]
    pub acks: bool,
    /// Op 12: the ids of the private messages acknowledged.
    #[serde(default, deserialize_with = "lenient_ids")]
    pub msg_ids: Vec<u64>,
}

impl ClientRequest {
    /// The position to recover from, when the client sent one.
    pub fn since(&self) -> Option<Position> {
        let epoch = self.epoch.as_deref()?;
        // An epoch longer than any issued one matches none: the client is told to reload, and
        // what it sent goes no further than here.
        let epoch = if epoch.len() > MAX_EPOCH_BYTES { String::new() } else { epoch.to_string() };
        Some(Position { epoch, seq: self.seq? })
    }
}

/// Longest session token a socket or the REST API takes, in bytes. Control issues 48 hex
/// digits; the bound leaves room for other token schemes while keeping what one socket's auth
/// adds to a gateway's batched `ConnOpen` call small. A longer token is refused before it is
/// batched or looked up.
pub const MAX_TOKEN_BYTES: usize = 256;

/// Longest room epoch a client may quote (control issues 8 hex digits).
pub const MAX_EPOCH_BYTES: usize = 32;

fn lenient_opt_id<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u64>, D::Error> {
    lenient_number(d).map(Some)
}

fn lenient_ids<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u64>, D::Error> {
    use serde::de::Error;
    let values = Vec::<serde_json::Value>::deserialize(d)?;
    if values.len() > MAX_ACK_IDS {
        return Err(D::Error::custom(format!("at most {MAX_ACK_IDS} ids at once")));
    }
    values.into_iter().map(|v| lenient_id(v).map_err(D::Error::custom)).collect()
}

/// Most message ids one acknowledgement may carry.
pub const MAX_ACK_IDS: usize = 256;

/// Deserializes an id sent as a number or a numeric string (gochat's clients send both).
pub fn lenient_id<'de, D: Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
    lenient_number(d)
}

fn lenient_number<'de, D: Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
    use serde::de::Error;
    use serde_json::Value;
    match Value::deserialize(d)? {
        Value::Number(n) => n.as_u64().ok_or_else(|| D::Error::custom(format!("{n} is not a valid id"))),
        Value::String(s) => {
            s.trim().parse().map_err(|_| D::Error::custom(format!("{s:?} is not a valid id")))
        }
        // Named, not written out: an array or object may be as large as the request.
        Value::Array(_) => Err(D::Error::custom("an array is not a valid id")),
        Value::Object(_) => Err(D::Error::custom("an object is not a valid id")),
        other => Err(D::Error::custom(format!("{other} is not a valid id"))),
    }
}

/// A session's name between control and gateways: 64-bit FNV-1a of its token, so a logout can
/// close the sockets that used the token without the token travelling again. Stable across
/// builds (every control and gateway must agree); a collision would need the same user too.
pub fn session_fingerprint(token: &str) -> u64 {
    token.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| (h ^ b as u64).wrapping_mul(0x0100_0000_01b3))
}

impl std::fmt::Debug for ClientRequest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientRequest")
            .field("auth_token", &"<redacted>")
            .field("room_id", &self.room_id)
            .field("op", &self.op)
            .field("msg", &self.msg)
            .field("epoch", &self.epoch)
            .field("seq", &self.seq)
            .field("acks", &self.acks)
            .field("msg_ids", &self.msg_ids)
            .finish()
    }
}

/// The longest reason a WebSocket close frame carries: its payload is at most 125 bytes, two
/// of them the code (RFC 6455 §5.5).
pub const MAX_CLOSE_REASON_BYTES: usize = 123;

/// Whether an application (the server API's disconnect) may close a socket with `code`: a
/// normal close, a policy close, or the registered and private ranges (RFC 6455 §7.4.2).
pub fn is_app_close_code(code: u16) -> bool {
    matches!(code, 1000 | 1008 | 3000..=4999)
}

/// The longest explanation a client is sent for a refused request (op 8, a REST code 1).
pub const MAX_REFUSAL: usize = 256;

/// `message` cut to at most [`MAX_REFUSAL`] bytes, keeping its start and its end around an
/// ellipsis. serde's explanations quote the offending value whole, and a refusal must not
/// grow with what the client sent; the end says what was expected, and where.
pub fn clip_refusal(message: String) -> String {
    const TAIL: usize = 64;
    if message.len() <= MAX_REFUSAL {
        return message;
    }
    let mut head = MAX_REFUSAL - TAIL - '…'.len_utf8();
    while !message.is_char_boundary(head) {
        head -= 1;
    }
    let mut tail = message.len() - TAIL;
    while !message.is_char_boundary(tail) {
        tail += 1;
    }
    format!("{}…{}", &message[..head], &message[tail..])
}

/// Magic prefix of a TCP frame.
pub const TCP_MAGIC: &[u8; 2] = b"v1";
/// Bytes before the body: magic and the 16-bit total length.
pub const TCP_HEADER_LEN: usize = 4;
/// Largest body a TCP frame carries. The length field counts the header too, and gochat's
/// clients read it as a signed 16-bit number, so frames stay under 32 KiB.
pub const TCP_MAX_BODY: usize = i16::MAX as usize - TCP_HEADER_LEN;

/// Errors of the TCP `v1` framing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TcpFrameError {
    /// The frame does not start with `v1`.
    BadMagic,
    /// The length field is below the header size.
    BadLength(u16),
    /// The body is over [`TCP_MAX_BODY`] (encode) or the configured limit (decode).
    TooLarge(usize),
}

impl std::fmt::Display for TcpFrameError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::BadMagic => f.write_str("frame does not start with \"v1\""),
            Self::BadLength(n) => write!(f, "frame length {n} is shorter than its header"),
            Self::TooLarge(n) => write!(f, "frame body of {n} bytes is over the limit"),
        }
    }
}

impl std::error::Error for TcpFrameError {}

/// Appends one TCP frame holding `body` to `out`.
pub fn encode_tcp_frame(body: &[u8], out: &mut Vec<u8>) -> Result<(), TcpFrameError> {
    if body.len() > TCP_MAX_BODY {
        return Err(TcpFrameError::TooLarge(body.len()));
    }
    out.reserve(TCP_HEADER_LEN + body.len());
    out.extend_from_slice(TCP_MAGIC);
    out.extend_from_slice(&((body.len() + TCP_HEADER_LEN) as u16).to_be_bytes());
    out.extend_from_slice(body);
    Ok(())
}

/// Splits the first complete TCP frame off `buf`: `Ok(Some((body range, frame length)))`,
/// `Ok(None)` when more bytes are needed. `max_body` bounds what a peer may send.
pub fn decode_tcp_frame(
    buf: &[u8],
    max_body: usize,
) -> Result<Option<(std::ops::Range<usize>, usize)>, TcpFrameError> {
    if buf.len() >= 2 && &buf[..2] != TCP_MAGIC {
        return Err(TcpFrameError::BadMagic);
    }
    if buf.len() == 1 && buf[0] != TCP_MAGIC[0] {
        return Err(TcpFrameError::BadMagic);
    }
    if buf.len() < TCP_HEADER_LEN {
        return Ok(None);
    }
    let total = u16::from_be_bytes([buf[2], buf[3]]);
    let total_usize = total as usize;
    if total_usize < TCP_HEADER_LEN {
        return Err(TcpFrameError::BadLength(total));
    }
    if total_usize - TCP_HEADER_LEN > max_body {
        return Err(TcpFrameError::TooLarge(total_usize - TCP_HEADER_LEN));
    }
    if buf.len() < total_usize {
        return Ok(None);
    }
    Ok(Some((TCP_HEADER_LEN..total_usize, total_usize)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn session_fingerprint_is_fnv1a() {
        // Published FNV-1a 64 vectors: every node must compute the same value.
        assert_eq!(session_fingerprint(""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(session_fingerprint("a"), 0xaf63_dc4c_8601_ec8c);
        assert_eq!(session_fingerprint("foobar"), 0x8594_4171_f739_67e8);
    }

    #[test]
    fn tcp_frame_round_trip() {
        let mut out = Vec::new();
        encode_tcp_frame(br#"{"op":6}"#, &mut out).unwrap();
        assert_eq!(&out[..4], b"v1\x00\x0c");
        let (body, len) = decode_tcp_frame(&out, 1024).unwrap().unwrap();
        assert_eq!(&out[body], br#"{"op":6}"#);
        assert_eq!(len, out.len());
    }

    #[test]
    fn tcp_frame_partial_and_bad() {
        let mut out = Vec::new();
        encode_tcp_frame(b"hello", &mut out).unwrap();
        for cut in 0..out.len() {
            assert_eq!(decode_tcp_frame(&out[..cut], 1024), Ok(None), "cut at {cut}");
        }
        assert_eq!(decode_tcp_frame(b"GET ", 1024), Err(TcpFrameError::BadMagic));
        assert_eq!(decode_tcp_frame(b"x", 1024), Err(TcpFrameError::BadMagic));
        assert_eq!(decode_tcp_frame(b"v1\x00\x02", 1024), Err(TcpFrameError::BadLength(2)));
        assert_eq!(decode_tcp_frame(b"v1\x01\x00", 16), Err(TcpFrameError::TooLarge(252)));
        assert_eq!(
            encode_tcp_frame(&vec![b'a'; TCP_MAX_BODY + 1], &mut out),
            Err(TcpFrameError::TooLarge(TCP_MAX_BODY + 1))
        );
    }

    #[test]
    fn client_request_accepts_string_and_number_ids() {
        let a: ClientRequest = serde_json::from_str(r#"{"authToken":"t","roomId":1}"#).unwrap();
        let b: ClientRequest = serde_json::from_str(r#"{"authToken":"t","roomId":"1"}"#).unwrap();
        assert_eq!(a, b);
        assert!(serde_json::from_str::<ClientRequest>(r#"{"roomId":"x"}"#).is_err());
    }

    #[test]
    fn refusals_are_clipped_around_an_ellipsis() {
        assert_eq!(clip_refusal("short".into()), "short");
        let long = format!("invalid type: string \"{}\", expected i32 at line 1 column 999", "é".repeat(500));
        let clipped = clip_refusal(long);
        assert!(clipped.len() <= MAX_REFUSAL, "{}", clipped.len());
        assert!(clipped.starts_with("invalid type: string \"éé"), "{clipped}");
        assert!(clipped.contains("é…é") && clipped.ends_with("\", expected i32 at line 1 column 999"));
        let id =
            serde_json::from_str::<ClientRequest>(&format!(r#"{{"roomId":[{}0]}}"#, "1e15,".repeat(1000)));
        assert!(id.unwrap_err().to_string().starts_with("an array is not a valid id"));
    }

    #[test]
    fn room_info_shape() {
        let info = RoomInfo {
            op: OP_ROOM_INFO,
            room_id: 1,
            count: 1,
            room_user_info: [("3".to_string(), "demo".to_string())].into(),
        };
        assert_eq!(
            serde_json::to_string(&info).unwrap(),
            r#"{"op":5,"roomId":1,"count":1,"roomUserInfo":{"3":"demo"}}"#
        );
    }
}
