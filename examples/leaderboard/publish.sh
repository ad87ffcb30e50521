#!/usr/bin/env bash
# Build the leaderboard site from the committed results store and publish it as static pages.
#
#   examples/leaderboard/publish.sh                # build leaderboard/store -> leaderboard/site, print the path
#   examples/leaderboard/publish.sh --gh-pages     # ... and commit the site to the gh-pages branch (then push it)
#
# The site is self-contained (no CDN, no network): any static host serves leaderboard/site/ as it is, e.g.
# `rsync -a --delete leaderboard/site/ host:/var/www/vtbench/` or GitHub Pages (github-pages.yml beside this file
# does it from CI). A number measured elsewhere reaches the store first, checked:
#   vtbench leaderboard add results/<dataset>/<tokenizer>/<task>/result.json   # then commit leaderboard/store
set -euo pipefail
cd "$(git rev-parse --show-toplevel)"

vtbench leaderboard build   # no arguments: leaderboard/store -> leaderboard/site (swapped in when complete)

if [ "${1:-}" = "--gh-pages" ]; then
  commit=$(git rev-parse --short HEAD)
  tmp=$(mktemp -d)
  trap 'git worktree remove --force "$tmp" 2>/dev/null || true; rm -rf "$tmp"' EXIT
  if git show-ref --quiet refs/heads/gh-pages; then
    git worktree add --quiet "$tmp" gh-pages
  else
    git worktree add --quiet --detach "$tmp"
    git -C "$tmp" checkout --quiet --orphan gh-pages
  fi
  git -C "$tmp" rm -r --quiet --ignore-unmatch . >/dev/null
  cp -a leaderboard/site/. "$tmp"/
  git -C "$tmp" add -A
  git -C "$tmp" commit --quiet -m "leaderboard: built from leaderboard/store at $commit" || echo "site unchanged"
  echo "committed to gh-pages; publish with: git push origin gh-pages"
fi
