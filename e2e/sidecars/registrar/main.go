// Command registrar is the e2e stand-in for node-driver-registrar, whose
// module the Go proxy here does not serve. It does the one thing kubelet
// needs from it: asks the driver its name over CSI, then serves kubelet's
// plugin-registration API on <registration-dir>/<name>-reg.sock, answering
// with the socket path kubelet should dial. It takes the official flags the
// manifests use (plus --plugin-registration-path, the official default of
// which is the container path /registration).
package main

import (
	"context"
	"flag"
	"log"
	"net"
	"os"
	"os/signal"
	"path/filepath"
	"syscall"
	"time"

	csi "github.com/container-storage-interface/spec/lib/go/csi"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	registration "k8s.io/kubelet/pkg/apis/pluginregistration/v1"
)

type server struct {
	name, endpoint string
}

func (s *server) GetInfo(context.Context, *registration.InfoRequest) (*registration.PluginInfo, error) {
	return &registration.PluginInfo{
		Type:              registration.CSIPlugin,
		Name:              s.name,
		Endpoint:          s.endpoint,
		SupportedVersions: []string{"1.0.0"},
	}, nil
}

func (s *server) NotifyRegistrationStatus(_ context.Context, status *registration.RegistrationStatus) (*registration.RegistrationStatusResponse, error) {
	if !status.PluginRegistered {
		log.Fatalf("kubelet refused the registration of %s: %s", s.name, status.Error)
	}
	log.Printf("kubelet registered %s at %s", s.name, s.endpoint)
	return &registration.RegistrationStatusResponse{}, nil
}

// driverName asks the driver at csiAddress for its name, retrying while the
// driver starts.
func driverName(csiAddress string) string {
	conn, err := grpc.NewClient("unix://"+csiAddress, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		log.Fatalf("dial %s: %v", csiAddress, err)
	}
	defer conn.Close()
	for {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		info, err := csi.NewIdentityClient(conn).GetPluginInfo(ctx, &csi.GetPluginInfoRequest{})
		cancel()
		if err == nil {
			return info.Name
		}
		log.Printf("GetPluginInfo at %s: %v (retrying)", csiAddress, err)
		time.Sleep(time.Second)
	}
}

func main() {
	csiAddress := flag.String("csi-address", "/run/csi/socket", "the driver's CSI socket, as this process sees it")
	kubeletPath := flag.String("kubelet-registration-path", "", "the driver's CSI socket, as kubelet sees it")
	registrationDir := flag.String("plugin-registration-path", "/registration", "kubelet's plugins_registry directory")
	flag.Int("v", 0, "accepted for the official flag set; ignored")
	flag.Parse()
	if *kubeletPath == "" {
		log.Fatal("--kubelet-registration-path is required")
	}

	name := driverName(*csiAddress)
	socket := filepath.Join(*registrationDir, name+"-reg.sock")
	if err := os.Remove(socket); err != nil && !os.IsNotExist(err) {
		log.Fatalf("remove stale %s: %v", socket, err)
	}
	listener, err := net.Listen("unix", socket)
	if err != nil {
		log.Fatalf("listen %s: %v", socket, err)
	}
	grpcServer := grpc.NewServer()
	registration.RegisterRegistrationServer(grpcServer, &server{name: name, endpoint: *kubeletPath})

	signals := make(chan os.Signal, 1)
	signal.Notify(signals, syscall.SIGINT, syscall.SIGTERM)
	go func() {
		<-signals
		grpcServer.Stop()
		os.Remove(socket)
	}()
	log.Printf("serving registration of %s on %s", name, socket)
	if err := grpcServer.Serve(listener); err != nil {
		log.Fatalf("serve %s: %v", socket, err)
	}
}
