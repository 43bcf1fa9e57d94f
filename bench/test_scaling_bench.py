"""Scale: the sharded diagnosis on gloo CPU ranks (world size 1 and 2), and the peak memory
of the relevance matrix of an FFHQ-1024-size style space (issue 9).

* ``test_gloo_zoom_scaling``: the same ZOOM diagnosis (the zoo's architectures: the
  StyleGAN2-structured generator, the ViT CLIP, the smile classifier) on 1 and on 2 gloo
  ranks of one thread each; the ranks' results must be the single process's, and the wall
  time of the diagnosis (between two barriers) shows whether anything serial is left (the
  gather of the per-image rows is timed on its own).
* ``test_relevance_matrix_memory_is_bounded``: a synthetic generator with the 9,088 style
  channels of StyleGAN2 at 1024x1024 and a 512-d CLIP, in a fresh process; the growth of
  the peak resident set over the process's baseline while ``relevance_matrix`` runs,
  against the whole-sample style statistics it used to keep.

Both print their figures at the end of the run (``pytest bench/test_scaling_bench.py``).
"""

import json
import multiprocessing
import os
import resource
import time

import pytest
import torch
import torch.distributed as dist
from torch import nn

import diagnosis_cases as cases
from vmd_fast import distributed, zoom
from vmd_fast.bench import machine_description

N_IMAGES, ATTRIBUTES, STEPS, IMAGES_PER_BATCH = 16, 2, 4, 2

# StyleGAN2 at 1024x1024: conv1 + toRGB of the 4x4 block, then conv0, conv1, toRGB per block.
FFHQ_1024_STYLE_DIMS = [512, 512] + [512] * 12 + [512, 256, 256, 256, 128, 128, 128, 64, 64, 64, 32, 32]


def _report(config, title, lines):
    reporter = config.pluginmanager.get_plugin("terminalreporter")
    reporter.write_sep("=", title)
    for line in lines:
        reporter.write_line(line)


# --- gloo scaling ------------------------------------------------------------------------
def _zoom_world():
    torch.manual_seed(0)  # untrained recipe models where the zoo has no asset: the same on every rank
    G, clip = cases.zoo_model("generator", "cpu"), cases.zoo_model("clip", "cpu")
    target = cases.zoo_model("smile_classifier", "cpu")
    channels = sum(G.style_space_dims)
    dim = zoom.clip_text_features(clip, ["a face"]).shape[1]
    gen = torch.Generator().manual_seed(0)
    relevance = {"M": nn.functional.normalize(torch.randn(channels, dim, generator=gen), dim=1),
                 "mean": torch.zeros(channels), "std": torch.ones(channels)}
    return G, clip, target, relevance


def _scaling_rank(rank, world_size, tmp):
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{tmp}/rendezvous-{world_size}", rank=rank,
                            world_size=world_size)
    try:
        G, clip, target, relevance = _zoom_world()
        gather_seconds = []
        gather_rows = distributed.gather_rows

        def timed_gather(tensors):
            start = time.perf_counter()
            out = gather_rows(tensors)
            gather_seconds.append(time.perf_counter() - start)
            return out

        distributed.gather_rows = timed_gather
        dist.barrier()
        start, cpu_start = time.perf_counter(), time.process_time()
        result = zoom.diagnose(target, ["a smile", "eyeglasses"][:ATTRIBUTES], n_images=N_IMAGES, generator=G, clip=clip,
                               relevance=relevance, steps=STEPS, rows_per_batch=IMAGES_PER_BATCH * ATTRIBUTES,
                               checkpoint_every=STEPS, progress=False)
        cpu_seconds = time.process_time() - cpu_start
        dist.barrier()
        seconds = time.perf_counter() - start
        with open(os.path.join(tmp, f"scaling-{world_size}-{rank}.json"), "w") as f:
            json.dump({"seconds": seconds, "cpu_seconds": cpu_seconds, "gather_seconds": sum(gather_seconds), "sensitivity": result.sensitivity,
                       "changes": result.changes.tolist()}, f)
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
def test_gloo_zoom_scaling(tmp_path, request):
    runs = {}
    for world_size in (1, 2):
        torch.multiprocessing.spawn(_scaling_rank, args=(world_size, str(tmp_path)), nprocs=world_size, join=True)
        runs[world_size] = [json.load(open(tmp_path / f"scaling-{world_size}-{r}.json")) for r in range(world_size)]
    for out in runs[2]:
        assert out["changes"] == runs[1][0]["changes"]  # the same diagnosis, bit for bit
    pairs = N_IMAGES * ATTRIBUTES
    with open("/proc/loadavg") as f:
        load = f.read().split()[0]
    lines = [f"{N_IMAGES} images x {ATTRIBUTES} attributes x {STEPS} steps (+ multi-attribute), "
             f"{IMAGES_PER_BATCH} images per batch, 1 thread per rank; load average {load} at the end",
             "| ranks | wall (s) | pairs / s (wall) | speed-up (wall) | CPU s, busiest rank | CPU s, all ranks | "
             "gather (s) |", "|---:|---:|---:|---:|---:|---:|---:|"]
    one = runs[1][0]["seconds"]
    for world_size, outs in runs.items():
        wall = max(r["seconds"] for r in outs)
        lines.append(f"| {world_size} | {wall:.2f} | {pairs / wall:.2f} | {one / wall:.2f} | "
                     f"{max(r['cpu_seconds'] for r in outs):.2f} | {sum(r['cpu_seconds'] for r in outs):.2f} | "
                     f"{max(r['gather_seconds'] for r in outs):.4f} |")
    _report(request.config, f"gloo ZOOM scaling on {machine_description('cpu')}, {os.cpu_count()} cores", lines)
    # Nothing serial is left: each rank does about half the CPU work of one process (wall
    # time on a shared machine says more about the neighbours), and the gather, the one
    # step the sharding adds, is a small part of the run.
    assert max(r["cpu_seconds"] for r in runs[2]) < 0.75 * runs[1][0]["cpu_seconds"]
    assert max(r["gather_seconds"] for r in runs[2]) < 0.1 * max(r["seconds"] for r in runs[2])


