"""Command line of the zoo: ``python -m vmd_fast.zoo {list,train,check}``.

Examples::

    python -m vmd_fast.zoo list
    python -m vmd_fast.zoo train smile_classifier          # into the package's assets
    python -m vmd_fast.zoo train --all --tiny --out /tmp/z  # every recipe, seconds each
    python -m vmd_fast.zoo train --all --jobs 2 --out DIR   # everything from nothing, 2 processes
    python -m vmd_fast.zoo check                            # re-measure every shipped asset
"""

from __future__ import annotations

import argparse
import logging
import sys
import tempfile
import time
from pathlib import Path

from vmd_fast.zoo.assets import (
    ASSETS_DIR,
    AssetError,
    asset_paths,
    check_asset,
    failed_checks,
    flatten_metrics,
    list_assets,
)
from vmd_fast.zoo.parallel import check_request, train_many
from vmd_fast.zoo.registry import recipes


def _summary(metrics: dict, checks: dict) -> str:
    flat = flatten_metrics(metrics)
    shown = [m for m in checks if m in flat] or list(flat)[:4]
    return ", ".join(f"{m}={flat[m]:.4g}" for m in shown)


def _markdown_table(infos) -> str:
    lines = [
        "| name | kind | task | metrics (checked) | bias | size |",
        "|---|---|---|---|---|---|",
    ]
    for info in infos:
        bias = info.get("bias")
        bias = (
            f"P({bias['spurious']} = {bias['label']}) = {bias['p']}"
            if bias
            else (f"twin of `{info['twin_of']}`" if info.get("twin_of") else "")
        )
        lines.append(
            f"| `{info['name']}` | {info['kind']} | {info.get('task', '')} | "
            f"{_summary(info['metrics'], info.get('checks', {}))} | {bias} | "
            f"{info['bytes'] / 1e3:.0f} kB |"
        )
    return "\n".join(lines)


def _list(args) -> int:
    infos = list_assets(args.assets)
    if args.markdown:
        print(_markdown_table(infos))
        return 0
    if not infos:
        print(f"no assets in {args.assets or ASSETS_DIR}")
    for info in infos:
        print(
            f"{info['name']:32s} {info['kind']:9s} {info['bytes'] / 1e6:6.2f} MB  "
            f"{_summary(info['metrics'], info.get('checks', {}))}"
        )
    missing = sorted(set(recipes()) - {info["name"] for info in infos})
    if missing:
        print(f"recipes without an asset here: {', '.join(missing)}")
    return 0


def _train(args) -> int:
    known = recipes()
    if args.all == bool(args.names):
        print("name the recipes to train, or give --all", file=sys.stderr)
        return 2
    names = list(known if args.all else args.names)
    try:
        check_request(names, args.jobs, args.threads)
    except ValueError as error:
        print(error, file=sys.stderr)
        return 2
    out = args.out
    if args.tiny and out is None:
        out = tempfile.mkdtemp(prefix="vmd_fast_zoo_tiny_")
    out = Path(out) if out is not None else ASSETS_DIR
    failures = 0

    def report(name, info, error):
        nonlocal failures
        if error is not None:
            failures += 1
            print(f"{name}: ERROR {type(error).__name__}: {error}")
            return
        weights, meta = asset_paths(name, out)
        failed = failed_checks(info["metrics"], known[name].checks)
        status = (
            "ok"
            if not failed
            else ("tiny run, checks not expected" if args.tiny else "FAILED " + "; ".join(failed))
        )
        print(
            f"{name}: {info['training']['seconds']:.0f} s, "
            f"{_summary(info['metrics'], known[name].checks)} [{status}]",
            flush=True,
        )
        print(f"  wrote {weights} ({info['bytes'] / 1e6:.2f} MB) and {meta}", flush=True)
        failures += bool(failed) and not args.tiny

    start = time.perf_counter()
    train_many(names, out, tiny=args.tiny, jobs=args.jobs, threads=args.threads, on_done=report)
    print(
        f"trained {len(names)} asset(s) into {out} in {time.perf_counter() - start:.0f} s "
        f"({args.jobs} job(s))"
    )
    return 1 if failures else 0


def _check(args) -> int:
    names = args.names or [info["name"] for info in list_assets(args.assets)]
    bad = 0
    for name in names:
        try:
            report = check_asset(name, assets_dir=args.assets, eval_seed=args.seed)
        except AssetError as error:
            print(f"{name}: ERROR {error}")
            bad += 1
            continue
        if report.ok:
            print(f"{name}: ok ({_summary(report.measured, {})})")
        else:
            bad += 1
            print(f"{name}: FAILED")
            for failure in report.failures:
                print(f"  {failure}")
    print(f"checked {len(names)} asset(s): {len(names) - bad} ok, {bad} failed")
    return 1 if bad else 0


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m vmd_fast.zoo", description=__doc__.split("\n")[0]
    )
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("list", help="list the shipped assets with their metrics")
    p.add_argument(
        "--assets", type=Path, default=None, help="assets folder (default: the package's)"
    )
    p.add_argument(
        "--markdown", action="store_true", help="print a Markdown table (as in docs/world.md)"
    )
    p.set_defaults(run=_list)

    p = sub.add_parser("train", help="train assets from nothing and write them")
    p.add_argument("names", nargs="*", help="recipe names")
    p.add_argument("--all", action="store_true", help="every registered recipe")
    p.add_argument(
        "--tiny",
        action="store_true",
        help="the tiny configs (seconds; for CI), into a temporary folder unless --out",
    )
    p.add_argument(
        "--out", type=Path, default=None, help="output folder (default: the package's assets)"
    )
    p.add_argument(
        "--jobs",
        type=int,
        default=1,
        help="recipes trained at once, each in its own process (default: 1, in this process)",
    )
    p.add_argument(
        "--threads",
        type=int,
        default=None,
        help="torch CPU threads per job (default: the cores divided among the jobs)",
    )
    p.set_defaults(run=_train)

    p = sub.add_parser(
        "check", help="re-measure shipped assets on fresh renders and compare with their JSON"
    )
    p.add_argument("names", nargs="*", help="asset names (default: all in the folder)")
    p.add_argument(
        "--assets", type=Path, default=None, help="assets folder (default: the package's)"
    )
    p.add_argument(
        "--seed",
        type=int,
        default=None,
        help="seed of the fresh renders (default: stored eval_seed + 1000)",
    )
    p.set_defaults(run=_check)

    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    return args.run(args)


if __name__ == "__main__":
    sys.exit(main())
