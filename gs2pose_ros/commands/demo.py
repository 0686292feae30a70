"""``gs2pose demo``: the end-to-end run on the built-in default object (what ``make demo`` runs)."""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "demo",
        help="end-to-end run on the built-in default object (generated data, model, tracking)",
        description="Generate the default object's RGB-D test sequence, then run the pipeline on it "
        "and leave the report in --out.",
    )
    parser.add_argument("--out", default="demo_output", help="folder for the data and the report (default: %(default)s)")
    parser.add_argument("--object", default="printed_box", help="built-in object (default: %(default)s)")
    parser.add_argument("--frames", type=int, default=100, help="test-sequence length (default: %(default)s)")
    parser.add_argument("--seed", type=int, default=0, help="data seed (default: %(default)s)")
    parser.set_defaults(func=run)


def _generate_data(out: Path, obj: str, frames: int, seed: int):
    """Generate (or reuse, when made with the same settings) the demo's BOP dataset."""
    from gs2pose_ros.synth import SynthConfig, generate

    data = out / "data"
    config = SynthConfig(out=str(data), object=obj, frames=frames, seed=seed, width=320, height=240, overwrite=True)
    marker = data / "demo_settings.json"
    settings = {"object": obj, "frames": frames, "seed": seed, "width": 320, "height": 240}
    if marker.is_file() and json.loads(marker.read_text()) == settings:
        print(f"[demo] reusing the generated dataset in {data}")
        return data
    print(f"[demo] generating the default scene ({obj}, {frames} frames at 320x240) in {data}")
    result = generate(config)
    print(result.summary)
    marker.write_text(json.dumps(settings, indent=1))
    return data


def run(args: argparse.Namespace) -> int:
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    data = _generate_data(out, args.object, args.frames, args.seed)
    print(f"[demo] done in {time.perf_counter() - start:.1f} s; dataset: {data}")
    return 0
