//! Whether one set of `.proto` files only adds to another: what [`check`] finds, compared by
//! fully-qualified names (a file may be split or renamed; a package may not change).
//!
//! Breaking: a service or method removed, a method's request or response type or streaming
//! changed; a message removed, one of its fields removed, renamed, renumbered or changed in
//! type, label (singular, `optional`, `repeated`) or oneof; a field number or name used again
//! (one a removed field had, or one the message reserved); a reservation dropped; an enum or one
//! of its values removed, or a value renumbered. New services, methods, messages, fields (also
//! in an existing oneof), enums and enum values are additions.

use std::collections::BTreeMap;
use std::fmt;

use prost_types::field_descriptor_proto::{Label, Type};
use prost_types::{
    DescriptorProto, EnumDescriptorProto, FieldDescriptorProto, FileDescriptorSet, ServiceDescriptorProto,
};

/// A change that a peer built from the other version would not understand.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Breaking {
    ServiceRemoved {
        service: String,
    },
    MethodRemoved {
        service: String,
        method: String,
    },
    /// `what`: request, response or streaming.
    MethodChanged {
        service: String,
        method: String,
        what: &'static str,
        was: String,
        now: String,
    },
    MessageRemoved {
        message: String,
    },
    FieldRemoved {
        message: String,
        field: String,
        number: i32,
    },
    FieldRenumbered {
        message: String,
        field: String,
        was: i32,
        now: i32,
    },
    /// `what`: type, label or oneof.
    FieldChanged {
        message: String,
        field: String,
        what: &'static str,
        was: String,
        now: String,
    },
    /// A new field with the number or name an old field had, or that the message reserved.
    FieldReused {
        message: String,
        field: String,
        number: i32,
        was: String,
    },
    ReservationDropped {
        message: String,
        reserved: String,
    },
    EnumRemoved {
        name: String,
    },
    EnumValueRemoved {
        name: String,
        value: String,
    },
    EnumValueRenumbered {
        name: String,
        value: String,
        was: i32,
        now: i32,
    },
}

impl fmt::Display for Breaking {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::ServiceRemoved { service } => write!(f, "service {service} removed"),
            Self::MethodRemoved { service, method } => write!(f, "method {service}.{method} removed"),
            Self::MethodChanged { service, method, what, was, now } => {
                write!(f, "method {service}.{method}: {what} changed from {was} to {now}")
            }
            Self::MessageRemoved { message } => write!(f, "message {message} removed"),
            Self::FieldRemoved { message, field, number } => {
                write!(f, "field {message}.{field} (= {number}) removed")
            }
            Self::FieldRenumbered { message, field, was, now } => {
                write!(f, "field {message}.{field} renumbered from {was} to {now}")
            }
            Self::FieldChanged { message, field, what, was, now } => {
                write!(f, "field {message}.{field}: {what} changed from {was} to {now}")
            }
            Self::FieldReused { message, field, number, was } => {
                write!(f, "field {message}.{field} (= {number}) reuses {was}")
            }
            Self::ReservationDropped { message, reserved } => {
                write!(f, "message {message} no longer reserves {reserved}")
            }
            Self::EnumRemoved { name } => write!(f, "enum {name} removed"),
            Self::EnumValueRemoved { name, value } => write!(f, "enum value {name}.{value} removed"),
            Self::EnumValueRenumbered { name, value, was, now } => {
                write!(f, "enum value {name}.{value} renumbered from {was} to {now}")
            }
        }
    }
}

/// Every way `current` breaks what `previous` defined; empty when it only adds.
pub fn check(previous: &FileDescriptorSet, current: &FileDescriptorSet) -> Vec<Breaking> {
    let (was, now) = (Index::of(previous), Index::of(current));
    let mut found = Vec::new();
    for (name, service) in &was.services {
        match now.services.get(name) {
            None => found.push(Breaking::ServiceRemoved { service: name.clone() }),
            Some(current) => methods(name, service, current, &mut found),
        }
    }
    for (name, message) in &was.messages {
        match now.messages.get(name) {
            None => found.push(Breaking::MessageRemoved { message: name.clone() }),
            Some(current) => fields(name, message, current, &mut found),
        }
    }
    for (name, e) in &was.enums {
        let Some(current) = now.enums.get(name) else {
            found.push(Breaking::EnumRemoved { name: name.clone() });
            continue;
        };
        for value in &e.value {
            match current.value.iter().find(|v| v.name == value.name) {
                None => {
                    found.push(Breaking::EnumValueRemoved { name: name.clone(), value: value.name().into() })
                }
                Some(v) if v.number != value.number => found.push(Breaking::EnumValueRenumbered {
                    name: name.clone(),
                    value: value.name().into(),
                    was: value.number(),
                    now: v.number(),
                }),
                Some(_) => {}
            }
        }
    }
    found
}

