//! The contracts between gochat-rs roles and with gochat's clients.
//!
//! # Layout
//! - [`logic`], [`gateway`], [`queue`], [`api`]: gRPC services and messages generated from
//!   `proto/*.proto` ([`api`]: the server API for application backends).
//! - [`config_format`]: config-file value formats the roles share.
//! - [`ids`]: the layout of message ids, and the creation time each one carries.
//! - [`wire`]: what gochat's clients send and receive — the JSON ops and the TCP `v1` framing —
//!   shared by the gateway, control and the load generator.
//! - [`rest`]: gochat's REST requests — routes and their JSON bodies — parsed without I/O.
//! - [`client`], [`binary`]: the binary client protocol (protobuf over WebSocket binary frames)
//!   a client may choose instead of JSON, and its translation to and from gochat's JSON ops.
//!
//! What the roles run besides (metrics, TLS certificates, gRPC channels to peers) is in
//! `gochat-runtime`.

#![forbid(unsafe_code)]

pub mod logic {
    tonic::include_proto!("gochat.logic");

    impl std::fmt::Debug for ConnOpenRequest {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.debug_struct("ConnOpenRequest")
                .field("token", &"<redacted>")
                .field("room_id", &self.room_id)
                .field("gateway_id", &self.gateway_id)
                .field("shard", &self.shard)
                .field("conn_id", &self.conn_id)
                .field("since", &self.since)
                .field("acks", &self.acks)
                .finish()
        }
    }

    impl std::fmt::Debug for CheckAuthRequest {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.debug_struct("CheckAuthRequest").field("token", &"<redacted>").finish()
        }
    }

    // A room's position on the logic service's wire and in the code, converted in one place.
    impl From<crate::wire::Position> for RoomPosition {
        fn from(p: crate::wire::Position) -> Self {
            Self { epoch: p.epoch, seq: p.seq }
        }
    }

    impl From<RoomPosition> for crate::wire::Position {
        fn from(p: RoomPosition) -> Self {
            Self { epoch: p.epoch, seq: p.seq }
        }
    }
}

pub mod gateway {
    tonic::include_proto!("gochat.gateway");
}

pub mod api {
    tonic::include_proto!("gochat.api");
}

pub mod queue {
    tonic::include_proto!("gochat.queue");
}

/// The binary client protocol's messages (`proto/client.proto`); see [`binary`].
pub mod client {
    tonic::include_proto!("gochat.client");
}

pub mod binary;
pub mod config_format;
pub mod ids;
pub mod rest;
pub mod wire;
