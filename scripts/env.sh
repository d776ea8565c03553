# Shared environment for plugworker's scripts; source it, do not run it.
# Cargo builds go outside the clone so every checkout (and CI rerun) reuses them.
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/plugworker/target}"
export CARGO_TERM_COLOR="${CARGO_TERM_COLOR:-never}"
PLUGWORKER_BIN="$CARGO_TARGET_DIR/debug"
export PLUGWORKER_BIN
# Link with mold where scripts/setup.sh could install it: the workspace's test and runner
# binaries carry line tables (about 150 MB each), and GNU ld spent most of a rebuild
# linking them (docs/benchmarks.md#test-command). Not when RUSTFLAGS is set (it would
# override this), nor where the C compiler cannot drive mold (gcc before 12.1).
if [ -z "${RUSTFLAGS:-}${CARGO_BUILD_RUSTFLAGS:-}" ] && command -v mold >/dev/null 2>&1 &&
  echo 'int main(void) { return 0; }' | cc -x c - -fuse-ld=mold -o /dev/null 2>/dev/null; then
  export CARGO_BUILD_RUSTFLAGS="-C link-arg=-fuse-ld=mold"
fi