# --- relevance matrix memory -------------------------------------------------------------
class FFHQSizeGenerator(nn.Module):
    """A style generator with StyleGAN2-FFHQ-1024's style space (9,088 channels) and a
    linear 8x8 synthesis: the relevance pipeline's memory, without StyleGAN2's compute."""

    z_dim = 512
    style_space_dims = FFHQ_1024_STYLE_DIMS

    def __init__(self):
        super().__init__()
        gen = torch.Generator().manual_seed(0)
        channels = sum(self.style_space_dims)
        self.register_buffer("mapping", torch.randn(self.z_dim, channels, generator=gen) / self.z_dim ** 0.5)
        self.register_buffer("synthesis", torch.randn(channels, 3 * 8 * 8, generator=gen) / channels ** 0.5)

    def mapping_to_styles(self, z):
        return list(torch.split(z @ self.mapping, self.style_space_dims, dim=1))

    def flatten_styles(self, styles):
        return torch.cat(list(styles), dim=1)

    def unflatten_styles(self, flat):
        return list(torch.split(flat, self.style_space_dims, dim=1))

    def synthesize(self, styles):
        return torch.sigmoid(self.flatten_styles(styles) @ self.synthesis).reshape(-1, 3, 8, 8)


class ProjectionCLIP(nn.Module):
    """A 512-d image embedding of 8x8 images (ViT-B/32's embedding width)."""

    def __init__(self):
        super().__init__()
        self.register_buffer("project", torch.randn(3 * 8 * 8, 512, generator=torch.Generator().manual_seed(1)))

    def encode_image(self, x):
        return x.flatten(1) @ self.project


def _peak_growth_mib(which, stats_images, queue):
    torch.set_num_threads(1)
    G, clip = FFHQSizeGenerator(), ProjectionCLIP()
    cfg = zoom.RelevanceConfig(n_images=1, stats_images=stats_images, batch_size=256)
    G.synthesize(G.mapping_to_styles(torch.zeros(1, G.z_dim)))  # warm the allocator and kernels
    baseline = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    start = time.perf_counter()
    if which == "relevance_matrix":
        out = zoom.relevance_matrix(G, clip, cfg, progress=False)
        shape = tuple(out["M"].shape)
    else:  # the whole-sample statistics relevance_matrix computed before they were streamed
        z = torch.randn(cfg.stats_images, G.z_dim, generator=torch.Generator().manual_seed(0))
        flat = torch.cat([G.flatten_styles(G.mapping_to_styles(part)).double() for part in z.split(500)])
        shape = tuple(torch.stack([flat.mean(0), flat.std(0)]).shape)
    seconds = time.perf_counter() - start
    growth = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - baseline
    queue.put({"growth_mib": growth / 1024, "baseline_mib": baseline / 1024, "seconds": seconds, "shape": shape})


def _measure(which, stats_images):
    context = multiprocessing.get_context("spawn")  # a fresh process: its peak is this call's
    queue = context.Queue()
    process = context.Process(target=_peak_growth_mib, args=(which, stats_images, queue))
    process.start()
    out = queue.get(timeout=600)
    process.join()
    assert process.exitcode == 0
    return out


@pytest.mark.slow
def test_relevance_matrix_memory_is_bounded(request):
    sizes = (2000, 8000)
    streamed = {n: _measure("relevance_matrix", n) for n in sizes}
    whole = {n: _measure("whole_sample_statistics", n) for n in sizes}
    channels = sum(FFHQ_1024_STYLE_DIMS)
    assert channels == 9088 and streamed[sizes[0]]["shape"] == (channels, 512)
    matrix_mib = channels * 512 * 4 / 2**20
    lines = [f"M itself: {matrix_mib:.1f} MiB; n_images=1, batch_size=256 (128 probes x 2 edits), statistics in "
             "batches of 500; peak RSS growth over the process's baseline after building the models",
             "| stats_images | relevance_matrix (streamed) | its time (s) | whole-sample statistics it replaced |",
             "|---:|---:|---:|---:|"]
    for n in sizes:
        lines.append(f"| {n} | {streamed[n]['growth_mib']:.1f} MiB | {streamed[n]['seconds']:.1f} | "
                     f"{whole[n]['growth_mib']:.1f} MiB |")
    lines.append(f"baseline resident set: {streamed[sizes[0]]['baseline_mib']:.0f} MiB")
    _report(request.config, f"relevance matrix memory, {channels} style channels x 512, on {machine_description('cpu')}",
            lines)
    # Bounded: M, one batch of probes and one batch of statistics, whatever the sample size;
    # the whole sample grows with it.
    assert streamed[sizes[1]]["growth_mib"] < 1.2 * streamed[sizes[0]]["growth_mib"] + 16
    assert whole[sizes[1]]["growth_mib"] > 2 * whole[sizes[0]]["growth_mib"]
    assert streamed[sizes[0]]["growth_mib"] < whole[sizes[0]]["growth_mib"]
