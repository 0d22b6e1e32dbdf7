package main

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

const (
	host     = "123456789012.dkr.ecr.us-east-1.amazonaws.com"
	hostWest = "123456789012.dkr.ecr.eu-west-1.amazonaws.com"
)

var now = time.Date(2026, 11, 30, 12, 0, 0, 0, time.UTC)

func hashOf(p string) string {
	s := sha256.Sum256([]byte(p))
	return hex.EncodeToString(s[:])
}

// logLine is one call-log line as server.py writes it.
func logLine(service, region, outcome, password string, expires time.Time) string {
	e := map[string]any{"time": float64(now.Unix()), "service": service, "region": region, "outcome": outcome, "access_key_id": "AKIATESTENV000000001"}
	if outcome == "ok" {
		e["expires_at"] = float64(expires.UnixMilli()) / 1000
		e["password_sha256"] = hashOf(password)
	}
	b, _ := json.Marshal(e)
	return string(b) + "\n"
}

type fixture struct {
	srv    *httptest.Server
	log    string
	digest string
}

func setup(t *testing.T) *fixture {
	t.Helper()
	dir := t.TempDir()
	program := filepath.Join(dir, "program")
	if err := os.WriteFile(program, []byte("#!not really a program\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	digest, err := Seed(filepath.Join(dir, "layout"), program, "hello", "1.0")
	if err != nil {
		t.Fatal(err)
	}
	layout, err := OpenLayout(filepath.Join(dir, "layout"))
	if err != nil {
		t.Fatal(err)
	}
	callLog := filepath.Join(dir, "calls.log")
	lines := logLine("ecr", "us-east-1", "ok", "pw-valid", now.Add(time.Hour)) +
		logLine("ecr", "us-east-1", "ok", "pw-expired", now.Add(-time.Second)) +
		logLine("ecr", "eu-west-1", "ok", "pw-west", now.Add(time.Hour)) +
		logLine("ecr-public", "us-east-1", "ok", "pw-public", now.Add(time.Hour)) +
		logLine("ecr", "us-east-1", "throttle", "", time.Time{})
	if err := os.WriteFile(callLog, []byte(lines), 0o644); err != nil {
		t.Fatal(err)
	}
	reg := &Registry{Host: host, Region: "us-east-1", Tokens: NewTokens(callLog),
		Repos: map[string]*Layout{"testenv/hello": layout}, Now: func() time.Time { return now }}
	srv := httptest.NewServer(reg)
	t.Cleanup(srv.Close)
	return &fixture{srv: srv, log: callLog, digest: digest}
}

func (f *fixture) do(t *testing.T, method, path, user, password string) (*http.Response, []byte) {
	t.Helper()
	req, err := http.NewRequest(method, f.srv.URL+path, nil)
	if err != nil {
		t.Fatal(err)
	}
	if user != "" || password != "" {
		req.SetBasicAuth(user, password)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return resp, body
}

func TestAuth(t *testing.T) {
	f := setup(t)
	for _, tc := range []struct {
		name, user, password string
		status               int
		reason               string
	}{
		{"no credentials", "", "", 401, "no basic credentials"},
		{"never issued", "AWS", "pw-never-issued", 401, "never issued"},
		{"pw-expired", "AWS", "pw-expired", 401, "expired at"},
		{"another region's", "AWS", "pw-west", 401, "issued for region eu-west-1"},
		{"ECR Public's", "AWS", "pw-public", 401, "issued by ecr-public"},
		{"wrong user", "admin", "pw-valid", 401, "is not AWS"},
		{"pw-valid", "AWS", "pw-valid", 200, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			for _, path := range []string{"/v2/", "/v2/testenv/hello/manifests/1.0", "/v2/testenv/hello/blobs/" + f.digest} {
				resp, body := f.do(t, "GET", path, tc.user, tc.password)
				if resp.StatusCode != tc.status {
					t.Fatalf("GET %s: status %d, want %d (%s)", path, resp.StatusCode, tc.status, body)
				}
				if tc.status != 401 {
					continue
				}
				if got := resp.Header.Get("WWW-Authenticate"); !strings.HasPrefix(got, `Basic realm="https://`+host+`/"`) {
					t.Errorf("WWW-Authenticate %q", got)
				}
				if !strings.Contains(string(body), tc.reason) || !strings.Contains(string(body), "UNAUTHORIZED") {
					t.Errorf("body %s lacks %q", body, tc.reason)
				}
				if tc.password != "" && strings.Contains(string(body), tc.password) {
					t.Errorf("body %s echoes the password", body)
				}
			}
		})
	}
}

// A pull as a client does it: manifest by tag, then config and layer, every digest checked.
func TestPull(t *testing.T) {
	f := setup(t)
	resp, body := f.do(t, "GET", "/v2/testenv/hello/manifests/1.0", "AWS", "pw-valid")
	if resp.StatusCode != 200 {
		t.Fatalf("manifest: %d %s", resp.StatusCode, body)
	}
	if ct := resp.Header.Get("Content-Type"); ct != mediaTypeManifest {
		t.Errorf("Content-Type %q", ct)
	}
	if d := resp.Header.Get("Docker-Content-Digest"); d != sha(body) || d != f.digest {
		t.Errorf("Docker-Content-Digest %s, body %s, seeded %s", d, sha(body), f.digest)
	}
	var m struct {
		Config descriptor   `json:"config"`
		Layers []descriptor `json:"layers"`
	}
	if err := json.Unmarshal(body, &m); err != nil {
		t.Fatal(err)
	}
	for _, d := range append([]descriptor{m.Config}, m.Layers...) {
		resp, blob := f.do(t, "GET", "/v2/testenv/hello/blobs/"+d.Digest, "AWS", "pw-valid")
		if resp.StatusCode != 200 || sha(blob) != d.Digest || int64(len(blob)) != d.Size {
			t.Errorf("blob %s: status %d, digest %s, size %d of %d", d.Digest, resp.StatusCode, sha(blob), len(blob), d.Size)
		}
		head, empty := f.do(t, "HEAD", "/v2/testenv/hello/blobs/"+d.Digest, "AWS", "pw-valid")
		if head.StatusCode != 200 || len(empty) != 0 || head.ContentLength != d.Size {
			t.Errorf("HEAD blob %s: %d, length %d", d.Digest, head.StatusCode, head.ContentLength)
		}
	}
	// By digest too, as containerd fetches it after resolving the tag.
	resp, byDigest := f.do(t, "GET", "/v2/testenv/hello/manifests/"+f.digest, "AWS", "pw-valid")
	if resp.StatusCode != 200 || sha(byDigest) != f.digest || resp.Header.Get("Content-Type") != mediaTypeManifest {
		t.Errorf("manifest by digest: %d %s", resp.StatusCode, resp.Header.Get("Content-Type"))
	}
	head, _ := f.do(t, "HEAD", "/v2/testenv/hello/manifests/1.0", "AWS", "pw-valid")
	if head.StatusCode != 200 || head.Header.Get("Docker-Content-Digest") != f.digest || head.ContentLength != int64(len(body)) {
		t.Errorf("HEAD manifest: %d %v", head.StatusCode, head.Header)
	}
}

func TestNotFoundAndWrongRegistry(t *testing.T) {
	f := setup(t)
	for _, tc := range []struct {
		method, path string
		status       int
		code         string
	}{
		{"GET", "/v2/other/repo/manifests/1.0", 404, "NAME_UNKNOWN"},
		{"GET", "/v2/testenv/hello/manifests/2.0", 404, "MANIFEST_UNKNOWN"},
		{"GET", "/v2/testenv/hello/manifests/sha256:" + strings.Repeat("0", 64), 404, "MANIFEST_UNKNOWN"},
		{"GET", "/v2/testenv/hello/blobs/sha256:" + strings.Repeat("0", 64), 404, "BLOB_UNKNOWN"},
		{"GET", "/v2/testenv/hello/blobs/../../etc/passwd", 404, ""},
		{"PUT", "/v2/testenv/hello/manifests/1.0", 405, "UNSUPPORTED"},
		// containerd names the registry it resolves for in `ns`: another one is a wiring mistake.
		{"GET", "/v2/testenv/hello/manifests/1.0?ns=" + hostWest, 400, "NAME_UNKNOWN"},
		{"GET", "/v2/testenv/hello/manifests/1.0?ns=" + host, 200, ""},
	} {
		resp, body := f.do(t, tc.method, tc.path, "AWS", "pw-valid")
		if resp.StatusCode != tc.status || !strings.Contains(string(body), tc.code) {
			t.Errorf("%s %s: %d %s, want %d %s", tc.method, tc.path, resp.StatusCode, body, tc.status, tc.code)
		}
	}
}

// Passwords issued after the registry started are accepted at once; an emulator restart (a
// shorter log) forgets the old ones; a line still being written is not read half.
func TestCallLogFollowed(t *testing.T) {
	f := setup(t)
	if resp, _ := f.do(t, "GET", "/v2/", "AWS", "pw-later"); resp.StatusCode != 401 {
		t.Fatalf("not yet issued: %d", resp.StatusCode)
	}
	line := logLine("ecr", "us-east-1", "ok", "pw-later", now.Add(time.Hour))
	appendTo(t, f.log, line[:20])
	if resp, _ := f.do(t, "GET", "/v2/", "AWS", "pw-later"); resp.StatusCode != 401 {
		t.Fatalf("half a line: %d", resp.StatusCode)
	}
	appendTo(t, f.log, line[20:])
	if resp, body := f.do(t, "GET", "/v2/", "AWS", "pw-later"); resp.StatusCode != 200 {
		t.Fatalf("issued after start: %d %s", resp.StatusCode, body)
	}
	if err := os.WriteFile(f.log, []byte(logLine("ecr", "us-east-1", "ok", "pw-fresh", now.Add(time.Hour))), 0o644); err != nil {
		t.Fatal(err)
	}
	if resp, _ := f.do(t, "GET", "/v2/", "AWS", "pw-valid"); resp.StatusCode != 401 {
		t.Errorf("password from before the restart: %d", resp.StatusCode)
	}
	if resp, _ := f.do(t, "GET", "/v2/", "AWS", "pw-fresh"); resp.StatusCode != 200 {
		t.Errorf("password from after the restart: %d", resp.StatusCode)
	}
}

func appendTo(t *testing.T, path, s string) {
	t.Helper()
	file, err := os.OpenFile(path, os.O_APPEND|os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer file.Close()
	if _, err := file.WriteString(s); err != nil {
		t.Fatal(err)
	}
}

func TestRegionOf(t *testing.T) {
	for h, want := range map[string]string{
		host: "us-east-1", hostWest: "eu-west-1",
		"123456789012.dkr.ecr.cn-north-1.amazonaws.com.cn": "cn-north-1",
		"public.ecr.aws": "", "12345.dkr.ecr.us-east-1.amazonaws.com": "",
	} {
		got, err := RegionOf(h)
		if got != want || (want == "") != (err != nil) {
			t.Errorf("RegionOf(%s) = %q, %v; want %q", h, got, err, want)
		}
	}
}

func TestSeedIsReproducible(t *testing.T) {
	dir := t.TempDir()
	program := filepath.Join(dir, "p")
	if err := os.WriteFile(program, []byte("x"), 0o755); err != nil {
		t.Fatal(err)
	}
	a, err := Seed(filepath.Join(dir, "a"), program, "hello", "1.0")
	if err != nil {
		t.Fatal(err)
	}
	b, _ := Seed(filepath.Join(dir, "b"), program, "hello", "1.0")
	if a != b {
		t.Errorf("two seeds of the same program: %s != %s", a, b)
	}
	fmt.Println("seeded", a)
}
