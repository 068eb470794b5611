r"""Training invdiff's own diffusion priors: EDM denoising score matching (Karras et al. 2022).

The flow is data -> training -> priors: this package reads :mod:`invdiff.datasets` and writes priors that
:mod:`invdiff.priors` loads; ``priors`` never imports it. Modules:

- :mod:`.config` -- :class:`TrainConfig`, parsing, validation, :func:`regenerate_command`;
- :mod:`.data` -- data sources (phantom streams, tensor files, image folders), patches (PaDIS), the batch stream
  (DataLoader workers), data statistics;
- :mod:`.files` -- fastMRI / NIfTI / DICOM slices streamed from disk (a lazy (file, slice) index, no caching);
- :mod:`.loop` -- train state, EDM loss, :func:`train_step`, the resumable data-parallel :func:`train`;
- :mod:`.checkpoint` -- training checkpoints (safetensors + JSON header), warm-start weights;
- :mod:`.export` -- EDM Heun sampler, denoising evaluation, sample grids, model card, :func:`export`;
- :mod:`.cli` -- ``invdiff train-prior`` flags, the ``--nproc`` launcher;
- the process-group context (rank, world, barrier, rank-0-computes) is :mod:`invdiff.jobs`, shared with
  ``invdiff reconstruct`` and ``invdiff bench``.

Loss (Karras et al. 2022, Eq. 2 and Sec. 5 "Training", Table 1):

.. math::
    \mathcal L(\theta) = \mathbb E_{\sigma, x_0, n}\big[\lambda(\sigma)\,\lVert D_\theta(x_0+\sigma n, \sigma) - x_0\rVert^2\big],\quad
    \ln\sigma\sim\mathcal N(P_{mean}, P_{std}^2),\quad \lambda(\sigma) = \frac{\sigma^2+\sigma_d^2}{(\sigma\sigma_d)^2},

with :math:`D_\theta` the preconditioned network of :class:`~invdiff.priors.neural.NeuralPrior`. EDM's
:math:`P_{mean}=-1.2, P_{std}=1.2` are for :math:`\sigma_d = 0.5`; here :math:`P_{mean} = -1.2 + \ln(\sigma_d/0.5)`
so the noise distribution scales with the data. Weights are averaged with an EMA (decay warm-up
:math:`\min(\beta, (1+t)/(10+t))`), Adam with linear learning-rate warm-up and gradient-norm clipping.

Design:

- :func:`train_step` is the whole per-step algorithm on one batch.
- Data sources are callables ``source(step, batch_size)`` returning ``x0`` or ``(x0, cond)``; the batch
  at step k depends only on k, and the noise at step k only on (seed, k), so a resumed run reproduces an
  uninterrupted one exactly. A source may also offer ``source.part(step, batch_size, start, stop)``: rows
  ``[start, stop)`` of that batch, generated or read alone (the phantom streams do); otherwise
  :func:`batch_part` slices the whole batch.
- Checkpoints (model + EMA + Adam moments + step + RNG state) are safetensors with a JSON header (no pickle),
  written atomically (tmp + ``os.replace``) every ``ckpt_every`` steps; re-running the same command resumes.
- :func:`export` turns any checkpoint (final or intermediate) into shipped artefacts: EMA weights,
  model card with held-out denoising PSNR, loss curve CSV and a grid of samples from a deterministic
  EDM Heun sampler (:func:`edm_heun_sampler`, Karras et al. 2022, Algorithm 1).

Data-parallel training (``torch.distributed``, one process per rank, launched by torchrun). Rank r of W
takes rows ``[r B/W, (r+1) B/W)`` of the global batch of B images (``batch_size``, which W must divide):
its images (:func:`batch_part`) and the same rows of the step's noise levels and noise, which every rank
draws for the whole batch from the (seed, step) generator. So the union over ranks is exactly the
single-process batch. The loss runs through ``DistributedDataParallel`` wrapped around :class:`EDMLoss`,
which averages the gradients over ranks; with equal shards the average of per-rank means is the
single-process mean, so W processes follow the single-process trajectory up to floating-point summation
order (GroupNorm has no cross-sample statistics). Clipping, Adam and the EMA then act on identical
gradients on every rank. Rank 0 alone writes ``config.json``, ``loss.csv`` (the loss averaged over ranks)
and the checkpoints (atomically); every rank reads the checkpoint on resume, so a run can be resumed with
another number of processes (the global batch, not the world size, defines the run). Dropout masks are
drawn per rank (not bitwise equal to one process, equal in distribution).

3D priors: ``--dims 3`` trains a :class:`~invdiff.priors.networks.CompactUNet` with ``Conv3d`` on volumes
(B, C, D, H, W), e.g. on the CT-like ellipsoid volumes of :mod:`invdiff.datasets.phantoms3d` (``--data
ct3d``); the exported prior has ``spatial_dims == 3``. A real one: 1.34 M parameters (base 16, levels
1,2,4), about 0.17 s/step at 16^3 and 0.9 s/step at 32^3 (batch 4, 1 thread, idle core; 4x that on a
saturated 2-core machine), so about 5 h for 20k steps on 1 core (run it when the CPU is free)::

    invdiff train-prior --name ct-ellipsoid-32 --data ct3d --dims 3 --size 32 --base-channels 16 \
        --channel-mult 1,2,4 --batch-size 4 --steps 20000 --lr 3e-4 --ckpt-every 250 --keep-every 2000 \
        --nproc 2 --threads 1 --eval-images 16 --n-samples 8

Real-size priors (issue 11): ``--patch-size P`` trains on random P x P crops of ``--size`` images (PaDIS, Hu et al.
2024; :class:`~.data.PatchSource`), ``--positional`` adds the crop's coordinate channels, and the exported prior
denoises whole images fully convolutionally or by randomly shifted tiles (``--inference``,
:meth:`~invdiff.priors.neural.NeuralPrior.set_inference`); the cost of a step depends on P only. Data can be the
anatomy-like generators (``--data ct-anatomy`` / ``mri-anatomy``) or files streamed from disk (``--data
fastmri:DIR`` / ``nifti:DIR`` / ``dicom:DIR``, :mod:`.files`), prepared by ``--workers`` DataLoader processes.
Artefacts go to the run folder ``<out>/<name>``; the installed package is written only when ``--weights-dir``
names it, and a shipped prior is replaced only with ``--overwrite-shipped``. ``scripts/train_realsize.sh`` holds
the full real-size runs::

    invdiff train-prior --name ct-anatomy-patch64 --data ct-anatomy --size 256 --patch-size 64 --positional \
        --init-from ct-phantom-64 --steps 55500 --batch-size 32 --nproc 8 --threads 2 --workers 4

CLI: :func:`train_prior_main` (``invdiff train-prior``; ``python -m invdiff.training``). ``--nproc N``
re-launches the command under ``python -m torch.distributed.run --standalone --nproc_per_node N -m
invdiff.training``; launching that way (or with ``torchrun``) directly works the same: the world size
then comes from torchrun (leave out ``--nproc``, which torchrun's own parser would claim, or use
``--set nproc=N``).
"""
from __future__ import annotations

