#!/usr/bin/env bash
# The small tier of matcraft.deploy on the local Docker engine (`make demo`,
# `make demo-down`). The hosts are systemd containers; the inventory in
# .cache/demo/inventory has the layout of inventories/small, and the
# playbooks are the ones a user runs against VMs.
#
#   tests/demo/demo.sh up       containers and inventory (tests/demo/demo.yml),
#                               secrets (matcraft.deploy.secrets, first run
#                               only), matcraft.deploy.site, the URLs, then
#                               matcraft.deploy.verify
#   tests/demo/demo.sh deploy   the same without the URLs and verify
#   tests/demo/demo.sh site     matcraft.deploy.site again
#   tests/demo/demo.sh verify   matcraft.deploy.verify
#   tests/demo/demo.sh down     remove the containers, the network and .cache/demo
#
# Needs the venv and the test image (`make venv testbed`; `make demo` does it).
set -euo pipefail

cd "$(dirname "$0")/../.."
ROOT=$PWD
DEMO_DIR=.cache/demo
INVENTORY=$DEMO_DIR/inventory
VAULT_FILE=$INVENTORY/group_vars/all/vault.yml
VAULT_PASSWORD_FILE=$DEMO_DIR/vault-password
NETWORK=matcraft-demo
PREFIX=demo-
EDGE_HOST=api1

export PATH="$ROOT/.venv/bin:$PATH"
export ANSIBLE_COLLECTIONS_PATH=${ANSIBLE_COLLECTIONS_PATH:-$ROOT/.cache/collections}

log() { printf '\n[demo] %s\n' "$*" >&2; }
die() { printf '[demo] ERROR: %s\n' "$*" >&2; exit 1; }

need_tools() {
  command -v ansible-playbook >/dev/null || die "ansible-playbook not found: run make venv"
  [ -e "$ANSIBLE_COLLECTIONS_PATH/ansible_collections/matcraft/deploy" ] \
    || die "matcraft.deploy is not in $ANSIBLE_COLLECTIONS_PATH: run make venv"
  docker info >/dev/null 2>&1 || die "no Docker engine answers: run make testbed"
}

# Playbooks of the controller only (no inventory: the implicit localhost).
local_playbook() { ANSIBLE_LOCALHOST_WARNING=false ANSIBLE_INVENTORY_UNPARSED_WARNING=false ansible-playbook "$@"; }
playbook() { ansible-playbook -i "$INVENTORY" --vault-password-file "$VAULT_PASSWORD_FILE" "$@"; }

address() {
  docker inspect --format "{{ (index .NetworkSettings.Networks \"$NETWORK\").IPAddress }}" "$PREFIX$1"
}

cmd_deploy() {
  need_tools
  log "containers, release and inventory (tests/demo/demo.yml)"
  local_playbook tests/demo/demo.yml
  if [ -f "$VAULT_FILE" ]; then
    log "secrets: keeping $VAULT_FILE"
  else
    log "secrets: matcraft.deploy.secrets"
    local_playbook matcraft.deploy.secrets \
      -e "secrets_file=$ROOT/$VAULT_FILE" -e "secrets_vault_password_file=$ROOT/$VAULT_PASSWORD_FILE"
  fi
  cmd_site
}

cmd_site() {
  log "ansible-playbook -i $INVENTORY --vault-password-file $VAULT_PASSWORD_FILE matcraft.deploy.site"
  playbook matcraft.deploy.site
}

cmd_verify() {
  local public
  public=$(address "$EDGE_HOST")
  log "ansible-playbook -i $INVENTORY --vault-password-file $VAULT_PASSWORD_FILE matcraft.deploy.verify -e verify_public_address=$public"
  playbook matcraft.deploy.verify -e "verify_public_address=$public"
}

cmd_up() {
  cmd_deploy
  cat "$DEMO_DIR/summary.txt"
  cmd_verify
  log "the demo is up; its URLs and files are listed in $DEMO_DIR/summary.txt (make demo-down removes it)"
}

cmd_down() {
  local name names=()
  # Only the demo's own containers: label owner=demo and a name starting with demo-.
  for name in $(docker ps -a --filter label=owner=demo --filter "name=^$PREFIX" --format '{{.Names}}'); do
    if [[ $name == "$PREFIX"* ]]; then names+=("$name"); fi
  done
  if [ "${#names[@]}" -gt 0 ]; then
    log "removing ${names[*]}"
    docker rm -f "${names[@]}" >/dev/null
  fi
  if docker network inspect "$NETWORK" >/dev/null 2>&1; then
    docker network rm "$NETWORK" >/dev/null
  fi
  rm -rf "$DEMO_DIR"
  log "demo removed"
}

case "${1:-up}" in
  up) cmd_up ;;
  deploy) cmd_deploy ;;
  site) need_tools; cmd_site ;;
  verify) need_tools; cmd_verify ;;
  down) cmd_down ;;
  *) die "usage: $0 up|deploy|site|verify|down" ;;
esac
