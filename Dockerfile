# ecr-pull-secrets: a static (musl) binary on an empty (`scratch`), non-root runtime image.
#
#   docker build -t ecr-pull-secrets:0.1.0 .                 # from source (default target)
#   tests/image.sh build                                      # from a binary built on this host
#
# The runtime image has no base image: the binary, CA certificates and a passwd/group entry for
# user 65532 (nonroot), nothing else (no shell, no libc). Only the source build pulls an image
# (RUST_IMAGE); the `runtime-from-binary` target pulls nothing, so it builds with no registry.
# See docs/install.md ("The image").

ARG RUST_IMAGE=docker.io/library/rust:1.95-bookworm

# --- target runtime-from-binary: package a binary built elsewhere --------------------------------
# The build context holds the static binary (BINARY, stripped) and a CA bundle (CA_BUNDLE), e.g.
#   cargo build --release --locked --target x86_64-unknown-linux-musl
# then a context with that binary (strip --strip-all), /etc/ssl/certs/ca-certificates.crt and
# image/: what tests/image.sh build stages.
# First in the file: builders that build every stage up to the target never touch RUST_IMAGE.
FROM scratch AS runtime-from-binary
ARG BINARY=ecr-pull-secrets
ARG CA_BUNDLE=ca-certificates.crt
COPY image/passwd image/group /etc/
COPY ${CA_BUNDLE} /etc/ssl/certs/ca-certificates.crt
COPY ${BINARY} /usr/local/bin/ecr-pull-secrets
USER 65532:65532
EXPOSE 8080
ENTRYPOINT ["/usr/local/bin/ecr-pull-secrets"]
CMD ["run"]

# --- build: the static binary from source -----------------------------------------------------
FROM ${RUST_IMAGE} AS build
RUN apt-get update \
 && apt-get install -y --no-install-recommends musl-tools ca-certificates \
 && rm -rf /var/lib/apt/lists/* \
 && rustup target add x86_64-unknown-linux-musl
WORKDIR /src
# Dependencies first, so source edits reuse the cached layer.
COPY Cargo.toml Cargo.lock ./
RUN mkdir src benches && echo 'fn main() {}' > src/main.rs && touch src/lib.rs \
 && echo 'fn main() {}' > benches/scale.rs \
 && cargo build --release --locked --target x86_64-unknown-linux-musl \
 && rm -rf src benches
COPY src ./src
COPY benches ./benches
RUN touch src/main.rs src/lib.rs \
 && cargo build --release --locked --target x86_64-unknown-linux-musl \
 && cp target/x86_64-unknown-linux-musl/release/ecr-pull-secrets /ecr-pull-secrets \
 && strip --strip-all /ecr-pull-secrets

# --- runtime (default target): the same files as runtime-from-binary ---------------------------
FROM scratch AS runtime
COPY image/passwd image/group /etc/
COPY --from=build /etc/ssl/certs/ca-certificates.crt /etc/ssl/certs/ca-certificates.crt
COPY --from=build /ecr-pull-secrets /usr/local/bin/ecr-pull-secrets
USER 65532:65532
EXPOSE 8080
ENTRYPOINT ["/usr/local/bin/ecr-pull-secrets"]
CMD ["run"]
