# syntax=docker/dockerfile:1
# Production image for the `quantus` binary (all roles: api, relay, projector, portal).

# ---- build ----
FROM rust:1-bookworm AS builder
# cmake: native build of librdkafka (rdkafka-sys); gcc/make/perl/python3 are in the base image.
RUN apt-get update \
    && apt-get install -y --no-install-recommends cmake \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
# Cache mounts (BuildKit) keep the registry and target dir between builds; the
# binary is copied out in the same step because the cache is not in the image.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked --bin quantus \
    && install -m 0755 target/release/quantus /usr/local/bin/quantus

# ---- runtime ----
FROM debian:bookworm-slim
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates curl \
    && rm -rf /var/lib/apt/lists/*
# Unprivileged user owning the data dir (embedded store, projections, blobs).
RUN useradd --system --uid 10001 --home-dir /data --shell /usr/sbin/nologin quantus \
    && mkdir -p /data && chown quantus:quantus /data
COPY --from=builder /usr/local/bin/quantus /usr/local/bin/quantus
USER quantus
ENV QUANTUS_DATA_DIR=/data
VOLUME ["/data"]
EXPOSE 8080
# For the roles that serve HTTP (all, api, portal); compose disables it for relay and projector.
HEALTHCHECK --interval=10s --timeout=5s --start-period=20s --retries=6 \
    CMD curl -fsS http://127.0.0.1:8080/healthz || exit 1
ENTRYPOINT ["/usr/local/bin/quantus"]
CMD ["serve", "--role", "all", "--listen", "0.0.0.0:8080"]
