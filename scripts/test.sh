#!/usr/bin/env bash
# The whole test suite, as CI runs it: format, lint, every test (root-only namespace tests run
# when we are root and say why they skip otherwise), and the portable-target type checks.
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=scripts/lib/deps.sh
. scripts/lib/deps.sh
ensure_rust
ensure_system_tools

step() { printf '\n==> %s\n' "$*"; }

step "cargo fmt --check"
cargo fmt --all -- --check

step "cargo clippy --all-targets -D warnings"
cargo clippy --workspace --all-targets -- -D warnings

step "cargo test (unit, property, integration, benches in test mode)"
cargo test --workspace --all-targets --no-fail-fast
cargo test --workspace --doc

step "fuzz: every cargo-fuzz target for ${SHADOWMESH_FUZZ_SECS:-20} s (nightly; skipped when it cannot be had)"
# The corpus is copied to a scratch directory so a run never edits the committed one. A crash
# (or a hang over 10 s, or a leak) fails the step; its input is left in fuzz/artifacts/<target>/
# and belongs in fuzzing/regressions/<target>/ once understood (docs/fuzzing.md).
if ensure_fuzz; then
  fuzz_secs=${SHADOWMESH_FUZZ_SECS:-20}
  fuzz_tmp=$(mktemp -d)
  (cd fuzz && cargo +nightly fuzz build -O)
  for t in $(cd fuzz && cargo +nightly fuzz list); do
    mkdir -p "$fuzz_tmp/$t"
    cp fuzz/corpus/"$t"/* "$fuzz_tmp/$t/"
    if (cd fuzz && cargo +nightly fuzz run -O "$t" "$fuzz_tmp/$t" -- \
          -max_total_time="$fuzz_secs" -timeout=10 -print_final_stats=1) >"$fuzz_tmp/$t.log" 2>&1; then
      echo "fuzz $t: $(grep -m1 -E '^Done [0-9]+ runs' "$fuzz_tmp/$t.log"), no crash"
    else
      tail -n 40 "$fuzz_tmp/$t.log"
      echo "fuzz $t: FAILED (input in fuzz/artifacts/$t/)" >&2
      rm -rf "$fuzz_tmp"
      exit 1
    fi
  done
  rm -rf "$fuzz_tmp"
fi

step "portable targets type-check (platform crate)"
for target in aarch64-apple-darwin aarch64-unknown-linux-gnu; do
  if rustup target list --installed 2>/dev/null | grep -qx "$target" \
     || rustup target add "$target" >/dev/null 2>&1; then
    cargo check -p shadowmesh-platform --target "$target"
    echo "checked shadowmesh-platform for $target"
  else
    echo "skipped shadowmesh-platform check for $target: rustup could not install the target"
  fi
done
step "all checks passed"
