"""Trainer checkpoints: model + optimizer + step as per-rank torch state dicts, and HF export from them.

Layout of `{checkpoint_dir}/step_{step:08d}/`: `model_tp{t}_pp{p}.pt` (this rank's parameters under
stage-local names), `optim_tp{t}_pp{p}.pt` (Megatron optimizer state), `meta.json` (step, weight
version, TP/PP sizes) and `hf/` (the HF config and tokenizer files, so export needs nothing else).
`{checkpoint_dir}/latest` names the newest complete step; it is written last, so a crash during a
save leaves the previous checkpoint in force. Data-parallel replicas hold identical state, so only
replica 0 writes. Megatron's dist-checkpointing (resharding on load) is not used: loading requires the
TP/PP sizes the checkpoint was saved with; convert through `export_checkpoint_to_hf` to change them.
"""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path
from typing import TYPE_CHECKING

import torch
import torch.distributed as dist

from slime_rl.errors import ConfigError
from slime_rl.trainer import hf_convert, weights
from slime_rl.trainer.model import arch_from_hf

if TYPE_CHECKING:
    from slime_rl.trainer.trainer import MegatronTrainer

logger = logging.getLogger(__name__)


def _root(trainer: MegatronTrainer) -> Path:
    if trainer.cfg.checkpoint_dir is None:
        raise ConfigError("trainer.checkpoint_dir is not set; the driver sets it to {run dir}/checkpoints")
    return Path(trainer.cfg.checkpoint_dir)


def _rank_file(step_dir: Path, kind: str, tp_rank: int, pp_rank: int) -> Path:
    return step_dir / f"{kind}_tp{tp_rank}_pp{pp_rank}.pt"


def step_dir(root: str | Path, step: int) -> Path:
    """The directory of checkpoint `step` under the checkpoint root."""
    return Path(root) / f"step_{step:08d}"


def save(trainer: MegatronTrainer, step: int) -> Path:
    """Write this rank's share of checkpoint `step` (collective); returns the step directory.

    Keeps the newest `trainer.max_checkpoints_to_keep` step directories (0 = all) once `latest` is written.
    """
    layout = trainer.layout
    out_dir = step_dir(_root(trainer), step)
    if layout.dp_rank == 0:
        out_dir.mkdir(parents=True, exist_ok=True)
        params = {name: p.detach().cpu() for name, p in trainer.model.named_parameters()}
        torch.save(params, _rank_file(out_dir, "model", layout.tp_rank, layout.pp_rank))
        torch.save(trainer.optimizer.state_dict(), _rank_file(out_dir, "optim", layout.tp_rank, layout.pp_rank))
    if dist.get_rank() == 0:
        meta = {
            "step": step,
            "version": trainer.version,
            "tp_size": layout.tp_size,
            "pp_size": layout.pp_size,
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
            for old in sorted(_root(trainer).glob("step_*"))[: -trainer.cfg.max_checkpoints_to_keep]:
                shutil.rmtree(old)
    dist.barrier()
    return out_dir


def latest_step_dir(root: str | Path) -> Path | None:
    """The step directory `root/latest` points to, or None when nothing was saved."""
    marker = Path(root) / "latest"
    return Path(root) / marker.read_text().strip() if marker.exists() else None


def load(trainer: MegatronTrainer) -> int | None:
    """Restore the latest checkpoint into the trainer (collective); returns its step or None if none."""
    if trainer.cfg.checkpoint_dir is None or not trainer.cfg.load_checkpoint:
        return None
    step_dir = latest_step_dir(trainer.cfg.checkpoint_dir)
    if step_dir is None:
        return None
    layout = trainer.layout
    meta = json.loads((step_dir / "meta.json").read_text())
    if (meta["tp_size"], meta["pp_size"]) != (layout.tp_size, layout.pp_size):
        raise ConfigError(
            f"checkpoint {step_dir} was saved with tp={meta['tp_size']} pp={meta['pp_size']}, the trainer runs "
            f"tp={layout.tp_size} pp={layout.pp_size}; export it with `slime-rl export-hf` and start from that"
        )
    params = torch.load(_rank_file(step_dir, "model", layout.tp_rank, layout.pp_rank), weights_only=True)
    with torch.no_grad():
        for name, p in trainer.model.named_parameters():
            p.copy_(params[name])
    optim_state = torch.load(_rank_file(step_dir, "optim", layout.tp_rank, layout.pp_rank), weights_only=False)
    trainer.optimizer.load_state_dict(optim_state)
    if "lr_schedule" in meta:  # checkpoints from before the schedule resume it from step 0
        trainer.lr_schedule.load_state_dict(meta["lr_schedule"])
    trainer.version = int(meta["version"])
    logger.info("loaded checkpoint %s (step %d)", step_dir, meta["step"])
    return int(meta["step"])


def export_checkpoint_to_hf(checkpoint: str | Path, out: str | Path) -> Path:
    """Convert a checkpoint (a step directory, or a checkpoint root with `latest`) to an HF directory.

    Runs in one process without torch.distributed: it reads every rank's file and merges the shards.
    """
    step_dir = latest_step_dir(checkpoint) or Path(checkpoint)
    if not (step_dir / "meta.json").exists():
        raise ConfigError(f"{checkpoint} is not a checkpoint: no meta.json (and no `latest` marker)")
    meta = json.loads((step_dir / "meta.json").read_text())
    arch = arch_from_hf(weights.read_hf_config(step_dir / "hf"))
    full: dict[str, torch.Tensor] = {}
    for pp_rank in range(meta["pp_size"]):
        shards = [
            torch.load(_rank_file(step_dir, "model", tp_rank, pp_rank), weights_only=True)
            for tp_rank in range(meta["tp_size"])
        ]
        offset = hf_convert.stage_layers(arch, pp_rank=pp_rank, pp_size=meta["pp_size"]).start
        for name in shards[0]:
            if name == "output_layer.weight" and arch.tie_word_embeddings:
                continue
            full[hf_convert.to_global_name(name, offset)] = hf_convert.unshard(name, [s[name] for s in shards])
    return weights.write_hf_dir(hf_convert.megatron_full_to_hf(full, arch), out, side_files_from=step_dir / "hf")
