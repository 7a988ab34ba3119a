# shellcheck shell=bash
# Debian chroots for the version matrix (scripts/test-matrix) and the fresh-machine check
# (scripts/test-fresh). Source after env.sh; run as root on a Debian host.
#
#   host_mirror                 the Debian mirror of the host's apt configuration (sources.list,
#                               sources.list.d/*.list or deb822 *.sources); fails without one
#   debootstrap_root REL DIR    a minbase root of release REL in DIR (forky: Debian's sid script)
#   mount_binds DIR PATH…       /proc /sys /dev /dev/shm /dev/pts, then each PATH at the same place
#   umount_binds DIR PATH…      the reverse

host_mirror() {
    local m=""
    # deb822: "URIs: <uri> …" in a stanza whose Suites are not -security.
    m="$(awk '
        /^URIs:/ { uri = $2 }
        /^Suites:/ { sec = ($0 ~ /-security/) }
        /^[[:space:]]*$/ { if (uri != "" && !sec && !found) { print uri; found = 1 } uri = ""; sec = 0 }
        END { if (uri != "" && !sec && !found) print uri }
    ' /etc/apt/sources.list.d/*.sources 2>/dev/null | head -1)"
    if [ -z "$m" ]; then
        # one-line format: "deb [opts] <uri> <suite> <components>".
        m="$(cat /etc/apt/sources.list /etc/apt/sources.list.d/*.list 2>/dev/null |
            awk '$1 == "deb" { for (i = 2; i <= NF; i++) if ($i !~ /^\[/ && $i !~ /\]$/) { if ($(i + 1) !~ /-security/) { print $i; exit } break } }')"
    fi
    if [ -z "$m" ]; then
        echo "no Debian mirror in the host's apt configuration (/etc/apt/sources.list or sources.list.d): configure one first" >&2
        return 1
    fi
    echo "$m"
}

debootstrap_root() {
    local rel="$1" dir="$2" mirror
    mirror="$(host_mirror)" || return 1
    command -v debootstrap >/dev/null || {
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq debootstrap >/dev/null
    }
    mkdir -p "$(dirname "$dir")"
    if [ "$rel" = forky ]; then
        debootstrap --variant=minbase forky "$dir" "$mirror" /usr/share/debootstrap/scripts/sid
    else
        debootstrap --variant=minbase "$rel" "$dir" "$mirror"
    fi
    # The host's CA bundle (package registries over https) and name resolution.
    mkdir -p "$dir/usr/local/share/ca-certificates"
    cp /etc/ssl/certs/ca-certificates.crt "$dir/usr/local/share/ca-certificates/host-bundle.crt"
    cp /etc/resolv.conf "$dir/etc/resolv.conf" 2>/dev/null || true
    # A host name the root resolves (sudo and others complain otherwise).
    echo "127.0.0.1 localhost $(hostname)" >"$dir/etc/hosts"
}

mount_binds() {
    local dir="$1" m
    shift
    for m in proc sys dev dev/shm dev/pts; do
        mkdir -p "$dir/$m"
        mountpoint -q "$dir/$m" || mount --bind "/$m" "$dir/$m"
    done
    for m in "$@"; do
        mkdir -p "$dir$m"
        mountpoint -q "$dir$m" || mount --bind "$m" "$dir$m"
    done
}

umount_binds() {
    local dir="$1" m
    shift
    for m in "$@" dev/pts dev/shm dev sys proc; do
        case "$m" in /*) m="$dir$m" ;; *) m="$dir/$m" ;; esac
        if mountpoint -q "$m"; then umount -l "$m" || true; fi
    done
}

# remove_root DIR: unmounts whatever is still mounted below DIR (a run killed before its
# cleanup leaves bind mounts of the repository and the toolchain there: `rm --one-file-system`
# does descend into a bind mount of the same filesystem, and would empty the repository), then
# deletes DIR; refuses if anything stays mounted.
remove_root() {
    local dir esc m
    dir="$(realpath -m "$1")"
    [ -d "$dir" ] || return 0
    # mountinfo writes a space as \040 and a backslash as \134 in its 5th field (mount point).
    esc="${dir//\\/\\134}"
    esc="${esc// /\\040}"
    # Deepest first.
    while IFS= read -r m; do
        umount -l "$(printf '%b' "$m")" || true
    done < <(D="$esc" awk '$5 == ENVIRON["D"] || index($5, ENVIRON["D"] "/") == 1 { print $5 }' /proc/self/mountinfo | sort -r)
    if D="$esc" awk '$5 == ENVIRON["D"] || index($5, ENVIRON["D"] "/") == 1 { found = 1 } END { exit !found }' /proc/self/mountinfo; then
        echo "refusing to delete $dir: something is still mounted below it" >&2
        return 1
    fi
    rm -rf --one-file-system "$dir"
}
