"""Training several zoo assets at once: ``python -m vmd_fast.zoo train --all --jobs N``.

Recipes that share work train in one process, one after the other: the targets of one
seed (they render their training pool once) and the recipes that train the same
auxiliary classifier (the generator and the editor; see
:func:`vmd_fast.zoo.recipes.common.attribute_critic`). Such a group is one task. A task
whose assets are measured by an asset another task trains (``Recipe.judged_by``) waits for
it. Ready tasks go to ``N`` worker processes (each with its own torch threads), the task
with the longest chain of work behind it first, so that the long recipes do not end up
last on one core.
"""

from __future__ import annotations

import json
import logging
import multiprocessing
import os
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import torch

from vmd_fast.zoo.assets import ASSETS_DIR, asset_paths, train_asset
from vmd_fast.zoo.registry import Recipe, recipes

# Core-seconds assumed for a recipe never trained here before (only orders the tasks).
_DEFAULT_COST = {"target": 60.0, "generator": 1800.0, "editor": 1800.0, "clip": 2400.0}

Task = Tuple[str, ...]
"""Names of the recipes one worker trains in this order."""


def group_recipes(names: Sequence[str], tiny: bool = False) -> List[Task]:
    """Split ``names`` into tasks of recipes that share work (order within kept)."""
    known = recipes()
    groups: Dict[tuple, List[str]] = {}
    for name in names:
        recipe = known[name]
        config = recipe.resolved_config(tiny=tiny)
        if recipe.kind == "target":
            key = ("target", str(config.get("seed")))
        elif "classifier" in config:
            key = ("critic", json.dumps(config["classifier"], sort_keys=True))
        else:
            key = ("alone", name)
        groups.setdefault(key, []).append(name)
    return [tuple(group) for group in groups.values()]


def estimated_cost(recipe: Recipe) -> float:
    """Core-seconds the recipe took when its shipped asset was trained (else a default)."""
    _, meta = asset_paths(recipe.name, ASSETS_DIR)
    if meta.exists():
        training = json.loads(meta.read_text(encoding="utf-8")).get("training", {})
        if "seconds" in training:
            return float(training["seconds"]) * float(training.get("threads", 1))
    return _DEFAULT_COST[recipe.kind]


def dependencies(tasks: Sequence[Task]) -> Dict[Task, List[Task]]:
    """task -> the other tasks that train an asset one of its recipes is judged by."""
    known = recipes()
    owner = {name: task for task in tasks for name in task}
    return {
        task: sorted(
            {owner[j] for name in task for j in known[name].judged_by if j in owner and owner[j] != task}
        )
        for task in tasks
    }


def priorities(tasks: Sequence[Task], needs: Dict[Task, List[Task]], cost: Callable[[str], float]) -> Dict[Task, float]:
    """Each task's own cost plus the longest chain of tasks waiting on it (upward rank)."""
    rank: Dict[Task, float] = {}
    visiting: List[Task] = []

    def visit(task: Task) -> float:
        if task in visiting:
            raise ValueError(f"recipes judged by each other, none can go first: {visiting}")
        if task not in rank:
            visiting.append(task)
            waiting = [other for other in tasks if task in needs[other]]
            rank[task] = sum(cost(name) for name in task) + max((visit(o) for o in waiting), default=0.0)
            visiting.pop()
        return rank[task]

    for task in tasks:
        visit(task)
    return rank


def _worker_setup(threads: int) -> None:
    torch.set_num_threads(threads)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")


def train_task(task: Task, tiny: bool, out_dir: Optional[str]) -> List[Tuple[str, dict]]:
    """Train the recipes of one task in this process; ``(name, asset JSON)`` for each."""
    return [(name, train_asset(name, tiny=tiny, out_dir=out_dir)) for name in task]


def check_request(names: Sequence[str], jobs: int = 1, threads: Optional[int] = None) -> None:
    """Raise ValueError, naming the argument, unless :func:`train_many` can take these."""
    if jobs < 1:
        raise ValueError(f"jobs must be >= 1, got {jobs}")
    if threads is not None and threads < 1:
        raise ValueError(f"threads must be >= 1, got {threads}")
    known = recipes()
    unknown = [name for name in names if name not in known]
    if unknown:
        raise ValueError(f"names: unknown recipes {unknown}; known: {', '.join(known)}")


def train_many(
    names: Sequence[str],
    out_dir: Path,
    tiny: bool = False,
    jobs: int = 1,
    threads: Optional[int] = None,
    on_done: Callable[[str, Optional[dict], Optional[BaseException]], None] = lambda *a: None,
) -> Dict[str, Optional[dict]]:
    """Train ``names`` into ``out_dir`` with ``jobs`` worker processes.

    Args:
        names: recipe names.
        out_dir: where the assets are written.
        tiny: the recipes' tiny configs.
        jobs: worker processes; 1 trains in this process.
        threads: torch threads per worker (default: the cores divided among the jobs).
        on_done: called with ``(name, asset JSON or None, error or None)`` as each finishes.

    Returns:
        name -> its asset JSON, or None where its task raised.
    """
    check_request(names, jobs, threads)
    threads = threads or max(1, (os.cpu_count() or 1) // jobs)
    known = recipes()
    tasks = group_recipes(names, tiny=tiny)
    needs = dependencies(tasks)
    rank = priorities(tasks, needs, lambda name: estimated_cost(known[name]))
    pending = sorted(tasks, key=lambda t: -rank[t])
    done: Dict[Task, bool] = {}
    results: Dict[str, Optional[dict]] = {}
    running: Dict[Future, Task] = {}

    def ready() -> List[Task]:
        found = [t for t in pending if all(n in done for n in needs[t])]
        if pending and not found and not running:
            raise ValueError(f"recipes judged by each other, none can go first: {pending}")
        return found

    def finish(task: Task, outcome: Optional[List[Tuple[str, dict]]], error: Optional[BaseException]):
        done[task] = error is None
        for name, info in outcome or [(name, None) for name in task]:
            results[name] = info
            on_done(name, info, error)

    if jobs == 1:
        torch.set_num_threads(threads)
        while pending:
            task = ready()[0]
            pending.remove(task)
            try:
                finish(task, train_task(task, tiny, str(out_dir)), None)
            except Exception as error:  # reported per recipe; the other tasks go on
                finish(task, None, error)
        return results

    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(jobs, mp_context=context, initializer=_worker_setup, initargs=(threads,)) as pool:
        while pending or running:
            for task in ready()[: jobs - len(running)]:
                pending.remove(task)
                running[pool.submit(train_task, task, tiny, str(out_dir))] = task
            finished, _ = wait(list(running), return_when=FIRST_COMPLETED)
            for future in finished:
                task = running.pop(future)
                error = future.exception()
                finish(task, None if error else future.result(), error)
    return results
