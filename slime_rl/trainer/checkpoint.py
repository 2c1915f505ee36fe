"""Trainer checkpoints: model + optimizer as a Megatron-core distributed checkpoint, and HF export from one.

Layout of `{checkpoint_dir}/step_{step:08d}/`:
- `dist/`: a `megatron.core.dist_checkpointing` checkpoint in the `torch_dist` format. It holds every
  parameter as one global tensor (Megatron full names, layers numbered globally, vocabulary rows padded
  for the TP size it was saved at) and the Adam moments as `optimizer.state.{exp_avg,exp_avg_sq}.{name}`;
  the optimizer's step and hyperparameters are in its common state. Each rank writes the shards it is the
  main replica of, so loading reshards: a checkpoint saved at one TP/PP/DP layout loads at any other.
  The distributed optimizer (`trainer.use_distributed_optimizer`) gathers its DP shards into the same
  global tensors (Megatron's `fully_reshardable` format); its param groups differ from the plain
  optimizer's, so a checkpoint resumes with the optimizer kind it was saved with (or with fresh Adam state,
  `trainer.load_optimizer=false`).
- `meta.json`: step, weight version, the TP/PP sizes it was saved at, the optimizer kind, the LR
  schedule's state and `"format": "torch_dist"`.
- `hf/`: the HF config and tokenizer files, so export needs nothing else.

`load` resumes the run's own latest checkpoint or, when there is none, starts from another run's
(`trainer.init_checkpoint`: weights and optimizer, with step, weight version and LR schedule at 0).
`{checkpoint_dir}/latest` names the newest complete step; it is written last, so a crash during a save
leaves the previous checkpoint in force. Checkpoints of the earlier per-rank format (`model_tp*_pp*.pt`,
no "format" in meta.json) are refused with a ConfigError rather than read. This module does not choose
when to save (the driver does) and does not hold the buffer's state (the driver adds it to the step dir).
"""

from __future__ import annotations

import json
import logging
import shutil
import warnings
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
import torch.distributed as dist

from slime_rl.errors import ConfigError
from slime_rl.trainer import hf_convert, weights
from slime_rl.trainer.cpu_compat import device_scope
from slime_rl.trainer.model import ArchSpec, arch_from_hf, layer_spec

if TYPE_CHECKING:
    from slime_rl.trainer.trainer import MegatronTrainer

logger = logging.getLogger(__name__)

FORMAT = "torch_dist"  # meta.json "format": Megatron dist_checkpointing with the torch_dist backend
DIST_DIR = "dist"  # the Megatron checkpoint inside a step directory
_OPTIMIZER_PREFIX = "optimizer."  # key prefix of optimizer tensors in the Megatron checkpoint
_LAYERS = "decoder.layers."  # key prefix of the decoder layers, stacked along their first axis


def _root(trainer: MegatronTrainer) -> Path:
    if trainer.cfg.checkpoint_dir is None:
        raise ConfigError("trainer.checkpoint_dir is not set; the driver sets it to {run dir}/checkpoints")
    return Path(trainer.cfg.checkpoint_dir)


def step_dir(root: str | Path, step: int) -> Path:
    """The directory of checkpoint `step` under the checkpoint root."""
    return Path(root) / f"step_{step:08d}"


def latest_step_dir(root: str | Path) -> Path | None:
    """The step directory `root/latest` points to, or None when nothing was saved."""
    marker = Path(root) / "latest"
    return Path(root) / marker.read_text().strip() if marker.exists() else None


def read_meta(step_dir: Path) -> dict[str, Any]:
    """The `meta.json` of a step directory in this module's format; ConfigError for anything else."""
    meta_file = step_dir / "meta.json"
    if not meta_file.exists():
        raise ConfigError(f"{step_dir} is not a checkpoint: no meta.json (and no `latest` marker)")
    meta = json.loads(meta_file.read_text())
    if meta.get("format") != FORMAT:
        found = f"format {meta['format']!r}" if "format" in meta else "per-rank format (model_tp*_pp*.pt)"
        raise ConfigError(
            f"checkpoint {step_dir} is in the {found} of an earlier slime-rl, which this version cannot read; convert "
            f"it with that version's `slime-rl export-hf --checkpoint {step_dir} --out DIR` and start a new run from "
            "it (model.path=DIR)"
        )
    return meta