/// Services, messages and enums of a descriptor set by fully-qualified name (`gochat.logic.User`,
/// nested ones as `gochat.client.RoomInfo.MembersEntry`).
#[derive(Default)]
struct Index<'a> {
    services: BTreeMap<String, &'a ServiceDescriptorProto>,
    messages: BTreeMap<String, &'a DescriptorProto>,
    enums: BTreeMap<String, &'a EnumDescriptorProto>,
}

impl<'a> Index<'a> {
    fn of(set: &'a FileDescriptorSet) -> Self {
        let mut index = Self::default();
        for file in &set.file {
            let prefix = file.package().to_string();
            for s in &file.service {
                index.services.insert(qualified(&prefix, s.name()), s);
            }
            for m in &file.message_type {
                index.message(&prefix, m);
            }
            for e in &file.enum_type {
                index.enums.insert(qualified(&prefix, e.name()), e);
            }
        }
        index
    }

    fn message(&mut self, prefix: &str, m: &'a DescriptorProto) {
        let name = qualified(prefix, m.name());
        for nested in &m.nested_type {
            self.message(&name, nested);
        }
        for e in &m.enum_type {
            self.enums.insert(qualified(&name, e.name()), e);
        }
        self.messages.insert(name, m);
    }
}

fn qualified(prefix: &str, name: &str) -> String {
    if prefix.is_empty() {
        name.to_string()
    } else {
        format!("{prefix}.{name}")
    }
}

fn methods(
    service: &str,
    was: &ServiceDescriptorProto,
    now: &ServiceDescriptorProto,
    found: &mut Vec<Breaking>,
) {
    for m in &was.method {
        let Some(n) = now.method.iter().find(|n| n.name == m.name) else {
            found.push(Breaking::MethodRemoved { service: service.into(), method: m.name().into() });
            continue;
        };
        let streaming = |client: bool, server: bool| format!("client {client}, server {server}");
        let pairs = [
            ("request", m.input_type().to_string(), n.input_type().to_string()),
            ("response", m.output_type().to_string(), n.output_type().to_string()),
            (
                "streaming",
                streaming(m.client_streaming(), m.server_streaming()),
                streaming(n.client_streaming(), n.server_streaming()),
            ),
        ];
        for (what, was, now) in pairs {
            if was != now {
                let (service, method) = (service.into(), m.name().into());
                found.push(Breaking::MethodChanged { service, method, what, was, now });
            }
        }
    }
}

fn fields(message: &str, was: &DescriptorProto, now: &DescriptorProto, found: &mut Vec<Breaking>) {
    for f in &was.field {
        let Some(n) = now.field.iter().find(|n| n.name == f.name) else {
            found.push(Breaking::FieldRemoved {
                message: message.into(),
                field: f.name().into(),
                number: f.number(),
            });
            continue;
        };
        if n.number() != f.number() {
            found.push(Breaking::FieldRenumbered {
                message: message.into(),
                field: f.name().into(),
                was: f.number(),
                now: n.number(),
            });
        }
        let pairs = [
            ("type", field_type(f), field_type(n)),
            ("label", label(f).to_string(), label(n).to_string()),
            ("oneof", oneof(was, f), oneof(now, n)),
        ];
        for (what, was, now) in pairs {
            if was != now {
                let (message, field) = (message.into(), f.name().into());
                found.push(Breaking::FieldChanged { message, field, what, was, now });
            }
        }
    }
    for n in now.field.iter().filter(|n| !was.field.iter().any(|f| f.name == n.name)) {
        let reused = if let Some(f) = was.field.iter().find(|f| f.number == n.number) {
            Some(format!("the number of field {}", f.name()))
        } else if was.reserved_range.iter().any(|r| (r.start()..r.end()).contains(&n.number())) {
            Some(format!("reserved number {}", n.number()))
        } else if was.reserved_name.iter().any(|r| r == n.name()) {
            Some(format!("reserved name {:?}", n.name()))
        } else {
            None
        };
        if let Some(was) = reused {
            let (message, field) = (message.into(), n.name().into());
            found.push(Breaking::FieldReused { message, field, number: n.number(), was });
        }
    }
    for r in &was.reserved_range {
        if !now.reserved_range.iter().any(|n| n.start() <= r.start() && r.end() <= n.end()) {
            let reserved = match r.end() - r.start() {
                1 => format!("number {}", r.start()),
                _ => format!("numbers {} to {}", r.start(), r.end() - 1),
            };
            found.push(Breaking::ReservationDropped { message: message.into(), reserved });
        }
    }
    for r in was.reserved_name.iter().filter(|r| !now.reserved_name.contains(r)) {
        let reserved = format!("name {r:?}");
        found.push(Breaking::ReservationDropped { message: message.into(), reserved });
    }
}

