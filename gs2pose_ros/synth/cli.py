"""``gs2pose synth``: write a synthetic RGB-D dataset in BOP format (docs/synthetic_data.md).

Every flag maps onto one :class:`gs2pose_ros.synth.SynthConfig` field in :func:`config_from_args`
(the one place); defaults are the dataclass's.
"""

from __future__ import annotations

import argparse


def _leave_view(text: str) -> tuple[int, int]:
    try:
        start, length = (int(x) for x in text.split(":"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: give START:LEN in frames, e.g. 40:20") from None
    return start, length


def add_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "synth",
        help="render a synthetic RGB-D sequence of an object in BOP format",
        description=(
            "Render a synthetic RGB-D dataset in BOP format with an independent CPU ray caster "
            "(Embree): models/ (the object ply in mm, models_info.json), train/000000 (reference "
            "views of the object alone) and test/000000 (a cluttered sequence with occlusion, "
            "changing light and sensor noise). Same seed and options, same bytes."
        ),
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    g = p.add_argument_group("dataset")
    g.add_argument("--out", required=True, help="dataset root to write")
    g.add_argument("--object", default="printed_box",
                   help="built-in object (printed_box, mug, can, toy) or a coloured .ply/.obj mesh file")
    g.add_argument("--units", default="mm", choices=("mm", "m"), help="units of a mesh file's coordinates")
    g.add_argument("--frames", type=int, default=100, help="test-sequence length")
    g.add_argument("--seed", type=int, default=0, help="random seed (same seed, same bytes)")
    g.add_argument("--ref-views", type=int, default=60, help="reference views of the object alone (0 = none)")
    g.add_argument("--ref-hemisphere", action="store_true", help="reference views from the upper hemisphere only")
    g.add_argument("--overwrite", action="store_true", help="replace an existing models/, train/000000, test/000000")
    g.add_argument("--depth-scale", type=float, default=1.0, help="mm per depth-PNG unit")
    g.add_argument("--no-progress", action="store_true", help="no progress bars")
    g = p.add_argument_group("camera")
    g.add_argument("--width", type=int, default=640, help="image width (scales the default K)")
    g.add_argument("--height", type=int, default=480, help="image height (scales the default K)")
    for k in ("fx", "fy", "cx", "cy"):
        g.add_argument(f"--{k}", type=float, default=None, help=f"{k} in pixels (default: 615/320/240 scaled to the size)")
    g.add_argument("--fps", type=float, default=30.0, help="frame rate")
    g.add_argument("--distance", type=float, default=None, help="mean camera-target distance in m (default: fit the object)")
    g = p.add_argument_group("motion")
    g.add_argument("--speed", type=float, default=None, help="camera path speed in cm/s [default: 10, --fast 30]")
    g.add_argument("--rot-speed", type=float, default=None, help="mean camera rotation speed in deg/s [default: 20, --fast 60]")
    g.add_argument("--fast", action="store_true", help="fast motion: 30 cm/s, 60 deg/s and motion blur (5 sub-frames)")
    g.add_argument("--leave-view", type=_leave_view, default=None, metavar="START:LEN",
                   help="the camera looks away: target fully out of view in frames START..START+LEN-1")
    g = p.add_argument_group("scene")
    g.add_argument("--occlusion", type=float, default=0.3, help="an occluder hides up to this fraction of the target (0 = none)")
    g.add_argument("--distractors", type=int, default=6, help="random shapes on the table")
    g.add_argument("--no-light-drift", action="store_true", help="keep the light fixed")
    g.add_argument("--no-temperature-drift", action="store_true", help="keep the light's colour temperature fixed")
    g.add_argument("--no-shadows", action="store_true", help="no cast shadows")
    g = p.add_argument_group("sensor and image")
    g.add_argument("--supersample", type=int, default=1, help="colour anti-aliasing: N x N rays per pixel")
    g.add_argument("--motion-blur", type=int, default=None, help="sub-frames averaged per colour image (0 = off) [default: 0, --fast 5]")
    g.add_argument("--exposure", type=float, default=0.5, help="shutter time as a fraction of the frame interval")
    g.add_argument("--depth-sigma", type=float, nargs=2, default=None, metavar=("A_MM", "B_MM_PER_M2"),
                   help="depth noise sigma = A + B z^2 (mm, z in m) [default: 0.5 1.5]")
    g.add_argument("--no-depth-noise", action="store_true", help="clean depth (no noise, no dropout)")
    g.add_argument("--no-image-noise", action="store_true", help="no shot/read noise in the colour image")
    g.add_argument("--vignetting", type=float, default=None, help="relative darkening at the corners [default: 0.2]")
    p.set_defaults(func=run)


def config_from_args(args):
    """The one mapping from command-line flags to :class:`SynthConfig`."""
    from dataclasses import replace

    from gs2pose_ros.synth import ColorNoise, DepthNoise, SynthConfig

    depth = DepthNoise(enabled=not args.no_depth_noise)
    if args.depth_sigma is not None:
        depth = replace(depth, sigma_a=args.depth_sigma[0] / 1000.0, sigma_b=args.depth_sigma[1] / 1000.0)
    color = ColorNoise(enabled=not args.no_image_noise)
    if args.vignetting is not None:
        color = replace(color, vignetting=args.vignetting)
    fast = args.fast
    return SynthConfig(
        out=args.out, object=args.object, units=args.units, frames=args.frames, seed=args.seed,
        ref_views=args.ref_views, ref_hemisphere=args.ref_hemisphere, width=args.width, height=args.height,
        fx=args.fx, fy=args.fy, cx=args.cx, cy=args.cy, fps=args.fps,
        speed=args.speed if args.speed is not None else (30.0 if fast else 10.0),
        rot_speed=args.rot_speed if args.rot_speed is not None else (60.0 if fast else 20.0),
        distance=args.distance, occlusion=args.occlusion, leave_view=args.leave_view,
        distractors=args.distractors, light_drift=not args.no_light_drift,
        temperature_drift=not args.no_temperature_drift, shadows=not args.no_shadows,
        supersample=args.supersample,
        motion_blur=args.motion_blur if args.motion_blur is not None else (5 if fast else 0),
        exposure=args.exposure, depth_noise=depth, color_noise=color, depth_scale=args.depth_scale,
        overwrite=args.overwrite, progress=not args.no_progress,
    )


def run(args) -> int:
    from gs2pose_ros.synth import generate

    result = generate(config_from_args(args))
    print(result.summary)
    return 0
