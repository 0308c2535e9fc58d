# Sourced by scripts/dev, scripts/test, scripts/test-browser, scripts/fuzz,
# scripts/check-production-install and bench/run.
#
# ensure_venv DIR REQUIREMENTS: create the venv DIR if it is missing and install REQUIREMENTS
# into it, again only when that file or one it includes with `-r` changed (pip itself takes
# seconds to say "ok").
ensure_venv() {
  local dir=$1 requirements=$2 digest
  [ -x "$dir/bin/python" ] || python3 -m venv "$dir"
  digest=$(_requirements_files "$requirements" | xargs cat | sha256sum | cut -c1-16)
  if [ ! -f "$dir/.installed-$digest" ]; then
    "$dir/bin/python" -m pip install -q --disable-pip-version-check -r "$requirements"
    rm -f "$dir"/.installed-*
    touch "$dir/.installed-$digest"
  fi
}

# The file and, recursively, those it includes with `-r` (relative to its folder, as pip does).
_requirements_files() {
  local included
  echo "$1"
  for included in $(sed -n 's/^-r[[:space:]]*//p' "$1"); do
    _requirements_files "$(dirname "$1")/$included"
  done
}
