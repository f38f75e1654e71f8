# Multi-stage build of the one `sdq` binary.
#   CPU (default):  docker build -t sdq .
#   CUDA:           docker build -t sdq-cuda \
#                     --build-arg BUILD_IMAGE=nvidia/cuda:12.6.3-devel-ubuntu24.04 \
#                     --build-arg RUNTIME_IMAGE=nvidia/cuda:12.6.3-runtime-ubuntu24.04 \
#                     --build-arg FEATURES=cuda .
ARG BUILD_IMAGE=rust:1-bookworm
ARG RUNTIME_IMAGE=debian:bookworm-slim

FROM ${BUILD_IMAGE} AS build
ARG FEATURES=""
# CUDA base images have no Rust toolchain; install one there.
RUN if ! command -v cargo >/dev/null; then \
      apt-get update && apt-get install -y --no-install-recommends curl ca-certificates build-essential pkg-config && \
      curl -sSf https://sh.rustup.rs | sh -s -- -y --profile minimal; \
    fi
ENV PATH="/root/.cargo/bin:${PATH}"
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
COPY src src
COPY migrations migrations
RUN cargo build --release --locked ${FEATURES:+--features ${FEATURES}} && cp target/release/sdq /sdq

FROM ${RUNTIME_IMAGE}
RUN apt-get update && apt-get install -y --no-install-recommends ca-certificates && rm -rf /var/lib/apt/lists/*
COPY --from=build /sdq /usr/local/bin/sdq
ENV SDQ_DATA_DIR=/data HF_HOME=/data/hf
VOLUME /data
EXPOSE 7860
ENTRYPOINT ["sdq"]
# Off loopback, keys are required: create one first on the same volume,
#   docker run --rm -v sdq:/data sdq keys create me --admin
# then `docker run -v sdq:/data -p 7860:7860 sdq`.
CMD ["serve", "--bind", "0.0.0.0:7860"]
