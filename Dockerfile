# Small non-root image of mtls-migrate: static binary on distroless.
#   docker build -t mtls-migrate .
FROM golang:1.26 AS build
WORKDIR /src
COPY go.mod go.sum ./
RUN go mod download
COPY cmd ./cmd
COPY executor ./executor
COPY internal ./internal
COPY planner ./planner
COPY plans ./plans
COPY rollback ./rollback
RUN CGO_ENABLED=0 go build -trimpath -ldflags="-s -w" -o /out/mtls-migrate ./cmd/mtls-migrate

# distroless static: no shell, CA certificates and tzdata included; nonroot
# is uid 65532, as the CronJob's securityContext expects.
FROM gcr.io/distroless/static-debian12:nonroot
COPY --from=build /out/mtls-migrate /mtls-migrate
USER 65532:65532
ENTRYPOINT ["/mtls-migrate"]
