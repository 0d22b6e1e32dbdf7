package main

import (
	"bufio"
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"sync"
	"time"
)

// issued is what the ECR emulator's call log says about one password it handed out.
type issued struct {
	Service   string  `json:"service"`
	Region    string  `json:"region"`
	Outcome   string  `json:"outcome"`
	ExpiresAt float64 `json:"expires_at"`
	Password  string  `json:"password_sha256"`
}

// Tokens knows every password the ECR emulator issued, from its call log (JSON lines, one per
// GetAuthorizationToken call, written before the response is sent). The log only grows while
// the emulator runs; a shorter file means the emulator restarted and the log starts over.
type Tokens struct {
	path string

	mu     sync.Mutex
	offset int64
	byHash map[string]issued
}

func NewTokens(path string) *Tokens {
	return &Tokens{path: path, byHash: map[string]issued{}}
}

// refresh reads the lines appended since the last call; a line without its newline yet is left
// for the next call.
func (t *Tokens) refresh() error {
	f, err := os.Open(t.path)
	if os.IsNotExist(err) {
		t.offset, t.byHash = 0, map[string]issued{}
		return nil
	}
	if err != nil {
		return err
	}
	defer f.Close()
	info, err := f.Stat()
	if err != nil {
		return err
	}
	if info.Size() < t.offset {
		t.offset, t.byHash = 0, map[string]issued{}
	}
	if _, err := f.Seek(t.offset, io.SeekStart); err != nil {
		return err
	}
	data, err := io.ReadAll(f)
	if err != nil {
		return err
	}
	end := bytes.LastIndexByte(data, '\n')
	if end < 0 {
		return nil
	}
	sc := bufio.NewScanner(bytes.NewReader(data[:end+1]))
	sc.Buffer(make([]byte, 64*1024), 1024*1024)
	for sc.Scan() {
		line := bytes.TrimSpace(sc.Bytes())
		if len(line) == 0 {
			continue
		}
		var e issued
		if err := json.Unmarshal(line, &e); err != nil {
			return fmt.Errorf("call log %s: bad line %q: %w", t.path, line, err)
		}
		if e.Outcome == "ok" && e.Password != "" {
			t.byHash[e.Password] = e
		}
	}
	t.offset += int64(end + 1)
	return nil
}

// Check says whether password is an unexpired ECR (not ECR Public) token password issued for
// region. The reason says why not, without the password.
func (t *Tokens) Check(password, region string, now time.Time) (ok bool, reason string) {
	sum := sha256.Sum256([]byte(password))
	hash := hex.EncodeToString(sum[:])
	t.mu.Lock()
	defer t.mu.Unlock()
	if err := t.refresh(); err != nil {
		return false, "cannot read the ECR emulator's call log: " + err.Error()
	}
	e, found := t.byHash[hash]
	switch {
	case !found:
		return false, "password was never issued by the ECR emulator"
	case e.Service != "ecr":
		return false, fmt.Sprintf("password was issued by %s, not ecr", e.Service)
	case e.Region != region:
		return false, fmt.Sprintf("password was issued for region %s, this registry is in %s", e.Region, region)
	}
	expires := time.Unix(0, int64(e.ExpiresAt*float64(time.Second)))
	if !now.Before(expires) {
		return false, fmt.Sprintf("password expired at %s", expires.UTC().Format(time.RFC3339))
	}
	return true, ""
}
