#!/usr/bin/env bash
# Downloads and unpacks official MovieLens releases from GroupLens.
#
#   scripts/download_movielens.sh DEST_DIR [DATASET ...]
#
# DATASET is any of ml-100k ml-1m ml-latest-small ml-latest ml-20m ml-25m (default: ml-100k ml-1m
# ml-latest-small). Each lands in DEST_DIR/<name>/ (for example DEST_DIR/ml-1m/ratings.dat),
# ready for `load_movielens` / a dataset config with "path": "DEST_DIR/ml-1m".
# Existing unpacked folders are kept; pass FORCE=1 to download again.
# The data are licensed by GroupLens (see each README): do not commit them to this repository.
set -euo pipefail

readonly BASE_URL="${MOVIELENS_BASE_URL:-https://files.grouplens.org/datasets/movielens}"
readonly KNOWN="ml-100k ml-1m ml-latest-small ml-latest ml-20m ml-25m"

usage() {
  echo "usage: $0 DEST_DIR [DATASET ...]" >&2
  echo "  DATASET: one of: $KNOWN (default: ml-100k ml-1m ml-latest-small)" >&2
  exit 2
}

[[ $# -ge 1 ]] || usage
case "$1" in -h|--help) usage ;; esac
dest="$1"
shift
if [[ $# -eq 0 ]]; then
  set -- ml-100k ml-1m ml-latest-small
fi

for name in "$@"; do
  if [[ " $KNOWN " != *" $name "* ]]; then
    echo "error: unknown dataset '$name' (known: $KNOWN)" >&2
    exit 2
  fi
done

command -v unzip >/dev/null || { echo "error: unzip is required" >&2; exit 1; }
if command -v curl >/dev/null; then
  fetch() { curl -fL --retry 3 --progress-bar -o "$2" "$1"; }
elif command -v wget >/dev/null; then
  fetch() { wget -q --show-progress --tries=3 -O "$2" "$1"; }
else
  echo "error: curl or wget is required" >&2
  exit 1
fi

mkdir -p "$dest"
# Each zip holds one top-level folder named like the dataset; the marker file shows it unpacked.
marker() {
  case "$1" in
    ml-100k) echo u.data ;;
    ml-1m) echo ratings.dat ;;
    *) echo ratings.csv ;;
  esac
}

for name in "$@"; do
  target="$dest/$name"
  if [[ -f "$target/$(marker "$name")" && "${FORCE:-0}" != 1 ]]; then
    echo "$name: already present in $target"
    continue
  fi
  tmp="$(mktemp -d "${dest%/}/.download-$name.XXXXXX")"
  trap 'rm -rf "$tmp"' EXIT
  echo "$name: downloading $BASE_URL/$name.zip"
  fetch "$BASE_URL/$name.zip" "$tmp/$name.zip"
  # GroupLens publishes checksums for some releases; verify when one is available.
  if fetch "$BASE_URL/$name.zip.md5" "$tmp/$name.zip.md5" 2>/dev/null && command -v md5sum >/dev/null; then
    expected="$(grep -oE '[0-9a-fA-F]{32}' "$tmp/$name.zip.md5" | head -n1 || true)"
    if [[ -n "$expected" ]]; then
      actual="$(md5sum "$tmp/$name.zip" | cut -d' ' -f1)"
      if [[ "${expected,,}" != "$actual" ]]; then
        echo "error: $name.zip checksum mismatch (expected $expected, got $actual)" >&2
        exit 1
      fi
      echo "$name: checksum ok"
    fi
  fi
  unzip -q -o "$tmp/$name.zip" -d "$tmp/unpacked"
  if [[ ! -f "$tmp/unpacked/$name/$(marker "$name")" ]]; then
    echo "error: $name.zip does not contain $name/$(marker "$name")" >&2
    exit 1
  fi
  rm -rf "$target"
  mv "$tmp/unpacked/$name" "$target"
  rm -rf "$tmp"
  trap - EXIT
  echo "$name: ready in $target"
done
