FROM rust:1-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release --locked -p walrelay

FROM debian:bookworm-slim
# CA certificates for TLS to Postgres and NATS (sslrootcert=system, tls:// with public CAs); curl for the
# docker-compose health check against /readyz.
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates curl \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --system --uid 10001 --no-create-home --shell /usr/sbin/nologin walrelay
COPY --from=build /src/target/release/walrelay /usr/local/bin/walrelay
USER 10001:10001
ENTRYPOINT ["walrelay"]
