# shellcheck shell=bash
# Builds released versions of pg_credcrypt (sql/releases) for the upgrade test, once per
# machine: a git worktree of the recorded commit under target/upgrade/v<version>, packaged
# with `cargo pgrx package` (debug: it only has to run) into
# target/upgrade/v<version>/target/debug/pg_credcrypt-pg<major>/. Source after env.sh.
#
#   release_package VERSION    prints the package directory, building it if needed

release_package() {
    local version="$1" commit wt pkg
    commit="$(awk -v v="$version" '$1 == v { print $2 }' "$root/sql/releases")"
    [ -n "$commit" ] || { echo "release $version is not in sql/releases" >&2; return 1; }
    wt="$root/target/upgrade/v$version"
    pkg="$wt/target/debug/pg_credcrypt-pg$PG_MAJOR"
    if [ ! -f "$pkg/.built-from" ] || [ "$(cat "$pkg/.built-from")" != "$commit" ]; then
        if ! git -C "$root" cat-file -e "$commit^{commit}" 2>/dev/null; then
            echo "commit $commit of release $version is not in this clone (a shallow clone?): git fetch --unshallow" >&2
            return 1
        fi
        if [ ! -e "$wt/.git" ]; then
            rm -rf "$wt"
            git -C "$root" worktree prune
            git -C "$root" worktree add --detach "$wt" "$commit" >/dev/null 2>&1
        fi
        git -C "$wt" checkout --detach --quiet "$commit"
        (cd "$wt" && cargo pgrx package --debug --pg-config "/usr/lib/postgresql/$PG_MAJOR/bin/pg_config" >"$wt/package.log" 2>&1) || {
            tail -30 "$wt/package.log" >&2
            return 1
        }
        echo "$commit" >"$pkg/.built-from"
    fi
    echo "$pkg"
}

# install_package DIR: copies a `cargo pgrx package` tree over the installed files. Each file
# is removed before it is written (a new inode), so a running server that has the old library
# mapped keeps it intact instead of seeing it rewritten under it.
install_package() {
    cp -a --remove-destination "$1/usr" /
}
