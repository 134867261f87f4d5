#!/usr/bin/env bash
# Installs podwall on a node: run by the DaemonSet's init container, or by hand
# as root. See usage below, or README.md ("Install on a node").
set -euo pipefail

readonly PREFIX="PODWALL-"

usage() {
	cat <<'EOF'
Usage: install.sh [OPTIONS]            chain podwall into the node's CNI configuration
       install.sh --write-conflist ... write podwall's own conflist instead
       install.sh --uninstall [...]    undo everything

Install copies podwall and podwall-ipam into the CNI bin dir (write to a
temporary file in that dir, then rename), then inserts
{"type":"podwall","agentSocket":...} right after the main plugin of the
configuration the runtime uses: the lexically first *.conf, *.conflist or
*.json in the CNI conf dir. A single-plugin .conf/.json becomes a .conflist
of the same effect. The original is kept in <conf dir>/.podwall-backup/.
Running it again changes nothing.

Options:
  --src-dir DIR        where podwall, podwall-ipam and podwallctl are
                       (default: bin/ next to this script, else /opt/podwall/bin)
  --cni-bin-dir DIR    the runtime's CNI plugin dir (default /opt/cni/bin)
  --cni-conf-dir DIR   the runtime's CNI config dir (default /etc/cni/net.d)
  --ctl-dir DIR        also copy podwallctl there (e.g. /usr/local/bin)
  --agent-socket PATH  the agent's socket (default /run/podwall/agent.sock)
  --write-conflist     write podwall's own conflist (bridge + podwall-ipam +
                       podwall + portmap) instead of chaining:
    --conflist-name NAME   file name, must sort first (default 00-podwall.conflist)
    --network NAME         network name (default podwall)
    --bridge NAME          bridge device (default podwall0)
    --subnet LIST          comma-separated "node" (the Node's podCIDRs, written
                           by the agent) or CIDRs (default node)
    --service-cidr LIST    the cluster's service CIDRs, never handed to pods
    --ipam-data-dir DIR    podwall-ipam's dataDir (default /var/lib/podwall/ipam)
    --node-cidrs-file FILE where the agent writes the Node's podCIDRs
                           (default /var/lib/podwall/node-podcidrs.json)
    --cni-version V        the conflist's cniVersion, 0.4.0 to 1.1.0 (default
                           1.0.0: containerd 1.6 refuses 1.1.0 results)
  --uninstall          restore every original config byte for byte, remove our
                       binaries (and podwallctl from --ctl-dir), and remove the
                       iptables/ip6tables chains and ipsets named PODWALL-*
                       (jump rules from the built-in chains first) in the
                       network namespace it runs in. Pod address records in
                       /var/lib/podwall are left alone.
  --dry-run            say what would change in the conf dir, change nothing
  -h, --help           this text

Exit status:
  0  done (or nothing to do)
  1  failure (I/O, iptables/ipset)
  2  usage error
  3  the active configuration is refused, nothing changed: cniVersion below
     0.4.0 (chaining needs prevResult) or above 1.1.0, not JSON, no plugins, ...
  4  the CNI conf dir holds no configuration to chain into (use --write-conflist)
  5  a binary is missing from the source dir
EOF
}

die() {
	local code=$1
	shift
	echo "install.sh: $*" >&2
	exit "$code"
}

script_dir=$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")" && pwd)
if [[ -x "$script_dir/bin/podwall" ]]; then
	src_dir="$script_dir/bin"
else
	src_dir=/opt/podwall/bin
fi
cni_bin_dir=/opt/cni/bin
cni_conf_dir=/etc/cni/net.d
ctl_dir=""
agent_socket=/run/podwall/agent.sock
mode=chain
dry_run=()
conflist_name=00-podwall.conflist
network=podwall
bridge=podwall0
subnet=node
service_cidr=""
ipam_data_dir=""
node_cidrs_file=""
cni_version=""