# The distributed optimizer writes its shards as whole model-shaped tensors, so its checkpoints reshard across
# TP/PP/DP sizes like the plain optimizer's (its default format, fully_sharded_model_space, is deprecated).
_OPTIMIZER_METADATA = {"distrib_optim_sharding_type": "fully_reshardable"}


def _sharded_state_dict(trainer: MegatronTrainer, *, is_loading: bool) -> dict[str, Any]:
    """This rank's model and optimizer as Megatron sharded tensors (global names and offsets)."""
    if is_loading and trainer.cfg.use_distributed_optimizer:
        # Without Apex/TE the distributed optimizer reads Adam's step from the state, which a fresh optimizer
        # lacks; Megatron's own remedy is one zero-gradient step whose state the load then overwrites.
        for optimizer in trainer.optimizer.chained_optimizers:
            if not optimizer.optimizer.state:
                optimizer._init_optimizer_states_with_dummy_values()
    model_sd = trainer.model.sharded_state_dict()
    optimizer_sd = trainer.optimizer.sharded_state_dict(model_sd, is_loading=is_loading, metadata=_OPTIMIZER_METADATA)
    return {"model": model_sd, "optimizer": optimizer_sd}


def _load_distributed_optimizer(chained: Any, state_dict: dict[str, Any]) -> None:
    """`load_state_dict` of Megatron 0.16's distributed optimizer with torch's Adam (no Apex/TE), mended twice:
    it restores Adam's step from the common state, then (1) asks every shard for a step the checkpoint does not
    hold (a KeyError; `_set_shard_state` copies the states it does hold) and (2) hands every parameter the same
    step tensor, which each parameter's update then advances (wrong bias correction; each gets its own copy)."""
    for optimizer in chained.chained_optimizers:
        optimizer._set_main_param_and_optimizer_states = partial(_set_shard_state, optimizer)
    chained.load_state_dict(state_dict)
    for optimizer in chained.chained_optimizers:
        del optimizer._set_main_param_and_optimizer_states
        for param_state in optimizer.optimizer.state.values():
            param_state["step"] = param_state["step"].clone()


def _set_shard_state(optimizer: Any, model_param: torch.nn.Parameter, tensors: dict[str, torch.Tensor]) -> None:
    """`DistributedOptimizer._set_main_param_and_optimizer_states` (non-precision-aware), copying only the states
    the checkpoint holds."""
    group_index, group_order = optimizer.model_param_group_index_map[model_param]
    main_param = optimizer.optimizer.param_groups[group_index]["params"][group_order]
    destination = {"param": main_param, **optimizer.optimizer.state[main_param]}
    for key, tensor in tensors.items():
        destination[key].copy_(tensor)


def save(trainer: MegatronTrainer, step: int) -> Path:
    """Write checkpoint `step` (collective: every rank calls it); returns the step directory.

    Keeps the newest `trainer.max_checkpoints_to_keep` step directories (0 = all) once `latest` is written, and
    step 0 (the SFT stage's) always.
    """
    from megatron.core import dist_checkpointing

    layout = trainer.layout
    out_dir = step_dir(_root(trainer), step)
    if dist.get_rank() == 0:
        (out_dir / DIST_DIR).mkdir(parents=True, exist_ok=True)
    dist.barrier()  # every rank writes its shards into the directory rank 0 made
    with device_scope():
        dist_checkpointing.save(_sharded_state_dict(trainer, is_loading=False), str(out_dir / DIST_DIR))
    if dist.get_rank() == 0:
        meta = {
            "format": FORMAT,
            "step": step,
            "version": trainer.version,
            "tp_size": layout.tp_size,
            "pp_size": layout.pp_size,
            "distributed_optimizer": trainer.cfg.use_distributed_optimizer,
            "optimizer_parts": _optimizer_parts(trainer),
            "lr_schedule": trainer.lr_schedule.state_dict(),
        }
        (out_dir / "meta.json").write_text(json.dumps(meta))
        (out_dir / "hf").mkdir(exist_ok=True)
        for name in weights.HF_SIDE_FILES:
            if (Path(trainer.model_cfg.path) / name).exists():
                shutil.copyfile(Path(trainer.model_cfg.path) / name, out_dir / "hf" / name)
    dist.barrier()
    if dist.get_rank() == 0:
        tmp = _root(trainer) / "latest.tmp"
        tmp.write_text(out_dir.name)
        tmp.replace(_root(trainer) / "latest")
        logger.info("saved checkpoint %s", out_dir)
        if trainer.cfg.max_checkpoints_to_keep:
            # Step 0 is the SFT stage's checkpoint, which other runs start from (trainer.init_checkpoint).
            rl_steps = sorted(p for p in _root(trainer).glob("step_*") if p.name != step_dir(_root(trainer), 0).name)
            for old in rl_steps[: -trainer.cfg.max_checkpoints_to_keep]:
                shutil.rmtree(old)
    dist.barrier()
    return out_dir


