# syntax=docker/dockerfile:1
# Multi-stage build: compile in the Rust image, run in a minimal Debian image
# as a non-root user.

FROM rust:1-bookworm AS build
WORKDIR /src
COPY Cargo.toml Cargo.lock build.rs ./
COPY loadtest/Cargo.toml loadtest/Cargo.toml
COPY src src
COPY loadtest/src loadtest/src
COPY benches benches
COPY migrations migrations
# The browser demo the binary embeds (DEMO, on in development).
COPY clients/typescript/demo/dist clients/typescript/demo/dist
# .git is not in the context: the commit for chatgw_build_info comes in as
# a build argument (docker build --build-arg CHATGW_GIT_COMMIT=$(git rev-parse --short=12 HEAD) .).
ARG CHATGW_GIT_COMMIT=unknown
RUN CHATGW_GIT_COMMIT=$CHATGW_GIT_COMMIT cargo build --release --locked --bin chatgw

FROM debian:bookworm-slim
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates curl \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --system --uid 10001 --home /var/lib/chatgw --create-home chatgw
COPY --from=build /src/target/release/chatgw /usr/local/bin/chatgw
USER chatgw
WORKDIR /var/lib/chatgw
# Production by default: refuses to start without a strong JWT_SECRET.
ENV APP_ENV=production \
    LISTEN_ADDR=0.0.0.0:8080 \
    METRICS_ADDR=0.0.0.0:9090 \
    RUST_LOG=info
EXPOSE 8080 9090
HEALTHCHECK --interval=10s --timeout=3s --start-period=10s --retries=3 \
    CMD curl -fsS http://127.0.0.1:8080/readyz || exit 1
STOPSIGNAL SIGTERM
ENTRYPOINT ["/usr/local/bin/chatgw"]
