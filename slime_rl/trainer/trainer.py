"""`MegatronTrainer`: one rank of the Megatron-core training group (the plain class inside the Ray shell).

Owns the per-rank training step: Megatron DDP, `get_megatron_optimizer` and `get_forward_backward_func`
(micro-batches and pipeline schedules), on GPU and CPU alike through `cpu_compat.device_scope`. Every
rank of the group calls each public method with the same arguments (ranks of one data-parallel replica
get the same batch); collective methods return the same result on every rank of a replica.

It does not choose batches, compute advantages from rewards or talk to Ray: the driver does.
"""

from __future__ import annotations

import contextlib
import logging
import socket
import time
import warnings
from collections.abc import Callable, Iterator
from functools import partial
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

from slime_rl.config import AlgorithmConfig, ModelConfig, TrainerConfig
from slime_rl.cuda_compat import avoid_per_shape_attention_plans
from slime_rl.errors import ConfigError
from slime_rl.trainer import checkpoint, hf_convert, weights
from slime_rl.trainer.batching import (
    MicroBatch,
    build_micro_batches,
    flat_response_array,
    padded_plan,
    plan_micro_batches,
    plan_shape,
    split_flat,
)
from slime_rl.trainer.cpu_compat import device_scope, has_cuda, optimizer_step
from slime_rl.trainer.logprobs import vocab_parallel_logprobs
from slime_rl.trainer.lr_schedule import make_lr_schedule, run_lr_decay_steps
from slime_rl.trainer.model import arch_from_hf, build_gpt_model, transformer_config
from slime_rl.trainer.moe_metrics import ExpertLoad
from slime_rl.trainer.objective import StepTotals, TokenInputs, rl_objective, sft_objective
from slime_rl.trainer.parallel import init_parallel
from slime_rl.trainer.param_buffer import move_into_buffer
from slime_rl.trainer.weight_sync import WeightPublisher, publish
from slime_rl.types import Sample, TrainBatch

logger = logging.getLogger(__name__)

_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}

# loss_fn(micro-batch, logprobs [T], entropy [T], totals) -> (micro-batch share of the loss, metric shares)
LossFn = Callable[[MicroBatch, torch.Tensor, torch.Tensor, StepTotals], tuple[torch.Tensor, dict[str, torch.Tensor]]]


