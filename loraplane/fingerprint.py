"""Fingerprint of a base model: what an adapter was trained against, checked before serving it.

Only the fields that change the meaning of adapter weights go in (architecture shape and the
tokenizer's vocabulary), so re-saving the same model in another dtype or transformers version
keeps its fingerprint. Reads JSON files only: no torch.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from loraplane.errors import FailedPrecondition

_SHAPE_FIELDS = (
    "model_type",
    "architectures",
    "hidden_size",
    "intermediate_size",
    "num_hidden_layers",
    "num_attention_heads",
    "num_key_value_heads",
    "head_dim",
    "vocab_size",
    "max_position_embeddings",
    "rope_theta",
    "tie_word_embeddings",
)


def base_model_fingerprint(model_dir: Path) -> str:
    """sha256 over the model's shape fields and its tokenizer vocabulary, as 'sha256:<hex>'."""
    config_path = model_dir / "config.json"
    tokenizer_path = model_dir / "tokenizer.json"
    if not config_path.is_file() or not tokenizer_path.is_file():
        raise FailedPrecondition(
            f"base model folder {model_dir} needs config.json and tokenizer.json (a Hugging Face "
            "model folder); run `loraplane prepare-model` to make one"
        )
    config = json.loads(config_path.read_text())
    tokenizer = json.loads(tokenizer_path.read_text())
    digest = hashlib.sha256()
    digest.update(json.dumps({k: config.get(k) for k in _SHAPE_FIELDS}, sort_keys=True).encode())
    model = tokenizer.get("model", {})
    digest.update(json.dumps(model.get("vocab"), sort_keys=True).encode())
    digest.update(json.dumps(tokenizer.get("added_tokens"), sort_keys=True).encode())
    return f"sha256:{digest.hexdigest()}"
