# syntax=docker/dockerfile:1
# muster's coordinator image (ghcr.io/muster-dev/muster-coordinator) for docker or
# buildah, built from the repository's root:
#
#   docker build -f deploy/images/coordinator.Dockerfile \
#       --build-arg VERSION=$(git describe --tags --always --dirty) \
#       --build-arg COMMIT=$(git rev-parse HEAD) \
#       -t ghcr.io/muster-dev/muster-coordinator:0.1.0 .
#   (docker buildx build --platform linux/amd64,linux/arm64 ... for both)
#
# `make images` builds the same image without a container engine or a base
# image (deploy/images, docs/install.md): the same static binary at the same
# path, the same /etc/passwd, user, working directory, environment,
# entrypoint and labels. deploy/images/images_test.go checks that this file
# says what the builder does.

ARG GO_IMAGE=golang:1.26

FROM --platform=$BUILDPLATFORM ${GO_IMAGE} AS build
ARG TARGETOS
ARG TARGETARCH
ARG VERSION=dev
ARG COMMIT=
WORKDIR /src
COPY . .
# Static (no cgo: there is no libc in the image), cross-compiled, with the
# Makefile's ldflags.
RUN --mount=type=cache,target=/root/.cache/go-build --mount=type=cache,target=/go/pkg/mod \
    CGO_ENABLED=0 GOOS=$TARGETOS GOARCH=$TARGETARCH go build -trimpath -buildvcs=false \
      -ldflags "-X github.com/muster-dev/muster/internal/version.Version=${VERSION} -X github.com/muster-dev/muster/internal/version.Commit=${COMMIT}" \
      -o /out/muster/coordinator ./coordinator/cmd/coordinator
# What the image has besides its binary, as distroless/static lays it out:
# the users (nonroot is 65532), nonroot's home, /tmp.
RUN mkdir -p /rootfs/etc /rootfs/home/nonroot /rootfs/tmp && \
    printf 'root:x:0:0:root:/root:/sbin/nologin\nnonroot:x:65532:65532:nonroot:/home/nonroot:/sbin/nologin\n' > /rootfs/etc/passwd && \
    printf 'root:x:0:\nnonroot:x:65532:\n' > /rootfs/etc/group && \
    chmod 0644 /rootfs/etc/passwd /rootfs/etc/group && \
    chown 65532:65532 /rootfs/home/nonroot && chmod 0700 /rootfs/home/nonroot && \
    chmod 1777 /rootfs/tmp && chmod 0755 /out/muster /out/muster/coordinator

FROM scratch
ARG VERSION=dev
ARG COMMIT=
# COPY --from keeps the owners and modes set above.
COPY --from=build /rootfs/ /
COPY --from=build /out/muster/ /muster/
ENV PATH=/muster:/usr/local/bin:/usr/bin:/bin
WORKDIR /home/nonroot
USER 65532:65532
LABEL org.opencontainers.image.source="https://github.com/muster-dev/muster" \
      org.opencontainers.image.title="muster-coordinator" \
      org.opencontainers.image.description="muster's coordinator: the rendezvous API (gRPC, etcd-backed) and the admission webhook" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${COMMIT}"
ENTRYPOINT ["/muster/coordinator"]
