# syntax=docker/dockerfile:1.7
# spanprof-demo: the ride-sharing demo app (HTTP on :5050, /bike /scooter /car) with its built-in
# load generator, instrumented with the spanprof SDK: a workload to annotate and profile in a
# cluster. It runs as a non-root user, and carries glibc's debug files (libc6-dbg) as an app image
# should for named frames in glibc's internals (`start_thread`, `clone3`): the sampler looks for
# debug files inside the app's image first.
#
# Build from the repository root:
#   docker build -f docker/spanprof-demo.Dockerfile -t ghcr.io/spanprof/spanprof-demo:0.1.0 .
# Run in a cluster: a Deployment of this image with the pod annotation spanprof.dev/inject: "true"
# and args ["--listen", "0.0.0.0:5050", "--load-rps", "5"].

ARG RUST_VERSION=1.95
FROM docker.io/library/rust:${RUST_VERSION}-bookworm AS build
WORKDIR /src
COPY . .
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/usr/local/cargo/git \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked -p spanprof-demo --bin spanprof-demo \
 && install -D -m 0755 target/release/spanprof-demo /out/spanprof-demo

FROM docker.io/library/debian:12-slim
RUN apt-get update \
 && apt-get install -y --no-install-recommends libc6-dbg \
 && rm -rf /var/lib/apt/lists/*
COPY --from=build /out/spanprof-demo /usr/local/bin/spanprof-demo
EXPOSE 5050
USER 1000:1000
ENTRYPOINT ["/usr/local/bin/spanprof-demo"]
CMD ["--listen", "0.0.0.0:5050", "--load-rps", "5"]