def load(trainer: MegatronTrainer) -> int | None:
    """Resume from the latest checkpoint in `trainer.checkpoint_dir`, else start from `trainer.init_checkpoint`
    (collective); returns the resumed step, or None for a fresh start (also one from an init checkpoint).

    A resume restores weights, Adam's state (unless `trainer.load_optimizer` is false), the LR schedule and the
    weight version. An init checkpoint gives weights and, with `load_optimizer`, Adam's moments and step (its bias
    correction continues); step, weight version and LR schedule start at 0. Either may have been saved at any
    TP/PP/DP sizes: each rank reads the pieces of the global tensors its layout holds.
    """
    cfg = trainer.cfg
    resume_dir = latest_step_dir(cfg.checkpoint_dir) if cfg.checkpoint_dir and cfg.load_checkpoint else None
    if resume_dir is not None:
        meta = _load_weights_and_optimizer(trainer, resume_dir)
        trainer.lr_schedule.load_state_dict(meta["lr_schedule"])
        trainer.version = int(meta["version"])
        logger.info(
            "loaded checkpoint %s (step %d, saved at tp=%d pp=%d%s)",
            resume_dir,
            meta["step"],
            meta["tp_size"],
            meta["pp_size"],
            "" if cfg.load_optimizer else "; fresh Adam state",
        )
        return int(meta["step"])
    if cfg.init_checkpoint is not None:
        source = latest_step_dir(cfg.init_checkpoint) or Path(cfg.init_checkpoint)
        meta = _load_weights_and_optimizer(trainer, source)
        logger.info(
            "starting from %s (step %d of its run): weights%s; step, weight version and LR schedule start at 0",
            source,
            meta["step"],
            " and Adam's state" if cfg.load_optimizer else ", fresh Adam state",
        )
    return None


def _load_weights_and_optimizer(trainer: MegatronTrainer, step_dir: Path) -> dict[str, Any]:
    """Read a step directory's weights, and its optimizer unless `trainer.load_optimizer` is false; returns its
    meta.json."""
    from megatron.core import dist_checkpointing

    meta = read_meta(step_dir)
    saved_with = meta.get("distributed_optimizer", False)
    if trainer.cfg.load_optimizer and saved_with != trainer.cfg.use_distributed_optimizer:
        # Megatron 0.16 keeps the two optimizers' param-group state in different layouts.
        raise ConfigError(
            f"checkpoint {step_dir} holds the optimizer state of trainer.use_distributed_optimizer={saved_with}; "
            f"resume with trainer.use_distributed_optimizer={saved_with} (any TP/PP/DP sizes), or with "
            "trainer.load_optimizer=false to start Adam afresh"
        )
    saved_parts, parts = meta.get("optimizer_parts", 1), _optimizer_parts(trainer)
    if trainer.cfg.load_optimizer and saved_parts != parts:
        # Megatron names a chained optimizer's state by part (`chained_{i}.`) only when it has several parts.
        raise ConfigError(
            f"checkpoint {step_dir} holds Adam's state in {saved_parts} part(s) and this run's optimizer has {parts} "
            "(an MoE model's expert weights get their own part at trainer.expert_model_parallel_size > 1); resume "
            "at an expert parallel size on the same side of 1, or with trainer.load_optimizer=false"
        )
    with device_scope():
        if not trainer.cfg.load_optimizer:
            # The optimizer's tensors are left unread (Megatron loads a subset of a checkpoint's keys).
            model_sd = trainer.model.sharded_state_dict()
            state = dist_checkpointing.load({"model": model_sd}, str(step_dir / DIST_DIR))
            trainer.model.load_state_dict(state["model"])
            return meta
        state = dist_checkpointing.load(_sharded_state_dict(trainer, is_loading=True), str(step_dir / DIST_DIR))
        trainer.model.load_state_dict(state["model"])
        if trainer.cfg.use_distributed_optimizer:
            _load_distributed_optimizer(trainer.optimizer, state["optimizer"])
        else:
            trainer.optimizer.load_state_dict(state["optimizer"])
    # The loaded param groups carry the saving run's settings, and the LR schedule reads its peak and floor from
    # them; this run's config wins, as it does for the schedule's shape (lr_schedule.make_lr_schedule).
    cfg = trainer.cfg
    for group in trainer.optimizer.param_groups:
        group.update(max_lr=cfg.lr, min_lr=cfg.min_lr, betas=(cfg.adam_beta1, cfg.adam_beta2), eps=cfg.adam_eps)
    return meta


