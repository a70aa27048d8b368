# syntax=docker/dockerfile:1
# Multi-stage build of pushproxy and the reference origin. The runtime image holds only the
# two static binaries and CA certificates (for https:// origins and push services).
FROM golang:1.26-bookworm AS build
WORKDIR /src
COPY go.mod go.sum ./
RUN go mod download
COPY . .
RUN CGO_ENABLED=0 go build -trimpath -ldflags="-s -w" -o /out/ ./cmd/pushproxy ./cmd/origin
# An empty /keys owned by nonroot: a volume mounted there (the key file sealing forwarded
# credentials, docker-compose.yml) starts with that owner.
RUN mkdir -m 0700 /keys

FROM gcr.io/distroless/static-debian12:nonroot
COPY --from=build /out/pushproxy /out/origin /usr/local/bin/
COPY --from=build --chown=nonroot:nonroot /keys /keys
USER nonroot
# Inside a container loopback is useless: listen on every interface. serve then refuses to
# start unless PUSHPROXY_API_KEYS (or PUSHPROXY_OPEN_HANDOFF=true) is set.
ENV PUSHPROXY_LISTEN=:8080
EXPOSE 8080
ENTRYPOINT ["/usr/local/bin/pushproxy"]
CMD ["serve"]
