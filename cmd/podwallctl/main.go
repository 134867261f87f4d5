// Command podwallctl is the admins' CLI for podwall: it inspects podwall-ipam's
// allocations and configuration, and asks the agent what it enforces.
package main

import "os"

func main() {
	os.Exit(run(os.Args[1:], os.Stdout, os.Stderr))
}