def _optimizer_parts(trainer: MegatronTrainer) -> int:
    """How many optimizers Megatron chained: 2 when an MoE model's experts have their own DP group, else 1."""
    return len(getattr(trainer.optimizer, "chained_optimizers", [trainer.optimizer]))


def export_checkpoint_to_hf(checkpoint: str | Path, out: str | Path) -> Path:
    """Convert a checkpoint (a step directory, or a checkpoint root with `latest`) to an HF directory.

    Runs in one process without torch.distributed: it reads the model's global tensors (not the optimizer's).
    """
    step_dir = latest_step_dir(checkpoint) or Path(checkpoint)
    read_meta(step_dir)
    arch = arch_from_hf(weights.read_hf_config(step_dir / "hf"))
    full = _read_model_tensors(step_dir / DIST_DIR, arch)
    if arch.tie_word_embeddings:
        full.pop("output_layer.weight", None)
    return weights.write_hf_dir(hf_convert.megatron_full_to_hf(full, arch), out, side_files_from=step_dir / "hf")


_STACKED_EXPERTS = "mlp.experts.experts."  # how Megatron's SequentialMLP saves its experts, by global index


def _read_model_tensors(dist_dir: Path, arch: ArchSpec) -> dict[str, torch.Tensor]:
    """Every model tensor of a Megatron checkpoint, whole, under its Megatron full name.

    Reads through torch.distributed.checkpoint without a process group (Megatron's own loader needs one).
    Megatron stores the decoder layers stacked along a leading axis (`decoder.layers.{suffix}` of shape
    `[num_layers, ...]`) under the names its layer spec maps them to (`sharded_state_dict_keys_map`, e.g.
    `input_layernorm.` -> `self_attention.linear_qkv.layer_norm_`), an MoE layer's experts stacked too
    (`decoder.layers.mlp.experts.experts.{suffix}` of shape `[num_layers, num_experts, ...]`); this undoes all.
    """
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.metadata import TensorStorageMetadata

    reader = dcp.FileSystemReader(str(dist_dir))
    tensors = {
        key: torch.empty(md.size, dtype=md.properties.dtype)
        for key, md in reader.read_metadata().state_dict_metadata.items()
        if isinstance(md, TensorStorageMetadata) and not key.startswith(_OPTIMIZER_PREFIX)
    }
    with warnings.catch_warnings():  # "assuming the intent is to load in a single process": it is
        warnings.filterwarnings("ignore", message=".*load in a single process")
        dcp.load(tensors, storage_reader=reader, no_dist=True)
    keys_map = layer_spec(arch).submodules.sharded_state_dict_keys_map
    saved_to_local = {saved: local for local, saved in keys_map.items()}
    full: dict[str, torch.Tensor] = {}
    for key, tensor in tensors.items():
        if not key.startswith(_LAYERS):
            full[key] = tensor
            continue
        suffix = key.removeprefix(_LAYERS)
        for saved, local in saved_to_local.items():
            if suffix.startswith(saved):
                suffix = local + suffix.removeprefix(saved)
        if tensor.shape[0] != arch.num_layers:
            raise ValueError(f"{key}: expected {arch.num_layers} stacked layers, found shape {tuple(tensor.shape)}")
        for i, layer in enumerate(tensor.unbind(0)):
            if suffix.startswith(_STACKED_EXPERTS):  # [num_experts, ...] within the layer
                weight = suffix.removeprefix(_STACKED_EXPERTS)
                for e, expert in enumerate(layer.unbind(0)):
                    full[f"{_LAYERS}{i}.mlp.experts.local_experts.{e}.{weight}"] = expert
            else:
                full[f"{_LAYERS}{i}.{suffix}"] = layer
    return full
