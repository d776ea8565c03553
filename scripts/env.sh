# Shared environment for plugworker's scripts; source it, do not run it.
# Cargo builds go outside the clone so every checkout (and CI rerun) reuses them.
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/plugworker/target}"
export CARGO_TERM_COLOR="${CARGO_TERM_COLOR:-never}"
PLUGWORKER_BIN="$CARGO_TARGET_DIR/debug"
export PLUGWORKER_BIN
