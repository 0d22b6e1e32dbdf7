# syntax=docker/dockerfile:1
# ecr-pull-secrets: a static (musl) binary on an empty, non-root runtime image.
#   docker build -t ecr-pull-secrets:0.1.0 .
# See docs/install.md ("Building the image").

FROM docker.io/library/rust:1.95-bookworm AS build
RUN apt-get update \
 && apt-get install -y --no-install-recommends musl-tools \
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
 && cp target/x86_64-unknown-linux-musl/release/ecr-pull-secrets /ecr-pull-secrets

# No shell, no package manager, no libc: only the binary and CA certificates.
FROM gcr.io/distroless/static-debian12:nonroot
COPY --from=build /ecr-pull-secrets /usr/local/bin/ecr-pull-secrets
USER 65532:65532
EXPOSE 8080
ENTRYPOINT ["/usr/local/bin/ecr-pull-secrets"]
CMD ["run"]
