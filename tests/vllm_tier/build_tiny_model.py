"""Build a tiny random-weight Llama and its tokenizer in a folder, offline (no model hub).

python tests/vllm_tier/build_tiny_model.py DIR

The model is Llama-shaped (8 layers, hidden 256, 4 heads of dim 64: the CPU attention kernels
refuse head dim 16) with a 32,000-token vocabulary, so that the prompt token ids the live replay
sends (1000..21000) are valid. The tokenizer is a word-level vocabulary of the same size built
here with the `tokenizers` library ("w0".."w31995" plus four special tokens), so every id decodes
to visible text and streamed chunks are never empty.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

VOCAB = 32000
SPECIAL = ["<unk>", "<s>", "</s>", "<pad>"]


def build_tokenizer(out: Path) -> None:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {t: i for i, t in enumerate(SPECIAL)}
    for i in range(len(SPECIAL), VOCAB):
        vocab[f"w{i}"] = i
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    # Each token decodes with a leading space, so incremental detokenization yields text per token.
    tok.decoder = decoders.Metaspace(replacement=" ", prepend_scheme="never")
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        unk_token="<unk>",
        bos_token="<s>",
        eos_token="</s>",
        pad_token="<pad>",
        model_max_length=8192,
    )
    fast.save_pretrained(out)


def build_model(out: Path) -> None:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(
        vocab_size=VOCAB,
        hidden_size=256,
        intermediate_size=512,
        # 8 layers, not 2: at 2-4 ms a step the engine outran vLLM's API server on a busy 2-core
        # machine (it held every stream's tokens, and new requests, for seconds); ~7 ms steps
        num_hidden_layers=8,
        num_attention_heads=4,
        num_key_value_heads=4,
        max_position_embeddings=8192,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=3,
        tie_word_embeddings=False,
        torch_dtype="float32",
    )
    model = LlamaForCausalLM(cfg)
    model.save_pretrained(out, safe_serialization=True)


def main() -> int:
    if len(sys.argv) != 2:
        print(__doc__)
        return 2
    out = Path(sys.argv[1])
    out.mkdir(parents=True, exist_ok=True)
    build_tokenizer(out)
    build_model(out)
    (out / "generation_config.json").write_text(json.dumps({"bos_token_id": 1, "eos_token_id": 2}))
    print(f"tiny llama in {out}: {sorted(p.name for p in out.iterdir())}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