need_value() {
	[[ $# -ge 2 && -n "$2" ]] || die 2 "$1 needs a value (see --help)"
}

while [[ $# -gt 0 ]]; do
	case "$1" in
	--src-dir) need_value "$@"; src_dir=$2; shift 2 ;;
	--cni-bin-dir) need_value "$@"; cni_bin_dir=$2; shift 2 ;;
	--cni-conf-dir) need_value "$@"; cni_conf_dir=$2; shift 2 ;;
	--ctl-dir) need_value "$@"; ctl_dir=$2; shift 2 ;;
	--agent-socket) need_value "$@"; agent_socket=$2; shift 2 ;;
	--write-conflist) mode="write"; shift ;;
	--conflist-name) need_value "$@"; conflist_name=$2; shift 2 ;;
	--network) need_value "$@"; network=$2; shift 2 ;;
	--bridge) need_value "$@"; bridge=$2; shift 2 ;;
	--subnet) need_value "$@"; subnet=$2; shift 2 ;;
	--service-cidr) need_value "$@"; service_cidr=$2; shift 2 ;;
	--ipam-data-dir) need_value "$@"; ipam_data_dir=$2; shift 2 ;;
	--node-cidrs-file) need_value "$@"; node_cidrs_file=$2; shift 2 ;;
	--cni-version) need_value "$@"; cni_version=$2; shift 2 ;;
	--uninstall) mode="uninstall"; shift ;;
	--dry-run) dry_run=(--dry-run); shift ;;
	-h | --help) usage; exit 0 ;;
	*) die 2 "unknown argument: $1 (see --help)" ;;
	esac
done

ctl="$src_dir/podwallctl"
[[ -x "$ctl" ]] || die 5 "$ctl is missing or not executable (--src-dir)"

# conf runs podwallctl's CNI config editor; its exit statuses are ours.
conf() {
	local status=0
	"$ctl" install "$@" || status=$?
	if [[ $status -ne 0 ]]; then
		exit "$status"
	fi
}

conf_edit() {
	if [[ "$mode" == write ]]; then
		conf write-conflist --cni-conf-dir "$cni_conf_dir" --agent-socket "$agent_socket" --file "$conflist_name" \
			--network "$network" --bridge "$bridge" --subnet "$subnet" --service-cidr "$service_cidr" \
			--ipam-data-dir "$ipam_data_dir" --node-cidrs-file "$node_cidrs_file" \
			${cni_version:+--cni-version "$cni_version"} "$@"
	else
		conf chain --cni-conf-dir "$cni_conf_dir" --agent-socket "$agent_socket" "$@"
	fi
}

# copy_atomic SRC DIR: DIR/basename(SRC) is replaced in one rename, so a
# runtime executing the plugin meanwhile runs the old binary or the new one,
# never a partial file. An identical file is left untouched.
copy_atomic() {
	local src=$1 dir=$2 name tmp
	name=$(basename -- "$src")
	if cmp -s -- "$src" "$dir/$name"; then
		echo "unchanged $dir/$name"
		return
	fi
	tmp=$(mktemp -- "$dir/.$name.tmp-XXXXXX")
	if ! { cp -- "$src" "$tmp" && chmod 0755 -- "$tmp" && sync -- "$tmp" && mv -f -- "$tmp" "$dir/$name"; }; then
		rm -f -- "$tmp"
		die 1 "copying $src to $dir failed"
	fi
	echo "wrote $dir/$name"
}

install_binaries() {
	local bin
	for bin in podwall podwall-ipam; do
		[[ -x "$src_dir/$bin" ]] || die 5 "$src_dir/$bin is missing or not executable (--src-dir)"
	done
	mkdir -p -- "$cni_bin_dir"
	for bin in podwall podwall-ipam; do
		copy_atomic "$src_dir/$bin" "$cni_bin_dir"
	done
	if [[ -n "$ctl_dir" ]]; then
		mkdir -p -- "$ctl_dir"
		copy_atomic "$ctl" "$ctl_dir"
	fi
}

remove_binaries() {
	local path
	for path in "$cni_bin_dir/podwall" "$cni_bin_dir/podwall-ipam" ${ctl_dir:+"$ctl_dir/podwallctl"}; do
		if [[ -e "$path" ]]; then
			rm -f -- "$path"
			echo "removed $path"
		fi
	done
}

