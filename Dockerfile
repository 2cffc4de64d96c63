# syntax=docker/dockerfile:1
# Plexus image: built with the Rust toolchain, run on a slim Debian as an unprivileged user.
# Configuration comes only from PLEXUS_* environment variables (see docs/configuration.md);
# data (signing key, SQLite database if used, media) lives in the /data volume.

FROM rust:1-bookworm AS build
WORKDIR /src
COPY Cargo.toml Cargo.lock rustfmt.toml ./
COPY config config
COPY migrations migrations
COPY src src
# Cache mounts keep the crate registry and compiled dependencies between builds.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked --bin plexus \
    && cp target/release/plexus /usr/local/bin/plexus

FROM debian:bookworm-slim
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates curl \
    && rm -rf /var/lib/apt/lists/*
RUN useradd --system --uid 10001 --user-group --home-dir /data --shell /usr/sbin/nologin plexus \
    && mkdir -p /data \
    && chown plexus:plexus /data
COPY --from=build /usr/local/bin/plexus /usr/local/bin/plexus

# Env-only start: PLEXUS_SERVER_NAME being set means no config file is read or written.
ENV PLEXUS_SERVER_NAME=localhost:8008 \
    PLEXUS_LISTEN=0.0.0.0:8008 \
    PLEXUS_DATABASE_URL=sqlite:///data/plexus.db \
    PLEXUS_DATA_DIR=/data \
    PLEXUS_REGISTRATION=closed \
    PLEXUS_LOG=info

USER plexus
WORKDIR /data
VOLUME /data
EXPOSE 8008
HEALTHCHECK --interval=10s --timeout=5s --start-period=10s --retries=5 \
    CMD curl -fsS http://127.0.0.1:8008/_matrix/client/versions >/dev/null || exit 1
ENTRYPOINT ["plexus"]
CMD ["serve"]