from ..jobs import DistContext, current as dist_context
from .checkpoint import CKPT_FORMAT, load_checkpoint_into, read_init_weights, read_train_checkpoint, save_checkpoint
from .cli import build_parser, launch_command, parse_config, train_prior_main
from .config import TrainConfig, config_to_json, load_config_file, make_config, regenerate_command, validate_config
from .data import PatchSource, TensorSource, batch_part, estimate_data_stats, make_source, resolve_config, stream_batches
from .export import (central_slices, check_not_shipped, edm_heun_sampler, evaluate_denoising, export, export_dir,
                     model_card, psnr, save_sample_grid, tv_baseline)
from .loop import (EDMLoss, TrainState, add_positional_inputs, build_prior, edm_loss, init_state, lr_at, net_config_of,
                   train, train_step)

__all__ = ["TrainConfig", "make_config", "load_config_file", "validate_config", "config_to_json", "regenerate_command",
           "TensorSource", "PatchSource", "stream_batches", "add_positional_inputs", "export_dir", "check_not_shipped",
           "batch_part", "make_source", "estimate_data_stats", "resolve_config",
           "TrainState", "EDMLoss", "edm_loss", "build_prior", "init_state", "net_config_of", "lr_at", "train_step",
           "train", "CKPT_FORMAT", "save_checkpoint", "read_train_checkpoint", "load_checkpoint_into",
           "read_init_weights", "edm_heun_sampler", "psnr", "tv_baseline", "evaluate_denoising", "central_slices",
           "save_sample_grid", "model_card", "export", "build_parser", "parse_config", "launch_command",
           "train_prior_main", "DistContext", "dist_context"]
