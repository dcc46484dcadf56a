//! The server API over gRPC (`gochat.api.ServerApi`, proto/proto/api.proto), beside the logic
//! service on control's gRPC port: the key in the metadata `authorization: apikey KEY`.

use std::sync::Arc;
use std::time::Instant;

use gochat_proto::api::server_api_server::ServerApi as ServerApiService;
use gochat_proto::api::{
    BroadcastReply, BroadcastRequest, DisconnectReply, DisconnectRequest, HistoryReply, HistoryRequest,
    InfoReply, InfoRequest, KickReply, KickRequest, Node, PresenceReply, PresenceRequest, PublishReply,
    PublishRequest, UserPublished,
};
use tonic::{Code, Request, Response, Status};

use super::{ApiError, Method, Publication, ServerApi};
use crate::logic::Presence;
use crate::metrics::API_GRPC;

pub(crate) struct ServerApiGrpc(pub Arc<ServerApi>);

/// The status an error answers with.
pub(crate) fn status(e: &ApiError) -> Status {
    let code = match e {
        ApiError::Off => Code::Unimplemented,
        ApiError::BadRequest(_) => Code::InvalidArgument,
        ApiError::Unauthorized(_) => Code::Unauthenticated,
        ApiError::Forbidden(_) => Code::PermissionDenied,
        ApiError::NotFound(_) => Code::NotFound,
        ApiError::TooLarge(_) => Code::OutOfRange,
        ApiError::TooMany(_) => Code::ResourceExhausted,
        ApiError::Unavailable(_) => Code::Unavailable,
    };
    Status::new(code, e.message())
}

impl ServerApiGrpc {
    /// Checks the call's key, runs `run`, counts the call.
    async fn call<Req, Rep, F>(
        &self,
        method: Method,
        req: Request<Req>,
        run: F,
    ) -> Result<Response<Rep>, Status>
    where
        F: AsyncFnOnce(&ServerApi, Req) -> Result<Rep, ApiError>,
    {
        let started = Instant::now();
        let authorization = req.metadata().get("authorization").and_then(|v| v.to_str().ok());
        let result = match self.0.authorize(method, authorization) {
            Ok(()) => run(&self.0, req.into_inner()).await,
            Err(e) => Err(e),
        };
        let outcome = result.as_ref().map_or_else(ApiError::kind, |_| "ok");
        self.0.counts.record(API_GRPC, method, outcome, started.elapsed());
        result.map(Response::new).map_err(|e| status(&e))
    }
}

/// A text field of a request: empty means not given.
fn given(s: &str) -> Option<&str> {
    (!s.is_empty()).then_some(s)
}

#[tonic::async_trait]
impl ServerApiService for ServerApiGrpc {
    async fn publish(&self, req: Request<PublishRequest>) -> Result<Response<PublishReply>, Status> {
        self.call(Method::Publish, req, async |api, r| {
            match api.publish(given(&r.from_user_name), r.room_id, &r.to_user_ids, &r.msg).await? {
                Publication::Room { id, epoch, seq } => {
                    Ok(PublishReply { msg_id: id.to_string(), epoch, seq, users: vec![] })
                }
                Publication::Users(results) => {
                    let users = results
                        .into_iter()
                        .map(|(to_user_id, sent)| match sent {
                            Ok(id) => {
                                UserPublished { to_user_id, msg_id: id.to_string(), error: String::new() }
                            }
                            Err(e) => UserPublished { to_user_id, msg_id: String::new(), error: e.message() },
                        })
                        .collect();
                    Ok(PublishReply { users, ..PublishReply::default() })
                }
            }
        })
        .await
    }

    async fn broadcast(&self, req: Request<BroadcastRequest>) -> Result<Response<BroadcastReply>, Status> {
        self.call(Method::Broadcast, req, async |api, r| {
            let id = api.broadcast(given(&r.from_user_name), &r.msg).await?;
            Ok(BroadcastReply { msg_id: id.to_string() })
        })
        .await
    }

    async fn disconnect(&self, req: Request<DisconnectRequest>) -> Result<Response<DisconnectReply>, Status> {
        self.call(Method::Disconnect, req, async |api, r| {
            let connections = api.disconnect(r.user_id, Some(r.code), given(&r.reason)).await?;
            Ok(DisconnectReply { connections })
        })
        .await
    }

    async fn kick(&self, req: Request<KickRequest>) -> Result<Response<KickReply>, Status> {
        self.call(Method::Kick, req, async |api, r| {
            Ok(KickReply { was_member: api.kick(r.user_id, r.room_id).await? })
        })
        .await
    }

    async fn presence(&self, req: Request<PresenceRequest>) -> Result<Response<PresenceReply>, Status> {
        self.call(Method::Presence, req, async |api, r| {
            Ok(match api.presence(r.room_id, r.user_id).await? {
                Presence::Room { count, members } => PresenceReply {
                    count,
                    members: members
                        .into_iter()
                        .filter_map(|(id, name)| Some((id.parse().ok()?, name)))
                        .collect(),
                    ..PresenceReply::default()
                },
                Presence::User { online, connections } => {
                    PresenceReply { online, connections, ..PresenceReply::default() }
                }
            })
        })
        .await
    }

    async fn info(&self, req: Request<InfoRequest>) -> Result<Response<InfoReply>, Status> {
        self.call(Method::Info, req, async |api, _| {
            let nodes = api
                .info()
                .await?
                .into_iter()
                .map(|(n, age_ms)| Node {
                    kind: n.kind.name().into(),
                    id: n.id,
                    version: n.version,
                    connections: n.connections,
                    age_ms,
                })
                .collect();
            Ok(InfoReply { nodes })
        })
        .await
    }

    async fn history(&self, req: Request<HistoryRequest>) -> Result<Response<HistoryReply>, Status> {
        self.call(Method::History, req, async |api, r| {
            let limit = (r.limit > 0).then_some(r.limit as usize);
            let (position, bodies) = api.history(r.room_id, limit).await?;
            let messages = bodies.into_iter().map(|b| String::from_utf8_lossy(&b).into_owned()).collect();
            Ok(HistoryReply { epoch: position.epoch, seq: position.seq, messages })
        })
        .await
    }
}
