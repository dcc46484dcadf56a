//! The gRPC contracts of the previous release (the `.proto` files beside this crate), and the
//! check that the current ones (`proto/proto/`) only add to them. Roles one version apart must
//! work together; tests act as a previous-version gateway or worker with these types
//! (`tests/e2e/compat.rs`), and this crate's tests fail on a change that is not additive.
//!
//! # Layout
//! - [`logic`], [`gateway`], [`queue`], [`client`]: the previous release's services and
//!   messages. The proto packages are the current ones (`gochat.logic`, …), so these speak to
//!   current roles over the same method paths.
//! - [`additive`]: compares two descriptor sets and lists what breaks the older one.
//! - [`PREVIOUS_DESCRIPTORS`], [`CURRENT_DESCRIPTORS`]: the two sets, compiled at build time.

#![forbid(unsafe_code)]

pub mod logic {
    tonic::include_proto!("gochat.logic");
}

pub mod gateway {
    tonic::include_proto!("gochat.gateway");
}

pub mod queue {
    tonic::include_proto!("gochat.queue");
}

pub mod client {
    tonic::include_proto!("gochat.client");
}

pub mod additive;

/// `FileDescriptorSet` of the previous release's `.proto` files.
pub const PREVIOUS_DESCRIPTORS: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/previous.bin"));
/// `FileDescriptorSet` of the current `.proto` files (`proto/proto/`).
pub const CURRENT_DESCRIPTORS: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/current.bin"));

#[cfg(test)]
mod tests {
    use prost::Message as _;
    use prost_types::FileDescriptorSet;

    use super::*;

    fn set(bytes: &[u8]) -> FileDescriptorSet {
        FileDescriptorSet::decode(bytes).expect("a descriptor set")
    }

    #[test]
    fn the_current_protos_only_add_to_the_previous_release() {
        let (previous, current) = (set(PREVIOUS_DESCRIPTORS), set(CURRENT_DESCRIPTORS));
        // The previous set holds the contracts between roles (an empty one would pass); what the
        // current set lacks of it, the check finds.
        let methods: Vec<String> = previous
            .file
            .iter()
            .flat_map(|f| f.service.iter().map(move |s| (f, s)))
            .flat_map(|(f, s)| {
                s.method.iter().map(move |m| format!("{}.{}.{}", f.package(), s.name(), m.name()))
            })
            .collect();
        for method in
            ["gochat.logic.Logic.ConnOpen", "gochat.logic.Logic.Route", "gochat.gateway.Gateway.Push"]
        {
            assert!(methods.iter().any(|m| m == method), "{method} in {methods:?}");
        }
        let queue = previous.file.iter().find(|f| f.package() == "gochat.queue").expect("queue.proto");
        assert!(queue.message_type.iter().any(|m| m.name() == "QueueMessage"));
        let breaking = additive::check(&previous, &current);
        assert!(
            breaking.is_empty(),
            "proto/proto/*.proto changed what the previous release (proto/previous/) defined; roles one \
             version apart would not understand each other. Add new fields, messages or methods \
             instead (docs/operations.md, \"Upgrades\"):\n{}",
            breaking.iter().map(|b| format!("- {b}")).collect::<Vec<_>>().join("\n")
        );
    }
}
