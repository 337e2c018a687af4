#!/usr/bin/env bash
# Build qcnn's compiled core with AddressSanitizer + UndefinedBehaviorSanitizer into a separate
# venv and run the test suite (and, with --harness, the hardening harnesses) under it.
#
#   scripts/sanitize.sh                 # tests
#   scripts/sanitize.sh --harness       # tests + 2000 mutants + 300 edge-case models under ASan
#   scripts/sanitize.sh -- -k runtime   # extra pytest arguments after --
#   scripts/sanitize.sh --reuse ...     # skip the (slow, ~15 min) build if the venv already has it
#
# The source is copied (git ls-files) to a scratch folder first, so the sanitized build never
# replaces the .so of your normal editable install. Python itself is not sanitized: libasan and
# libubsan are LD_PRELOADed so the instrumented extension can be loaded into a stock interpreter.
# Leak detection is off (CPython keeps many allocations alive on purpose); any memory error or
# undefined behaviour aborts the process and fails the run.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
VENV=${QCNN_SAN_VENV:-/tmp/qcnn-san-venv}
SRC=${QCNN_SAN_SRC:-/tmp/qcnn-san/src}   # tests look for ../shared beside the source tree
PYTHON=${PYTHON:-python3}
HARNESS=0
REUSE=0
PYTEST_ARGS=()
while [ $# -gt 0 ]; do
  case "$1" in
    --harness) HARNESS=1 ;;
    --reuse) REUSE=1 ;;
    --) shift; PYTEST_ARGS=("$@"); break ;;
    *) echo "usage: $0 [--harness] [-- pytest args]" >&2; exit 2 ;;
  esac
  shift
done

CC=${CC:-gcc}
LIBASAN=$("$CC" -print-file-name=libasan.so)
LIBUBSAN=$("$CC" -print-file-name=libubsan.so)
for lib in "$LIBASAN" "$LIBUBSAN"; do
  [ -f "$lib" ] || { echo "sanitizer runtime not found: $lib (install gcc's libasan/libubsan)" >&2; exit 2; }
done

so_built() { nm -D "$(find "$VENV" -name '_core*.so' 2>/dev/null | head -1)" 2>/dev/null | grep __asan_report >/dev/null; }  # no -q: an early exit would SIGPIPE nm under pipefail
echo "== copying sources to $SRC"
rm -rf "$SRC"
mkdir -p "$SRC"
SHARED_DIR=$(dirname "$ROOT")/shared
[ -d "$SHARED_DIR" ] && [ ! -e "$(dirname "$SRC")/shared" ] && ln -s "$SHARED_DIR" "$(dirname "$SRC")/shared"
(cd "$ROOT" && git ls-files -z --cached --others --exclude-standard | grep -zv '\.so$' | grep -zv '^runtime/_core\.c$' \
  | xargs -0 tar cf - 2>/dev/null) | (cd "$SRC" && tar xf -)
if [ "$REUSE" = 1 ] && so_built; then
  echo "== reusing the sanitized extension in $VENV (Python files refreshed)"
  SITE=$(cd / && "$VENV/bin/python" -c 'import qcnn, os; print(os.path.dirname(qcnn.__file__))')
  for pair in qcnn: schema:schema runtime:runtime converter:converter tools:tools models:models; do
    src=${pair%%:*}; dst="$SITE/${pair#*:}"
    (cd "$SRC/$src" && find . -name '*.py' -print0 | while IFS= read -r -d '' f; do
      mkdir -p "$dst/$(dirname "$f")"; cp "$f" "$dst/$f"; done)
  done
else

echo "== building with -fsanitize=address,undefined into $VENV"
"$PYTHON" -m venv --system-site-packages "$VENV"
# The build and test dependencies (pyproject.toml's [test] extra), whatever the system Python has.
"$VENV/bin/pip" install -q "setuptools>=68" wheel "Cython>=3.0" numpy onnx onnxruntime flatbuffers Pillow tqdm pytest
export CFLAGS="-fsanitize=address,undefined -fno-sanitize-recover=undefined -fno-omit-frame-pointer -g"
export LDFLAGS="-fsanitize=address,undefined"
(cd "$SRC" && "$VENV/bin/pip" install -q --no-build-isolation --no-deps --force-reinstall . )
so_built || { echo "the extension was not built with ASan" >&2; exit 1; }
fi
# pyproject.toml lists its packages one by one; until it names qcnn.tools.hardening, a normal
# (non-editable) install leaves it out, so put it in by hand.
SITE=$(cd / && "$VENV/bin/python" -c 'import qcnn, os; print(os.path.dirname(qcnn.__file__))')
[ -d "$SITE/tools/hardening" ] || cp -r "$ROOT/tools/hardening" "$SITE/tools/hardening"

export LD_PRELOAD="$LIBASAN $LIBUBSAN"
export ASAN_OPTIONS=${ASAN_OPTIONS:-detect_leaks=0:abort_on_error=1:verify_asan_link_order=0:strict_string_checks=1}
export UBSAN_OPTIONS=${UBSAN_OPTIONS:-print_stacktrace=1:halt_on_error=1}
export PYTHONMALLOC=malloc          # let ASan see every Python allocation too
export QCNN_SHARED=${QCNN_SHARED:-$(dirname "$ROOT")/shared}
export OMP_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1

# Run from a neutral folder: in the source tree, its qcnn/ folder would shadow the installed package.
cd "$(mktemp -d)"
echo "== pytest under ASan+UBSan"
STATUS=0
# --capture=sys: pytest's default fd capture would swallow a sanitizer report written to fd 2
# just before the process exits (all one then sees is the run stopping).
"$VENV/bin/python" -m pytest -q -p no:cacheprovider --capture=sys -m "not slow" "$SRC/tests" "${PYTEST_ARGS[@]}" || STATUS=1

if [ "$HARNESS" = 1 ]; then
  # The harness workers are forked children: an ASan report there counts as a "crash" outcome.
  echo "== mutation harness under ASan+UBSan"
  "$VENV/bin/python" -m qcnn.tools.hardening.mutate --trials 2000 --seed 11 --mem-limit-gb 0 --timeout 60 \
      --json /tmp/qcnn-san-mutate.json || STATUS=1
  echo "== edge-case models under ASan+UBSan"
  "$VENV/bin/python" -m qcnn.tools.hardening.extreme --trials 300 --seed 11 --timeout 120 \
      --json /tmp/qcnn-san-extreme.json || STATUS=1
fi
[ "$STATUS" = 0 ] || { echo "== tests failed under the sanitizers (see above)"; exit 1; }
echo "== sanitizers: no errors"
