// Command ecr-registry is the test environment's stand-in for Amazon ECR's registry: a read-only
// OCI distribution API over TLS that accepts only basic auth AWS:<password> where the password
// is one the ECR emulator (tests/ecr-emulator/server.py) issued for the registry's region and
// that has not expired. It learns the passwords from the emulator's call log (JSON lines with
// password_sha256, region, service, outcome, expires_at).
//
//	ecr-registry serve --calls-log FILE --cert FILE --key FILE \
//	    --repo NAME=OCI_LAYOUT_DIR ... --listen HOST=ADDR ... [--ready-file FILE]
//	ecr-registry seed --program FILE --out DIR [--name hello] [--tag 1.0]
//
// serve: one TLS listener per registry host (HOST = <account>.dkr.ecr.<region>.amazonaws.com,
// ADDR = 127.0.0.1:PORT, port 0 for any). Every host serves every repository. Once all listen,
// --ready-file gets {"<host>": "<addr>", ...} (written atomically).
//
// seed: an OCI image layout with one image, tagged --tag, whose only file is --program; prints
// the manifest digest.
package main

import (
	"context"
	"crypto/tls"
	"encoding/json"
	"flag"
	"fmt"
	"log"
	"net"
	"net/http"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"time"
)

type pairs []string

func (p *pairs) String() string     { return strings.Join(*p, ",") }
func (p *pairs) Set(v string) error { *p = append(*p, v); return nil }

func main() {
	if len(os.Args) < 2 {
		fmt.Fprintln(os.Stderr, "usage: ecr-registry serve|seed [flags] (see the package comment)")
		os.Exit(2)
	}
	var err error
	switch os.Args[1] {
	case "serve":
		err = serve(os.Args[2:])
	case "seed":
		err = seed(os.Args[2:])
	default:
		err = fmt.Errorf("unknown command %q: want serve or seed", os.Args[1])
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "ecr-registry:", err)
		os.Exit(1)
	}
}

func seed(args []string) error {
	fs := flag.NewFlagSet("seed", flag.ExitOnError)
	program := fs.String("program", "", "the image's only file (a static binary)")
	out := fs.String("out", "", "OCI layout directory to (re)write")
	name := fs.String("name", "hello", "file name of the program in the image (its entrypoint)")
	tag := fs.String("tag", "1.0", "tag of the image")
	_ = fs.Parse(args)
	if *program == "" || *out == "" {
		return fmt.Errorf("seed: --program and --out are required")
	}
	digest, err := Seed(*out, *program, *name, *tag)
	if err != nil {
		return err
	}
	fmt.Println(digest)
	return nil
}

func split(kv, flagName string) (string, string, error) {
	k, v, ok := strings.Cut(kv, "=")
	if !ok || k == "" || v == "" {
		return "", "", fmt.Errorf("--%s %q: want KEY=VALUE", flagName, kv)
	}
	return k, v, nil
}

func serve(args []string) error {
	fs := flag.NewFlagSet("serve", flag.ExitOnError)
	callsLog := fs.String("calls-log", "", "the ECR emulator's call log (its --log)")
	cert := fs.String("cert", "", "TLS certificate (PEM) with every HOST and 127.0.0.1 as SANs")
	key := fs.String("key", "", "TLS private key (PEM)")
	ready := fs.String("ready-file", "", "written with {host: address} once every listener is up")
	var repos, listens pairs
	fs.Var(&repos, "repo", "NAME=OCI_LAYOUT_DIR, repeatable")
	fs.Var(&listens, "listen", "HOST=ADDR, repeatable: one listener per ECR registry host")
	_ = fs.Parse(args)
	if *callsLog == "" || *cert == "" || *key == "" || len(repos) == 0 || len(listens) == 0 {
		return fmt.Errorf("serve: --calls-log, --cert, --key, --repo and --listen are required")
	}
	pair, err := tls.LoadX509KeyPair(*cert, *key)
	if err != nil {
		return err
	}
	layouts := map[string]*Layout{}
	for _, r := range repos {
		name, dir, err := split(r, "repo")
		if err != nil {
			return err
		}
		if layouts[name], err = OpenLayout(dir); err != nil {
			return err
		}
	}
	tokens := NewTokens(*callsLog)
	logger := log.New(os.Stderr, "ecr-registry: ", log.LstdFlags|log.Lmicroseconds)

	addrs := map[string]string{}
	var servers []*http.Server
	errs := make(chan error, len(listens))
	for _, l := range listens {
		host, addr, err := split(l, "listen")
		if err != nil {
			return err
		}
		region, err := RegionOf(host)
		if err != nil {
			return err
		}
		if _, dup := addrs[host]; dup {
			return fmt.Errorf("--listen: %s given twice", host)
		}
		ln, err := net.Listen("tcp", addr)
		if err != nil {
			return err
		}
		addrs[host] = ln.Addr().String()
		srv := &http.Server{
			Handler:           &Registry{Host: host, Region: region, Tokens: tokens, Repos: layouts, Now: time.Now, Log: logger},
			TLSConfig:         &tls.Config{Certificates: []tls.Certificate{pair}, MinVersion: tls.VersionTLS12},
			ReadHeaderTimeout: 10 * time.Second,
			ErrorLog:          logger,
		}
		servers = append(servers, srv)
		logger.Printf("serving %s (region %s) on https://%s", host, region, ln.Addr())
		go func() { errs <- srv.ServeTLS(ln, "", "") }()
	}
	if *ready != "" {
		if err := writeAtomic(*ready, addrs); err != nil {
			return err
		}
	}

	stop := make(chan os.Signal, 1)
	signal.Notify(stop, syscall.SIGTERM, syscall.SIGINT)
	select {
	case err := <-errs:
		return err
	case <-stop:
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	for _, s := range servers {
		_ = s.Shutdown(ctx)
	}
	logger.Print("stopped")
	return nil
}

func writeAtomic(path string, v any) error {
	b, err := json.Marshal(v)
	if err != nil {
		return err
	}
	tmp, err := os.CreateTemp(filepath.Dir(path), ".ready-")
	if err != nil {
		return err
	}
	if _, err := tmp.Write(append(b, '\n')); err != nil {
		tmp.Close()
		os.Remove(tmp.Name())
		return err
	}
	if err := tmp.Close(); err != nil {
		os.Remove(tmp.Name())
		return err
	}
	return os.Rename(tmp.Name(), path)
}
