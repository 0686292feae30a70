"""``gs2pose build-model``: an object's Gaussian model from posed, masked reference views or a mesh.

Examples::

    gs2pose build-model --dataset /data/synth_box --object printed_box --holdout 5 --out box.ply
    gs2pose build-model --dataset ../shared/data/lmo_scene2 --object ape --holdout 2 --out ape.ply
    gs2pose build-model --mesh obj_000001.ply --units mm --out ape_mesh.ply

Writes the model ply (standard 3DGS layout), its metadata JSON beside it and, for views, a contact
sheet ``<model>_contact.png`` (input crops next to renders); prints a summary. See
docs/reconstruction.md.
"""

from __future__ import annotations

import argparse


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    import dataclasses
    import types

    from gs2pose_ros.reconstruct_config import ReconstructionConfig

    # the defaults as declared: building a ReconstructionConfig would import torch to check its device
    d = types.SimpleNamespace(**{f.name: f.default for f in dataclasses.fields(ReconstructionConfig)})
    p = subparsers.add_parser(
        "build-model",
        help="build an object's 3D Gaussian model from posed, masked reference views (BOP) or a mesh",
        description="Build an object's 3D Gaussian model (ply + metadata JSON + contact sheet) from "
                    "the posed, masked views of a BOP scene, or from a coloured mesh.",
    )
    src = p.add_argument_group("source (one of)")
    src.add_argument("--dataset", metavar="DIR",
                     help="BOP scene folder, generator output (uses train/<scene>), or a dataset root "
                          "with one scene")
    src.add_argument("--mesh", metavar="PATH", help="coloured triangle mesh (ply/obj) instead of views")
    p.add_argument("--object", metavar="ID",
                   help="obj_id or name (ape, cat, driller...; a built-in synthetic object's name); "
                        "required with --dataset")
    p.add_argument("--out", required=True, metavar="MODEL.ply", help="model ply to write")
    p.add_argument("--name", help="object name for the metadata (default: from the dataset)")
    p.add_argument("--units", default="mm", choices=("mm", "m"), help="--mesh coordinates' unit [mm]")
    g = p.add_argument_group("reconstruction")
    g.add_argument("--holdout", type=int, default=d.holdout_every, metavar="EVERY",
                   help="hold out every k-th view for evaluation (0 = none) [%(default)s]")
    g.add_argument("--iterations", type=int, default=d.iterations, help="optimisation steps [%(default)s]")
    g.add_argument("--max-gaussians", type=int, default=d.max_gaussians,
                   help="cap on the number of Gaussians (also the sample count of --mesh) [%(default)s]")
    g.add_argument("--sh-degree", type=int, default=d.sh_degree, choices=(0, 1, 2, 3),
                   help="spherical-harmonics degree of the colours [%(default)s]")
    g.add_argument("--crop-size", type=int, default=d.crop_size, help="training crop side, px [%(default)s]")
    g.add_argument("--max-views", type=int, default=d.max_views,
                   help="use at most this many training views (0 = all) [%(default)s]")
    g.add_argument("--seed", type=int, default=d.seed, help="random seed [%(default)s]")
    g.add_argument("--device", default=d.device, help="torch device [%(default)s]")
    g.add_argument("--threads", type=int, default=0,
                   help="torch CPU threads (0 = torch's default); 1 is much faster on a loaded machine")
    g.add_argument("--no-contact-sheet", action="store_true", help="do not write the contact sheet PNG")
    g.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from gs2pose_ros.errors import ConfigError
    from gs2pose_ros.reconstruct import (ReconstructionConfig, build_model_from_mesh,
                                         build_model_from_scene)

    if args.threads:
        if args.threads < 0:
            raise ConfigError(f"build-model: --threads must be >= 0, got {args.threads}")
        import torch

        torch.set_num_threads(args.threads)
    if (args.dataset is None) == (args.mesh is None):
        raise ConfigError("build-model: give exactly one of --dataset DIR (reference views) or "
                          "--mesh PATH")
    if args.mesh is not None:
        obj_id = None
        if args.object is not None:
            if not str(args.object).isdigit():
                raise ConfigError(f"build-model: with --mesh, --object must be an obj_id (integer), "
                                  f"got {args.object!r}; use --name for the name")
            obj_id = int(args.object)
        result = build_model_from_mesh(args.mesh, units=args.units, n_gaussians=args.max_gaussians,
                                       sh_degree=args.sh_degree, seed=args.seed, obj_id=obj_id,
                                       name=args.name, out_path=args.out)
        print(result.summary())
        return 0
    if args.object is None:
        raise ConfigError("build-model: --object ID is required with --dataset")
    config = ReconstructionConfig(
        iterations=args.iterations, holdout_every=args.holdout, max_gaussians=args.max_gaussians,
        sh_degree=args.sh_degree, crop_size=args.crop_size, max_views=args.max_views,
        seed=args.seed, device=args.device)
    result = build_model_from_scene(args.dataset, args.object, config, out_path=args.out,
                                    name=args.name, progress=not args.no_progress,
                                    contact_sheet=not args.no_contact_sheet)
    print(result.summary())
    return 0
