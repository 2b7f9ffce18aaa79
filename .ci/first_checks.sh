#!/usr/bin/env bash
# Steps 1 to 3 of .ci/run, which runs this beside the README's suite (NOTE:
# [CI's first checks beside the suite] there): the wheel ships every
# template, the repository is formatted and lint-free, the documentation site
# builds.  SCRATCH, the one argument, is .ci/run's scratch folder: the venvs,
# the wheel and the site go there.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
scratch=$1

# NOTE: [the first checks' pinned venvs are kept]
# The lint and documentation venvs hold what pyproject.toml pins exactly
# (black and ruff; the docs extra's mkdocs pins), so they are kept under
# .ci/venvs.sh's root, keyed by those pins, as the torch releases' and
# vLLM's venvs are; their dependencies stay at the versions of the day the
# venv was made, as those venvs' do.  Made afresh, they took about 15 s of
# the first checks' 28 s on the 2-core machine (2026-11-30), beside the
# suite.  The wheel's build venv stays fresh: its setuptools is not pinned,
# and the check is that today's builds the wheel.
source .ci/venvs.sh
kept_venv() {  # NAME PINS: the path of a kept venv with PINS installed
    local venv="$venv_root/first-checks-$1" key
    key=$(venv_key <(printf '%s\n' "$2"))
    if ! venv_ready "$venv" "$key"; then
        python3 -m venv "$venv"
        # shellcheck disable=SC2086  # one word per pin
        "$venv/bin/pip" install -q $2 >&2
        venv_built "$venv" "$key"
    fi
    printf '%s\n' "$venv"
}

echo "== 1/6 wheel ships the templates"
# Build from a copy of the files git sees (tracked or not ignored): a build/ or
# *.egg-info left in the checkout by an earlier build could otherwise supply
# files the package configuration no longer ships.
mkdir "$scratch/src"
git ls-files -z --cached --others --exclude-standard |
    while IFS= read -r -d '' f; do if [[ -e $f ]]; then printf '%s\0' "$f"; fi; done |
    tar --null -T - -cf - | tar -xf - -C "$scratch/src"
python3 -m venv "$scratch/venv"
# --no-build-isolation builds with the scratch venv's own setuptools (>= 64, and
# wheel for setuptools older than 70.1).
"$scratch/venv/bin/pip" install -q "setuptools>=64" wheel
"$scratch/venv/bin/pip" wheel -q --no-deps --no-build-isolation -w "$scratch/dist" "$scratch/src"
"$scratch/venv/bin/python" - "$scratch"/dist/stitch-*.whl templates/*.j2 <<'PY'
import sys
import zipfile
from pathlib import Path

wheel, templates = sys.argv[1], sys.argv[2:]
names = set(zipfile.ZipFile(wheel).namelist())
wanted = [f"stitch/templates/{Path(t).name}" for t in templates]
wanted.append("stitch/templates/execution_fn.py.j2")
missing = sorted(set(w for w in wanted if w not in names))
if missing:
    sys.exit(f"error: {Path(wheel).name} lacks {', '.join(missing)}")
print(f"{Path(wheel).name}: ships {', '.join(sorted(set(wanted)))}")
PY

echo "== 2/6 format and lint: black --check, ruff check"
# The pins are pyproject.toml's: black in the dependencies, ruff in the lint extra.
pins=$(grep -oE '"(black|ruff)==[^"]+"' pyproject.toml | tr -d '"' | sort -u)
lint=$(kept_venv lint "$pins")
"$lint/bin/black" --check --quiet .
"$lint/bin/ruff" check --quiet .

echo "== 3/6 documentation site: mkdocs build --strict"
# The pins are the docs extra's.  mkdocstrings finds stitch in the docs venv's
# site-packages: the wheel of step 1, installed without its dependencies (the
# package maps stitch.* to top-level folders, which griffe cannot find in the
# checkout; nothing is imported, so torch is not needed).  A broken link or
# anchor, a page left out of the nav, or a reference to a name the package no
# longer exports fails the build.  The site goes to the scratch folder.
docs_pins=$(grep -oE '"mkdocs[^"]*==[^"]+"' pyproject.toml | tr -d '"' | sort -u)
docs=$(kept_venv docs "$docs_pins")
"$docs/bin/pip" install -q --no-deps --force-reinstall "$scratch"/dist/stitch-*.whl
NO_MKDOCS_2_WARNING=1 "$docs/bin/mkdocs" build --strict --site-dir "$scratch/site"
