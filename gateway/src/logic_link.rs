//! Carries the shards' effects to logic over gRPC and the answers back to the shards' inboxes.
//! Runs on the gateway's tokio runtime, so shard threads never wait on the network.

use std::sync::Arc;

use gochat_proto::logic::logic_client::LogicClient;
use gochat_proto::logic::{ConnCloseRequest, ConnOpenRequest, SendRoomRequest};
use tokio::sync::mpsc;
use tonic::transport::Channel;
use tonic::Code;

use crate::shard::{AuthRefused, AuthedUser, Command, Effect, Inbox};

/// Runs until every effect sender (the shards) is gone.
pub async fn run(
    mut effects: mpsc::UnboundedReceiver<(u32, Effect)>,
    logic: LogicClient<Channel>,
    gateway_id: Arc<str>,
    inboxes: Arc<[Arc<Inbox>]>,
) {
    while let Some((shard, effect)) = effects.recv().await {
        let mut logic = logic.clone();
        let gateway_id = gateway_id.clone();
        let inboxes = inboxes.clone();
        tokio::spawn(async move {
            match effect {
                Effect::Auth { key, conn_id, token, room_id } => {
                    let reply = logic
                        .conn_open(ConnOpenRequest {
                            token,
                            room_id,
                            gateway_id: gateway_id.to_string(),
                            shard,
                            conn_id,
                        })
                        .await;
                    let result = match reply {
                        Ok(r) => match r.into_inner().user {
                            Some(u) => Ok(AuthedUser { user_id: u.user_id, user_name: u.user_name }),
                            None => Err(refused(1011, "logic sent no user")),
                        },
                        Err(status) => Err(auth_refusal(&status)),
                    };
                    if let Some(inbox) = inboxes.get(shard as usize) {
                        inbox.push_wait(Command::AuthDone { key, conn_id, result }).await;
                    }
                }
                Effect::Closed { conn_id } => {
                    let req = ConnCloseRequest { gateway_id: gateway_id.to_string(), conn_id };
                    if let Err(status) = logic.conn_close(req).await {
                        tracing::warn!(conn_id, %status, "logic did not take a connection close");
                    }
                }
                Effect::RoomSend { user_id, room_id, msg } => {
                    let req = SendRoomRequest { from_user_id: user_id, room_id, msg };
                    if let Err(status) = logic.send_room(req).await {
                        tracing::warn!(user_id, room_id, %status, "room send from a socket failed");
                    }
                }
            }
        });
    }
}

fn refused(close_code: u16, message: &str) -> AuthRefused {
    AuthRefused { close_code, message: message.to_string() }
}

/// Maps logic's answer to what the client is told: a bad token is a policy close (1008); an
/// unreachable or failing logic asks the client to try again (1013).
fn auth_refusal(status: &tonic::Status) -> AuthRefused {
    match status.code() {
        Code::Unauthenticated | Code::PermissionDenied | Code::InvalidArgument | Code::NotFound => {
            refused(1008, status.message())
        }
        _ => {
            tracing::warn!(%status, "logic unavailable for a socket auth");
            refused(1013, "authentication service unavailable, try again")
        }
    }
}
