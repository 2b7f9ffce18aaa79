# Sourced by .ci/torch_versions.sh, .ci/vllm.sh and .ci/first_checks.sh: their
# virtual environments, kept between CI runs.
#
# NOTE: [CI's venvs kept between runs]
# Building the two torch releases' venvs and vLLM's took 40-80 s each, all from
# the wheel folder (NOTE: [a wheel folder instead of pip's HTTP cache] in
# .ci/torch_versions.sh): unpacking several GB of CUDA builds, about 2.5 minutes
# of one core in a run whose two cores are busy to the end.  Each venv is
# therefore kept under STITCH_CI_VENVS (default ~/.cache/stitch/ci-venvs) with
# the key it was built from: python3's version and the files that decide what
# is installed (the constraints or lock, pyproject.toml, the calling script).
# A venv is reused only when its key matches and its build finished (the key is
# written last); anything else removes it and builds it again, so a change to
# a pin or an extra rebuilds, as a fresh machine would.  A reused venv gets
# this checkout installed again (editable, no dependencies): it must test this
# clone, not the one that built it.

# NOTE: [bytecode written in CI] in .ci/run (these scripts also run alone).
unset PYTHONDONTWRITEBYTECODE

venv_root=${STITCH_CI_VENVS:-${XDG_CACHE_HOME:-$HOME/.cache}/stitch/ci-venvs}
mkdir -p "$venv_root"

# venv_key FILE...: the key of a venv built from these files.
venv_key() {
    { python3 --version; cat "$@"; } | sha256sum | cut -c1-16
}

# venv_ready VENV KEY: true when VENV was built from KEY to the end; otherwise
# it is removed (the caller builds it, then calls venv_built).
venv_ready() {
    if [[ -f $1/.stitch-ci-key && $(<"$1/.stitch-ci-key") == "$2" ]]; then
        return 0
    fi
    rm -rf "$1"
    return 1
}

# venv_built VENV KEY: mark VENV complete.
venv_built() {
    printf '%s\n' "$2" >"$1/.stitch-ci-key"
}
