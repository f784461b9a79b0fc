#!/usr/bin/env bash
# Install langchain-specsteer in editable mode with the `python` on PATH (an active venv wins).
#   bash scripts/install.sh          the package with every extra ([all]: server, retrievers, eval)
#   bash scripts/install.sh --test   the same and the test tools (pytest, ruff)
set -euo pipefail
cd "$(dirname "$0")/.."

extras="[all]"
case "${1:-}" in
  "") ;;
  --test) extras="[all,test]" ;;
  *) echo "usage: bash scripts/install.sh [--test]" >&2; exit 2 ;;
esac

# Install torch on its own first when it is missing: the pinned CPU build is already on disk
# here, and this keeps pip from resolving `torch` to a multi-GB CUDA build.
if ! python -c "import torch" >/dev/null 2>&1; then
  python -m pip install "torch==2.13.0"
fi
python -m pip install -e ".${extras}"
