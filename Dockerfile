FROM rust:1-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release -p walrelay

FROM debian:bookworm-slim
COPY --from=build /src/target/release/walrelay /usr/local/bin/walrelay
ENTRYPOINT ["walrelay"]
