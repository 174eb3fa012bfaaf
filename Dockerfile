# syntax=docker/dockerfile:1
#
# The broker and migrator image: `broker` (the default command) and `migrator run|status`,
# both in /usr/local/bin, run as an unprivileged user. Built by compose/compose.yaml and
# used by charts/broker (the migrator Job runs `migrator run` from the same image).
#
#   docker build -t claudemesh-broker:local --build-arg GIT_SHA=$(git rev-parse --short HEAD) .
#
# Checked by ./scripts/check-deploy (hadolint); there is no Docker engine in CI.

ARG RUST_VERSION=1.95

FROM rust:${RUST_VERSION}-bookworm AS builder
WORKDIR /src
# Shown by /health as gitSha (read at compile time).
ARG GIT_SHA=unknown
ENV GIT_SHA=${GIT_SHA}
COPY . .
# The caches keep the registry and target/ between builds; the binaries are copied out
# of the cache mount so the next stage can take them.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked -p broker -p migrator \
    && mkdir -p /out \
    && cp target/release/broker target/release/migrator /out/

FROM debian:bookworm-slim
# curl is for the HEALTHCHECK only (the broker has no health subcommand).
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates curl \
    && rm -rf /var/lib/apt/lists/*
RUN groupadd --system --gid 10001 broker \
    && useradd --system --uid 10001 --gid broker --no-create-home \
       --home-dir /nonexistent --shell /usr/sbin/nologin broker
COPY --from=builder /out/broker /out/migrator /usr/local/bin/
USER 10001:10001
ENV BROKER_HOST=0.0.0.0 \
    BROKER_PORT=7900 \
    LOG_FORMAT=json
# 7900: clients (WebSockets, /health, /join, hooks); 7901: the internal port
# (BROKER_INTERNAL_PORT: /metrics and the operator API) when the deployment sets it.
EXPOSE 7900 7901
# Liveness only: /health answers 200 while the process serves. Readiness (/health/ready)
# is for load balancers and Kubernetes, which check it themselves.
HEALTHCHECK --interval=10s --timeout=3s --start-period=40s --retries=3 \
    CMD ["/bin/sh", "-c", "curl -fsS -o /dev/null \"http://127.0.0.1:${BROKER_PORT}/health\" || exit 1"]
CMD ["broker"]
