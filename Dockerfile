# syntax=docker/dockerfile:1
# The agentwire broker image: a Rust build stage, then Debian slim with only the binary,
# running as an unprivileged user. Build from the repository root:
#   docker build -t agentwire .
# Run: docker run -p 4800:4800 -p 127.0.0.1:8480:8480 -v agentwire-data:/var/lib/agentwire \
#        agentwire serve --listen 0.0.0.0:4800 --admin 0.0.0.0:8480 --insecure-admin
# (or mount a config file, see ops/compose). Signals: SIGTERM stops cleanly, SIGUSR2 starts
# lame duck, SIGHUP reloads users and limits.

FROM rust:1.95-bookworm AS build
WORKDIR /src
COPY . .
# Debug info off and symbols stripped for the image (the release profile keeps line tables
# for profiling); the cache mounts keep the registry and target dir between builds.
ENV CARGO_PROFILE_RELEASE_DEBUG=0 \
    CARGO_PROFILE_RELEASE_STRIP=symbols
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked -p agentwire-cli --bin agentwire \
    && install -m 0755 target/release/agentwire /agentwire

FROM debian:bookworm-slim
RUN groupadd --system --gid 10001 agentwire \
    && useradd --system --uid 10001 --gid agentwire --home-dir /var/lib/agentwire \
       --shell /usr/sbin/nologin agentwire \
    && install -d -o agentwire -g agentwire -m 0750 /var/lib/agentwire
COPY --from=build /agentwire /usr/local/bin/agentwire
USER 10001:10001
WORKDIR /var/lib/agentwire
VOLUME ["/var/lib/agentwire"]
EXPOSE 4800 8480
STOPSIGNAL SIGTERM
ENTRYPOINT ["/usr/local/bin/agentwire"]
CMD ["serve", "--listen", "0.0.0.0:4800", "--admin", "0.0.0.0:8480", "--insecure-admin", \
     "--data-dir", "/var/lib/agentwire"]
