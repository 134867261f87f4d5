#!/usr/bin/env bash
# Builds what the cluster tests under test/k8s run, into bin/k8s/:
#   kube-apiserver, kubelet, kubectl, kube-controller-manager,
#   kube-scheduler, kube-proxy       from k8s.io/kubernetes (module test/k8s/tools/kube)
#   etcd                              from go.etcd.io/etcd/server/v3 (module test/k8s/tools/etcd)
#   pause.tar                         a one-binary image, made by test/k8s/mkimage
# Everything comes from the Go module proxy. A part is rebuilt only when its
# inputs (module files, this script, the Go version) changed: cold ~10 min on
# 2 cores, a few seconds when up to date.
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
out=${K8S_OUT_DIR:-$root/bin/k8s}
go=${GO:-go}
export CGO_ENABLED=0
mkdir -p "$out"

# up_to_date NAME FILE... : true when the stamp of NAME matches the inputs and
# every output named after it exists.
inputs_hash() { { cat "$@" "$0"; "$go" version; } | sha256sum | cut -d' ' -f1; }
up_to_date() {
	local name=$1 outputs=$2 f
	shift 2
	for f in $outputs; do [ -e "$out/$f" ] || return 1; done
	[ "$(cat "$out/.$name.stamp" 2>/dev/null)" = "$(inputs_hash "$@")" ]
}
stamp() {
	local name=$1
	shift
	inputs_hash "$@" >"$out/.$name.stamp"
}
timed() {
	local start=$SECONDS
	"$@"
	echo "build-k8s: $1 took $((SECONDS - start))s"
}

kube_dir=$root/test/k8s/tools/kube
kube_inputs=("$kube_dir/go.mod" "$kube_dir/go.sum" "$kube_dir/tools.go")
build_kube() {
	local version p ldflags="-s -w"
	version=$(sed -n 's/^require k8s.io\/kubernetes \(v[0-9.]*\)$/\1/p' "$kube_dir/go.mod")
	if [ -z "$version" ]; then
		echo "build-k8s: cannot read the k8s.io/kubernetes version from $kube_dir/go.mod" >&2
		return 1
	fi
	# Without these the binaries report v0.0.0-master, which the kubelet and
	# the API server's version checks dislike.
	local minor=${version#v1.}
	minor=${minor%%.*}
	for p in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
		ldflags+=" -X $p.gitVersion=$version -X $p.gitMajor=1 -X $p.gitMinor=$minor -X $p.gitTreeState=clean"
	done
	(cd "$kube_dir" && "$go" build -trimpath -ldflags="$ldflags" -o "$out/" \
		k8s.io/kubernetes/cmd/kube-apiserver k8s.io/kubernetes/cmd/kubelet k8s.io/kubernetes/cmd/kubectl \
		k8s.io/kubernetes/cmd/kube-controller-manager k8s.io/kubernetes/cmd/kube-scheduler k8s.io/kubernetes/cmd/kube-proxy)
}

etcd_dir=$root/test/k8s/tools/etcd
etcd_inputs=("$etcd_dir/go.mod" "$etcd_dir/go.sum" "$etcd_dir/main.go")
build_etcd() {
	(cd "$etcd_dir" && "$go" build -trimpath -ldflags='-s -w' -o "$out/etcd" .)
}

pause_inputs=("$root"/test/k8s/pause/*.go "$root"/test/k8s/mkimage/*.go "$root"/test/k8s/ociarchive/*.go)
build_pause() {
	local tmp rc=0
	tmp=$(mktemp -d)
	(cd "$root" && "$go" build -trimpath -ldflags='-s -w' -o "$tmp/" ./test/k8s/pause ./test/k8s/mkimage) &&
		"$tmp/mkimage" -o "$out/pause.tar" -ref localhost/podwall/pause:test -entrypoint /pause -add "$tmp/pause:/pause" ||
		rc=$?
	rm -rf "$tmp"
	return $rc
}

what=${*:-kube etcd pause}
for part in $what; do
	case $part in
	kube)
		up_to_date kube "kube-apiserver kubelet kubectl kube-controller-manager kube-scheduler kube-proxy" "${kube_inputs[@]}" && { echo "build-k8s: $part up to date"; continue; }
		timed build_kube
		stamp kube "${kube_inputs[@]}"
		;;
	etcd)
		up_to_date etcd etcd "${etcd_inputs[@]}" && { echo "build-k8s: $part up to date"; continue; }
		timed build_etcd
		stamp etcd "${etcd_inputs[@]}"
		;;
	pause)
		up_to_date pause pause.tar "${pause_inputs[@]}" && { echo "build-k8s: $part up to date"; continue; }
		timed build_pause
		stamp pause "${pause_inputs[@]}"
		;;
	*)
		echo "build-k8s: unknown part $part (want kube, etcd or pause)" >&2
		exit 2
		;;
	esac
done
