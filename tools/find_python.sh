#!/usr/bin/env bash
# Prints the path of a Python >= 3.12 interpreter, or explains what to install.
# Current JAX releases need Python 3.12; pyenv's python3.12 shim refuses to run
# while another version is pyenv's global one, so pyenv is asked directly too.
set -u

is_suitable() {
  "$1" -c 'import sys; sys.exit(0 if sys.version_info >= (3, 12) else 1)' \
    >/dev/null 2>&1
}

candidates=()
[ -n "${PYTHON:-}" ] && candidates+=("$PYTHON")
for name in python3.12 python3.13 python3; do
  path=$(command -v "$name" 2>/dev/null) && candidates+=("$path")
done
if command -v pyenv >/dev/null 2>&1; then
  for version in $(pyenv versions --bare 2>/dev/null | sort -V); do
    prefix=$(pyenv prefix "$version" 2>/dev/null) || continue
    for name in python3.12 python3.13; do
      [ -x "$prefix/bin/$name" ] && candidates+=("$prefix/bin/$name")
    done
  done
fi

for candidate in "${candidates[@]}"; do
  if is_suitable "$candidate"; then
    echo "$candidate"
    exit 0
  fi
done

cat >&2 <<'MSG'
No Python 3.12 or newer was found (JAX needs it).
Install one, for example:
  pyenv install 3.12        (then run make again), or
  apt-get install python3.12 python3.12-venv
or point make at an interpreter: make run PYTHON=/path/to/python3.12
MSG
exit 1
