#!/usr/bin/env bash
# Run rdloss's test suite against several torch releases, one throwaway venv per release.
#
# Usage: scripts/torch_matrix.sh VERSION...        e.g.  scripts/torch_matrix.sh 2.4.1 2.8.0
#
# For each VERSION: make a venv, install torch==VERSION with the runtime dependencies and the
# `test` extra of pyproject.toml (torch pinned, so pip cannot move it; rdloss itself goes in
# with --no-deps, so its own `torch>=` floor does not get in the way), then run
#   eager:   python -m pytest -q -m "not slow" -k "not compile"   (the everyday suite)
#   compile: python -m pytest -q -k compile        (every torch.compile test, slow ones too)
# The two runs split the suite: every test that calls torch.compile has "compile" in its name
# or module (tests/test_compile.py), so an old torch's missing compiler features show up in the
# second line only. Keep that naming for new compile tests.
# and print one line per version:
#   torch 2.4.1: eager 2190 passed, 15 failed, 3 skipped in 412 s; compile 30 passed, 12 failed, 0 skipped in 95 s
# The venv is deleted afterwards unless TORCH_MATRIX_KEEP=1.
#
# Environment:
#   PYTHON               interpreter for the venvs (default: python3.11, else python3)
#   TORCH_MATRIX_DIR     where the venvs go (default: a fresh temporary directory). A venv
#                        already there as torch-VERSION with that torch is reused, not rebuilt.
#   TORCH_MATRIX_KEEP=1  keep the venvs (to re-run quickly after a code change)
#   TORCH_MATRIX_ONLY    "eager" or "compile" to run one of the two runs only
#   TORCH_MATRIX_LOGS    where the pytest and pip logs go (default: $TORCH_MATRIX_DIR/logs)
#
# Torch releases other than the CPU wheel baked into some images come from the registry as
# CUDA builds: they run on CPU but pull 5-7 GB of nvidia wheels each. The image's pip
# constraints file may cap torch, so the installs run with PIP_CONSTRAINT=/dev/null.
# torch < 2.3 was built against NumPy 1.x: "numpy<2" is added for those releases.
#
# Exit status: 0 if every version installed and both runs passed (pytest exit 0, or 5 =
# "no test selected"), 1 otherwise.
set -uo pipefail

if [ $# -eq 0 ]; then
  sed -n '2,4p' "$0" >&2
  exit 2
fi

root=$(cd "$(dirname "$0")/.." && pwd)
python=${PYTHON:-$(command -v python3.11 || command -v python3)}
base=${TORCH_MATRIX_DIR:-$(mktemp -d "${TMPDIR:-/tmp}/torch-matrix.XXXXXX")}
logs=${TORCH_MATRIX_LOGS:-$base/logs}
only=${TORCH_MATRIX_ONLY:-}
mkdir -p "$base" "$logs"
export PIP_CONSTRAINT=/dev/null PIP_DISABLE_PIP_VERSION_CHECK=1

# Runtime dependencies and the test extra, without torch (pinned per version below).
mapfile -t deps < <("$python" - "$root/pyproject.toml" <<'EOF'
import re
import sys
import tomllib

with open(sys.argv[1], "rb") as f:
    project = tomllib.load(f)["project"]
for requirement in project["dependencies"] + project["optional-dependencies"]["test"]:
    if re.split(r"[<>=!~\[; ]", requirement, maxsplit=1)[0].lower() != "torch":
        print(requirement)
EOF
)

# "N passed, M failed, K skipped" from a pytest log (errors count as failures).
counts() {
  local last passed failed skipped errors
  last=$(grep -E '[0-9]+ (passed|failed|skipped|errors?|deselected)|no tests ran' "$1" | tail -1)
  passed=$(grep -oE '[0-9]+ passed' <<<"$last" | grep -oE '[0-9]+')
  failed=$(grep -oE '[0-9]+ failed' <<<"$last" | grep -oE '[0-9]+')
  skipped=$(grep -oE '[0-9]+ skipped' <<<"$last" | grep -oE '[0-9]+')
  errors=$(grep -oE '[0-9]+ errors?' <<<"$last" | grep -oE '[0-9]+')
  echo "${passed:-0} passed, $((${failed:-0} + ${errors:-0})) failed, ${skipped:-0} skipped"
}

# run NAME VENV_PYTHON PYTEST_ARGS... : sets $summary, returns 0 if pytest passed (or ran none).
run() {
  local name=$1 py=$2 start rc
  shift 2
  start=$(date +%s)
  (cd "$root" && "$py" -m pytest -q -p no:cacheprovider "$@") >"$logs/$tag-$name.log" 2>&1
  rc=$?
  summary="$name $(counts "$logs/$tag-$name.log") in $(($(date +%s) - start)) s"
  case $rc in
    0) return 0 ;;
    5) summary="$name no tests selected"; return 0 ;;
    1) return 1 ;;
    *) summary="$summary (pytest exit $rc, see $logs/$tag-$name.log)"; return 1 ;;
  esac
}

status=0
lines=()
for version in "$@"; do
  tag=torch-$version
  venv=$base/$tag
  py=$venv/bin/python
  extra=()
  if [ "$(printf '%s\n' "$version" 2.3 | sort -V | head -1)" != 2.3 ]; then
    extra=("numpy<2")
  fi
  start=$(date +%s)
  if ! [ -x "$py" ] || [ "$("$py" -c 'import torch; print(torch.__version__.split("+")[0])' 2>/dev/null)" != "$version" ]; then
    rm -rf "$venv"
    "$python" -m venv "$venv" &&
      "$py" -m pip install -q "torch==$version" "${extra[@]}" "${deps[@]}" >"$logs/$tag-pip.log" 2>&1
    if [ $? -ne 0 ]; then
      lines+=("torch $version: install failed, see $logs/$tag-pip.log")
      echo "${lines[-1]}"
      status=1
      [ "${TORCH_MATRIX_KEEP:-0}" = 1 ] || rm -rf "$venv"
      continue
    fi
  fi
  # rdloss from this checkout, without letting its torch floor move torch.
  "$py" -m pip install -q --no-deps -e "$root" >>"$logs/$tag-pip.log" 2>&1
  echo "torch $version: venv ready in $(($(date +%s) - start)) s ($(du -sh "$venv" | cut -f1)) at $venv"

  line="torch $version:"
  if [ "$only" != compile ]; then
    run eager "$py" -m "not slow" -k "not compile" || status=1
    line="$line $summary"
  fi
  if [ "$only" != eager ]; then
    [ "$only" = compile ] || line="$line;"
    run compile "$py" -k compile || status=1
    line="$line $summary"
  fi
  lines+=("$line")
  echo "$line"
  [ "${TORCH_MATRIX_KEEP:-0}" = 1 ] || rm -rf "$venv"
done

echo
echo "Summary (logs in $logs):"
printf '%s\n' "${lines[@]}"
exit $status
