# syntax=docker/dockerfile:1.7
# spanprof-sidecar: the spanprof-sampler container the operator injects into opted-in pods.
# Symbolization happens in-process (blazesym, statically linked, with Rust and C++ demangling): the
# app's binaries and their .eh_frame/.symtab/DWARF are read through /proc/<pid>/root, so nothing of
# the app has to be in this image (debug files are looked up in the app's /usr/lib/debug first). The runtime image carries glibc and libgcc_s (the binary links
# them), CA certificates and tzdata. The sidecar needs CAP_PERFMON (and CAP_SYS_PTRACE to read other
# users' /proc/<pid>/root); the operator sets that security context, overriding the image's non-root
# default user (or runs it as the pod's user with capabilities: none).
#
# Build from the repository root:
#   docker build -f docker/spanprof-sidecar.Dockerfile -t ghcr.io/spanprof/spanprof-sidecar:0.1.0 .

ARG RUST_VERSION=1.95
FROM docker.io/library/rust:${RUST_VERSION}-bookworm AS build
WORKDIR /src
COPY . .
# Release build of this one binary; the caches make rebuilds incremental (BuildKit).
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/usr/local/cargo/git \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked -p spanprof-sidecar --bin spanprof-sidecar \
 && install -D -m 0755 target/release/spanprof-sidecar /out/spanprof-sidecar

# Debian 12's glibc debug files (libc6-dbg, by build ID): frames in an app's glibc internals
# (`start_thread`, `clone3`) get names when the app's image has the same glibc (distroless
# cc-debian12, debian:12 images at the same point release) and no debug files of its own. The
# sampler looks in the app's /usr/lib/debug first.
FROM docker.io/library/debian:12-slim AS debug
RUN apt-get update \
 && apt-get install -y --no-install-recommends libc6-dbg \
 && rm -rf /var/lib/apt/lists/*

# distroless "cc": glibc, libgcc_s, CA certificates, tzdata, no shell; user nonroot (65532).
FROM gcr.io/distroless/cc-debian12:nonroot
EXPOSE 4041
COPY --from=debug /usr/lib/debug/.build-id /usr/lib/debug/.build-id
COPY --from=build /out/spanprof-sidecar /usr/local/bin/spanprof-sidecar
USER 65532:65532
ENTRYPOINT ["/usr/local/bin/spanprof-sidecar"]
