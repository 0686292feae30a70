"""``gs2pose train-posenet`` and ``gs2pose eval-coarse``.

Examples::

    gs2pose train-posenet --model printed_box.ply --out posenet/printed_box.safetensors --time-limit 20
    gs2pose eval-coarse --posenet posenet/printed_box.safetensors --model printed_box.ply --dataset synth/printed_box
"""

from __future__ import annotations

import argparse


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "train-posenet",
        help="train an object's Pose-Net (NOCS + mask U-Net) from its Gaussian model alone",
        description="Train Pose-Net on views rendered from the object's Gaussian model (no real images). "
                    "Writes the weights (safetensors), a JSON sidecar (network configuration + object "
                    "metadata), a loss curve and a sample sheet beside --out.",
    )
    p.add_argument("--model", required=True, help="the object's Gaussian model ply (its metadata JSON beside it)")
    p.add_argument("--out", required=True, help="weights file to write, e.g. posenet/box.safetensors "
                                                "(the JSON sidecar takes the same name with .json)")
    p.add_argument("--iterations", type=int, default=3000, help="training steps (default 3000)")
    p.add_argument("--batch", type=int, default=16, help="batch size (default 16)")
    p.add_argument("--time-limit", type=float, default=None, metavar="MIN",
                   help="stop after this many minutes (rendering included); the learning rate decays to it")
    p.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto (CUDA when available)")
    p.add_argument("--network", default="auto", choices=("auto", "cpu", "gpu"),
                   help="network size: cpu (128 px, narrow), gpu (256 px, wider); auto picks by device "
                        "(with --init-from: that network's)")
    p.add_argument("--init-from", default=None, metavar="WEIGHTS",
                   help="start from these Pose-Net weights (fine-tuning) instead of a random network; they "
                        "must have been trained for this model's NOCS box")
    p.add_argument("--seed", type=int, default=0, help="random seed")
    p.add_argument("--lr", type=float, default=1e-3, help="peak learning rate (Adam, cosine decay)")
    p.add_argument("--pool", type=int, default=None, help="rendered views kept in the pool (default 500 on CPU, 2000 on CUDA)")
    p.add_argument("--refresh", type=float, default=None,
                   help="new views rendered per step into the pool (default 0.5 on CPU, 4 on CUDA)")
    p.add_argument("--truncate-fraction", type=float, default=0.15, metavar="F",
                   help="share of samples with the object cut by a crop edge, as entering or leaving the view "
                        "(default 0.15; 0 trains as before session 3, e.g. the shipped printed_box weights)")
    p.add_argument("--views-from", default=None, metavar="DATASET",
                   help="sample rotations around the reference views of this BOP dataset/scene instead of the whole sphere")
    p.add_argument("--real-views", default=None, metavar="DATASET",
                   help="also train on the object's annotated real images in this BOP scene or dataset (the "
                        "reference views the model was built from: masks and ground-truth poses needed; "
                        "NOCS targets rendered from the model)")
    p.add_argument("--real-fraction", type=float, default=0.5, metavar="F",
                   help="share of the training samples cut from --real-views (default 0.5)")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice; "
                                                              "1 is faster on a CPU shared with other jobs)")
    p.add_argument("--workers", type=int, default=0,
                   help="processes making the training samples while the network trains (default 0: made "
                        "between steps; on a GPU the samples are most of a step: give it the spare CPU cores)")
    p.add_argument("--snapshot-minutes", default="", metavar="M1,M2",
                   help="also save the weights as OUT_t<M>min.* after these many minutes (e.g. 10,20)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.set_defaults(func=run_train)

    e = subparsers.add_parser(
        "eval-coarse",
        help="evaluate the coarse pose (Pose-Net + Kabsch/PnP) on a BOP scene from full frames",
        description="Run the coarse pose estimator on every frame of a BOP test scene (no ground-truth box "
                    "or mask used) and report rotation/translation error distributions and the success rate.",
    )
    e.add_argument("--posenet", required=True, help="weights written by train-posenet")
    e.add_argument("--dataset", required=True, help="BOP scene folder, or a generator output (its test/ scene)")
    e.add_argument("--model", default=None, help="the Gaussian model ply (sharper confidence; optional)")
    e.add_argument("--obj", default=None, help="object id in the scene (default: the Pose-Net's, or the only one)")
    e.add_argument("--frames", type=int, default=None, help="evaluate at most this many frames")
    e.add_argument("--stride", type=int, default=1, help="every n-th frame")
    e.add_argument("--im-ids", default=None, help="'even' or 'odd' image ids only (LM-O protocol)")
    e.add_argument("--no-depth", action="store_true", help="ignore depth: PnP on the RGB image only")
    e.add_argument("--locate-size", type=int, default=None, metavar="PX",
                   help="side of the full-frame pass that finds the object (multiple of 16; default: the "
                        "network's input size; larger finds small objects)")
    e.add_argument("--max-re", type=float, default=15.0, help="success: rotation error at most this (degrees)")
    e.add_argument("--max-te", type=float, default=0.1, help="success: translation error at most this x diameter")
    e.add_argument("--device", default="auto", help="cpu, cuda or auto")
    e.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    e.add_argument("--out", default=None, help="write the per-frame results and summary as JSON here")
    e.add_argument("--no-progress", action="store_true", help="no progress bars")
    e.set_defaults(func=run_eval)


def _device(name: str):
    import torch

    from gs2pose_ros.errors import ConfigError

    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"--device {name}: CUDA is not available here; use --device cpu")
    return name