/// `uint64`, or the message or enum a field holds (`message .gochat.logic.User`).
fn field_type(f: &FieldDescriptorProto) -> String {
    let name = f.r#type().as_str_name().trim_start_matches("TYPE_").to_lowercase();
    match f.r#type() {
        Type::Message | Type::Enum | Type::Group => format!("{name} {}", f.type_name()),
        _ => name,
    }
}

/// Singular, `optional` (proto3's explicit presence), `repeated` or `required`.
fn label(f: &FieldDescriptorProto) -> &'static str {
    match f.label() {
        Label::Repeated => "repeated",
        Label::Required => "required",
        Label::Optional if f.proto3_optional() => "optional",
        Label::Optional => "singular",
    }
}

/// The oneof a field is in, `none` for a proto3 `optional` (its oneof is synthetic) or none.
fn oneof(m: &DescriptorProto, f: &FieldDescriptorProto) -> String {
    match f.oneof_index {
        Some(i) if !f.proto3_optional() => {
            m.oneof_decl.get(i as usize).map_or_else(|| format!("#{i}"), |o| o.name().to_string())
        }
        _ => "none".to_string(),
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use prost::Message as _;

    use super::*;

    /// One file, `t.proto` in package `t`, compiled by the vendored protoc.
    fn compile(body: &str) -> FileDescriptorSet {
        static N: AtomicUsize = AtomicUsize::new(0);
        let n = N.fetch_add(1, Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!("gochat-additive-{}-{n}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("t.proto"), format!("syntax = \"proto3\";\npackage t;\n{body}")).unwrap();
        let out = dir.join("set.bin");
        let protoc = protoc_bin_vendored::protoc_bin_path().unwrap();
        let result = std::process::Command::new(protoc)
            .arg(format!("--descriptor_set_out={}", out.display()))
            .arg("-I")
            .arg(&dir)
            .arg("t.proto")
            .output()
            .unwrap();
        let bytes = std::fs::read(&out);
        std::fs::remove_dir_all(&dir).unwrap();
        assert!(result.status.success(), "protoc: {}\n{body}", String::from_utf8_lossy(&result.stderr));
        FileDescriptorSet::decode(bytes.unwrap().as_slice()).unwrap()
    }

    const BASE: &str = r#"
service S {
  rpc Get(Req) returns (Rep);
  rpc Watch(Req) returns (stream Rep);
}
service Other {
  rpc Ping(Rep) returns (Rep);
}
message Req {
  uint64 id = 1;
  string name = 2;
  repeated uint64 ids = 3;
  oneof target {
    uint64 room = 4;
    uint64 user = 5;
  }
  optional bool more = 6;
  Inner inner = 7;
  reserved 9, 20 to 29;
  reserved "old";
  message Inner {
    string x = 1;
  }
}
message Rep {
  Req.Inner inner = 1;
  map<uint64, string> members = 2;
  Kind kind = 3;
}
message Unused {}
enum Kind {
  KIND_UNSPECIFIED = 0;
  KIND_A = 1;
}
"#;

    /// BASE with each `(from, to)` replaced once; each `from` must be in it.
    fn changed(edits: &[(&str, &str)]) -> String {
        let mut text = BASE.to_string();
        for (from, to) in edits {
            assert_eq!(text.matches(from).count(), 1, "{from:?} once in BASE");
            text = text.replacen(from, to, 1);
        }
        text
    }

    fn breaks(edits: &[(&str, &str)]) -> Vec<Breaking> {
        check(&compile(BASE), &compile(&changed(edits)))
    }

    fn s(x: &str) -> String {
        x.to_string()
    }

    #[test]
    fn additions_pass() {
        assert_eq!(breaks(&[]), vec![]);
        let added = breaks(&[
            ("rpc Watch(Req) returns (stream Rep);", "rpc Watch(Req) returns (stream Rep);\n  rpc Put(New) returns (Rep);"),
            ("uint64 user = 5;", "uint64 user = 5;\n    uint64 gateway = 8;"),
            ("Inner inner = 7;", "Inner inner = 7;\n  repeated string tags = 10;\n  optional New extra = 11;"),
            ("string x = 1;", "string x = 1;\n    uint32 y = 2;"),
            ("message Unused {}", "message Unused {}\nmessage New { Kind kind = 1; }\nservice Third { rpc Go(New) returns (New); }"),
            ("KIND_A = 1;", "KIND_A = 1;\n  KIND_B = 2;"),
        ]);
        assert_eq!(added, vec![]);
    }

    #[test]
    fn a_removed_service_or_method_breaks() {
        let other = "service Other {\n  rpc Ping(Rep) returns (Rep);\n}";
        assert_eq!(breaks(&[(other, "")]), vec![Breaking::ServiceRemoved { service: s("t.Other") }]);
        assert_eq!(
            breaks(&[("rpc Watch(Req) returns (stream Rep);", "")]),
            vec![Breaking::MethodRemoved { service: s("t.S"), method: s("Watch") }]
        );
    }

    #[test]
    fn a_method_with_other_types_or_streaming_breaks() {
        let method = |what, was: &str, now: &str| Breaking::MethodChanged {
            service: s("t.S"),
            method: s("Get"),
            what,
            was: s(was),
            now: s(now),
        };
        // The kind of change ConnOpen once made: a batch message under the same method.
        assert_eq!(
            breaks(&[("rpc Get(Req) returns (Rep);", "rpc Get(Unused) returns (Rep);")]),
            vec![method("request", ".t.Req", ".t.Unused")]
        );
        assert_eq!(
            breaks(&[("rpc Get(Req) returns (Rep);", "rpc Get(Req) returns (Req);")]),
            vec![method("response", ".t.Rep", ".t.Req")]
        );
        assert_eq!(
            breaks(&[("rpc Get(Req) returns (Rep);", "rpc Get(stream Req) returns (Rep);")]),
            vec![method("streaming", "client false, server false", "client true, server false")]
        );
    }

    #[test]
    fn a_removed_message_or_field_breaks() {
        assert_eq!(
            breaks(&[("message Unused {}", "")]),
            vec![Breaking::MessageRemoved { message: s("t.Unused") }]
        );
        assert_eq!(
            breaks(&[("  string name = 2;\n", "")]),
            vec![Breaking::FieldRemoved { message: s("t.Req"), field: s("name"), number: 2 }]
        );
        // In a oneof too.
        assert_eq!(
            breaks(&[("    uint64 user = 5;\n", "")]),
            vec![Breaking::FieldRemoved { message: s("t.Req"), field: s("user"), number: 5 }]
        );
    }

    #[test]
    fn a_renumbered_field_breaks() {
        assert_eq!(
            breaks(&[("uint64 id = 1;", "uint64 id = 12;")]),
            vec![Breaking::FieldRenumbered { message: s("t.Req"), field: s("id"), was: 1, now: 12 }]
        );
    }

    #[test]
    fn a_field_of_another_type_label_or_oneof_breaks() {
        let field = |message: &str, field: &str, what, was: &str, now: &str| Breaking::FieldChanged {
            message: s(message),
            field: s(field),
            what,
            was: s(was),
            now: s(now),
        };
        // Wire-compatible scalars too: the other side reads another type.
        assert_eq!(
            breaks(&[("uint64 id = 1;", "int64 id = 1;")]),
            vec![field("t.Req", "id", "type", "uint64", "int64")]
        );
        assert_eq!(
            breaks(&[("Inner inner = 7;", "Unused inner = 7;")]),
            vec![field("t.Req", "inner", "type", "message .t.Req.Inner", "message .t.Unused")]
        );
        assert_eq!(
            breaks(&[("Kind kind = 3;", "uint32 kind = 3;")]),
            vec![field("t.Rep", "kind", "type", "enum .t.Kind", "uint32")]
        );
        // In a nested message, and in a map's value (its entry message).
        assert_eq!(
            breaks(&[("string x = 1;", "bytes x = 1;")]),
            vec![field("t.Req.Inner", "x", "type", "string", "bytes")]
        );
        assert_eq!(
            breaks(&[("map<uint64, string>", "map<uint64, bytes>")]),
            vec![field("t.Rep.MembersEntry", "value", "type", "string", "bytes")]
        );
        assert_eq!(
            breaks(&[("repeated uint64 ids = 3;", "uint64 ids = 3;")]),
            vec![field("t.Req", "ids", "label", "repeated", "singular")]
        );
        assert_eq!(
            breaks(&[("optional bool more = 6;", "bool more = 6;")]),
            vec![field("t.Req", "more", "label", "optional", "singular")]
        );
        assert_eq!(
            breaks(&[
                ("    uint64 room = 4;\n", ""),
                ("Inner inner = 7;", "Inner inner = 7;\n  uint64 room = 4;")
            ]),
            vec![field("t.Req", "room", "oneof", "target", "none")]
        );
    }

    #[test]
    fn a_reused_number_or_name_breaks() {
        // A rename is a removal and a reuse of the number.
        assert_eq!(
            breaks(&[("string name = 2;", "string title = 2;")]),
            vec![
                Breaking::FieldRemoved { message: s("t.Req"), field: s("name"), number: 2 },
                Breaking::FieldReused {
                    message: s("t.Req"),
                    field: s("title"),
                    number: 2,
                    was: s("the number of field name")
                },
            ]
        );
        // protoc refuses a reserved number or name in use, so these drop the reservation too.
        let reuse = |field: &str, number, was: &str, reserved: &str| {
            vec![
                Breaking::FieldReused { message: s("t.Req"), field: s(field), number, was: s(was) },
                Breaking::ReservationDropped { message: s("t.Req"), reserved: s(reserved) },
            ]
        };
        let add = |line: &str| ("Inner inner = 7;", format!("Inner inner = 7;\n  {line}"));
        let (at, with) = add("bool again = 9;");
        assert_eq!(
            breaks(&[(at, &with), ("reserved 9, 20 to 29;", "reserved 20 to 29;")]),
            reuse("again", 9, "reserved number 9", "number 9")
        );
        let (at, with) = add("bool again = 25;");
        assert_eq!(
            breaks(&[(at, &with), ("reserved 9, 20 to 29;", "reserved 9;")]),
            reuse("again", 25, "reserved number 25", "numbers 20 to 29")
        );
        let (at, with) = add("bool old = 8;");
        assert_eq!(
            breaks(&[(at, &with), ("reserved \"old\";", "")]),
            reuse("old", 8, "reserved name \"old\"", "name \"old\"")
        );
    }

    #[test]
    fn a_dropped_reservation_breaks() {
        assert_eq!(
            breaks(&[("reserved 9, 20 to 29;", "reserved 9;")]),
            vec![Breaking::ReservationDropped { message: s("t.Req"), reserved: s("numbers 20 to 29") }]
        );
        assert_eq!(
            breaks(&[("reserved \"old\";", "")]),
            vec![Breaking::ReservationDropped { message: s("t.Req"), reserved: s("name \"old\"") }]
        );
        // Reserving more keeps the old reservations.
        assert_eq!(breaks(&[("reserved 9, 20 to 29;", "reserved 9, 12, 20 to 39;")]), vec![]);
    }

    #[test]
    fn a_removed_or_renumbered_enum_value_breaks() {
        assert_eq!(
            breaks(&[("  KIND_A = 1;\n", "")]),
            vec![Breaking::EnumValueRemoved { name: s("t.Kind"), value: s("KIND_A") }]
        );
        assert_eq!(
            breaks(&[("KIND_A = 1;", "KIND_A = 2;")]),
            vec![Breaking::EnumValueRenumbered { name: s("t.Kind"), value: s("KIND_A"), was: 1, now: 2 }]
        );
        let base = compile(BASE);
        let mut without = base.clone();
        without.file[0].enum_type.clear();
        assert_eq!(check(&base, &without), vec![Breaking::EnumRemoved { name: s("t.Kind") }]);
    }

    #[test]
    fn every_kind_reads_as_a_sentence() {
        let b = Breaking::MethodChanged {
            service: s("gochat.logic.Logic"),
            method: s("ConnOpen"),
            what: "request",
            was: s(".gochat.logic.ConnOpenRequest"),
            now: s(".gochat.logic.ConnOpenBatch"),
        };
        assert_eq!(
            b.to_string(),
            "method gochat.logic.Logic.ConnOpen: request changed from .gochat.logic.ConnOpenRequest to \
             .gochat.logic.ConnOpenBatch"
        );
    }
}
