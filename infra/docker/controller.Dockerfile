# syntax=docker/dockerfile:1.7
# The controller image: the `plugworker` binary, run as `plugworker controller`
# (jobs from SQS, runners from Consul, results to SQS). Its other subcommands
# (`submit`, `results`, `algorithms`, `call`) work from the same image; `dev` and
# `registry` (the embedded registry, for machines without Consul) are not built into it
# (scripts/check-deploy.sh checks that).
#
#   docker build -f infra/docker/controller.Dockerfile -t plugworker/controller .
#
# With --build-arg CLI_FEATURES=aws,gallery it is the operators' image instead, whose
# `plugworker gallery` publishes meme galleries (the compose service `gallery`; it reads
# the embedding model from a mounted models folder, PLUGWORKER_MODELS_DIR).
ARG RUST_VERSION=1.95
ARG DEBIAN=bookworm

FROM rust:${RUST_VERSION}-${DEBIAN} AS build
# The controller's default leaves out the `gallery` feature: `plugworker gallery` embeds
# templates with the meme model, which the controller never needs.
ARG CLI_FEATURES=aws
WORKDIR /src
COPY . .
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target,sharing=locked \
    infra/docker/cargo-build.sh plugworker /out plugworker-cli --no-default-features --features "${CLI_FEATURES}"

FROM debian:${DEBIAN}-slim
# ca-certificates: SQS and the OTLP endpoint are reached over TLS on AWS.
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --system --uid 10001 --user-group --home-dir /nonexistent --shell /usr/sbin/nologin plugworker
COPY --from=build /out/plugworker /usr/local/bin/plugworker
USER 10001:10001
ENV PLUGWORKER_HEALTH_ADDRESS=0.0.0.0:9090 \
    PLUGWORKER_LOG_FORMAT=json
EXPOSE 9090
HEALTHCHECK --interval=10s --timeout=6s --start-period=20s --retries=3 \
    CMD ["plugworker", "healthcheck"]
ENTRYPOINT ["plugworker"]
CMD ["controller"]
