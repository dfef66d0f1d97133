# Raksha's binaries, raksha (the CLI), raksha-worker and raksha-api (the
# tenants' API), in one image.
#
#   docker build -t raksha:local .
#
# The build stage compiles with the Ceph build tags (RBD sources and targets
# through go-ceph, as `make build` does when librbd-dev is installed); the
# runtime stage is Debian bookworm-slim with the matching librbd/librados, qemu-utils
# (qemu-img, qemu-nbd) and curl for the health checks. The image runs as the
# unprivileged user raksha (uid 10001): right for the control and data roles.
# The image carries no FUSE, QEMU system emulator or appliance, so `raksha mount`
# and `raksha restore files` are for a host, not for this image.
# A host worker runs on a compute node under systemd instead
# (deploy/systemd/raksha-worker@.service), not in a container.
#
# Both stages are Debian bookworm, so the librbd the binary was linked against
# is the one it runs with. Checked offline by worker/deploy_test.go
# (TestDeployDockerfile); never built on the machines that test it.

FROM golang:1.26.8-bookworm AS build
RUN apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends librbd-dev librados-dev \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY go.mod go.sum ./
RUN go mod download
COPY . .
RUN CGO_ENABLED=1 go build -trimpath -tags ceph,pacific -o /out/raksha ./starter \
 && CGO_ENABLED=1 go build -trimpath -tags ceph,pacific -o /out/raksha-worker ./worker \
 && CGO_ENABLED=1 go build -trimpath -tags ceph,pacific -o /out/raksha-api ./apiserver

FROM debian:12.11-slim AS runtime
RUN apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
      librbd1 librados2 qemu-utils ca-certificates curl \
 && rm -rf /var/lib/apt/lists/* \
 && groupadd --system --gid 10001 raksha \
 && useradd --system --uid 10001 --gid raksha --home-dir /var/lib/raksha --create-home --shell /usr/sbin/nologin raksha
COPY --from=build /out/raksha /out/raksha-worker /out/raksha-api /usr/local/bin/
USER raksha:raksha
WORKDIR /var/lib/raksha
ENTRYPOINT ["/usr/local/bin/raksha-worker"]
