# syntax=docker/dockerfile:1.7
# spanprof-server: ingest, embedded store, API and UI on :4040. The chart mounts the store at /var/lib/spanprof.
#
# Build from the repository root:
#   docker build -f docker/spanprof-server.Dockerfile -t ghcr.io/spanprof/spanprof-server:0.1.0 .

ARG RUST_VERSION=1.95
FROM docker.io/library/rust:${RUST_VERSION}-bookworm AS build
WORKDIR /src
COPY . .
# Release build of this one binary; the caches make rebuilds incremental (BuildKit).
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/usr/local/cargo/git \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked -p spanprof-server --bin spanprof-server \
 && install -D -m 0755 target/release/spanprof-server /out/spanprof-server

# distroless "cc": glibc, libgcc_s, CA certificates, tzdata, no shell; user nonroot (65532).
FROM gcr.io/distroless/cc-debian12:nonroot
EXPOSE 4040
# Plain `docker run`: the default --data-dir ./spanprof-data lands in the writable home.
WORKDIR /home/nonroot
COPY --from=build /out/spanprof-server /usr/local/bin/spanprof-server
USER 65532:65532
ENTRYPOINT ["/usr/local/bin/spanprof-server"]
