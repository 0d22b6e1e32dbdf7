package main

import (
	"bytes"
	"encoding/json"
	"fmt"
	"log"
	"net"
	"net/http"
	"os"
	"regexp"
	"strings"
	"time"
)

// ecrHostRE matches a private ECR registry host name; the region is group 2.
var ecrHostRE = regexp.MustCompile(`^([0-9]{12})\.dkr\.ecr\.([a-z0-9-]+)\.amazonaws\.com(\.cn)?$`)

// RegionOf is the region of a private ECR registry host name, or an error naming the format.
func RegionOf(host string) (string, error) {
	m := ecrHostRE.FindStringSubmatch(host)
	if m == nil {
		return "", fmt.Errorf("%q is not an ECR registry host (<12-digit account>.dkr.ecr.<region>.amazonaws.com)", host)
	}
	return m[2], nil
}

// Registry is a read-only OCI distribution API for one ECR registry host, behind ECR's basic
// auth: user AWS, password from a token the ECR emulator issued for this host's region.
//
// Which registry a request is for comes from the listener (one per host), not from the Host
// header: containerd, pointed here by hosts.toml, sends the endpoint's host (127.0.0.1:port) and
// the original registry host only as the `ns` query parameter of manifest and blob requests.
// Where either names an ECR host, it must be this one.
type Registry struct {
	Host   string
	Region string
	Tokens *Tokens
	Repos  map[string]*Layout
	Now    func() time.Time
	Log    *log.Logger
}

var pathRE = regexp.MustCompile(`^/v2/(.+)/(manifests|blobs)/([^/]+)$`)

type statusWriter struct {
	http.ResponseWriter
	status int
}

func (w *statusWriter) WriteHeader(code int) {
	w.status = code
	w.ResponseWriter.WriteHeader(code)
}

func (g *Registry) ServeHTTP(rw http.ResponseWriter, r *http.Request) {
	w := &statusWriter{ResponseWriter: rw, status: http.StatusOK}
	note := g.serve(w, r)
	if g.Log != nil {
		user, _, _ := r.BasicAuth()
		line := fmt.Sprintf("%s %s %s host=%s user=%q -> %d", g.Host, r.Method, r.URL.RequestURI(), r.Host, user, w.status)
		if note != "" {
			line += ": " + note
		}
		g.Log.Print(line)
	}
}

// serve answers one request; the returned note (never a secret) goes to the log.
func (g *Registry) serve(w http.ResponseWriter, r *http.Request) string {
	if ns := r.URL.Query().Get("ns"); ns != "" && ns != g.Host {
		msg := fmt.Sprintf("this endpoint serves %s, the request is for %s (check hosts.toml)", g.Host, ns)
		writeError(w, http.StatusBadRequest, "NAME_UNKNOWN", msg)
		return msg
	}
	if host := hostOnly(r.Host); ecrHostRE.MatchString(host) && host != g.Host {
		msg := fmt.Sprintf("this endpoint serves %s, the request is for %s", g.Host, host)
		writeError(w, http.StatusBadRequest, "NAME_UNKNOWN", msg)
		return msg
	}
	if ok, reason := g.authorized(r); !ok {
		// ECR's own challenge: basic auth, no token service.
		w.Header().Set("WWW-Authenticate", fmt.Sprintf(`Basic realm="https://%s/",service="ecr.amazonaws.com"`, g.Host))
		writeError(w, http.StatusUnauthorized, "UNAUTHORIZED", reason)
		return reason
	}
	if r.Method != http.MethodGet && r.Method != http.MethodHead {
		writeError(w, http.StatusMethodNotAllowed, "UNSUPPORTED", "this registry is read-only")
		return "read-only"
	}
	if r.URL.Path == "/v2/" || r.URL.Path == "/v2" {
		w.Header().Set("Content-Type", "application/json")
		w.Header().Set("Docker-Distribution-API-Version", "registry/2.0")
		_, _ = w.Write([]byte("{}"))
		return ""
	}
	m := pathRE.FindStringSubmatch(r.URL.Path)
	if m == nil {
		writeError(w, http.StatusNotFound, "NOT_FOUND", "not an OCI distribution pull path")
		return "unknown path"
	}
	name, kind, ref := m[1], m[2], m[3]
	repo, ok := g.Repos[name]
	if !ok {
		msg := fmt.Sprintf("repository %s does not exist", name)
		writeError(w, http.StatusNotFound, "NAME_UNKNOWN", msg)
		return msg
	}
	if kind == "manifests" {
		mediaType, digest, body, err := repo.Manifest(ref)
		if err != nil {
			msg := fmt.Sprintf("manifest %s:%s not found", name, ref)
			writeError(w, http.StatusNotFound, "MANIFEST_UNKNOWN", msg)
			return msg
		}
		w.Header().Set("Content-Type", mediaType)
		w.Header().Set("Docker-Content-Digest", digest)
		http.ServeContent(w, r, "", time.Time{}, bytes.NewReader(body))
		return ""
	}
	p := repo.blobPath(ref)
	f, err := os.Open(p)
	if p == "" || err != nil {
		msg := fmt.Sprintf("blob %s not found in %s", ref, name)
		writeError(w, http.StatusNotFound, "BLOB_UNKNOWN", msg)
		return msg
	}
	defer f.Close()
	w.Header().Set("Content-Type", "application/octet-stream")
	w.Header().Set("Docker-Content-Digest", ref)
	http.ServeContent(w, r, "", time.Time{}, f)
	return ""
}

func (g *Registry) authorized(r *http.Request) (bool, string) {
	user, password, ok := r.BasicAuth()
	switch {
	case !ok:
		return false, "no basic credentials"
	case user != "AWS":
		return false, fmt.Sprintf("user %q is not AWS", user)
	}
	return g.Tokens.Check(password, g.Region, g.Now())
}

func hostOnly(hostport string) string {
	if h, _, err := net.SplitHostPort(hostport); err == nil {
		return h
	}
	return strings.TrimSuffix(hostport, ".")
}

func writeError(w http.ResponseWriter, status int, code, message string) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(map[string]any{
		"errors": []map[string]string{{"code": code, "message": message}},
	})
}
