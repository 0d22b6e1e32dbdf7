package main

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"time"
)

const (
	mediaTypeIndex    = "application/vnd.oci.image.index.v1+json"
	mediaTypeManifest = "application/vnd.oci.image.manifest.v1+json"
	mediaTypeConfig   = "application/vnd.oci.image.config.v1+json"
	mediaTypeLayer    = "application/vnd.oci.image.layer.v1.tar+gzip"
	annotationRefName = "org.opencontainers.image.ref.name"
)

var digestRE = regexp.MustCompile(`^sha256:[a-f0-9]{64}$`)

type descriptor struct {
	MediaType   string            `json:"mediaType"`
	Digest      string            `json:"digest"`
	Size        int64             `json:"size"`
	Annotations map[string]string `json:"annotations,omitempty"`
}

// Layout is one repository: an OCI image layout directory (index.json, blobs/sha256/...), its
// tags taken from the index's org.opencontainers.image.ref.name annotations.
type Layout struct {
	dir  string
	tags map[string]descriptor
}

func OpenLayout(dir string) (*Layout, error) {
	raw, err := os.ReadFile(filepath.Join(dir, "index.json"))
	if err != nil {
		return nil, fmt.Errorf("OCI layout %s: %w", dir, err)
	}
	var index struct {
		Manifests []descriptor `json:"manifests"`
	}
	if err := json.Unmarshal(raw, &index); err != nil {
		return nil, fmt.Errorf("OCI layout %s: index.json: %w", dir, err)
	}
	l := &Layout{dir: dir, tags: map[string]descriptor{}}
	for _, m := range index.Manifests {
		if tag := m.Annotations[annotationRefName]; tag != "" {
			l.tags[tag] = m
		}
	}
	if len(l.tags) == 0 {
		return nil, fmt.Errorf("OCI layout %s: no manifest carries a %s annotation (a tag)", dir, annotationRefName)
	}
	return l, nil
}

// blobPath is the file of a content digest, or "" for a malformed digest.
func (l *Layout) blobPath(digest string) string {
	if !digestRE.MatchString(digest) {
		return ""
	}
	return filepath.Join(l.dir, "blobs", "sha256", digest[len("sha256:"):])
}

// Manifest resolves a tag or a digest to the manifest's media type, digest and bytes.
func (l *Layout) Manifest(ref string) (mediaType, digest string, body []byte, err error) {
	if d, ok := l.tags[ref]; ok {
		body, err = os.ReadFile(l.blobPath(d.Digest))
		return d.MediaType, d.Digest, body, err
	}
	p := l.blobPath(ref)
	if p == "" {
		return "", "", nil, os.ErrNotExist
	}
	if body, err = os.ReadFile(p); err != nil {
		return "", "", nil, err
	}
	var probe struct {
		MediaType string `json:"mediaType"`
	}
	if json.Unmarshal(body, &probe) != nil || (probe.MediaType != mediaTypeManifest && probe.MediaType != mediaTypeIndex) {
		return "", "", nil, os.ErrNotExist // a blob, not a manifest
	}
	return probe.MediaType, ref, body, nil
}

// ---------------------------------------------------------------- seed

func sha(b []byte) string {
	s := sha256.Sum256(b)
	return "sha256:" + hex.EncodeToString(s[:])
}

func writeBlob(dir string, b []byte) (descriptor, error) {
	d := descriptor{Digest: sha(b), Size: int64(len(b))}
	p := filepath.Join(dir, "blobs", "sha256", d.Digest[len("sha256:"):])
	if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
		return d, err
	}
	return d, os.WriteFile(p, b, 0o644)
}

// Seed writes an OCI image layout holding one image, tagged tag, whose only file is program at
// /<name> (its entrypoint), owned by 65532 and run as that user. The output depends only on
// the inputs (fixed timestamps), so the digest is stable across builds of the same program.
func Seed(dir, program, name, tag string) (manifestDigest string, err error) {
	bin, err := os.ReadFile(program)
	if err != nil {
		return "", err
	}
	epoch := time.Unix(0, 0).UTC()
	var tarBuf bytes.Buffer
	tw := tar.NewWriter(&tarBuf)
	if err := tw.WriteHeader(&tar.Header{Name: name, Mode: 0o755, Size: int64(len(bin)), Uid: 65532, Gid: 65532, ModTime: epoch, Typeflag: tar.TypeReg, Format: tar.FormatPAX}); err != nil {
		return "", err
	}
	if _, err := tw.Write(bin); err != nil {
		return "", err
	}
	if err := tw.Close(); err != nil {
		return "", err
	}
	var gzBuf bytes.Buffer
	gz, _ := gzip.NewWriterLevel(&gzBuf, gzip.BestCompression)
	gz.ModTime = epoch
	if _, err := gz.Write(tarBuf.Bytes()); err != nil {
		return "", err
	}
	if err := gz.Close(); err != nil {
		return "", err
	}

	if err := os.RemoveAll(dir); err != nil {
		return "", err
	}
	layer, err := writeBlob(dir, gzBuf.Bytes())
	if err != nil {
		return "", err
	}
	layer.MediaType = mediaTypeLayer
	config, _ := json.Marshal(map[string]any{
		"created":      epoch.Format(time.RFC3339),
		"architecture": "amd64",
		"os":           "linux",
		"config": map[string]any{
			"User":       "65532:65532",
			"Entrypoint": []string{"/" + name},
		},
		"rootfs": map[string]any{"type": "layers", "diff_ids": []string{sha(tarBuf.Bytes())}},
	})
	cfg, err := writeBlob(dir, config)
	if err != nil {
		return "", err
	}
	cfg.MediaType = mediaTypeConfig
	manifest, _ := json.Marshal(map[string]any{
		"schemaVersion": 2,
		"mediaType":     mediaTypeManifest,
		"config":        cfg,
		"layers":        []descriptor{layer},
	})
	m, err := writeBlob(dir, manifest)
	if err != nil {
		return "", err
	}
	m.MediaType = mediaTypeManifest
	m.Annotations = map[string]string{annotationRefName: tag}
	index, _ := json.Marshal(map[string]any{"schemaVersion": 2, "mediaType": mediaTypeIndex, "manifests": []descriptor{m}})
	if err := os.WriteFile(filepath.Join(dir, "index.json"), index, 0o644); err != nil {
		return "", err
	}
	if err := os.WriteFile(filepath.Join(dir, "oci-layout"), []byte(`{"imageLayoutVersion":"1.0.0"}`), 0o644); err != nil {
		return "", err
	}
	return m.Digest, nil
}
