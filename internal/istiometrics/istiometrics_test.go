package istiometrics

import (
	"context"
	"errors"
	"reflect"
	"testing"
	"time"

	v1 "github.com/prometheus/client_golang/api/prometheus/v1"
	"github.com/prometheus/common/model"
)

func TestEscapeLabelValue(t *testing.T) {
	tests := map[string]string{
		"cart":            `"cart"`,
		`a"b`:             `"a\"b"`,
		`a\b`:             `"a\\b"`,
		"x\ny":            `"x\ny"`,
		`"}) or vector(1`: `"\"}) or vector(1"`,
	}
	for in, want := range tests {
		if got := EscapeLabelValue(in); got != want {
			t.Errorf("EscapeLabelValue(%q) = %s, want %s", in, got, want)
		}
	}
	if got := EscapeRegexValue([]string{"a.b", "c"}); got != `"a\\.b|c"` {
		t.Errorf("EscapeRegexValue = %s", got)
	}
}

func TestSelectorsNameTheNamespaceOrTheWholeMesh(t *testing.T) {
	tests := []struct {
		name string
		got  string
		want string
	}{
		{"plaintext into a namespace", DestinationPlaintext("cart"), `reporter="destination",connection_security_policy!="mutual_tls",destination_workload_namespace="cart"`},
		{"plaintext mesh-wide", DestinationPlaintext(""), `reporter="destination",connection_security_policy!="mutual_tls"`},
		{"plaintext namespace escaped", DestinationPlaintext(`a"}`), `reporter="destination",connection_security_policy!="mutual_tls",destination_workload_namespace="a\"}"`},
		{"destination into a namespace", Destination("cart"), `reporter="destination",destination_workload_namespace="cart"`},
		{"destination mesh-wide", Destination(""), `reporter="destination"`},
		{"source toward a namespace", SourceToward("cart"), `reporter="source",destination_service_namespace="cart"`},
		{"source mesh-wide", SourceToward(""), `reporter="source"`},
		{"one of, escaped", OneOf(LabelReporter, []string{"source", "a.b"}), `reporter=~"source|a\\.b"`},
		{"regex quoted, not escaped", Selector(NotRe(LabelResponseCode, "5.."), Re(LabelResponseFlags, ".*(UF|URX|UC).*")), `response_code!~"5..",response_flags=~".*(UF|URX|UC).*"`},
		{"grouping", Grouping(LabelSourceWorkload, LabelSourceWorkloadNamespace), "source_workload, source_workload_namespace"},
		{"increase by", IncreaseBy(RequestsTotal, DestinationPlaintext("cart"), Grouping(LabelSourceWorkload), "2h"),
			`sum by (source_workload) (increase(istio_requests_total{reporter="destination",connection_security_policy!="mutual_tls",destination_workload_namespace="cart"}[2h]))`},
		{"new series by", NewSeriesBy(RequestsTotal, DestinationPlaintext("cart"), Grouping(LabelSourceWorkload), "2h", "1h58m"),
			`sum by (source_workload) ((last_over_time(istio_requests_total{reporter="destination",connection_security_policy!="mutual_tls",destination_workload_namespace="cart"}[2h]) > 0) unless istio_requests_total{reporter="destination",connection_security_policy!="mutual_tls",destination_workload_namespace="cart"} offset 1h58m)`},
		{"last rise by", LastRiseBy([]string{RequestsTotal, TCPReceivedBytes}, DestinationPlaintext(""), Grouping(LabelSourceWorkload), "1w", "1h", "1h5m"),
			`timestamp(sum by (source_workload) (increase(istio_requests_total{reporter="destination",connection_security_policy!="mutual_tls"}[1h5m])) > 0 or sum by (source_workload) (increase(istio_tcp_received_bytes_total{reporter="destination",connection_security_policy!="mutual_tls"}[1h5m])) > 0)` +
				` or max_over_time(timestamp(sum by (source_workload) (increase(istio_requests_total{reporter="destination",connection_security_policy!="mutual_tls"}[1h5m])) > 0 or sum by (source_workload) (increase(istio_tcp_received_bytes_total{reporter="destination",connection_security_policy!="mutual_tls"}[1h5m])) > 0)[1w:1h])`},
		{"series count in a namespace", SeriesCount(TCPConnectionsOpened, Destination("cart")), `count(istio_tcp_connections_opened_total{reporter="destination",destination_workload_namespace="cart"})`},
		{"series count mesh-wide", SeriesCount(RequestsTotal, Destination("")), `count(istio_requests_total{reporter="destination"})`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if tt.got != tt.want {
				t.Errorf("got  %s\nwant %s", tt.got, tt.want)
			}
		})
	}
}

