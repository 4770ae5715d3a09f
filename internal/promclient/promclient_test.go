package promclient

import (
	"compress/gzip"
	"context"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/common/model"
)

func TestParseHeaders(t *testing.T) {
	tests := []struct {
		name    string
		in      []string
		want    map[string]string
		wantErr string
	}{
		{"tenant", []string{"X-Scope-OrgID=team-a"}, map[string]string{"X-Scope-Orgid": "team-a"}, ""},
		{"value with equals", []string{"X-A=b=c"}, map[string]string{"X-A": "b=c"}, ""},
		{"no equals", []string{"X-Scope-OrgID"}, nil, "KEY=VALUE"},
		{"empty key", []string{"=v"}, nil, "KEY=VALUE"},
		{"authorization refused", []string{"Authorization=Bearer s3cret"}, nil, "--prometheus-bearer-token-file"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got, err := ParseHeaders(tc.in)
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("err = %v, want %q", err, tc.wantErr)
				}
				if strings.Contains(err.Error(), "s3cret") {
					t.Fatal("the error repeats the secret")
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			for k, v := range tc.want {
				if got[k] != v {
					t.Fatalf("got %v, want %v", got, tc.want)
				}
			}
		})
	}
}

func TestValidateRejectsBadURLs(t *testing.T) {
	for _, u := range []string{"", "prometheus:9090", "ftp://p", "http://"} {
		if err := (Options{URL: u, Timeout: time.Second}).Validate(); err == nil {
			t.Errorf("URL %q accepted", u)
		}
	}
	if err := (Options{URL: "http://p:9090", Timeout: 0}).Validate(); err == nil {
		t.Error("zero timeout accepted")
	}
}

// TestClientSendsTokenAndHeadersAndNeverPrintsToken checks the transport
// against a real HTTP server: the bearer token from the file and the tenant
// header arrive, and an error message does not contain the token.
func TestClientSendsTokenAndHeadersAndNeverPrintsToken(t *testing.T) {
	var mu sync.Mutex
	var gotAuth, gotTenant string
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		gotAuth, gotTenant = r.Header.Get("Authorization"), r.Header.Get("X-Scope-OrgID")
		mu.Unlock()
		w.Header().Set("Content-Type", "application/json")
		_, _ = w.Write([]byte(`{"status":"error","errorType":"bad_data","error":"boom"}`))
	}))
	defer srv.Close()

	tokenFile := filepath.Join(t.TempDir(), "token")
	if err := os.WriteFile(tokenFile, []byte("s3cret-token\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	o := Options{URL: srv.URL, BearerTokenFile: tokenFile, Timeout: 5 * time.Second, Headers: map[string]string{"X-Scope-OrgID": "tenant-1"}}
	api, err := New(o)
	if err != nil {
		t.Fatal(err)
	}
	_, _, _, err = api.Query(context.Background(), "vector(1)", time.Now())
	if err == nil {
		t.Fatal("the query succeeded against a server answering errors")
	}
	if strings.Contains(err.Error(), "s3cret") {
		t.Fatalf("error leaks the token: %v", err)
	}
	mu.Lock()
	defer mu.Unlock()
	if gotAuth != "Bearer s3cret-token" {
		t.Fatalf("Authorization = %q", gotAuth)
	}
	if gotTenant != "tenant-1" {
		t.Fatalf("X-Scope-OrgID = %q", gotTenant)
	}
}

// TestTokenNeverFollowsARedirectToAnotherHost: the round tripper adds the
// token to every request, so a redirect to another host must not be
// followed at all.
func TestTokenNeverFollowsARedirectToAnotherHost(t *testing.T) {
	var mu sync.Mutex
	var leaked []string
	evil := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		leaked = append(leaked, r.Header.Get("Authorization"))
		mu.Unlock()
		w.Header().Set("Content-Type", "application/json")
		_, _ = w.Write([]byte(`{"status":"success","data":{"resultType":"vector","result":[]}}`))
	}))
	defer evil.Close()
	// Same port number, other host name: 127.0.0.1 vs localhost.
	evilURL := strings.Replace(evil.URL, "127.0.0.1", "localhost", 1)
	prom := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		http.Redirect(w, r, evilURL+r.URL.Path, http.StatusTemporaryRedirect)
	}))
	defer prom.Close()
	tok := filepath.Join(t.TempDir(), "token")
	if err := os.WriteFile(tok, []byte("s3cret"), 0o600); err != nil {
		t.Fatal(err)
	}
	api, err := New(Options{URL: prom.URL, BearerTokenFile: tok, Timeout: 5 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	_, _, _, err = api.Query(context.Background(), "up", time.Now())
	if err == nil || !strings.Contains(err.Error(), "another host") {
		t.Fatalf("query err = %v, want the redirect refused", err)
	}
	mu.Lock()
	defer mu.Unlock()
	for _, h := range leaked {
		if strings.Contains(h, "s3cret") {
			t.Fatal("the bearer token was sent to the other host")
		}
	}
}

func TestRedactDropsUserinfo(t *testing.T) {
	for in, want := range map[string]string{
		"http://alice:pw@prom:9090/x": "http://prom:9090/x",
		"https://prom:9090":           "https://prom:9090",
		"http://%zz":                  "(unparsable URL)",
	} {
		if got := Redact(in); got != want {
			t.Errorf("Redact(%q) = %q, want %q", in, got, want)
		}
	}
	err := (Options{URL: "ftp://alice:pw@prom", Timeout: time.Second}).Validate()
	if err == nil || strings.Contains(err.Error(), "pw") {
		t.Fatalf("validation error leaks the password: %v", err)
	}
}

// TestClientAsksForGzipAndDecodesIt: prometheus/common's transport
// disables compression, so the client asks for gzip itself and decodes
// it; a server that answers plain JSON works as well, and a body that says
// gzip but is not is an error, never an empty answer.
func TestClientAsksForGzipAndDecodesIt(t *testing.T) {
	const answer = `{"status":"success","data":{"resultType":"vector","result":[{"metric":{"a":"b"},"value":[1,"42"]}]}}`
	tests := []struct {
		name    string
		write   func(w http.ResponseWriter)
		wantErr bool
	}{
		{"gzip", func(w http.ResponseWriter) {
			w.Header().Set("Content-Encoding", "gzip")
			zw := gzip.NewWriter(w)
			_, _ = zw.Write([]byte(answer))
			_ = zw.Close()
		}, false},
		{"plain", func(w http.ResponseWriter) { _, _ = w.Write([]byte(answer)) }, false},
		{"not gzip after all", func(w http.ResponseWriter) {
			w.Header().Set("Content-Encoding", "gzip")
			_, _ = w.Write([]byte(answer))
		}, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var accepted string
			srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				accepted = r.Header.Get("Accept-Encoding")
				w.Header().Set("Content-Type", "application/json")
				tt.write(w)
			}))
			defer srv.Close()
			api, err := New(Options{URL: srv.URL, Timeout: 5 * time.Second})
			if err != nil {
				t.Fatal(err)
			}
			v, _, _, err := api.Query(context.Background(), "x", time.Now())
			if accepted != "gzip" {
				t.Errorf("Accept-Encoding = %q, want gzip", accepted)
			}
			if tt.wantErr {
				if err == nil {
					t.Fatalf("answer %v accepted from a broken gzip body", v)
				}
				return
			}
			vec, ok := v.(model.Vector)
			if err != nil || !ok || len(vec) != 1 || vec[0].Value != 42 {
				t.Fatalf("answer %v, err %v", v, err)
			}
		})
	}
}
