# syntax=docker/dockerfile:1.7
# The nlp-runner image: text algorithms (language_detection). No model files: the
# language profiles are compiled into the binary.
#
#   docker build -f infra/docker/nlp-runner.Dockerfile -t plugworker/nlp-runner .
ARG RUST_VERSION=1.95
ARG DEBIAN=bookworm

FROM rust:${RUST_VERSION}-${DEBIAN} AS build
WORKDIR /src
COPY . .
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target,sharing=locked \
    infra/docker/cargo-build.sh nlp-runner nlp-runner /out

FROM debian:${DEBIAN}-slim
RUN useradd --system --uid 10001 --user-group --home-dir /nonexistent --shell /usr/sbin/nologin plugworker
COPY --from=build /out/nlp-runner /usr/local/bin/nlp-runner
USER 10001:10001
ENV PLUGWORKER_LISTEN=0.0.0.0:50051 \
    PLUGWORKER_METRICS_ADDRESS=0.0.0.0:9464 \
    PLUGWORKER_LOG_FORMAT=json
EXPOSE 50051 9464
# The runner asks its own gRPC health service, the one Consul checks.
HEALTHCHECK --interval=10s --timeout=6s --start-period=10s --retries=3 \
    CMD ["nlp-runner", "--health-probe"]
ENTRYPOINT ["nlp-runner"]
