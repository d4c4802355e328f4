"""Make a tiny, deterministic, valid llama-architecture GGUF with random weights.

It has a byte-fallback vocabulary (``<unk>``, ``<s>``, ``</s>`` and the 256 ``<0xNN>`` byte
tokens), so llama.cpp and wllama can load it and generate; it is small enough to keep in tests
and big enough to split into several chunks or shards. Same arguments, same bytes.
"""

from __future__ import annotations

from pathlib import Path

PHI3_TEMPLATE = (
    "{% for message in messages %}{% if message['role'] == 'system' %}{{'<|system|>\\n' + message['content'] + "
    "'<|end|>\\n'}}{% elif message['role'] == 'user' %}{{'<|user|>\\n' + message['content'] + '<|end|>\\n'}}"
    "{% elif message['role'] == 'assistant' %}{{'<|assistant|>\\n' + message['content'] + '<|end|>\\n'}}{% endif %}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|assistant|>\\n' }}{% endif %}"
)


def make_tiny_model(path: Path, *, seed: int = 0, n_embd: int = 64, n_layer: int = 2, n_head: int = 4,
                    n_ff: int = 128, n_ctx: int = 256, alignment: int | None = None,
                    name: str = "tiny-llama", printable_only: bool = False, split_max_tensors: int = 0) -> Path:
    """Write the model; ``printable_only`` zeroes the output rows of every token but printable
    ASCII bytes, so greedy text is valid UTF-8 (wllama serialises results as strict JSON)."""
    import numpy as np
    from gguf import GGUFWriter, TokenType

    rng = np.random.default_rng(seed)
    tokens = ["<unk>", "<s>", "</s>"] + [f"<0x{i:02X}>" for i in range(256)]
    types = [TokenType.UNKNOWN, TokenType.CONTROL, TokenType.CONTROL] + [TokenType.BYTE] * 256
    n_vocab = len(tokens)

    path.parent.mkdir(parents=True, exist_ok=True)
    # split_max_tensors > 0: gguf-py writes llama.cpp split shards itself (a writer other than ours)
    writer = GGUFWriter(str(path), "llama", split_max_tensors=split_max_tensors)
    writer.add_name(name)
    writer.add_context_length(n_ctx)
    writer.add_embedding_length(n_embd)
    writer.add_block_count(n_layer)
    writer.add_feed_forward_length(n_ff)
    writer.add_head_count(n_head)
    writer.add_head_count_kv(n_head)
    writer.add_rope_dimension_count(n_embd // n_head)
    writer.add_rope_freq_base(10000.0)
    writer.add_layer_norm_rms_eps(1e-5)
    writer.add_file_type(0)  # ALL_F32
    if alignment is not None:
        writer.add_custom_alignment(alignment)
    writer.add_tokenizer_model("llama")
    writer.add_token_list(tokens)
    writer.add_token_scores([0.0] * n_vocab)
    writer.add_token_types(types)
    writer.add_bos_token_id(1)
    writer.add_eos_token_id(2)
    writer.add_unk_token_id(0)
    writer.add_chat_template(PHI3_TEMPLATE)

    def weight(*shape: int, scale: float = 0.2) -> np.ndarray:  # type: ignore[type-arg]
        return (rng.standard_normal(shape) * scale).astype(np.float32)

    writer.add_tensor("token_embd.weight", weight(n_vocab, n_embd, scale=1.0))
    for layer in range(n_layer):
        pre = f"blk.{layer}."
        writer.add_tensor(pre + "attn_norm.weight", np.ones(n_embd, dtype=np.float32))
        for proj in ("attn_q", "attn_k", "attn_v", "attn_output"):
            writer.add_tensor(pre + proj + ".weight", weight(n_embd, n_embd))
        writer.add_tensor(pre + "ffn_norm.weight", np.ones(n_embd, dtype=np.float32))
        writer.add_tensor(pre + "ffn_gate.weight", weight(n_ff, n_embd))
        writer.add_tensor(pre + "ffn_up.weight", weight(n_ff, n_embd))
        writer.add_tensor(pre + "ffn_down.weight", weight(n_embd, n_ff))
    writer.add_tensor("output_norm.weight", np.ones(n_embd, dtype=np.float32))
    output = weight(n_vocab, n_embd, scale=1.0)
    if printable_only:
        keep = np.zeros(n_vocab, dtype=bool)
        keep[3 + 0x20:3 + 0x7F] = True  # the byte tokens <0x20> .. <0x7E>
        output[~keep] = 0.0
    writer.add_tensor("output.weight", output)

    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path
