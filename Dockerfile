# raftkv: the server and raftkvctl, in one image.
#   docker build -t raftkv/raftkv:0.1.0 .
# Runs as an unprivileged user; data goes to /var/lib/raftkv (mount a volume).
FROM rust:1.95-bookworm AS build
RUN apt-get update \
    && apt-get install -y --no-install-recommends protobuf-compiler libclang-dev \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
RUN cargo build --release --locked -p raftkv -p raftkvctl \
    && install -D -m 0755 target/release/raftkv /out/raftkv \
    && install -D -m 0755 target/release/raftkvctl /out/raftkvctl

# glibc and libstdc++ (RocksDB is C++), nothing else; uid 65532.
FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /out/ /usr/local/bin/
USER 65532:65532
WORKDIR /var/lib/raftkv
EXPOSE 2379 2380
ENV RAFTKV_DATA_DIR=/var/lib/raftkv/data
ENTRYPOINT ["/usr/local/bin/raftkv"]
