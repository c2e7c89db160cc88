"""Models whose logits are exactly ``lm_head(hidden)`` (no soft-capping or scaling after it): the
`lora` trainer computes their loss without keeping the logits where the output layer is frozen and
plain (loss.py's ``_HeadLoss``), and the memory prediction counts it so (import-light)."""

HEAD_LOSS_MODELS = frozenset({"llama", "mistral", "qwen2", "qwen3", "smollm3", "phi3", "gemma", "olmo2"})
