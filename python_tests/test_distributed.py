"""Diagnosis and training on two gloo ranks on the CPU give what one process gives.

The ranks are started once per module (``torch.multiprocessing.spawn``, a file
rendezvous) and run every distributed case of the small colour worlds of test_zoom and
test_sia_attacks; the tests then compare what each rank returned with a single process.
"""

import json
import os
import subprocess
import sys

import pytest
import torch
import torch.distributed as dist
from safetensors.torch import load_file, save_file

from torch.utils.data import TensorDataset

from vmd_fast import distributed, sia, train, zoom

from test_sia_attacks import ColourEditor
from test_sia_attacks import RedClassifier as RedEditorTarget
from test_sia_attacks import _batch
from test_train import SmallClassifier
from test_zoom import COLOURS, ColourCLIP, ColourGenerator, RedClassifier, colour_tokenizer

WORLD_SIZE = 2
ZOOM_IMAGES = (7, 2)  # 4 batches of 2 (2 per rank), and 1 batch (rank 1 has none)


def _colour_world():
    G, clip = ColourGenerator(), ColourCLIP()
    clip.words[1:4] = torch.eye(3, 8) * 3.0  # the colour words
    return G, clip


def colour_clip():
    """ColourCLIP with its colour words and tokenizer, for the command line's module:factory."""
    clip = _colour_world()[1]
    clip.tokenizer = colour_tokenizer
    return clip


def _zoom(G, clip, relevance, n_images, **kw):
    return zoom.diagnose(RedClassifier(), list(COLOURS), n_images=n_images, generator=G, clip=clip,
                         relevance=relevance, tokenizer=colour_tokenizer, steps=30, lr=0.5, eps=8.0, threshold=0.3,
                         progress=False, prefix="a face", consistency_prompts=None, gamma=0.0, rows_per_batch=6, **kw)


def _sia(x, a):
    return sia.diagnose(RedEditorTarget(), editor=ColourEditor(), images=x, attributes=a, steps=50, batch_size=2,
                        progress=False)


