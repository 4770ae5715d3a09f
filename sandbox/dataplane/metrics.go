package dataplane

import (
	"strconv"
	"strings"

	"github.com/prometheus/client_golang/prometheus"
)

// Istio's standard metrics, with Istio's names and labels
// (https://istio.io/latest/docs/reference/config/metrics/).
var requestLabels = []string{
	"reporter",
	"source_workload", "source_workload_namespace", "source_principal", "source_app", "source_version",
	"source_canonical_service", "source_canonical_revision", "source_cluster",
	"destination_workload", "destination_workload_namespace", "destination_principal", "destination_app", "destination_version",
	"destination_service", "destination_service_name", "destination_service_namespace",
	"destination_canonical_service", "destination_canonical_revision", "destination_cluster",
	"request_protocol", "response_code", "response_flags", "connection_security_policy", "grpc_response_status",
}

// TCP metrics carry the same labels except response_code and
// grpc_response_status.
var tcpLabels = func() []string {
	var out []string
	for _, l := range requestLabels {
		if l != "response_code" && l != "grpc_response_status" {
			out = append(out, l)
		}
	}
	return out
}()

// Istio's default histogram buckets for istio_request_duration_milliseconds.
var durationBuckets = []float64{0.5, 1, 5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10000, 30000, 60000, 300000, 600000, 1800000, 3600000}

const unknown = "unknown"

// peer describes one side of a request for the metric labels.
type peer struct {
	workload, namespace, principal, app, version, canonical, revision string
}

var unknownPeer = peer{unknown, unknown, unknown, unknown, unknown, unknown, unknown}

// dstService is the destination_service* labels.
type dstService struct{ host, name, namespace string }

var unknownService = dstService{unknown, unknown, unknown}

type sidecarMetrics struct {
	reg                                  *prometheus.Registry
	requests                             *prometheus.CounterVec
	duration                             *prometheus.HistogramVec
	tcpOpened, tcpClosed, tcpSent, tcpRx *prometheus.CounterVec
}

func newSidecarMetrics() *sidecarMetrics {
	m := &sidecarMetrics{
		reg:       prometheus.NewRegistry(),
		requests:  prometheus.NewCounterVec(prometheus.CounterOpts{Name: "istio_requests_total", Help: "requests"}, requestLabels),
		duration:  prometheus.NewHistogramVec(prometheus.HistogramOpts{Name: "istio_request_duration_milliseconds", Help: "request duration", Buckets: durationBuckets}, requestLabels),
		tcpOpened: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "istio_tcp_connections_opened_total", Help: "tcp connections opened"}, tcpLabels),
		tcpClosed: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "istio_tcp_connections_closed_total", Help: "tcp connections closed"}, tcpLabels),
		tcpSent:   prometheus.NewCounterVec(prometheus.CounterOpts{Name: "istio_tcp_sent_bytes_total", Help: "bytes sent"}, tcpLabels),
		tcpRx:     prometheus.NewCounterVec(prometheus.CounterOpts{Name: "istio_tcp_received_bytes_total", Help: "bytes received"}, tcpLabels),
	}
	build := prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: "istio_build", Help: "Istio component build info"}, []string{"component", "tag"})
	build.WithLabelValues("proxy", ProxyVersion).Set(1)
	m.reg.MustRegister(m.requests, m.duration, m.tcpOpened, m.tcpClosed, m.tcpSent, m.tcpRx, build)
	return m
}

func labelValues(reporter string, src, dst peer, svc dstService, protocol, code, flags, csp, grpcStatus string, tcp bool) []string {
	v := []string{
		reporter,
		src.workload, src.namespace, src.principal, src.app, src.version, src.canonical, src.revision, clusterOf(src),
		dst.workload, dst.namespace, dst.principal, dst.app, dst.version,
		svc.host, svc.name, svc.namespace,
		dst.canonical, dst.revision, clusterOf(dst),
		protocol,
	}
	if !tcp {
		v = append(v, code)
	}
	v = append(v, flags, csp)
	if !tcp {
		v = append(v, grpcStatus)
	}
	return v
}

func clusterOf(p peer) string {
	if p.workload == unknown {
		return unknown
	}
	return "Kubernetes"
}

// request records one HTTP/gRPC request.
func (m *sidecarMetrics) request(reporter string, src, dst peer, svc dstService, protocol string, code int, flags, csp string, ms float64) {
	if flags == "" {
		flags = "-"
	}
	grpcStatus := ""
	if protocol == "grpc" {
		// gRPC status as Envoy derives it from the HTTP status when the
		// upstream sent no grpc-status trailer (UNAVAILABLE for 503 etc.).
		grpcStatus = grpcStatusFor(code)
	}
	lv := labelValues(reporter, src, dst, svc, protocol, strconv.Itoa(code), flags, csp, grpcStatus, false)
	m.requests.WithLabelValues(lv...).Inc()
	m.duration.WithLabelValues(lv...).Observe(ms)
}

func grpcStatusFor(code int) string {
	switch code {
	case 200:
		return "0"
	case 400:
		return "13"
	case 401:
		return "16"
	case 403:
		return "7"
	case 404:
		return "12"
	case 429, 502, 503, 504:
		return "14"
	default:
		return "2"
	}
}

// tcpConn records one TCP connection's open, bytes and close.
func (m *sidecarMetrics) tcpConn(reporter string, src, dst peer, svc dstService, flags, csp string, sent, received int) {
	if flags == "" {
		flags = "-"
	}
	lv := labelValues(reporter, src, dst, svc, "tcp", "", flags, csp, "", true)
	m.tcpOpened.WithLabelValues(lv...).Inc()
	m.tcpClosed.WithLabelValues(lv...).Inc()
	if sent > 0 {
		m.tcpSent.WithLabelValues(lv...).Add(float64(sent))
	}
	if received > 0 {
		m.tcpRx.WithLabelValues(lv...).Add(float64(received))
	}
}

// requestProtocol is Istio's request_protocol label for an app protocol.
func requestProtocol(protocol string) string {
	p := strings.ToLower(protocol)
	if strings.HasPrefix(p, "grpc") {
		return "grpc"
	}
	return "http"
}
