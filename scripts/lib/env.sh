# shellcheck shell=bash
# Common prologue of the repository's scripts: strict mode, `root` (the checkout), cwd = root,
# cargo on PATH, PG_MAJOR (default 15). Source it as the first line after the comment header.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "$root"
export PATH="$HOME/.cargo/bin:$PATH"
PG_MAJOR="${PG_MAJOR:-15}"
