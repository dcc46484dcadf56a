//! The `Logic` gRPC service: what gateways and queue-workers ask of control.

use std::sync::Arc;

use gochat_proto::logic::logic_server::Logic as LogicService;
use gochat_proto::logic::{
    AckBatch, AckReplies, CheckAuthRequest, ConnCloseReply, ConnCloseRequest, ConnOpenBatch, ConnOpenResult,
    ConnOpenResults, GatewayLeaseReply, GatewayLeaseRequest, GatewayResetRequest, GetUserRequest, Joined,
    NodeReport, NodeReportReply, RoomJoinRequest, RoomLeaveReply, RoomLeaveRequest, RoomPosition, RoomRoute,
    RouteReply, RouteRequest, SendReply, SendRoomRequest, ShardAddress, User, UserRoute,
};
use gochat_proto::wire::Position;
use tonic::{Request, Response, Status};

use crate::history::Recovery;
use crate::logic::{Logic, LogicError};
use crate::state::NodeKind;

pub(crate) struct LogicGrpc(pub Arc<Logic>);

pub(crate) fn status(e: LogicError) -> Status {
    match e {
        LogicError::Session => Status::unauthenticated("invalid or expired token"),
        LogicError::Refused(m) => Status::invalid_argument(m),
        LogicError::NotFound(m) => Status::not_found(m),
        LogicError::TooLarge(m) => Status::invalid_argument(m),
        LogicError::Internal(m) => Status::unavailable(m),
    }
}

fn since(p: Option<RoomPosition>) -> Option<Position> {
    p.map(Position::from)
}

/// A join's answer: where the room stands and what was missed, or nothing (no history).
fn joined(r: Option<Recovery>) -> Joined {
    r.map(Joined::from).unwrap_or_default()
}

/// Runs `work` to its end even if the caller stops waiting (a gateway's deadline, a dropped
/// stream): a change to the state is a sequence of steps on a Redis Cluster
/// (`state/redis.rs`), and one cut short between them would leave entries behind that no
/// close finds again, or users online that are gone.
async fn finished<T: Send + 'static>(
    work: impl std::future::Future<Output = T> + Send + 'static,
) -> Result<T, Status> {
    tokio::spawn(work).await.map_err(|e| Status::internal(e.to_string()))
}

#[tonic::async_trait]
impl LogicService for LogicGrpc {
    async fn conn_open(&self, req: Request<ConnOpenBatch>) -> Result<Response<ConnOpenResults>, Status> {
        let logic = self.0.clone();
        let requests = req.into_inner().requests;
        let results = finished(async move {
            let opens = requests.into_iter().map(|r| {
                let logic = &logic;
                async move {
                    let since = since(r.since);
                    match logic
                        .conn_open(
                            &r.token,
                            r.room_id,
                            &r.gateway_id,
                            r.shard,
                            r.conn_id,
                            since.as_ref(),
                            r.acks,
                        )
                        .await
                    {
                        Ok(opened) => {
                            logic.counts.socket_auths_accepted.inc();
                            ConnOpenResult {
                                user: Some(opened.session.into()),
                                code: 0,
                                message: String::new(),
                                joined: Some(joined(opened.joined)),
                                pending: Some(opened.kept.into()),
                            }
                        }
                        Err(e) => {
                            logic.counts.socket_auths_refused.inc();
                            let s = status(e);
                            ConnOpenResult {
                                user: None,
                                code: s.code() as i32,
                                message: s.message().to_string(),
                                ..ConnOpenResult::default()
                            }
                        }
                    }
                }
            });
            futures_util::future::join_all(opens).await
        })
        .await?;
        Ok(Response::new(ConnOpenResults { results }))
    }

    async fn conn_close(&self, req: Request<ConnCloseRequest>) -> Result<Response<ConnCloseReply>, Status> {
        let (logic, r) = (self.0.clone(), req.into_inner());
        finished(async move { logic.conn_close(&r.gateway_id, r.conn_id).await }).await?.map_err(status)?;
        Ok(Response::new(ConnCloseReply {}))
    }

