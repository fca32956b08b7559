// Command ggcr-registry serves go-containerregistry's in-memory registry (pkg/registry) on one
// address, so the registry compatibility tests can copy into and out of a third registry
// implementation besides distribution 2.8 and 3. Everything is held in memory and lost on exit:
// it is a test registry only. See docs/testbed.md.
package main

import (
	"errors"
	"flag"
	"fmt"
	"log"
	"net"
	"net/http"
	"os"
	"time"

	"github.com/google/go-containerregistry/pkg/registry"
)

func main() {
	address := flag.String("address", "127.0.0.1:5000", "host:port to listen on")
	certFile := flag.String("tls-cert", "", "PEM server certificate; serve HTTPS when set (with --tls-key)")
	keyFile := flag.String("tls-key", "", "PEM private key of --tls-cert")
	flag.Parse()
	if (*certFile == "") != (*keyFile == "") {
		fmt.Fprintln(os.Stderr, "ggcr-registry: --tls-cert and --tls-key go together")
		os.Exit(2)
	}
	// Listen before serving so a port already taken fails at once, with the reason.
	listener, err := net.Listen("tcp", *address)
	if err != nil {
		log.Fatalf("ggcr-registry: %v", err)
	}
	server := &http.Server{
		Handler:           registry.New(registry.WithReferrersSupport(true)),
		ReadHeaderTimeout: 10 * time.Second,
	}
	log.Printf("ggcr-registry: serving on %s (TLS: %t)", listener.Addr(), *certFile != "")
	if *certFile != "" {
		err = server.ServeTLS(listener, *certFile, *keyFile)
	} else {
		err = server.Serve(listener)
	}
	if !errors.Is(err, http.ErrServerClosed) {
		log.Fatalf("ggcr-registry: %v", err)
	}
}
