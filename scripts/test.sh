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
