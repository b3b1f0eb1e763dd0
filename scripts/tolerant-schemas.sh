#!/usr/bin/env bash
# Regenerates protocol/schemas/tolerant/ (the client-side, forward-compatible
# schemas) from the tight ones in protocol/schemas/. Run it after adding or
# changing any server.*.json; `cargo test --test gateway schemas::` fails while
# the generated files are stale. The generator is tests/schemas.rs.
set -euo pipefail
cd "$(dirname "$0")/.."
CHATGW_WRITE_TOLERANT=1 cargo test --test gateway schemas::tolerant_schemas_are_generated_from_the_tight_ones -- --exact
git status --short protocol/schemas/tolerant/
