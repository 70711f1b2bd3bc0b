#!/usr/bin/env bash
# Makes sure a Vulkan adapter exists for wgpu. On a desktop with a GPU driver (or on
# macOS / Windows, where wgpu uses Metal / DX12) this does nothing. On a headless Debian
# machine without any Vulkan ICD it installs Mesa's software rasterizer (lavapipe),
# preferring Mesa 25 from bookworm-backports: Mesa 22's storage-buffer loads are 2-6x slower.
# The backports apt source is derived from the machine's own Debian entry, so no mirror
# host name is written here.
set -euo pipefail

have_icd() {
  ls /usr/share/vulkan/icd.d/*.json /etc/vulkan/icd.d/*.json >/dev/null 2>&1
}

if [ "$(uname -s)" != "Linux" ] || have_icd; then
  exit 0
fi
if ! command -v apt-get >/dev/null 2>&1; then
  echo "wqat: no Vulkan driver found; install Mesa's Vulkan driver (lavapipe) with your package manager" >&2
  exit 0
fi
SUDO=""
if [ "$(id -u)" != "0" ]; then SUDO="sudo"; fi

codename=""
if [ -r /etc/os-release ]; then . /etc/os-release; codename="${VERSION_CODENAME:-}"; fi

if [ "$codename" = "bookworm" ] && [ ! -e /etc/apt/sources.list.d/wqat-backports.sources ] \
   && [ ! -e /etc/apt/sources.list.d/wqat-backports.list ]; then
  # Take the first archive URI the machine already uses for bookworm (deb822 or one-line form).
  uri=""
  if [ -r /etc/apt/sources.list.d/debian.sources ]; then
    uri=$(awk '/^URIs:/ {u=$2} /^Suites:/ { for (i=2;i<=NF;i++) if ($i=="bookworm") { print u; exit } }' \
      /etc/apt/sources.list.d/debian.sources)
  fi
  if [ -z "$uri" ] && [ -r /etc/apt/sources.list ]; then
    uri=$(awk '$1=="deb" && $3=="bookworm" {print $2; exit}' /etc/apt/sources.list)
  fi
  if [ -n "$uri" ]; then
    printf 'Types: deb\nURIs: %s\nSuites: bookworm-backports\nComponents: main\nSigned-By: /usr/share/keyrings/debian-archive-keyring.gpg\n' "$uri" \
      | $SUDO tee /etc/apt/sources.list.d/wqat-backports.sources >/dev/null
  fi
fi

export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -q
if [ -e /etc/apt/sources.list.d/wqat-backports.sources ] \
   && $SUDO apt-get install -y -q -t bookworm-backports mesa-vulkan-drivers libvulkan1; then
  :
else
  $SUDO apt-get install -y -q mesa-vulkan-drivers libvulkan1
fi
