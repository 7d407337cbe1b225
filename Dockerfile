# One image with all four binaries; compose.yaml picks the command.
FROM rust:1.95-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release --locked --workspace --bins

FROM debian:bookworm-slim
RUN apt-get update && apt-get install -y --no-install-recommends ca-certificates curl \
    && rm -rf /var/lib/apt/lists/*
COPY --from=build /src/target/release/api /src/target/release/webhook-ingress \
     /src/target/release/automation-worker /src/target/release/dispatch-worker /usr/local/bin/
USER 65534
CMD ["api"]