// fakeQuerier records whether each call had a deadline and answers with
// fixed warnings and infos.
type fakeQuerier struct {
	deadline bool
	warns    v1.Warnings
	infos    v1.Infos
	err      error
}

func (f *fakeQuerier) Query(ctx context.Context, _ string, _ time.Time, _ ...v1.Option) (model.Value, v1.Warnings, v1.Infos, error) {
	_, f.deadline = ctx.Deadline()
	return model.Vector{}, f.warns, f.infos, f.err
}

func (f *fakeQuerier) QueryRange(ctx context.Context, _ string, _ v1.Range, _ ...v1.Option) (model.Value, v1.Warnings, v1.Infos, error) {
	_, f.deadline = ctx.Deadline()
	return model.Matrix{}, f.warns, f.infos, f.err
}

func TestQueriesApplyTheTimeoutAndReturnWarnings(t *testing.T) {
	tests := []struct {
		name         string
		timeout      time.Duration
		rangeQuery   bool
		err          error
		wantDeadline bool
	}{
		{"instant with timeout", time.Second, false, nil, true},
		{"instant without timeout", 0, false, nil, false},
		{"range with timeout", time.Second, true, nil, true},
		{"range without timeout", 0, true, nil, false},
		{"error passed through with warnings", time.Second, false, errors.New("boom"), true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f := &fakeQuerier{warns: v1.Warnings{"partial response"}, infos: v1.Infos{"not a counter"}, err: tt.err}
			var (
				warns v1.Warnings
				infos v1.Infos
				err   error
			)
			if tt.rangeQuery {
				_, warns, infos, err = Range(context.Background(), f, "q", v1.Range{}, tt.timeout)
			} else {
				_, warns, infos, err = Instant(context.Background(), f, "q", time.Time{}, tt.timeout)
			}
			if !errors.Is(err, tt.err) {
				t.Errorf("err = %v, want %v", err, tt.err)
			}
			if f.deadline != tt.wantDeadline {
				t.Errorf("deadline = %v, want %v", f.deadline, tt.wantDeadline)
			}
			if !reflect.DeepEqual(warns, f.warns) || !reflect.DeepEqual(infos, f.infos) {
				t.Errorf("warnings %v infos %v, want %v %v", warns, infos, f.warns, f.infos)
			}
		})
	}
}

type answerQuerier struct {
	v     model.Value
	warns v1.Warnings
	err   error
}

func (a answerQuerier) Query(context.Context, string, time.Time, ...v1.Option) (model.Value, v1.Warnings, v1.Infos, error) {
	return a.v, a.warns, v1.Infos{"metric might not be a counter"}, a.err
}

func (a answerQuerier) QueryRange(context.Context, string, v1.Range, ...v1.Option) (model.Value, v1.Warnings, v1.Infos, error) {
	return nil, nil, nil, errors.New("no range queries here")
}

// TestInstantVectorRefusesWarningsAndOtherTypes: a warning or a result that
// is not a vector is an *UnusableAnswerError naming it; infos are not; a
// query error passes through as is.
func TestInstantVectorRefusesWarningsAndOtherTypes(t *testing.T) {
	boom := errors.New("boom")
	tests := []struct {
		name     string
		q        answerQuerier
		unusable string // the *UnusableAnswerError's message; "" when none
		err      error
	}{
		{"vector with infos only", answerQuerier{v: model.Vector{}}, "", nil},
		{"warnings", answerQuerier{v: model.Vector{}, warns: v1.Warnings{"partial response"}}, "answered with warnings, so the answer may be partial: partial response", nil},
		{"matrix", answerQuerier{v: model.Matrix{}}, "answered with a matrix, not an instant vector", nil},
		{"scalar", answerQuerier{v: &model.Scalar{}}, "answered with a scalar, not an instant vector", nil},
		{"no value", answerQuerier{}, "answered with no value, not an instant vector", nil},
		{"query error", answerQuerier{err: boom}, "", boom},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := InstantVector(context.Background(), tt.q, "q", time.Time{}, 0)
			var ue *UnusableAnswerError
			switch {
			case tt.unusable != "":
				if !errors.As(err, &ue) || err.Error() != tt.unusable {
					t.Fatalf("err = %v, want an UnusableAnswerError %q", err, tt.unusable)
				}
			case tt.err != nil:
				if !errors.Is(err, tt.err) || errors.As(err, &ue) {
					t.Fatalf("err = %v, want %v as is", err, tt.err)
				}
			case err != nil:
				t.Fatalf("err = %v, want none", err)
			}
		})
	}
}
