// incluster-get: GET a path of the Kubernetes API from inside a pod, the way client libraries
// do it: the `kubernetes` Service address from the environment, the pod's service-account
// token, and the cluster CA to verify the API server. Prints the body; exits 1 unless 200.
// It goes into the smoke-test image (hack/images.sh busybox).
package main

import (
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"strings"
	"time"
)

const saDir = "/var/run/secrets/kubernetes.io/serviceaccount"

func main() {
	if len(os.Args) != 2 {
		fmt.Fprintln(os.Stderr, "usage: incluster-get /api/v1/namespaces/NS/pods")
		os.Exit(2)
	}
	token, err := os.ReadFile(saDir + "/token")
	check(err)
	ca, err := os.ReadFile(saDir + "/ca.crt")
	check(err)
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(ca) {
		check(fmt.Errorf("no certificate in %s/ca.crt", saDir))
	}
	host, port := os.Getenv("KUBERNETES_SERVICE_HOST"), os.Getenv("KUBERNETES_SERVICE_PORT")
	url := "https://" + net.JoinHostPort(host, port) + os.Args[1]
	client := &http.Client{
		Timeout:   30 * time.Second,
		Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool}},
	}
	req, err := http.NewRequest(http.MethodGet, url, nil)
	check(err)
	req.Header.Set("Authorization", "Bearer "+strings.TrimSpace(string(token)))
	req.Header.Set("Accept", "application/json")
	resp, err := client.Do(req)
	check(err)
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	check(err)
	os.Stdout.Write(body)
	if resp.StatusCode != http.StatusOK {
		fmt.Fprintf(os.Stderr, "\nHTTP %d from %s\n", resp.StatusCode, url)
		os.Exit(1)
	}
}

func check(err error) {
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
}
