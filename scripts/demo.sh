#!/usr/bin/env bash
# The main job: build ShadowMesh and run its demo. Installs missing system tools first.
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=scripts/lib/deps.sh
. scripts/lib/deps.sh
ensure_rust
ensure_system_tools
echo "==> building (release; the first build takes a few minutes)"
cargo build --release --workspace --bins
exec target/release/shadowmesh demo "$@"
