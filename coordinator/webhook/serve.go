package webhook

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"net/http"
	"time"
)

// shutdownGrace is how long Serve lets in-flight reviews finish once its
// context is done; the apiserver gives a review at most 10s anyway.
const shutdownGrace = 5 * time.Second

// Serve serves h over TLS on addr with the given certificate (the apiserver
// calls webhooks over HTTPS only) until ctx is done, then shuts down and
// returns nil.
func Serve(ctx context.Context, addr, certFile, keyFile string, h http.Handler) error {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return fmt.Errorf("webhook: listen on %s: %w", addr, err)
	}
	return ServeListener(ctx, ln, certFile, keyFile, h)
}

// ServeListener is Serve on a listener the caller opened (so that it knows
// the port before the apiserver needs it); it closes ln.
func ServeListener(ctx context.Context, ln net.Listener, certFile, keyFile string, h http.Handler) error {
	cert, err := tls.LoadX509KeyPair(certFile, keyFile)
	if err != nil {
		ln.Close()
		return fmt.Errorf("webhook: load serving certificate %s: %w", certFile, err)
	}
	srv := &http.Server{
		Handler:           h,
		TLSConfig:         &tls.Config{MinVersion: tls.VersionTLS12, Certificates: []tls.Certificate{cert}},
		ReadHeaderTimeout: 10 * time.Second,
	}
	done := make(chan error, 1)
	go func() { done <- srv.ServeTLS(ln, "", "") }()
	select {
	case err := <-done:
		return fmt.Errorf("webhook: serve on %s: %w", ln.Addr(), err)
	case <-ctx.Done():
	}
	sctx, cancel := context.WithTimeout(context.Background(), shutdownGrace)
	defer cancel()
	err = srv.Shutdown(sctx)
	if serr := <-done; !errors.Is(serr, http.ErrServerClosed) && err == nil {
		err = serr
	}
	if err != nil {
		return fmt.Errorf("webhook: shut down server on %s: %w", ln.Addr(), err)
	}
	return nil
}