# restore_script reads iptables-save output and prints the iptables-restore
# input that removes podwall: jumps to our chains from the others first, then
# our chains flushed, then deleted (a chain can go only once nothing jumps to it).
restore_script() {
	awk -v prefix="$PREFIX" '
	/^\*/ { table = $0; order[++n] = table; next }
	/^:/ {
		chain = substr($1, 2)
		if (index(chain, prefix) == 1) ours[table] = ours[table] " " chain
		next
	}
	/^-A / {
		if (index($2, prefix) != 1 && $0 ~ (" -[jg] " prefix "[^ ]*( |$)")) {
			sub(/^-A /, "-D ")
			dels[table] = dels[table] $0 "\n"
		}
	}
	END {
		for (i = 1; i <= n; i++) {
			t = order[i]
			if (dels[t] == "" && ours[t] == "") continue
			print t
			printf "%s", dels[t]
			k = split(ours[t], chains, " ")
			for (j = 1; j <= k; j++) print "-F " chains[j]
			for (j = 1; j <= k; j++) print "-X " chains[j]
			print "COMMIT"
		}
	}'
}

# iptables_tools prints the iptables and ip6tables commands of the backend
# the node's iptables uses (nf_tables or legacy), as podwall's dataplane picks
# it: podwall's rules are in that one.
iptables_tools() {
	local version backend=""
	command -v iptables >/dev/null 2>&1 || die 1 "iptables not found: cannot remove podwall's chains"
	version=$(iptables -V) || die 1 "iptables -V failed"
	case "$version" in
	*"(nf_tables)"*) backend=nft ;;
	*"(legacy)"*) backend=legacy ;;
	esac
	if [[ -n "$backend" ]] && command -v "iptables-$backend-save" >/dev/null 2>&1; then
		echo "iptables-$backend ip6tables-$backend"
	else
		echo "iptables ip6tables"
	fi
}

remove_kernel_state() {
	local tool rules set status=0 tools
	tools=$(iptables_tools)
	for tool in $tools; do
		rules=$(restore_script < <("$tool-save")) || die 1 "$tool-save failed"
		if [[ -n "$rules" ]]; then
			if ! "$tool-restore" -w --noflush <<<"$rules"; then
				echo "install.sh: $tool-restore failed on:" >&2
				echo "$rules" >&2
				status=1
				continue
			fi
			echo "removed podwall's $tool chains"
		fi
	done
	[[ $status -eq 0 ]] || exit 1
	if command -v ipset >/dev/null 2>&1; then
		while read -r set; do
			[[ "$set" == "$PREFIX"* ]] || continue
			ipset destroy "$set" || die 1 "ipset destroy $set failed"
			echo "removed ipset $set"
		done < <(ipset list -n)
	fi
}

# with_state_lock runs "$@" holding the lock every writer of podwall's rules
# takes (the plugin and the agent), so a pod being added meanwhile cannot
# leave half a chain behind.
with_state_lock() {
	local lock
	lock="$(dirname -- "$agent_socket")/iptables.lock"
	if [[ ! -d "$(dirname -- "$lock")" ]] || ! command -v flock >/dev/null 2>&1; then
		"$@"
		return
	fi
	exec 9>>"$lock"
	flock -w 60 9 || die 1 "waiting for $lock"
	"$@"
	exec 9>&-
}

case "$mode" in
chain | write)
	# Vet the configuration before touching anything.
	conf_edit --dry-run >/dev/null
	if [[ ${#dry_run[@]} -gt 0 ]]; then
		conf_edit --dry-run
		exit 0
	fi
	# The binaries first: once the config names podwall, the runtime runs it.
	install_binaries
	conf_edit
	;;
uninstall)
	if [[ ${#dry_run[@]} -gt 0 ]]; then
		conf restore --cni-conf-dir "$cni_conf_dir" --dry-run
		exit 0
	fi
	if [[ -S "$agent_socket" ]]; then
		echo "install.sh: warning: $agent_socket exists: if podwall-agent still runs, it re-creates its chains; stop it first" >&2
	fi
	# The config first: once it no longer names podwall, the binaries can go.
	conf restore --cni-conf-dir "$cni_conf_dir"
	remove_binaries
	with_state_lock remove_kernel_state
	;;
esac
