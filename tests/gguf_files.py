"""The tiny generalist written as a GGUF file, for the tests of GGUF loading (transformers'
`gguf_file=`) and of llama.cpp: `save_gguf` and the chat template it stores."""

from __future__ import annotations

from typing import Any

import torch

__all__ = ["CHATML", "save_gguf"]

CHATML = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
"""A ChatML chat template (SmolLM2's shape), the one `save_gguf` stores by default."""


def save_gguf(lm: Any, path: Any, *, chat_template: str | None = CHATML) -> None:
    """Write a Llama model with a byte-level BPE tokenizer (the tiny generalist) as a float32
    GGUF file, laid out as llama.cpp's converter does (q/k rows permuted), with its tokenizer
    and `chat_template`. Needs the `gguf` package.
    """
    import json

    import gguf

    config, state = lm.model.config, lm.model.state_dict()
    heads, kv_heads = config.num_attention_heads, config.num_key_value_heads
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_context_length(config.max_position_embeddings)
    writer.add_embedding_length(config.hidden_size)
    writer.add_block_count(config.num_hidden_layers)
    writer.add_feed_forward_length(config.intermediate_size)
    writer.add_head_count(heads)
    writer.add_head_count_kv(kv_heads)
    writer.add_rope_dimension_count(config.hidden_size // heads)
    writer.add_rope_freq_base(config.rope_parameters["rope_theta"])
    writer.add_layer_norm_rms_eps(config.rms_norm_eps)
    writer.add_vocab_size(lm.output_width)
    model = json.loads(lm.tokenizer.backend_tokenizer.to_str())["model"]
    tokens = sorted(model["vocab"], key=model["vocab"].get)
    special = set(lm.tokenizer.all_special_ids)
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("default")
    writer.add_token_list(tokens)
    writer.add_token_types([3 if i in special else 1 for i in range(len(tokens))])
    writer.add_token_merges([m if isinstance(m, str) else " ".join(m) for m in model["merges"]])
    writer.add_bos_token_id(lm.tokenizer.bos_token_id)
    writer.add_eos_token_id(lm.tokenizer.eos_token_id)
    writer.add_pad_token_id(lm.tokenizer.pad_token_id)
    writer.add_add_bos_token(True)
    if chat_template:
        writer.add_chat_template(chat_template)

    def permute(w: torch.Tensor, n_head: int) -> torch.Tensor:
        return w.reshape(n_head, 2, w.shape[0] // n_head // 2, -1).swapaxes(1, 2).reshape(w.shape)

    names = {
        "input_layernorm": "attn_norm",
        "self_attn.q_proj": "attn_q",
        "self_attn.k_proj": "attn_k",
        "self_attn.v_proj": "attn_v",
        "self_attn.o_proj": "attn_output",
        "post_attention_layernorm": "ffn_norm",
        "mlp.gate_proj": "ffn_gate",
        "mlp.up_proj": "ffn_up",
        "mlp.down_proj": "ffn_down",
    }
    tensors = {"token_embd.weight": state["model.embed_tokens.weight"]}
    tensors["output_norm.weight"] = state["model.norm.weight"]
    if not config.tie_word_embeddings:
        tensors["output.weight"] = state["lm_head.weight"]
    for i in range(config.num_hidden_layers):
        for hf, name in names.items():
            w = state[f"model.layers.{i}.{hf}.weight"]
            if name in ("attn_q", "attn_k"):
                w = permute(w, heads if name == "attn_q" else kv_heads)
            tensors[f"blk.{i}.{name}.weight"] = w
    for name, w in tensors.items():
        writer.add_tensor(name, w.detach().float().cpu().numpy())
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
