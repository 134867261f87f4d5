// Command podwallctl is the admins' CLI for podwall: it inspects podwall-ipam's
// allocations and configuration, and (later) talks to the agent.
package main

import "os"

func main() {
	os.Exit(run(os.Args[1:], os.Stdout, os.Stderr))
}
