# Stand-ins for the public images deploy/docker/compose.yml names (postgres, redis, etcd,
# prometheus), for a machine that reaches no image registry: Debian's packages in the local
# base image (compose.sh makes it), with the commands, paths and environment the compose file
# uses. One target per service: docker build --target postgres ...
ARG BASE_IMAGE=gochat-test/debian:bookworm

FROM ${BASE_IMAGE} AS postgres
# The official image's interface: POSTGRES_USER, POSTGRES_PASSWORD and POSTGRES_DB make the
# cluster in PGDATA on the first start; pg_isready answers on the local socket.
ENV PATH=/usr/lib/postgresql/15/bin:$PATH PGDATA=/var/lib/postgresql/data
COPY postgres-entrypoint.sh /usr/local/bin/
ENTRYPOINT ["postgres-entrypoint.sh"]
CMD ["postgres"]

FROM ${BASE_IMAGE} AS redis
# As the official image: out of protected mode (the compose network is the boundary), data in
# the working directory.
WORKDIR /data
ENTRYPOINT ["/bin/sh", "-c", "if [ \"$1\" = redis-server ]; then shift; set -- redis-server --protected-mode no \"$@\"; fi; exec \"$@\"", "redis"]
CMD ["redis-server"]

FROM ${BASE_IMAGE} AS etcd
# The compose file names etcd 3.5; Debian's is 3.4, with the same flags and etcdctl v3 API.
CMD ["etcd"]

FROM ${BASE_IMAGE} AS prometheus
WORKDIR /prometheus
ENTRYPOINT ["prometheus"]
CMD ["--config.file=/etc/prometheus/prometheus.yml", "--storage.tsdb.path=/prometheus"]

FROM ${BASE_IMAGE} AS rust
# For the Dockerfile's build stage (RUST_IMAGE): cargo-stand-in.sh instead of a toolchain.
COPY cargo-stand-in.sh /usr/local/bin/cargo
