"""flashllm's generation engine: a lean OPT / Llama-family decoder with a static KV cache and
CUDA-graph decode, whose block linears are dense `nn.Linear` or compressed `SparseLinear`.

    from flashllm.engine import Generator, load_model
    model = load_model("/ckpt/opt-30b-sparse80", device="cuda")
    out = Generator(model, max_batch_size=8, max_seq_len=192).generate(prompts, max_new_tokens=128)
"""

from .args import ModelArgs, supports
from .fuse import fuse_projections
from .generate import GenerationOutput, Generator, generate
from .kv_cache import KVCache
from .load import BuildReport, from_hf, load_model, random_model, with_dense_linears
from .model import Transformer
from .presets import PRESETS, preset, to_hf_config
from .sampling import Sampling, sample

__all__ = ["ModelArgs", "supports", "Transformer", "KVCache", "Generator", "GenerationOutput", "generate",
           "Sampling", "sample", "from_hf", "load_model", "random_model", "with_dense_linears", "BuildReport",
           "PRESETS", "preset", "to_hf_config", "fuse_projections"]
