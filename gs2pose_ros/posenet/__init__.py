"""Pose-Net (stage 1 of GS2Pose): a U-Net predicting NOCS + mask from an RGB crop, its training from
a Gaussian model alone, its weight files, and the coarse pose (Kabsch/RANSAC with depth, PnP without).

Heavy pieces load lazily; import from the submodules:

* :mod:`gs2pose_ros.posenet.network`: :class:`PoseNetConfig`, :class:`PoseNet`.
* :mod:`gs2pose_ros.posenet.io`: :func:`save_posenet`, :func:`load_posenet` (safetensors + JSON).
* :mod:`gs2pose_ros.posenet.train`: :class:`TrainConfig`, :func:`train_posenet`.
* :mod:`gs2pose_ros.posenet.coarse`: :class:`CoarsePoseEstimator`, :class:`CoarsePose`, the geometry.
* :mod:`gs2pose_ros.posenet.cli`: ``gs2pose train-posenet`` and ``gs2pose eval-coarse``.
"""
