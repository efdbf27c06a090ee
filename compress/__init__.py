"""Compression passes applied to a model, step by step, as a recipe says."""

import logging

# torchao warns at import about CUDA-only kernels and Triton, which a CPU export never uses, and it is imported
# by QAT, Neural Compressor and transformers alike: quiet it once, here, before any of them loads it.
for _chatty in ("torchao", "torch.utils._pytree"):
    logging.getLogger(_chatty).setLevel(logging.ERROR)
