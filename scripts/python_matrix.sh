#!/usr/bin/env bash
# Run rdloss's test suite under several Python versions, one throwaway venv per version.
#
# Usage: scripts/python_matrix.sh PYVERSION...     e.g.  scripts/python_matrix.sh 3.10 3.13
#
# For each PYVERSION (3.10, 3.13.0, or a path to an interpreter): find the interpreter, make a
# venv, install torch==$PYTHON_MATRIX_TORCH first, then the README's `pip install -e ".[test]"`
# (torch pinned again, so pip cannot move it), then run the README's suite without the slow
# tests, `python -m pytest -m "not slow"` (the not-slow compile tests are in it: torch.compile
# traces Python bytecode, which is what changes between Python versions), and print one line
# per version:
#   python 3.10.13, torch 2.13.0, not slow: 2868 passed, 0 failed, 9 skipped in 158 s (venv 5.0G ready in 83 s)
# The venv is deleted afterwards unless PYTHON_MATRIX_KEEP=1.
#
# Interpreters: `pythonX.Y` on PATH if it runs (a pyenv shim of a version that is not
# activated does not), else the newest $PYENV_ROOT/versions/X.Y.* (pyenv's default root
# ~/.pyenv when PYENV_ROOT is unset).
#
# Environment:
#   PYTHON_MATRIX_TORCH  the torch release to install (default 2.13.0, the one CI pins)
#   PYTHON_MATRIX_DIR    where the venvs go (default: a fresh temporary directory). A venv
#                        already there as pyX.Y.Z-torch-T with that torch is reused, not rebuilt.
#   PYTHON_MATRIX_KEEP=1 keep the venvs (to re-run quickly after a code change)
#   PYTHON_MATRIX_LOGS   where the pytest and pip logs go (default: $PYTHON_MATRIX_DIR/logs)
#   PYTHON_MATRIX_ALL=1  run the whole suite, slow tests too (the README's `python -m pytest`)
#
# The local CPU wheel of torch 2.13.0 (if the image has one) is built for one Python only;
# for the other versions pip takes the registry's CUDA build, which runs on CPU but pulls
# about 5 GB of nvidia wheels per venv. The image's pip constraints file may cap torch, so
# the installs run with PIP_CONSTRAINT=/dev/null, as in scripts/torch_matrix.sh.
#
# Exit status: 0 if every version installed and its suite passed (pytest exit 0, or 5 =
# "no test selected", said so in the line), 1 otherwise.
set -uo pipefail

if [ $# -eq 0 ]; then
  sed -n '2,4p' "$0" >&2
  exit 2
fi

root=$(cd "$(dirname "$0")/.." && pwd)
torch=${PYTHON_MATRIX_TORCH:-2.13.0}
base=${PYTHON_MATRIX_DIR:-$(mktemp -d "${TMPDIR:-/tmp}/python-matrix.XXXXXX")}
logs=${PYTHON_MATRIX_LOGS:-$base/logs}
select=(-m "not slow") suite="not slow"
[ "${PYTHON_MATRIX_ALL:-0}" = 1 ] && select=() suite="whole suite"
mkdir -p "$base" "$logs"
export PIP_CONSTRAINT=/dev/null PIP_DISABLE_PIP_VERSION_CHECK=1

# interpreter PYVERSION: print the path of a working interpreter for it, or fail.
interpreter() {
  local want=$1 candidate found=""
  if [[ $want == */* ]]; then
    [ -x "$want" ] && echo "$want"
    return
  fi
  if candidate=$(command -v "python$want") && "$candidate" -c '' 2>/dev/null; then
    echo "$candidate"
    return
  fi
  for candidate in "${PYENV_ROOT:-$HOME/.pyenv}/versions/$want" \
    "${PYENV_ROOT:-$HOME/.pyenv}/versions/$want".*; do
    [ -x "$candidate/bin/python" ] && found=$(printf '%s\n' "$found" "$candidate" | sort -V | tail -1)
  done
  [ -n "$found" ] && echo "$found/bin/python"
}

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

status=0
lines=()
for want in "$@"; do
  python=$(interpreter "$want")
  if [ -z "$python" ]; then
    lines+=("python $want: no interpreter found")
    echo "${lines[-1]}"
    status=1
    continue
  fi
  version=$("$python" -c 'import platform; print(platform.python_version())')
  tag=py$version-torch-$torch
  venv=$base/$tag
  py=$venv/bin/python
  start=$(date +%s)
  if ! [ -x "$py" ] || [ "$("$py" -c 'import torch; print(torch.__version__.split("+")[0])' 2>/dev/null)" != "$torch" ]; then
    rm -rf "$venv"
    if ! { "$python" -m venv "$venv" &&
      "$py" -m pip install -q "torch==$torch"; } >"$logs/$tag-pip.log" 2>&1; then
      lines+=("python $version, torch $torch: install failed, see $logs/$tag-pip.log")
      echo "${lines[-1]}"
      status=1
      [ "${PYTHON_MATRIX_KEEP:-0}" = 1 ] || rm -rf "$venv"
      continue
    fi
  fi
  # The README's install command, from this checkout.
  if ! (cd "$root" && "$py" -m pip install -q -e ".[test]" "torch==$torch") >>"$logs/$tag-pip.log" 2>&1; then
    lines+=("python $version, torch $torch: install of rdloss[test] failed, see $logs/$tag-pip.log")
    echo "${lines[-1]}"
    status=1
    [ "${PYTHON_MATRIX_KEEP:-0}" = 1 ] || rm -rf "$venv"
    continue
  fi
  ready="venv $(du -sh "$venv" | cut -f1) ready in $(($(date +%s) - start)) s"
  echo "python $version, torch $torch: $ready at $venv"

  start=$(date +%s)
  (cd "$root" && "$py" -m pytest -q -p no:cacheprovider "${select[@]}") >"$logs/$tag-pytest.log" 2>&1
  rc=$?
  line="python $version, torch $torch, $suite: $(counts "$logs/$tag-pytest.log") in $(($(date +%s) - start)) s ($ready)"
  case $rc in
    0) ;;
    5) line="python $version, torch $torch, $suite: no tests selected (pytest exit 5) ($ready)" ;;
    1) status=1 ;;
    *) line="$line (pytest exit $rc, see $logs/$tag-pytest.log)"; status=1 ;;
  esac
  lines+=("$line")
  echo "$line"
  [ "${PYTHON_MATRIX_KEEP:-0}" = 1 ] || rm -rf "$venv"
done

echo
echo "Summary (logs in $logs):"
printf '%s\n' "${lines[@]}"
exit $status
