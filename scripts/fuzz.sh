#!/usr/bin/env bash
# On-demand fuzzing of the ciphertext parser and the local provider: runs the property tests of
# crates/core (parser_total, parser_structured, round_trip, truncations_rejected, …) in release
# mode with many cases. FUZZ_CASES (default 200000) sets the number of cases per property.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
export PATH="$HOME/.cargo/bin:$PATH"
PROPTEST_CASES="${FUZZ_CASES:-200000}" cargo test --release -p credcrypt-core --test properties -- --nocapture