def _train_data():
    """48 generated colour images (a multiple of the world size), labelled "redder than the rest"."""
    G, _ = _colour_world()
    z = torch.randn(48, G.z_dim, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        x = G.synthesize(G.mapping_to_styles(z))
    y = (x[:, 0].mean(dim=(1, 2)) > x[:, 1:].mean(dim=(1, 2, 3))).float()
    return TensorDataset(x, y, torch.full((48, 3), 0.5))


def _train(kind, relevance):
    """Counterfactual or SIA-adversarial training of SmallClassifier; its final weights."""
    G, clip = _colour_world()
    data = _train_data()
    common = dict(epochs=2, batch_size=16, lr=1e-2, progress=False)
    if kind == "counterfactual":
        model, history = train.counterfactual(SmallClassifier(), data, list(COLOURS), generator=G, clip=clip,
                                              relevance=relevance, tokenizer=colour_tokenizer, n_generated=8,
                                              zoom_steps=3, **common)
    else:
        model, history = train.adversarial(SmallClassifier(), data, attack="sia", editor=ColourEditor(),
                                           attack_steps=5, **common)
    weights = {f"train.{kind}.{k}": v.detach().clone() for k, v in model.state_dict().items()}
    weights[f"train.{kind}.loss_real"] = torch.tensor([e["loss_real"] for e in history.epochs], dtype=torch.float64)
    return weights


def _flat(prefix, result):
    """The tensors and figures of a DiagnosisResult, as one flat dict of tensors."""
    out = {f"{prefix}.changes": result.changes, f"{prefix}.flipped": result.flipped, f"{prefix}.codes": result.codes,
           f"{prefix}.counterfactuals": result.counterfactuals, f"{prefix}.originals": result.originals,
           f"{prefix}.sensitivity": torch.tensor([result.sensitivity[a] for a in result.attributes], dtype=torch.float64)}
    for k, v in (result.multi or {}).items():
        out[f"{prefix}.multi.{k}"] = v
    for k, v in result.metrics.items():
        if isinstance(v, float):
            out[f"{prefix}.metric.{k}"] = torch.tensor(v, dtype=torch.float64)
    return {k: v.clone().contiguous() for k, v in out.items()}


def _worker(rank, tmp, relevance, sia_inputs):
    """One rank: every distributed case; its outputs go to ``tmp/rank{rank}.safetensors``."""
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{tmp}/rendezvous", rank=rank, world_size=WORLD_SIZE)
    try:
        G, clip = _colour_world()
        out = {}
        for n in ZOOM_IMAGES:
            out.update(_flat(f"zoom{n}", _zoom(G, clip, relevance, n, checkpoint=os.path.join(tmp, f"ckpt{n}"))))
        out.update(_flat("sia", _sia(*sia_inputs)))
        cache = os.path.join(tmp, "relevance-cache")
        M = zoom.relevance_matrix(G, clip, zoom.RelevanceConfig(n_images=3, stats_images=200, batch_size=10),
                                  cache_dir=cache, progress=False)
        out.update({f"relevance.{k}": v for k, v in M.items()})
        uneven = {"rows": torch.arange(3 * rank, dtype=torch.float32).reshape(-1, 3) + 100 * rank,
                  "mask": torch.tensor([True, False] * (rank + 1))}
        if rank == 0:
            uneven["only_rank0"] = torch.ones(2, 2, dtype=torch.int64)
        out.update({f"gather.{k}": v for k, v in distributed.gather_rows(uneven).items()})
        for kind in ("counterfactual", "adversarial"):
            out.update(_train(kind, relevance))
        other = ColourGenerator()
        if rank == 1:
            other.mapping.add_(1.0)  # e.g. an unseeded random initialisation
        try:
            _zoom(other, clip, relevance, 2)
            out["mismatch_raised"] = torch.tensor(0)
        except ValueError as err:
            out["mismatch_raised"] = torch.tensor(int("other models, attributes or settings than rank 0" in str(err)))
        out["rank"] = torch.tensor(distributed.get_rank())
        out["world_size"] = torch.tensor(distributed.get_world_size())
        save_file(out, os.path.join(tmp, f"rank{rank}.safetensors"))
    finally:
        dist.destroy_process_group()


@pytest.fixture(scope="module")
def relevance():
    G, clip = _colour_world()
    return zoom.relevance_matrix(G, clip, zoom.RelevanceConfig(n_images=4, stats_images=200), progress=False)


@pytest.fixture(scope="module")
def sia_inputs():
    return _batch(torch.Generator().manual_seed(0), n=5)


@pytest.fixture(scope="module")
def ranks(relevance, sia_inputs, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("ranks")
    torch.multiprocessing.spawn(_worker, args=(str(tmp), relevance, sia_inputs), nprocs=WORLD_SIZE, join=True)
    return [load_file(str(tmp / f"rank{r}.safetensors")) for r in range(WORLD_SIZE)], tmp


def _assert_same(single, ranks, prefix):
    for r, out in enumerate(ranks):
        keys = [k for k in out if k.startswith(prefix + ".")]
        assert sorted(keys) == sorted(single), (r, sorted(keys), sorted(single))
        for k, v in single.items():
            assert out[k].dtype == v.dtype and torch.equal(out[k], v), (r, k)


def test_shard_blocks_cover_the_range_in_order():
    for n in range(0, 9):
        for world in (1, 2, 3, 5):
            blocks = [distributed.shard(n, r, world) for r in range(world)]
            assert [i for block in blocks for i in block] == list(range(n))
            assert max(map(len, blocks)) - min(map(len, blocks)) <= 1
    assert distributed.shard(4) == range(4)  # one process: everything
    with pytest.raises(ValueError, match="rank"):
        distributed.shard(4, rank=2, world_size=2)
    with pytest.raises(ValueError, match="world_size"):
        distributed.shard(4, rank=0, world_size=0)


def test_ranks_see_the_process_group(ranks):
    outs, _ = ranks
    assert [int(o["rank"]) for o in outs] == [0, 1]
    assert all(int(o["world_size"]) == WORLD_SIZE for o in outs)


@pytest.mark.parametrize("n_images", ZOOM_IMAGES)
def test_zoom_on_two_ranks_equals_one_process(ranks, relevance, n_images):
    G, clip = _colour_world()
    single = _zoom(G, clip, relevance, n_images)
    assert single.n_images == n_images and (n_images < 4 or single.ranking()[0] == "red")
    _assert_same(_flat(f"zoom{n_images}", single), ranks[0], f"zoom{n_images}")


def test_zoom_ranks_checkpoint_into_their_own_directories(ranks):
    _, tmp = ranks
    assert sorted(os.listdir(tmp / "ckpt7")) == ["rank-0-of-2", "rank-1-of-2"]


def test_sia_on_two_ranks_equals_one_process(ranks, sia_inputs):
    single = sia.diagnose(RedEditorTarget(), editor=ColourEditor(), images=sia_inputs[0], attributes=sia_inputs[1],
                          steps=50, batch_size=2, progress=False)
    assert single.ranking()[0] == "redness"
    _assert_same(_flat("sia", single), ranks[0], "sia")


def test_relevance_matrix_on_two_ranks_matches_one_process(ranks):
    outs, tmp = ranks
    G, clip = _colour_world()
    single = zoom.relevance_matrix(G, clip, zoom.RelevanceConfig(n_images=3, stats_images=200, batch_size=10),
                                   progress=False)
    for out in outs:
        assert torch.equal(out["relevance.mean"], single["mean"]) and torch.equal(out["relevance.std"], single["std"])
        # M is a sum over probes: two partial sums differ from one in float32 rounding only.
        torch.testing.assert_close(out["relevance.M"], single["M"], rtol=1e-5, atol=1e-6)
    assert torch.equal(outs[0]["relevance.M"], outs[1]["relevance.M"])
    assert len(os.listdir(tmp / "relevance-cache")) == 1  # written once, by rank 0


def test_gather_rows_concatenates_uneven_blocks_in_rank_order(ranks):
    for out in ranks[0]:
        assert torch.equal(out["gather.rows"], torch.tensor([[100.0, 101.0, 102.0]]))
        assert torch.equal(out["gather.mask"], torch.tensor([True, False, True, False, True, False]))
        assert torch.equal(out["gather.only_rank0"], torch.ones(2, 2, dtype=torch.int64))


def test_gather_rows_is_the_identity_on_one_process():
    rows = {"x": torch.arange(6).reshape(3, 2)}
    assert distributed.gather_rows(rows)["x"] is rows["x"]
    assert distributed.all_reduce_mean({"loss": 2.5}) == {"loss": 2.5}


@pytest.mark.parametrize("kind", ["counterfactual", "adversarial"])
def test_ddp_training_on_two_ranks_matches_one_process(ranks, relevance, kind):
    outs, _ = ranks
    single = _train(kind, relevance)
    for out in outs:
        for k, v in single.items():
            # One global batch either way; only the all-reduce's float rounding differs.
            torch.testing.assert_close(out[k], v, rtol=1e-4, atol=1e-6, msg=lambda m: f"{k}: {m}")
    prefix = f"train.{kind}."
    for k in single:
        if k.startswith(prefix) and "loss" not in k:
            assert torch.equal(outs[0][k], outs[1][k]), k  # DDP keeps the ranks' weights identical


def test_training_rejects_a_batch_the_ranks_cannot_split_evenly(ranks, relevance, monkeypatch):
    monkeypatch.setattr(distributed, "get_world_size", lambda: 3)
    with pytest.raises(ValueError, match="batch_size \\(16\\) must be a multiple"):
        train.adversarial(SmallClassifier(), _train_data(), attack="sia", editor=ColourEditor(), epochs=1,
                          batch_size=16, progress=False)
    G, clip = _colour_world()
    with pytest.raises(ValueError, match="n_generated \\(8\\) must be a multiple"):
        train.counterfactual(SmallClassifier(), _train_data(), list(COLOURS), generator=G, clip=clip,
                             relevance=relevance, tokenizer=colour_tokenizer, n_generated=8, batch_size=12,
                             progress=False)


def test_torchrun_cli_diagnosis_writes_one_report_equal_to_one_process(tmp_path):
    tests = os.path.dirname(os.path.abspath(__file__))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([tests, os.environ.get("PYTHONPATH", "")]),
           "OMP_NUM_THREADS": "1"}
    args = ["diagnose", "--method", "zoom", "--target", "test_zoom:RedClassifier", "--generator",
            "test_zoom:ColourGenerator", "--clip", "test_distributed:colour_clip", "--attributes", "red,green,blue",
            "--n-images", "5", "--batch-size", "2", "--steps", "10", "--threshold", "0.3", "--max-channels", "6", "--device", "cpu",
            "--cache-dir", str(tmp_path / "cache")]
    one = subprocess.run([sys.executable, "-m", "vmd_fast.cli", *args, "--out", str(tmp_path / "one")],
                         capture_output=True, text=True, timeout=300, env=env)
    assert one.returncode == 0, one.stderr
    # The cached relevance matrix of the first run makes the two runs start from the same bits.
    two = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-port",
                          str(29500 + os.getpid() % 1000), "-m", "vmd_fast.cli", *args, "--out", str(tmp_path / "two")],
                         capture_output=True, text=True, timeout=300, env=env)
    assert two.returncode == 0, two.stderr
    assert two.stdout.count("most sensitive attribute") == 1  # rank 0 alone reports
    summaries = [json.load(open(tmp_path / run / "result.json")) for run in ("one", "two")]
    assert summaries[0]["n_images"] == summaries[1]["n_images"] == 5
    assert summaries[0]["config"]["threshold"] == 0.3 and summaries[0]["config"]["max_channels"] == 6
    for key in ("sensitivity", "flip_rate", "ranking", "metrics"):
        assert summaries[0][key] == summaries[1][key], key
    assert summaries[0]["metrics"]["decoupling"]["edited"] == ["red", "green", "blue"]  # scored once, on rank 0


def test_ranks_with_different_models_refuse_to_diagnose(ranks):
    assert [int(out["mismatch_raised"]) for out in ranks[0]] == [1, 1]
