//! gochat's REST requests: every route's body parser on arbitrary bytes, and the lenient ids
//! (a number or a numeric string) the bodies and socket requests share.
#![no_main]

use gochat_proto::rest::{self, Action, Request, RequestError};
use gochat_proto::wire::{self, MAX_REFUSAL};
use libfuzzer_sys::fuzz_target;
use serde::Deserialize;
use serde_json::Value;

const AUTHED: [&str; 6] =
    ["/user/checkAuth", "/push/push", "/push/pushRoom", "/push/count", "/push/getRoomInfo", "/push/history"];

#[derive(Deserialize)]
struct Id(#[serde(deserialize_with = "wire::lenient_id")] u64);

/// The same body read as a plain JSON value, to compare what the route parsers make of it.
struct Reference(Option<Value>);

impl Reference {
    /// Asserts that a parsed field is what the body holds. serde's derived structs take an
    /// object, or an array of the fields in order. A body that parses as a struct but not as a
    /// value (a number beyond f64 in a field the struct skips) is not compared.
    fn agrees<T: PartialEq + std::fmt::Debug>(
        &self,
        name: &str,
        index: usize,
        read: fn(&Value) -> Option<T>,
        got: T,
    ) {
        let field = match &self.0 {
            None => return,
            Some(Value::Object(fields)) => fields.get(name),
            Some(Value::Array(fields)) => fields.get(index),
            Some(_) => None,
        };
        assert_eq!(field.and_then(read), Some(got), "{name}");
    }
}

fuzz_target!(|data: &[u8]| {
    let value = serde_json::from_slice::<Value>(data).ok();
    let id = value.as_ref().map(id_of);
    let body = Reference(value);
    let text = |v: &Value| v.as_str().map(str::to_string);

    for path in ["/user/register", "/user/login"] {
        match rest::parse_request(path, data) {
            Ok(Request::Register(c) | Request::Login(c)) => {
                body.agrees("userName", 0, text, c.user_name);
                body.agrees("passWord", 1, text, c.pass_word);
            }
            Ok(_) => panic!("{path} parsed as another route"),
            Err(e) => bad_body(e),
        }
    }

    // The token decides alike on every route that takes one.
    let token = match rest::parse_request("/user/logout", data) {
        Ok(Request::Logout { token }) => Some(token),
        Ok(_) => panic!("/user/logout parsed as another route"),
        Err(e) => {
            assert_eq!(e, RequestError::Session);
            None
        }
    };
    if let Some(token) = &token {
        body.agrees("authToken", 0, text, token.clone());
    }
    for path in AUTHED {
        match rest::parse_request(path, data) {
            Ok(Request::Authed { token: t, action }) => {
                assert_eq!(Some(&t), token.as_ref(), "{path}");
                match action {
                    Ok(Action::CheckAuth) => assert_eq!(path, "/user/checkAuth"),
                    Ok(Action::Push { to_user_id, room_id, msg }) => {
                        body.agrees("msg", 0, text, msg);
                        body.agrees("toUserId", 1, id_of, to_user_id);
                        if room_id != 0 {
                            body.agrees("roomId", 2, id_of, room_id);
                        }
                    }
                    Ok(Action::PushRoom { room_id, msg }) => {
                        body.agrees("msg", 0, text, msg);
                        body.agrees("roomId", 1, id_of, room_id);
                    }
                    Ok(Action::Count { room_id } | Action::RoomInfo { room_id }) => {
                        body.agrees("roomId", 0, id_of, room_id);
                    }
                    Ok(Action::History { room_id, limit }) => {
                        body.agrees("roomId", 0, id_of, room_id);
                        if let Some(limit) = limit {
                            body.agrees("limit", 1, |v| v.as_u64().map(|n| n as usize), limit);
                        }
                    }
                    Err(e) => bad_body(e),
                }
            }
            Ok(_) => panic!("{path} parsed as another route"),
            Err(e) => {
                assert_eq!(e, RequestError::Session, "{path}");
                assert!(token.is_none());
            }
        }
    }
    assert!(matches!(rest::parse_request("/push/unknown", data), Err(RequestError::UnknownRoute)));

    // A lenient id is a JSON number that fits a u64, or a string holding one.
    match serde_json::from_slice::<Id>(data) {
        Ok(Id(n)) => assert_eq!(id, Some(Some(n))),
        Err(e) => assert!(!matches!(id, Some(Some(_))), "{e}"),
    }
});

/// What a lenient id should make of `v`.
fn id_of(v: &Value) -> Option<u64> {
    match v {
        Value::Number(n) => n.as_u64(),
        Value::String(s) => s.trim().parse().ok(),
        _ => None,
    }
}

fn bad_body(e: RequestError) {
    let RequestError::BadBody(message) = e else { panic!("a body refused as {e:?}") };
    assert!(!message.is_empty());
    assert!(message.len() <= MAX_REFUSAL, "a refusal of {} bytes", message.len());
}
