"""Which runtime runs the specialist: `load_specialist` picks transformers or llama.cpp.

Both implement `models.Specialist` (q_ctx and q_gen rows, drafting, rollback without a
prefill), so the engine does not know which one it drives.
"""

from __future__ import annotations

from typing import Literal

import torch

from langchain_specsteer.models import LocalSpecialist, Specialist

__all__ = ["SpecialistRuntime", "load_specialist"]


SpecialistRuntime = Literal["transformers", "llama.cpp"]
"""What runs a specialist: `LocalSpecialist` or `llamacpp.LlamaCppSpecialist`."""


def load_specialist(
    model_id: str,
    *,
    runtime: SpecialistRuntime = "transformers",
    gguf_file: str | None = None,
    device: str | torch.device | None = None,
    torch_dtype: str | torch.dtype | None = None,
) -> Specialist:
    """A specialist from a hub id, folder or `.gguf` file, run by `runtime`.

    "transformers": `LocalSpecialist.from_pretrained` (a GGUF file is dequantised to
    `torch_dtype`). "llama.cpp": `LlamaCppSpecialist.from_pretrained`, which needs a GGUF file
    and the `llamacpp` extra, keeps the file's quantisation and ignores `device` and
    `torch_dtype` (its log-probs are on the CPU).
    """
    if runtime == "transformers":
        return LocalSpecialist.from_pretrained(
            model_id, gguf_file=gguf_file, device=device, torch_dtype=torch_dtype
        )
    if runtime == "llama.cpp":
        from langchain_specsteer.llamacpp import LlamaCppSpecialist

        return LlamaCppSpecialist.from_pretrained(model_id, gguf_file=gguf_file)
    msg = f"specialist_runtime must be 'transformers' or 'llama.cpp', got {runtime!r}"
    raise ValueError(msg)
