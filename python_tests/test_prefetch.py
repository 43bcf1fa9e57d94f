"""Batches moved to the device ahead of use (vmd_fast.io.prefetch): the same batches, in
order, on the device; on CUDA from pinned memory on a side stream, with no host sync."""

from collections import namedtuple

import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from vmd_fast.io.prefetch import DevicePrefetcher, move, row_batches

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
Pair = namedtuple("Pair", "image label")


def _source(n=10, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, 3, 5, 7, generator=g), torch.randint(0, 2, (n,), generator=g)


def test_row_batches_cover_the_rows_in_order():
    x, y = _source(10)
    assert [b.shape[0] for b in row_batches(x, batch_size=4)] == [4, 4, 2]
    pairs = list(row_batches(x, y, batch_size=3, start=3, stop=9))
    assert [p[0].shape[0] for p in pairs] == [3, 3]
    assert torch.equal(torch.cat([p[0] for p in pairs]), x[3:9])
    assert torch.equal(torch.cat([p[1] for p in pairs]), y[3:9])
    assert list(row_batches(x, batch_size=4, start=10)) == []
    assert sum(b.shape[0] for b in row_batches(x, batch_size=4, stop=100)) == 10


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(batch_size=0), "batch_size must be a positive integer"),
        (dict(batch_size=2.5), "batch_size must be a positive integer"),
    ],
)
def test_row_batches_reject_bad_batch_size(kwargs, message):
    with pytest.raises(ValueError, match=message):
        list(row_batches(torch.zeros(4, 2), **kwargs))


def test_row_batches_reject_mismatched_rows_and_nothing():
    with pytest.raises(ValueError, match="tensor 1 has 3 rows; tensor 0 has 4"):
        list(row_batches(torch.zeros(4, 2), torch.zeros(3), batch_size=2))
    with pytest.raises(ValueError, match="at least one tensor"):
        list(row_batches(batch_size=2))
    with pytest.raises(ValueError, match="tensor 1 must be a tensor with a batch dimension"):
        list(row_batches(torch.zeros(4, 2), [1, 2, 3, 4], batch_size=2))
    with pytest.raises(ValueError, match="tensor 0 must be a tensor with a batch dimension"):
        list(row_batches(torch.tensor(1.0), batch_size=2))


@pytest.mark.parametrize("device", DEVICES)
def test_prefetcher_yields_the_same_batches_on_the_device(device):
    x, y = _source(10)
    seen = list(DevicePrefetcher(row_batches(x, y, batch_size=4), device))
    assert len(seen) == 3
    for xb, yb in seen:
        assert xb.device.type == device and yb.device.type == device
    assert torch.equal(torch.cat([b[0] for b in seen]).cpu(), x)
    assert torch.equal(torch.cat([b[1] for b in seen]).cpu(), y)


@pytest.mark.parametrize("device", DEVICES)
def test_prefetcher_walks_nested_batches_and_keeps_other_values(device):
    x, y = _source(4)
    batch = {"pair": Pair(x, y), "list": [x[:1], "name"], "n": 4}
    (out,) = list(DevicePrefetcher([batch], device))
    assert isinstance(out["pair"], Pair)
    assert out["pair"].image.device.type == device
    assert torch.equal(out["pair"].label.cpu(), y)
    assert out["list"][1] == "name" and out["n"] == 4
    assert torch.equal(out["list"][0].cpu(), x[:1])


def test_tensors_already_on_the_device_are_not_copied():
    x, _ = _source(4)
    (out,) = list(DevicePrefetcher([x], "cpu"))
    assert out is x
    assert move({"x": x}, "cpu")["x"] is x


@pytest.mark.parametrize("device", DEVICES)
def test_prefetcher_over_a_data_loader_keeps_its_length_and_order(device):
    x, y = _source(9)
    loader = DataLoader(TensorDataset(x, y), batch_size=4, shuffle=False, pin_memory=device == "cuda")
    prefetched = DevicePrefetcher(loader, device)
    assert len(prefetched) == 3
    assert torch.equal(torch.cat([b[0].cpu() for b in prefetched]), x)
    # It can be iterated again (one pass per epoch).
    assert sum(b[1].numel() for b in prefetched) == 9


def test_prefetcher_of_nothing_yields_nothing():
    assert list(DevicePrefetcher([], DEVICES[-1])) == []


def test_prefetcher_rejects_a_bad_device():
    with pytest.raises(ValueError, match="device must name a torch device"):
        DevicePrefetcher([], "gpu0")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="torch sees no GPU"):
            DevicePrefetcher([], "cuda")


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_prefetch_does_not_synchronise_the_host_and_orders_the_copies():
    # Large batches from pageable memory: each is pinned, copied on the side stream, and the
    # compute stream must wait for it. A missing wait shows as wrong sums.
    x = torch.rand(6, 1024, 1024)
    expected = x.sum(dim=(1, 2))
    sums = []
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        for xb in DevicePrefetcher(row_batches(x, batch_size=2), "cuda"):
            sums.append((xb * 1.0).sum(dim=(1, 2)))
    finally:
        torch.cuda.set_sync_debug_mode("default")
    torch.testing.assert_close(torch.cat(sums).cpu(), expected, rtol=1e-5, atol=1e-2)


def _sia_pair(device):
    from vmd_fast.models.editor import AttributeEditor, EditorConfig
    from vmd_fast.models.targets import build_target

    torch.manual_seed(0)
    editor = AttributeEditor(EditorConfig(attributes=("smiling", "hat", "skin_tone"), channels=(8, 16, 32)))
    target = build_target({"task": "binary", "labels": ["y"], "widths": [8, 8, 8, 8]})
    return editor.to(device).eval().requires_grad_(False), target.to(device).eval().requires_grad_(False)


@pytest.mark.parametrize("device", DEVICES)
def test_sia_diagnose_batches_host_images_like_one_batch_on_the_device(device):
    """Host images attacked in prefetched batches of 4 give what images already on the
    device give: on the CPU in one batch of all ten (binary targets attack every image on
    its own), on CUDA in the same batches (its kernels may differ with the batch size)."""
    from vmd_fast import sia

    editor, target = _sia_pair(device)
    g = torch.Generator().manual_seed(1)
    images, attributes = torch.rand(10, 3, 64, 64, generator=g), torch.rand(10, 3, generator=g)
    kw = dict(editor=editor, steps=3, progress=False, device=device)
    batched = sia.diagnose(target, images=images, attributes=attributes, batch_size=4, **kw)
    whole = sia.diagnose(target, images=images.to(device), attributes=attributes.to(device),
                         batch_size=10 if device == "cpu" else 4, **kw)
    torch.testing.assert_close(batched.changes, whole.changes, rtol=1e-5, atol=1e-6)
    assert torch.equal(batched.flipped, whole.flipped)
    torch.testing.assert_close(batched.originals, images)
