# syntax=docker/dockerfile:1
# One image, one binary: every component is `hourglass <command>`.
#
#   docker build -t hourglass:dev .
#   docker run --rm hourglass:dev --help

FROM rust:1.95-bookworm AS build
# librdkafka, zstd and zlib are built from source (rdkafka's bundled build);
# the rust image's C toolchain and make are all they need. The checkout's
# .cargo/config.toml applies (zstd built without its per-call CPU check).
WORKDIR /src
COPY . .
# Cache mounts keep the registry and target between builds; the binary is
# copied out because the target cache is not part of the layer.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked --bin hourglass \
 && objcopy --strip-debug target/release/hourglass /hourglass

# distroless: glibc and CA certificates, no shell, uid 65532.
FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /hourglass /usr/local/bin/hourglass
USER 65532:65532
EXPOSE 8080 9090
ENTRYPOINT ["/usr/local/bin/hourglass"]
CMD ["--help"]
