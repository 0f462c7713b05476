// Command livenessprobe is the e2e stand-in for the livenessprobe sidecar,
// whose module the Go proxy here does not serve. It does what the
// DaemonSet's livenessProbe needs: serves GET /healthz on --health-port,
// answering 200 only when the driver answers CSI Probe with ready (or no
// readiness) within --probe-timeout, and 500 with the reason otherwise. It
// takes the official flags the manifests use.
package main

import (
	"context"
	"flag"
	"fmt"
	"log"
	"net"
	"net/http"
	"strconv"
	"time"

	csi "github.com/container-storage-interface/spec/lib/go/csi"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
)

func main() {
	csiAddress := flag.String("csi-address", "/run/csi/socket", "the driver's CSI socket")
	port := flag.Int("health-port", 9808, "the port /healthz is served on (all addresses)")
	timeout := flag.Duration("probe-timeout", time.Second, "how long a CSI Probe may take")
	flag.Int("v", 0, "accepted for the official flag set; ignored")
	flag.Parse()

	conn, err := grpc.NewClient("unix://"+*csiAddress, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		log.Fatalf("dial %s: %v", *csiAddress, err)
	}
	identity := csi.NewIdentityClient(conn)
	http.HandleFunc("/healthz", func(w http.ResponseWriter, r *http.Request) {
		ctx, cancel := context.WithTimeout(r.Context(), *timeout)
		defer cancel()
		probe, err := identity.Probe(ctx, &csi.ProbeRequest{})
		switch {
		case err != nil:
			w.WriteHeader(http.StatusInternalServerError)
			fmt.Fprintf(w, "probe failed: %v\n", err)
			log.Printf("health check failed: %v", err)
		case probe.GetReady() != nil && !probe.GetReady().GetValue():
			w.WriteHeader(http.StatusInternalServerError)
			fmt.Fprintln(w, "driver not ready")
			log.Print("health check failed: driver not ready")
		default:
			fmt.Fprintln(w, "ok")
		}
	})
	address := net.JoinHostPort("", strconv.Itoa(*port))
	server := &http.Server{Addr: address, ReadHeaderTimeout: 5 * time.Second}
	log.Printf("serving /healthz on %s for %s", address, *csiAddress)
	log.Fatal(server.ListenAndServe())
}
