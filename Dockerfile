# syntax=docker/dockerfile:1.7
#
# Image of the checkout service `reprise-shop` (examples/production-ready): one binary,
# four roles chosen by the first argument — `serve` (default), `migrate [--check]`,
# `payment-provider`, `carrier`. See docs/deployment.md.
#
#   docker build -t reprise-shop .
#   docker build --build-arg FEATURES= -t reprise-shop .       # without OTLP export (default: otel)
#   docker run --rm reprise-shop migrate --check
#
# The build context is the repository root, but only the workspace's sources are copied
# (deploy/tests checks that every workspace member is), so target/ and .git never reach
# the builder. Dependencies and build output are kept in BuildKit cache mounts: a rebuild
# after a source change recompiles only the workspace's own crates.

ARG RUST_VERSION=1.95
ARG DEBIAN_RELEASE=bookworm

# --- builder ---------------------------------------------------------------------------
FROM rust:${RUST_VERSION}-${DEBIAN_RELEASE} AS builder

# The rdkafka crate builds its bundled librdkafka from source with ./configure and make
# (no cmake: reprise-kafka keeps rdkafka's default features) and links zlib found through
# pkg-config. libssl-dev is only used by the kafka `ssl` feature (TLS to managed brokers).
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends \
        build-essential \
        pkg-config \
        zlib1g-dev \
        libssl-dev \
    && rm -rf /var/lib/apt/lists/*

WORKDIR /src
COPY Cargo.toml Cargo.lock README.md ./
COPY core core
COPY host host
COPY sim sim
COPY adapters adapters
COPY scenarios scenarios
COPY chaos chaos
COPY live live
COPY runner runner
COPY cli cli
COPY benches benches
COPY examples examples
COPY load load
COPY drill drill
COPY deploy/tests deploy/tests
# Embedded into reprise-postgres at compile time (sqlx::migrate!).
COPY migrations migrations

# Cargo features of reprise-shop (space- or comma-separated). Empty while the service
# declares no `otel` feature; deploy/tests requires `otel` here as soon as it does.
ARG FEATURES="otel"
# The release profile keeps line tables (readable backtraces) and makes an ~80 MB binary;
# stripped it is ~12 MB. STRIP=false keeps them.
ARG STRIP=true
RUN --mount=type=cache,target=/usr/local/cargo/registry,sharing=locked \
    --mount=type=cache,target=/usr/local/cargo/git,sharing=locked \
    --mount=type=cache,target=/src/target,sharing=locked \
    cargo build --release --locked -p reprise-shop --features "${FEATURES}" \
    && install -D -m 0755 target/release/reprise-shop /out/reprise-shop \
    && if [ "${STRIP}" = "true" ]; then strip /out/reprise-shop; fi

# --- runtime ---------------------------------------------------------------------------
FROM debian:${DEBIAN_RELEASE}-slim AS runtime

# The binary needs glibc, libgcc, zlib (all in the base image) and, with TLS, libssl
# (pulled in by ca-certificates, which TLS to managed brokers also needs).
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates \
    && rm -rf /var/lib/apt/lists/* \
    && groupadd --system --gid 10001 reprise \
    && useradd --system --uid 10001 --gid reprise --no-create-home \
        --home-dir /nonexistent --shell /usr/sbin/nologin reprise

COPY --from=builder /out/reprise-shop /usr/local/bin/reprise-shop

LABEL org.opencontainers.image.title="reprise-shop" \
      org.opencontainers.image.description="Reprise checkout service: API, sagas, relay; fake providers" \
      org.opencontainers.image.licenses="Apache-2.0"

# Numeric, so Kubernetes' runAsNonRoot can verify it without reading /etc/passwd.
USER 10001:10001
# Each role listens on 0.0.0.0 by default (SHOP_LISTEN overrides):
# 8080 the service (API, health, /metrics); 8081 and 8082 the fake providers.
EXPOSE 8080 8081 8082
STOPSIGNAL SIGTERM
ENTRYPOINT ["reprise-shop"]
CMD ["serve"]