class MegatronTrainer:
    """One trainer rank. Call `init()` once on every rank before anything else."""

    def __init__(
        self,
        model_cfg: ModelConfig,
        trainer_cfg: TrainerConfig,
        algo_cfg: AlgorithmConfig,
        rank: int,
        world_size: int,
        master_addr: str,
        master_port: int,
        listener: socket.socket | None = None,
        lr_decay_steps: int | None = None,  # lr_schedule.run_lr_decay_steps(cfg, the run's steps)
    ) -> None:
        self.model_cfg, self.cfg, self.algo = model_cfg, trainer_cfg, algo_cfg
        if lr_decay_steps is None and trainer_cfg.lr_decay_steps is None and trainer_cfg.lr_decay_style != "constant":
            raise ConfigError(
                f"trainer.lr_decay_style={trainer_cfg.lr_decay_style} needs the steps it decays over: set "
                "trainer.lr_decay_steps"
            )
        self.lr_decay_steps = lr_decay_steps or run_lr_decay_steps(trainer_cfg, 0)
        self.rank, self.world_size = rank, world_size
        self.master_addr, self.master_port = master_addr, master_port
        self.listener = listener  # rank 0: the socket at master_addr:master_port its store listens on
        self.dtype = _DTYPES[model_cfg.dtype]

    @property
    def device(self) -> torch.device:
        """This rank's device; on CUDA, the GPU `init_parallel` selected."""
        return torch.device("cuda", torch.cuda.current_device()) if has_cuda() else torch.device("cpu")

    # -- set-up ----------------------------------------------------------------------------------------

    def init(self) -> None:
        """Join the process groups, build the model from `model_cfg.path`, wrap it in DDP, build the optimizer."""
        # Megatron warns on every import that the optional fused kernels (Apex, Transformer Engine) are
        # missing; the local fallbacks are what this trainer uses on purpose.
        warnings.filterwarnings("ignore", message=".*(Apex|Transformer Engine).*not installed")
        warnings.filterwarnings("ignore", message="full scope is deprecated")
        from megatron.core.distributed import DistributedDataParallel, DistributedDataParallelConfig
        from megatron.core.distributed.finalize_model_grads import finalize_model_grads
        from megatron.core.optimizer import OptimizerConfig, get_megatron_optimizer

        cfg = self.cfg
        if cfg.world_size != self.world_size:
            raise ConfigError(f"trainer tp*pp*dp={cfg.world_size} but the group has {self.world_size} ranks")
        if has_cuda():
            avoid_per_shape_attention_plans()
        else:
            if self.dtype != torch.float32:
                raise ConfigError(f"model.dtype={self.model_cfg.dtype!r}: CPU training needs float32")
            torch.set_num_threads(cfg.num_cpus_per_rank)
        self.layout = init_parallel(
            rank=self.rank,
            world_size=self.world_size,
            master_addr=self.master_addr,
            master_port=self.master_port,
            tp_size=cfg.tensor_model_parallel_size,
            pp_size=cfg.pipeline_model_parallel_size,
            ep_size=cfg.expert_model_parallel_size,
            seed=cfg.seed,
            listener=self.listener,
        )
        self.arch = arch_from_hf(weights.read_hf_config(self.model_cfg.path))
        self.tf_config = transformer_config(
            self.arch,
            tp_size=self.layout.tp_size,
            pp_size=self.layout.pp_size,
            ep_size=self.layout.ep_size,
            dtype=self.dtype,
        )
        with device_scope():
            self.model = build_gpt_model(
                self.arch,
                self.tf_config,
                pre_process=self.layout.is_first_stage,
                post_process=self.layout.is_last_stage,
            )
            weights.load_hf_into_model(self.model, self.arch, weights.read_hf_tensors(self.model_cfg.path), self.layout)
            self.publish_split = self._lay_out_parameters()  # where publishing splits q/k/v (None: anywhere)
            self.ddp = DistributedDataParallel(
                self.tf_config,
                DistributedDataParallelConfig(
                    grad_reduce_in_fp32=True, use_distributed_optimizer=cfg.use_distributed_optimizer
                ),
                self.model,
            )
            opt_cfg = OptimizerConfig(
                optimizer="adam",
                lr=cfg.lr,
                min_lr=cfg.min_lr,
                weight_decay=cfg.weight_decay,
                adam_beta1=cfg.adam_beta1,
                adam_beta2=cfg.adam_beta2,
                adam_eps=cfg.adam_eps,
                clip_grad=cfg.clip_grad if has_cuda() else 0.0,  # CPU: cpu_compat.optimizer_step clips
                bf16=self.dtype == torch.bfloat16,
                fp16=self.dtype == torch.float16,
                params_dtype=self.dtype,
                use_distributed_optimizer=cfg.use_distributed_optimizer,
            )
            self.optimizer = get_megatron_optimizer(opt_cfg, [self.ddp], use_gloo_process_groups=False)
            self.lr_schedule = make_lr_schedule(self.optimizer, cfg, self.lr_decay_steps)
        self.tf_config.no_sync_func = self.ddp.no_sync
        self.tf_config.finalize_model_grads_func = finalize_model_grads
        self.tf_config.grad_scale_func = self.optimizer.scale_loss
        # Token-budgeted micro-batches differ in shape: pipeline stages then send each shape before the tensor.
        self.tf_config.variable_seq_lengths = cfg.max_tokens_per_micro_batch is not None
        # Reference policy for the KL term: the initial weights, kept on the host and swapped in on demand.
        self.ref_params = (
            [p.detach().to("cpu", copy=True) for p in self.model.parameters()] if self.algo.kl_coef > 0 else None
        )
        vocab_per_rank = self.arch.padded_vocab_size(self.layout.tp_size) // self.layout.tp_size
        self.vocab_start = self.layout.tp_rank * vocab_per_rank
        self.version = 0
        self.publisher: WeightPublisher | None = None  # rank 0's weight-update groups, built on first publish
        self.expert_load = ExpertLoad(self.model, self.arch.moe.num_experts) if self.arch.moe is not None else None

    def _lay_out_parameters(self) -> torch.Tensor | None:
        """Move the parameters into one buffer in `hf_convert.publish_order` (param_buffer.py); on the rank that
        publishes its own whole model (TP=PP=1, DP rank 0), with room after them for the q/k/v split, which is
        returned. Nothing moves with the distributed optimizer (DDP keeps the parameters in its own buffer) or on
        CUDA, where the gather copies the weights to the host (`weights.gather_hf_state_dict`), so publishing
        never sends from the parameters' memory and a second copy of them would only cost device memory."""
        if self.cfg.use_distributed_optimizer or has_cuda():
            return None
        named = [(name, p) for name, p in self.model.named_parameters() if p.dtype == self.dtype]
        params = sorted(named, key=lambda item: hf_convert.publish_order(item[0]))
        publishes_whole_model = self.layout.tp_size == self.layout.pp_size == 1 and self.layout.dp_rank == 0
        spare = sum(p.numel() for n, p in params if hf_convert.published_as_copy(n)) if publishes_whole_model else 0
        buffer = move_into_buffer([p for _, p in params], spare=spare)
        return buffer[buffer.numel() - spare :] if spare else None

    # -- forward / backward ------------------------------------------------------------------------------

    def _token_logprobs(self, mb: MicroBatch, logits: torch.Tensor, with_entropy: bool):
        from megatron.core import parallel_state as mpu

        picked = logits[mb.rows, mb.cols]  # [T, V_local]
        return vocab_parallel_logprobs(
            picked,
            mb.targets,
            vocab_start=self.vocab_start,
            vocab_size=self.arch.vocab_size,
            temperature=self.cfg.logprob_temperature,
            tp_group=mpu.get_tensor_model_parallel_group() if self.layout.tp_size > 1 else None,
            with_entropy=with_entropy,
        )

    def _micro_batches(self, samples: list[Sample]) -> list[MicroBatch]:
        """`samples` laid out for the schedule: fixed shapes, or by `trainer.max_tokens_per_micro_batch`."""
        plan = plan_micro_batches(
            samples, max_rows=self.cfg.micro_batch_size, max_tokens=self.cfg.max_tokens_per_micro_batch
        )
        if self.layout.ep_size > 1:
            # Expert-parallel ranks exchange tokens inside every MoE layer, so the DP ranks run the same number
            # of micro-batches, of one shape (Megatron's all-gather dispatcher, used on CPU, needs equal shapes).
            from megatron.core import parallel_state as mpu

            shape = torch.tensor(plan_shape(plan, samples), device=self.device)
            dist.all_reduce(shape, op=dist.ReduceOp.MAX, group=mpu.get_data_parallel_group())
            plan = padded_plan(plan, *(int(n) for n in shape.tolist()))
        return build_micro_batches(samples, plan)

    def _run_schedule(self, mbs: list[MicroBatch], loss_fn: Callable, *, forward_only: bool) -> list[dict]:
        """Run Megatron's forward(-backward) schedule over `mbs`; returns the last stage's loss dicts.

        `seq_length` and `micro_batch_size` give the pipeline's activation shape; with a token budget the
        shapes vary and the stages exchange each one first (`variable_seq_lengths`, set in `__init__`).
        """
        from megatron.core.pipeline_parallel import get_forward_backward_func

        def forward_step(data_iterator: Iterator[MicroBatch], model: torch.nn.Module):
            mb = next(data_iterator).to(self.device)
            # Padding positions stay out of an MoE model's load-balancing loss and expert counts.
            padding_mask = mb.padding_mask if self.arch.moe is not None else None
            output = model(mb.input_ids, mb.position_ids, None, padding_mask=padding_mask)
            return output, partial(loss_fn, mb, len(mbs))

        grad_mode = torch.no_grad() if forward_only else contextlib.nullcontext()
        with device_scope(), grad_mode:
            return get_forward_backward_func()(
                forward_step_func=forward_step,
                data_iterator=iter(mbs),
                model=[self.ddp],
                num_microbatches=len(mbs),
                seq_length=max((mb.input_ids.shape[1] for mb in mbs), default=1),
                micro_batch_size=max((mb.input_ids.shape[0] for mb in mbs), default=1),
                forward_only=forward_only,
            )

    def _forward_logprobs(self, samples: list[Sample]) -> torch.Tensor | None:
        """Response-token logprobs `[T_batch]` (no grad) on the last pipeline stage; None on other stages."""

        def loss_fn(mb: MicroBatch, num_mbs: int, logits: torch.Tensor):
            logprobs, _ = self._token_logprobs(mb, logits, with_entropy=False)
            return logits.new_zeros(()), {"logprobs": logprobs}

        mbs = self._micro_batches(samples)
        stores = self._run_schedule(mbs, loss_fn, forward_only=True)
        if not self.layout.is_last_stage:
            return None
        logprobs = torch.zeros(sum(len(s.response_ids) for s in samples))
        if mbs:  # back to batch order (a token budget reorders samples)
            index = torch.cat([mb.token_index for mb in mbs])
            logprobs[index] = torch.cat([s["logprobs"].float().cpu() for s in stores])
        return logprobs

    @contextlib.contextmanager
    def _reference_weights(self) -> Iterator[None]:
        """Swap the reference policy's weights in for the duration of the block."""
        params = list(self.model.parameters())
        current = [p.detach().to("cpu", copy=True) for p in params]
        with torch.no_grad():
            for p, ref in zip(params, self.ref_params or [], strict=True):
                p.copy_(ref)
            try:
                yield
            finally:
                for p, cur in zip(params, current, strict=True):
                    p.copy_(cur)

    def _step_totals(self, samples: list[Sample]) -> tuple[StepTotals, int]:
        """Trained tokens and samples over all DP ranks, and the DP-wide number of tokens."""
        from megatron.core import parallel_state as mpu

        trained = [int(s.loss_mask.sum()) for s in samples]
        counts = torch.tensor(
            [sum(trained), sum(t > 0 for t in trained), len(samples), sum(s.num_tokens for s in samples)],
            device=self.device,
        )
        dist.all_reduce(counts, group=mpu.get_data_parallel_group())
        num_tokens, num_samples, num_all_samples, all_tokens = (int(c) for c in counts.tolist())
        return StepTotals(num_tokens=num_tokens, num_samples=num_samples, num_all_samples=num_all_samples), all_tokens

    def _optimizer_step(self, samples: list[Sample], loss_fn: LossFn) -> dict[str, float]:
        """One optimizer step on `samples`; returns `train/...` metrics (the same on every rank)."""
        totals, all_tokens = self._step_totals(samples)
        # Megatron divides each micro-batch loss by the number of micro-batches and DDP averages gradients
        # over DP ranks; our micro-batch losses are already shares of the global mean, so undo both.
        dp_size = self.layout.dp_size

        def schedule_loss(mb: MicroBatch, num_mbs: int, logits: torch.Tensor):
            logprobs, entropy = self._token_logprobs(mb, logits, with_entropy=True)
            loss, metrics = loss_fn(mb, logprobs, entropy, totals)
            return loss * (num_mbs * dp_size), metrics

        self.ddp.zero_grad_buffer()
        self.optimizer.zero_grad()
        mbs = self._micro_batches(samples)
        stores = self._run_schedule(mbs, schedule_loss, forward_only=False)
        with device_scope():
            success, grad_norm = optimizer_step(self.optimizer, self.cfg.clip_grad)
        metrics = self._reduce_metrics(stores)
        metrics |= {"train/grad_norm": grad_norm, "train/step_skipped": float(not success)}
        if self.expert_load is not None:
            metrics |= self.expert_load.step_metrics(self.layout, len(mbs), self.arch.num_layers)
        return metrics | {"perf/num_tokens": float(all_tokens)}

    def _reduce_metrics(self, stores: list[dict[str, torch.Tensor]]) -> dict[str, float]:
        """Sum additive metric shares over micro-batches and DP ranks; send them to every pipeline stage."""
        from megatron.core import parallel_state as mpu

        result: list[Any] = [None]
        if self.layout.is_last_stage:
            keys = sorted(stores[0]) if stores else []
            values = torch.stack([sum(s[k].detach().float() for s in stores) for k in keys]) if keys else None
            if values is not None:
                dist.all_reduce(values, group=mpu.get_data_parallel_group())
                result = [{f"train/{k}": float(v) for k, v in zip(keys, values.tolist(), strict=True)}]
            else:
                result = [{}]
        if self.layout.pp_size > 1:
            group = mpu.get_pipeline_model_parallel_group()
            dist.broadcast_object_list(result, src=dist.get_global_rank(group, self.layout.pp_size - 1), group=group)
        return result[0]

    def _broadcast_from_last_stage(self, flat: torch.Tensor | None, num_tokens: int) -> torch.Tensor:
        from megatron.core import parallel_state as mpu

        if self.layout.pp_size == 1:
            assert flat is not None
            return flat
        group = mpu.get_pipeline_model_parallel_group()
        buf = (flat if flat is not None else torch.empty(num_tokens)).to(self.device)
        dist.broadcast(buf, src=dist.get_global_rank(group, self.layout.pp_size - 1), group=group)
        return buf.cpu()

    # -- public API (the TrainGroup methods) ---------------------------------------------------------------

    def compute_logprobs(self, batch: TrainBatch) -> list[np.ndarray]:
        """Per-sample float32 logprobs of every response token under the current weights."""
        num_tokens = sum(len(s.response_ids) for s in batch.samples)
        flat = self._broadcast_from_last_stage(self._forward_logprobs(batch.samples), num_tokens)
        return split_flat(flat.numpy().astype(np.float32), batch.samples)

    def train(self, batch: TrainBatch) -> dict[str, float]:
        """RL update(s) on `batch`: `num_steps_per_batch` optimizer steps; returns averaged metrics."""
        start = time.perf_counter()
        samples = batch.samples
        rollout = torch.from_numpy(flat_response_array(samples, "rollout_logprobs")).float()
        needs_prox = self.algo.recompute_old_logprobs or self.algo.off_policy == "decoupled_ppo"
        old = self._forward_logprobs(samples) if needs_prox else rollout
        ref = None
        if self.ref_params is not None:
            with self._reference_weights():
                ref = self._forward_logprobs(samples)
        lengths = [len(s.response_ids) for s in samples]
        per_token = {
            "old": old,
            "rollout": rollout,
            "ref": ref,
            "advantages": torch.from_numpy(np.repeat(batch.advantages, lengths)).float(),
            "mask": torch.from_numpy(flat_response_array(samples, "loss_mask")).bool(),
        }
        offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(int)
        all_metrics = []
        for chunk in np.array_split(np.arange(len(samples)), self.cfg.num_steps_per_batch):
            lo, hi = int(chunk[0]), int(chunk[-1]) + 1
            base = int(offsets[lo])
            chunk_tokens = {k: (v[base : offsets[hi]] if v is not None else None) for k, v in per_token.items()}
            self.lr_schedule.step(0)  # this step's rate (a supervised warm-up may have set its own)
            lr = self.optimizer.param_groups[0]["lr"]
            all_metrics.append(
                self._optimizer_step(samples[lo:hi], partial(self._rl_loss, chunk_tokens)) | {"train/lr": lr}
            )
            self.lr_schedule.step(1)
        self.version += 1
        return self._summarise(all_metrics, time.perf_counter() - start)

    def _rl_loss(self, tokens: dict, mb: MicroBatch, logprobs, entropy, totals: StepTotals):
        def take(key: str) -> torch.Tensor:
            return tokens[key][mb.token_index].to(self.device)

        inputs = TokenInputs(
            logprobs=logprobs,
            entropy=entropy,
            old_logprobs=take("old"),
            rollout_logprobs=take("rollout"),
            ref_logprobs=take("ref") if tokens["ref"] is not None else None,
            advantages=take("advantages"),
            mask=take("mask"),
            sample_index=mb.rows,
            num_samples=mb.num_samples,
        )
        return rl_objective(inputs, self.algo, totals)

    def set_lr(self, lr: float) -> None:
        """Set the learning rate of every parameter group (the `sft` stage's own rate); the next RL step runs at
        the schedule's rate again (`lr_schedule`)."""
        for group in self.optimizer.param_groups:
            group["lr"] = lr

    def train_sft(self, batch: TrainBatch) -> dict[str, float]:
        """One supervised step: token-mean NLL of the response tokens where `loss_mask` is set."""
        start = time.perf_counter()
        mask = torch.from_numpy(flat_response_array(batch.samples, "loss_mask")).bool()

        def loss_fn(mb: MicroBatch, logprobs, entropy, totals: StepTotals):
            return sft_objective(logprobs, mask[mb.token_index].to(self.device), totals)

        metrics = self._optimizer_step(batch.samples, loss_fn)
        self.version += 1
        return self._summarise([metrics], time.perf_counter() - start)

    @staticmethod
    def _summarise(step_metrics: list[dict[str, float]], elapsed_s: float) -> dict[str, float]:
        keys = [k for k in step_metrics[0] if k != "perf/num_tokens"]
        out = {k: float(np.mean([m.get(k, np.nan) for m in step_metrics])) for k in keys}
        num_tokens = sum(m["perf/num_tokens"] for m in step_metrics)
        return out | {
            "perf/train_tokens_per_s": num_tokens / max(elapsed_s, 1e-9),
            "perf/train_compute_time_s": elapsed_s,
        }

    def publish_weights(self, engine_urls: list[str], version: int) -> dict[str, float]:
        """Send the current weights to every engine as weight `version` (collective; rank 0 talks to engines)."""
        return publish(self, engine_urls, version)

    def save(self, step: int) -> None:
        """Save model, optimizer and `step` under `trainer.checkpoint_dir` (collective)."""
        checkpoint.save(self, step)

    def load(self) -> int | None:
        """Load the latest checkpoint in `trainer.checkpoint_dir`; returns its step, or None if there is none."""
        return checkpoint.load(self)

    def export_hf(self, path: str) -> None:
        """Write the current weights as a plain HF model directory on rank 0 (collective)."""
        hf = weights.gather_hf_state_dict(self.model, self.arch, self.layout)
        if hf is not None:
            weights.write_hf_dir(hf, path, side_files_from=self.model_cfg.path)
