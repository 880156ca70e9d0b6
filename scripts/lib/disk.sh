# Sourced by .ci/run and scripts/integration.sh: prints how much disk the build uses and how much
# is left, so that a run that fills the disk says where the space went.
disk_report() {
  local target="${CARGO_TARGET_DIR:-target}" used="none yet" avail
  [[ -d "$target" ]] && used=$(du -sh "$target" 2>/dev/null | cut -f1)
  avail=$(df -h --output=avail . 2>/dev/null | tail -1 | tr -d ' ')
  echo "disk ($1): target/ $used, ${avail:-?} free on $(df --output=target . 2>/dev/null | tail -1)"
  if [[ -n "${NEXUS_KUBE_DIR:-}" && -d "$NEXUS_KUBE_DIR" ]]; then
    echo "disk ($1): $NEXUS_KUBE_DIR $(du -sh "$NEXUS_KUBE_DIR" 2>/dev/null | cut -f1)"
  fi
}
