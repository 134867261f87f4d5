#!/usr/bin/env bash
# Installs what podwall's build and real-kernel tests need on a Debian machine.
# Idempotent and quick when everything is already present: apt is only touched
# when a command is missing.
set -euo pipefail

# command -> Debian package providing it
declare -A wanted=(
	[ip]=iproute2
	[iptables]=iptables
	[ipset]=ipset
	[conntrack]=conntrack
	[iperf3]=iperf3
	[gcc]=gcc # go test -race needs cgo
	# the kubelet's runtime in the cluster tests (test/k8s)
	[containerd]=containerd
	[runc]=runc
	[shellcheck]=shellcheck # install.sh and the scripts are checked in the tests
)

missing=()
for cmd in "${!wanted[@]}"; do
	if ! command -v "$cmd" >/dev/null 2>&1 && ! [ -x "/usr/sbin/$cmd" ] && ! [ -x "/sbin/$cmd" ]; then
		missing+=("${wanted[$cmd]}")
	fi
done

if ((${#missing[@]} > 0)); then
	if [ "$(id -u)" -ne 0 ]; then
		echo "install-deps: missing packages ${missing[*]}; re-run as root" >&2
		exit 1
	fi
	echo "install-deps: installing ${missing[*]}"
	export DEBIAN_FRONTEND=noninteractive
	apt-get update -qq
	apt-get install -y -qq --no-install-recommends "${missing[@]}" libc6-dev >/dev/null
fi

# Bridged pod traffic only reaches iptables with bridge netfilter. It is often
# built into the kernel (the sysctl directory then exists without any module).
if [ ! -d /proc/sys/net/bridge ]; then
	if ! command -v modprobe >/dev/null 2>&1 || ! modprobe br_netfilter 2>/dev/null; then
		echo "install-deps: warning: br_netfilter is not available; bridge netfilter tests will fail" >&2
	fi
fi