    async fn room_join(&self, req: Request<RoomJoinRequest>) -> Result<Response<Joined>, Status> {
        let (logic, r) = (self.0.clone(), req.into_inner());
        let recovery = finished(async move {
            let since = since(r.since);
            logic.room_join(&r.gateway_id, r.conn_id, r.user_id, r.room_id, since.as_ref()).await
        })
        .await?
        .map_err(status)?;
        Ok(Response::new(joined(recovery)))
    }

    async fn room_leave(&self, req: Request<RoomLeaveRequest>) -> Result<Response<RoomLeaveReply>, Status> {
        let (logic, r) = (self.0.clone(), req.into_inner());
        finished(async move { logic.room_leave(&r.gateway_id, r.conn_id, r.room_id).await })
            .await?
            .map_err(status)?;
        Ok(Response::new(RoomLeaveReply {}))
    }

    async fn ack(&self, req: Request<AckBatch>) -> Result<Response<AckReplies>, Status> {
        let acks = req.into_inner().acks.into_iter().map(|a| async move {
            match self.0.ack(a.user_id, &a.ids, a.more).await {
                Ok(kept) => Ok(kept.into()),
                Err(e) => Err(status(e)),
            }
        });
        // One answer per ack; a store failure fails the call, and the gateway's acks stay kept.
        let pending = futures_util::future::join_all(acks).await.into_iter().collect::<Result<_, _>>()?;
        Ok(Response::new(AckReplies { pending }))
    }

    async fn check_auth(&self, req: Request<CheckAuthRequest>) -> Result<Response<User>, Status> {
        let session = self.0.check_auth(&req.into_inner().token).await.map_err(status)?;
        Ok(Response::new(session.into()))
    }

    async fn get_user(&self, req: Request<GetUserRequest>) -> Result<Response<User>, Status> {
        let user_id = req.into_inner().user_id;
        match self.0.user_name(user_id).await.map_err(status)? {
            Some(user_name) => Ok(Response::new(User { user_id, user_name })),
            None => Err(Status::not_found(format!("no user with id {user_id}"))),
        }
    }

    async fn send_room(&self, req: Request<SendRoomRequest>) -> Result<Response<SendReply>, Status> {
        let r = req.into_inner();
        self.0.send_room(r.from_user_id, r.room_id, &r.msg).await.map_err(status)?;
        Ok(Response::new(SendReply {}))
    }

    async fn route(&self, req: Request<RouteRequest>) -> Result<Response<RouteReply>, Status> {
        let r = req.into_inner();
        let routes = self.0.routes(&r.room_ids, &r.user_ids).await.map_err(status)?;
        let rooms = r
            .room_ids
            .into_iter()
            .zip(routes.rooms)
            .map(|(room_id, gateway_ids)| RoomRoute { room_id, gateway_ids })
            .collect();
        let users = r
            .user_ids
            .into_iter()
            .zip(routes.users)
            .map(|(user_id, shards)| UserRoute {
                user_id,
                shards: shards
                    .into_iter()
                    .map(|(gateway_id, shard)| ShardAddress { gateway_id, shard })
                    .collect(),
            })
            .collect();
        Ok(Response::new(RouteReply { rooms, users }))
    }

    async fn gateway_lease(
        &self,
        req: Request<GatewayLeaseRequest>,
    ) -> Result<Response<GatewayLeaseReply>, Status> {
        let r = req.into_inner();
        let known = self.0.gateway_lease(&r.gateway_id, &r.version, r.connections).await.map_err(status)?;
        Ok(Response::new(GatewayLeaseReply { ttl_ms: self.0.gateway_lease_ttl().as_millis() as u64, known }))
    }

    async fn gateway_reset(
        &self,
        req: Request<GatewayResetRequest>,
    ) -> Result<Response<ConnCloseReply>, Status> {
        // A reset of many connections can outlast the gateway's deadline.
        let logic = self.0.clone();
        let gateway = req.into_inner().gateway_id;
        finished(async move { logic.gateway_reset(&gateway).await }).await?.map_err(status)?;
        Ok(Response::new(ConnCloseReply {}))
    }

    async fn worker_report(&self, req: Request<NodeReport>) -> Result<Response<NodeReportReply>, Status> {
        let r = req.into_inner();
        self.0.node_report(NodeKind::Worker, &r.id, &r.version, r.connections).await.map_err(status)?;
        Ok(Response::new(NodeReportReply {}))
    }
}
