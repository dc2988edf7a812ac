"""flashllm: unstructured-sparse LLM weights, loaded as sparse and computed as dense on tensor cores."""

from .formats import FORMATS, SparseWeight, compress
from .io import load, save
from .ops import spmm

__version__ = "0.1.0"
__all__ = ["FORMATS", "SparseWeight", "compress", "spmm", "save", "load", "__version__"]
