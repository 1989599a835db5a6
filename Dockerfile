# The image deploy/deployment.yaml runs. Not built by `make test` (no container registry is
# reachable from the test machines); `docker build -t ghcr.io/spillway-dev/spillway:0.1.0 .`
FROM rust:1.95-bookworm AS build
RUN apt-get update && apt-get install -y --no-install-recommends cmake libssl-dev libsasl2-dev \
      libcurl4-openssl-dev zlib1g-dev && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
RUN cargo build --release --locked --bin spillway

FROM debian:bookworm-slim
RUN apt-get update && apt-get install -y --no-install-recommends ca-certificates libssl3 \
      libsasl2-2 libcurl4 zlib1g && rm -rf /var/lib/apt/lists/*
COPY --from=build /src/target/release/spillway /usr/local/bin/spillway
# Matches deploy/deployment.yaml's runAsUser; the root filesystem is mounted read-only there.
USER 65532:65532
ENTRYPOINT ["/usr/local/bin/spillway"]
