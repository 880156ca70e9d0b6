# apt_ensure PREFIX COMMAND:PACKAGE…: installs from Debian packages whatever COMMAND is missing
# (a COMMAND starting with / is a file to test for). PREFIX names the caller in messages. The
# package lists may be stale (404 on install): they are updated once and the install retried.
apt_ensure() {
  local who=$1 pair cmd pkg
  shift
  local -a missing=()
  for pair in "$@"; do
    cmd=${pair%%:*}
    pkg=${pair#*:}
    if [[ $cmd == /* ]]; then [[ -e $cmd ]] && continue; else command -v "$cmd" >/dev/null && continue; fi
    [[ " ${missing[*]} " == *" $pkg "* ]] || missing+=("$pkg")
  done
  ((${#missing[@]})) || return 0
  local -a sudo=()
  [[ $(id -u) == 0 ]] || sudo=(sudo)
  echo "$who: installing ${missing[*]} from Debian packages" >&2
  export DEBIAN_FRONTEND=noninteractive
  "${sudo[@]}" apt-get install -y --no-install-recommends "${missing[@]}" >/dev/null ||
    { "${sudo[@]}" apt-get update -qq && "${sudo[@]}" apt-get install -y --no-install-recommends "${missing[@]}" >/dev/null; } ||
    { echo "$who: apt-get install ${missing[*]} failed" >&2; return 1; }
}
