"""``gs2pose demo``: the end-to-end run on the built-in default object (what ``make demo`` runs).

1. Generates the default object's data with ``gs2pose synth`` (reference views and a 100-frame
   RGB-D test sequence at 320x240), or reuses it when it was made with the same settings.
2. Takes the object's Gaussian model and Pose-Net weights shipped in ``gs2pose_ros/data/<object>/``
   (made by this project's own commands: see the README there), or rebuilds both from the
   generated reference views with ``--rebuild`` (``gs2pose build-model`` + ``gs2pose train-posenet``).
3. Tracks the test sequence (Pose-Net on the first frame and after losses, GS-Refiner warm-started
   every frame) with ``gs2pose eval --mode track`` and prints its summary; the report, plots,
   overlays and BOP results CSV stay in ``<out>/report/``.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from gs2pose_ros.errors import ModelFileError

#: Where the shipped per-object assets live (package data).
ASSETS_DIR = Path(__file__).resolve().parents[1] / "data"


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "demo",
        help="end-to-end run on the built-in default object (generated data, model, tracking)",
        description="Generate the default object's RGB-D test sequence, track it with the shipped "
        "model and Pose-Net weights (or rebuild them), and leave the report in --out.",
    )
    parser.add_argument("--out", default="demo_output", help="folder for the data and the report (default: %(default)s)")
    parser.add_argument("--object", default="printed_box", help="built-in object (default: %(default)s)")
    parser.add_argument("--frames", type=int, default=100, help="test-sequence length (default: %(default)s)")
    parser.add_argument("--seed", type=int, default=0, help="data seed (default: %(default)s)")
    parser.add_argument("--rebuild", action="store_true",
                        help="rebuild the model and Pose-Net from the generated reference views instead of "
                        "using the shipped ones (tens of minutes on a CPU)")
    parser.add_argument("--train-minutes", type=float, default=20.0,
                        help="Pose-Net training time limit with --rebuild (default: %(default)s)")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0 = torch's default)")
    parser.set_defaults(func=run)


def _generate_data(out: Path, obj: str, frames: int, seed: int) -> Path:
    """Generate (or reuse, when made with the same settings) the demo's BOP dataset."""
    from gs2pose_ros.synth import SynthConfig, generate

    data = out / "data"
    settings = {"object": obj, "frames": frames, "seed": seed, "width": 320, "height": 240}
    marker = data / "demo_settings.json"
    if marker.is_file() and json.loads(marker.read_text()) == settings:
        print(f"[demo] reusing the generated dataset in {data}")
        return data
    print(f"[demo] generating the {obj} scene ({frames} frames at 320x240) in {data}")
    config = SynthConfig(out=str(data), object=obj, frames=frames, seed=seed, width=320, height=240, overwrite=True)
    print(generate(config).summary)
    marker.write_text(json.dumps(settings, indent=1))
    return data


def shipped_assets(obj: str) -> tuple[Path, Path]:
    """(model.ply, posenet.safetensors) shipped for ``obj``; ModelFileError if there are none."""
    folder = ASSETS_DIR / obj
    model, posenet = folder / "model.ply", folder / "posenet.safetensors"
    for path in (model, posenet):
        if not path.is_file():
            raise ModelFileError(f"{path}: no shipped asset for {obj!r}; run `gs2pose demo --object {obj} --rebuild`")
    return model, posenet


def _rebuild_assets(out: Path, data: Path, obj: str, minutes: float) -> tuple[Path, Path]:
    """Build the model from the reference views and train Pose-Net on it, with the public commands."""
    from gs2pose_ros.cli import main as gs2pose

    folder = out / "model"
    model, posenet = folder / "model.ply", folder / "posenet.safetensors"
    commands = [
        ["build-model", "--dataset", str(data), "--object", obj, "--out", str(model)],
        ["train-posenet", "--model", str(model), "--out", str(posenet), "--time-limit", str(minutes)],
    ]
    for command in commands:
        print("[demo] gs2pose " + " ".join(command))
        status = gs2pose(command)
        if status:
            raise ModelFileError(f"`gs2pose {command[0]}` failed (exit {status}); see its message above")
    return model, posenet


def run(args: argparse.Namespace) -> int:
    from gs2pose_ros.evaluate import run_evaluation

    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    data = _generate_data(out, args.object, args.frames, args.seed)
    if args.rebuild:
        model, posenet = _rebuild_assets(out, data, args.object, args.train_minutes)
    else:
        model, posenet = shipped_assets(args.object)
    print(f"[demo] tracking {args.frames} frames with {model.name} and {posenet.name} from {model.parent}")
    report_path = out / "report" / "report.json"
    run_evaluation(str(data), "1", str(model), str(posenet), "track", str(report_path), threads=args.threads)
    print(report_path.with_suffix(".md").read_text())
    print(f"[demo] done in {time.perf_counter() - start:.0f} s; report, plots, overlays and BOP csv in {report_path.parent}")
    return 0
