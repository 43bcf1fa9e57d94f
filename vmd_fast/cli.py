"""The ``vmd-fast`` command line.

``vmd-fast diagnose --method zoom|sia --target NAME|module:factory --attributes "a,b,c"
--n-images N --out DIR`` runs a diagnosis of the embedded world (or of your models) and
prints where its report went; ``vmd-fast report DIR`` re-renders a saved report;
``vmd-fast zoo ...`` and ``vmd-fast bench ...`` reach the zoo and the kernel benchmarks.

Errors a person can act on (an unknown attribute or model, a missing file, a GPU asked
for and absent) are one line on stderr and exit status 2; ``--debug`` shows the trace.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from typing import List, Optional, Sequence

import torch


class UsageError(Exception):
    """A mistake in the command line's inputs, reported as one line."""


def _device(name: Optional[str]) -> torch.device:
    if name is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError as err:
        raise UsageError(f"--device {name!r} is not a device ({err})") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UsageError(f"--device {name} asks for a GPU, but torch sees none here")
    return device


def load_target(spec: str, device: torch.device) -> torch.nn.Module:
    """A target model from a zoo name or ``package.module:factory`` (called with no arguments)."""
    if ":" in spec:
        module_name, _, factory = spec.partition(":")
        try:
            module = importlib.import_module(module_name)
        except ImportError as err:
            raise UsageError(f"--target {spec!r}: cannot import {module_name!r} ({err})") from None
        if not hasattr(module, factory):
            raise UsageError(f"--target {spec!r}: {module_name!r} has no {factory!r}")
        model = getattr(module, factory)()
        if not isinstance(model, torch.nn.Module):
            raise UsageError(f"--target {spec!r}: {factory}() returned {type(model).__name__}, not an nn.Module")
        return model.to(device).eval()
    from vmd_fast import zoo

    known = [entry["name"] if isinstance(entry, dict) else str(entry) for entry in zoo.list()]
    if spec not in known:
        raise UsageError(f"--target {spec!r} is neither a zoo model ({', '.join(known) or 'none shipped'}) nor module:factory")
    return zoo.load(spec, device=device)


def _split(text: str) -> List[str]:
    return [part.strip() for part in text.split(",") if part.strip()]


def cmd_diagnose(args) -> int:
    device = _device(args.device)
    target = load_target(args.target, device)
    if args.method == "zoom":
        from vmd_fast import zoom

        attributes = _split(args.attributes) if args.attributes else list(zoom.DEFAULT_ATTRIBUTES)
        overrides = {k: v for k, v in (("steps", args.steps), ("seed", args.seed)) if v is not None}
        result = zoom.diagnose(target, attributes, n_images=args.n_images, device=device,
                               cache_dir=args.cache_dir, checkpoint=args.out if args.resume else None, **overrides)
    else:
        from vmd_fast import sia

        overrides = {"steps": args.steps} if args.steps is not None else {}
        result = sia.diagnose(target, n_images=args.n_images, device=device, seed=args.seed or 0, **overrides)
        if args.attributes:
            unknown = [a for a in _split(args.attributes) if a not in result.attributes]
            if unknown:
                raise UsageError(f"--attributes {unknown} are not attributes of the editor ({', '.join(result.attributes)})")
    paths = result.save(args.out)
    top = result.ranking()[0]
    print(f"{args.method.upper()} diagnosis of {result.target}: most sensitive attribute '{top}' "
          f"(sensitivity {result.sensitivity[top]:.4f}); report: {paths['html']}")
    return 0


def cmd_report(args) -> int:
    import os

    from vmd_fast.diagnose import DiagnosisResult

    if not os.path.isdir(args.directory):
        raise UsageError(f"{args.directory!r} is not a directory")
    try:
        result = DiagnosisResult.load(args.directory)
    except FileNotFoundError as err:
        raise UsageError(str(err)) from None
    paths = result.save(args.out or args.directory)
    print(f"report: {paths['html']}")
    return 0


def cmd_zoo(args) -> int:
    from vmd_fast.zoo import __main__ as zoo_main

    return zoo_main.main(args.rest) or 0


def cmd_bench(args) -> int:
    from vmd_fast import bench

    return bench.main(args.rest) or 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="vmd-fast", description=__doc__.split("\n\n")[0])
    parser.add_argument("--debug", action="store_true", help="show the full trace of errors")
    sub = parser.add_subparsers(dest="command", required=True)

    diag = sub.add_parser("diagnose", help="find the attributes a model is sensitive to (SIA or ZOOM)")
    diag.add_argument("--method", choices=("zoom", "sia"), default="zoom")
    diag.add_argument("--target", default="smile_classifier", help="zoo name or package.module:factory")
    diag.add_argument("--attributes", help="comma-separated attribute prompts (ZOOM) or editor attributes (SIA)")
    diag.add_argument("--n-images", type=int, default=32)
    diag.add_argument("--steps", type=int, help="optimisation steps (default: the method's)")
    diag.add_argument("--seed", type=int)
    diag.add_argument("--out", default="outputs/diagnosis", help="report directory")
    diag.add_argument("--cache-dir", default=None, help="where ZOOM caches relevance matrices")
    diag.add_argument("--device", help="cpu, cuda, cuda:1 ... (default: cuda when present)")
    diag.add_argument("--resume", action="store_true", help="checkpoint into --out and resume from it")
    diag.set_defaults(func=cmd_diagnose)

    report = sub.add_parser("report", help="re-render a saved report")
    report.add_argument("directory")
    report.add_argument("--out", help="another directory for the page (default: in place)")
    report.set_defaults(func=cmd_report)

    for name, func, text in (("zoo", cmd_zoo, "the model zoo: list, train, check"),
                             ("bench", cmd_bench, "benchmark the fused kernels")):
        p = sub.add_parser(name, help=text, add_help=False)
        p.add_argument("rest", nargs=argparse.REMAINDER)
        p.set_defaults(func=func)
    return parser


def _user_errors() -> tuple:
    """Exceptions that describe a mistake in the inputs (shown as one line)."""
    errors = (UsageError, FileNotFoundError, ValueError)
    try:
        from vmd_fast.zoo import AssetError

        errors += (AssetError,)
    except ImportError:
        pass
    return errors


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.debug else logging.WARNING, format="%(name)s: %(message)s")
    try:
        return args.func(args)
    except _user_errors() as err:
        if args.debug:
            raise
        print(f"vmd-fast: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