def run_train(args: argparse.Namespace) -> int:
    import torch

    from gs2pose_ros.gaussians import read_gaussian_ply, read_object_metadata
    from gs2pose_ros.posenet.network import PoseNetConfig
    from gs2pose_ros.posenet.train import TrainConfig, train_posenet

    if args.threads:
        torch.set_num_threads(args.threads)
    dev = _device(args.device)
    cuda = dev.startswith("cuda")
    model = read_gaussian_ply(args.model)
    meta = read_object_metadata(args.model)
    net_cfg = {"auto": PoseNetConfig.gpu() if cuda else PoseNetConfig.cpu(), "cpu": PoseNetConfig.cpu(),
               "gpu": PoseNetConfig.gpu()}[args.network]
    if args.init_from and args.network == "auto":
        from gs2pose_ros.posenet.io import load_posenet

        net_cfg = load_posenet(args.init_from)[0].config
    cfg = TrainConfig(iterations=args.iterations, batch=args.batch, lr=args.lr, seed=args.seed, device=dev,
                      pool_size=args.pool or (2000 if cuda else 500),
                      refresh_per_iter=args.refresh if args.refresh is not None else (4.0 if cuda else 0.5),
                      time_limit_s=None if args.time_limit is None else 60.0 * args.time_limit, network=net_cfg,
                      snapshot_s=_minutes(args.snapshot_minutes), truncate_fraction=args.truncate_fraction,
                      real_fraction=args.real_fraction, init_from=args.init_from, workers=args.workers)
    rotations = None
    if args.views_from:
        rotations = _reference_rotations(args.views_from, meta)
        print(f"train-posenet: sampling around {len(rotations)} reference views of {args.views_from}")
    real = None
    if args.real_views:
        from gs2pose_ros.posenet.train import load_real_views

        scene, obj_id = _reference_scene(args.real_views, meta)
        real, stats = load_real_views(scene, obj_id, model, meta, progress=not args.no_progress)
        print(f"train-posenet: {stats['views']} real views of object {obj_id} from {args.real_views} "
              f"({stats['skipped']} skipped: mask too small); the model covers a median "
              f"{100 * stats['model_covers_mask_median']:.0f} % of their annotated masks")
    net, hist = train_posenet(model, meta, cfg, out_path=args.out, rotations=rotations,
                              progress=not args.no_progress, real_views=real)
    fv = hist["final_val"]
    print(f"train-posenet: {hist['iterations_done']} iterations ({hist['stopped_by']}), "
          f"{hist['views_rendered']} views rendered, {hist['seconds_total'] / 60:.1f} min on {dev} "
          f"({hist['torch_threads']} threads, {hist['workers']} sample workers); validation NOCS L1 {fv['nocs']:.4f}, mask BCE {fv['mask']:.4f}")
    print(f"train-posenet: wrote {args.out} and its .json, _loss.png, _samples.png, _history.json")
    return 0


def _minutes(text: str) -> tuple:
    from gs2pose_ros.errors import ConfigError

    try:
        return tuple(60.0 * float(x) for x in text.split(",") if x.strip())
    except ValueError:
        raise ConfigError(f"--snapshot-minutes {text!r}: give comma-separated minutes, e.g. 10,20") from None


def _reference_scene(dataset, meta) -> tuple:
    """``(scene, obj_id)``: the BOP scene of reference views in ``dataset`` and the object's id there
    (the metadata's, else found by its name)."""
    from gs2pose_ros.reconstruct import resolve_object_id, resolve_reference_scene

    scene = resolve_reference_scene(dataset)
    return scene, (meta.obj_id if meta.obj_id is not None else resolve_object_id(scene, meta.name))


def _reference_rotations(dataset, meta):
    import numpy as np

    scene, obj_id = _reference_scene(dataset, meta)
    Rs = [scene.gt(im_id)[k].R for im_id, k in scene.instances_of(obj_id)]
    if not Rs:
        from gs2pose_ros.errors import DatasetError

        raise DatasetError(f"{dataset}: no annotated views of object {obj_id} to take rotations from")
    return np.stack(Rs)


def run_eval(args: argparse.Namespace) -> int:
    import json

    import torch

    from gs2pose_ros.gaussians import read_gaussian_ply
    from gs2pose_ros.posenet.coarse import CoarsePoseEstimator
    from gs2pose_ros.posenet.evaluate import evaluate_coarse, results_table, summarize

    if args.threads:
        torch.set_num_threads(args.threads)
    dev = _device(args.device)
    model = read_gaussian_ply(args.model, device=dev) if args.model else None
    est = CoarsePoseEstimator.from_file(args.posenet, model=model, device=dev, use_depth=not args.no_depth,
                                          locate_size=args.locate_size)
    im_ids = None
    if args.im_ids:
        from pathlib import Path

        from gs2pose_ros.bop import BopScene
        from gs2pose_ros.errors import ConfigError

        if args.im_ids not in ("even", "odd"):
            raise ConfigError(f"--im-ids {args.im_ids!r}: use 'even' or 'odd'")
        d = Path(args.dataset)
        scene = BopScene(d) if (d / "scene_camera.json").is_file() else None
        if scene is None:
            raise ConfigError("--im-ids needs --dataset to be one scene folder")
        im_ids = [i for i in scene.im_ids if i % 2 == (0 if args.im_ids == "even" else 1)]
    obj = int(args.obj) if args.obj is not None else None
    res = evaluate_coarse(est, args.dataset, obj_id=obj, frames=args.frames, stride=args.stride,
                          use_depth=not args.no_depth, progress=not args.no_progress, im_ids=im_ids)
    summ = summarize(res, est.metadata.diameter, args.max_re, args.max_te)
    print(json.dumps(summ, indent=2))
    if args.out:
        with open(args.out, "w") as f:
            json.dump({"summary": summ, "frames": results_table(res)}, f, indent=1)
    return 0
