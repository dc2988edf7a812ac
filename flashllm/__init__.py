"""flashllm: unstructured-sparse LLM weights, loaded as sparse and computed as dense on tensor cores."""

from . import hf
from .formats import FORMATS, SparseWeight, compress
from .io import load, save
from .models import CheckpointError, describe, from_pretrained, save_pretrained
from .nn import SparseLinear
from .ops import spmm
from .sparsify import SparsifyReport, sparsify_

__version__ = "0.1.0"
hf.install()  # quant_method "flashllm" for transformers' from_pretrained, registered when transformers loads
__all__ = ["FORMATS", "SparseWeight", "compress", "spmm", "save", "load", "SparseLinear", "sparsify_",
           "SparsifyReport", "save_pretrained", "from_pretrained", "describe", "CheckpointError", "__version__"]
