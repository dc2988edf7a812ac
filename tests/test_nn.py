import pytest
import torch
from torch import nn

from flashllm.nn import SparseLinear
from flashllm.prune import magnitude_prune


def pruned_linear(in_features=96, out_features=40, bias=True, sparsity=0.6, dtype=torch.float16, seed=0):
    torch.manual_seed(seed)
    lin = nn.Linear(in_features, out_features, bias=bias).to(dtype)
    lin.weight.data = magnitude_prune(lin.weight.data, sparsity)
    return lin


def reference(lin, x):
    """The dense layer with exactly the values the sparse one stores, in fp32."""
    bias = None if lin.bias is None else lin.bias.float()
    return nn.functional.linear(x.float(), lin.weight.float(), bias)


@pytest.mark.parametrize("lead", [(), (5,), (2, 3)])
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("fmt", ["auto", "tiled_csl", "bitmap", "sell", "pairmap"])
def test_forward_matches_dense_with_same_zeros(lead, bias, fmt):
    lin = pruned_linear(bias=bias)
    sparse = SparseLinear.from_linear(lin, format=fmt)
    x = torch.randn(*lead, 96)
    y = sparse(x)
    assert y.shape == (*lead, 40) and y.dtype == x.dtype
    torch.testing.assert_close(y, reference(lin, x), rtol=1e-5, atol=1e-5)
    assert (sparse.in_features, sparse.out_features) == (96, 40)
    if fmt != "auto":
        assert sparse.weight.format == fmt


def test_fp32_linear_is_stored_in_fp16_unless_told():
    lin = pruned_linear(dtype=torch.float32)
    assert SparseLinear.from_linear(lin).weight.dtype == torch.float16
    assert SparseLinear.from_linear(lin, dtype=torch.bfloat16).weight.dtype == torch.bfloat16
    sparse = SparseLinear.from_linear(lin)
    x = torch.randn(4, 96)
    expected = nn.functional.linear(x, lin.weight.half().float(), lin.bias)
    torch.testing.assert_close(sparse(x), expected, rtol=1e-5, atol=1e-5)


def test_from_linear_stores_exactly_the_zeros():
    lin = pruned_linear(sparsity=0.75)
    w = SparseLinear.from_linear(lin).weight
    assert torch.equal(w.to_dense(), lin.weight.data)
    assert w.sparsity == pytest.approx(float((lin.weight == 0).float().mean()))


def test_gpt2_conv1d_is_transposed():
    from transformers.pytorch_utils import Conv1D

    torch.manual_seed(0)
    conv = Conv1D(nf=24, nx=64).half()
    conv.bias.data.normal_()
    conv.weight.data = magnitude_prune(conv.weight.data.t(), 0.5).t().contiguous()
    sparse = SparseLinear.from_linear(conv)
    assert (sparse.in_features, sparse.out_features) == (64, 24)
    x = torch.randn(3, 7, 64)
    torch.testing.assert_close(sparse(x), conv.float()(x), rtol=1e-5, atol=1e-5)


def test_from_linear_rejects_other_modules():
    with pytest.raises(TypeError, match="nn.Linear"):
        SparseLinear.from_linear(nn.Conv2d(3, 3, 1))


class Net(nn.Module):
    def __init__(self, a, b):
        super().__init__()
        self.a, self.b = a, b

    def forward(self, x):
        return self.b(torch.relu(self.a(x)))


def test_state_dict_round_trip_into_another_module():
    src = Net(SparseLinear.from_linear(pruned_linear(96, 40, seed=1)),
              SparseLinear.from_linear(pruned_linear(40, 8, bias=False, seed=2)))
    state = src.state_dict()
    assert "a.bias" in state and "b.bias" not in state
    assert {k for k in state if k.startswith("a.")} == {"a.bias"} | {f"a.weight.{k}" for k in src.a.weight.state_dict()}

    dst = Net(SparseLinear.from_linear(pruned_linear(96, 40, seed=3), format="bitmap"),
              SparseLinear.from_linear(pruned_linear(40, 8, bias=False, seed=4), format="bitmap"))
    x = torch.randn(4, 96)
    assert not torch.allclose(dst(x), src(x))
    dst.load_state_dict(state)
    torch.testing.assert_close(dst(x), src(x), rtol=0, atol=0)
    assert dst.a.weight.format == src.a.weight.format


def test_state_dict_survives_a_safetensors_file(tmp_path):
    from safetensors.torch import load_file, save_file

    src = SparseLinear.from_linear(pruned_linear())
    save_file(src.state_dict(), tmp_path / "layer.safetensors")
    dst = SparseLinear.from_linear(pruned_linear(seed=7))
    dst.load_state_dict(load_file(tmp_path / "layer.safetensors"))
    x = torch.randn(2, 96)
    torch.testing.assert_close(dst(x), src(x), rtol=0, atol=0)


def test_load_state_dict_errors_are_clear():
    layer = SparseLinear.from_linear(pruned_linear())
    with pytest.raises(RuntimeError, match="weight"):
        layer.load_state_dict({"bias": torch.zeros(40)})  # no weight tensors at all
    wrong = SparseLinear.from_linear(pruned_linear(96, 41)).state_dict()
    with pytest.raises(RuntimeError, match="shape"):
        layer.load_state_dict(wrong)
    broken = layer.state_dict()
    del broken["weight.meta"]
    with pytest.raises(RuntimeError, match="weight"):
        layer.load_state_dict(broken)


def test_dtype_casts_re_encode_16_bit_and_keep_wider():
    layer = SparseLinear.from_linear(pruned_linear(), format="tiled_csl")
    dense = layer.weight.to_dense()
    layer.to(torch.bfloat16)
    assert layer.weight.dtype == torch.bfloat16 and layer.weight.format == "tiled_csl"
    assert layer.bias.dtype == torch.bfloat16
    torch.testing.assert_close(layer.weight.to_dense(), dense.to(torch.bfloat16))
    layer.float()  # values stay 16-bit: the kernel reads 16-bit values; the bias follows
    assert layer.weight.dtype == torch.bfloat16 and layer.bias.dtype == torch.float32
    x = torch.randn(3, 96)
    assert layer(x).dtype == torch.float32


def test_repr_names_shape_format_sparsity_and_bytes():
    text = repr(SparseLinear.from_linear(pruned_linear(sparsity=0.75), format="bitmap"))
    for piece in ("in_features=96", "out_features=40", "format=bitmap", "sparsity=75.0%", "nbytes=", "dense 7.5 KiB"):
        assert piece in text


@pytest.mark.gpu  # skipped without CUDA by tests/conftest.py
def test_to_cuda_moves_the_weight_and_runs():
    lin = pruned_linear()
    x = torch.randn(2, 5, 96, dtype=torch.float16)
    expected = reference(lin, x)  # before the move: the SparseLinear shares lin's bias Parameter
    layer = SparseLinear.from_linear(lin).to("cuda")
    assert layer.weight.device.type == "cuda" and layer.bias.device.type == "cuda"
    y = layer(x.cuda())
    torch.testing.assert_close(y.float().cpu(), expected, rtol=2e-3, atol=2e-3)
    assert layer.cpu().weight.device.type == "cpu"
