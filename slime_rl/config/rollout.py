"""Rollout settings (`rollout` group): sampling, batch sizes, APRIL, the generate hook and rewards."""

from dataclasses import dataclass, field

from slime_rl.config.checks import check_choice
from slime_rl.errors import ConfigError


@dataclass
class ReliabilityConfig:
    """`rollout.reward.reliability`: settings of `kind=reliability` (rollout/rewards/reliability.py).

    A prompt whose label equals `abstain_answer` (case- and whitespace-insensitive) is unanswerable: abstaining
    is its correct answer. The inner reward scores the other (answerable) prompts.
    """

    inner: str | None = None  # correctness reward wrapped: a rule name, "custom" (uses reward.path) or "remote"
    abstain_answer: str = "I don't know"  # an extracted answer equal to this is an abstention
    correct: float = 1.0  # reward of a correct answer (and of an abstention on an unanswerable prompt)
    abstain: float = 0.0  # reward of an abstention on an answerable prompt
    wrong: float = -1.0  # reward of a wrong answer (any answer to an unanswerable prompt)
    min_correct_reward: float = 1.0  # inner reward at or above which an answer counts as correct


@dataclass
class RewardConfig:
    kind: str = "math"  # built-in rule name (see rollout.rewards), "custom", "remote" or "reliability"
    path: str | None = None  # "module:function" for kind=custom (or reliability.inner=custom)
    url: str | None = None  # POST endpoint for kind=remote (or reliability.inner=remote)
    timeout_s: float = 30.0  # seconds per remote reward call
    reliability: ReliabilityConfig = field(default_factory=ReliabilityConfig)  # kind=reliability only

    def __post_init__(self) -> None:
        rel = self.reliability
        if self.kind != "reliability":
            if rel.inner is not None:
                raise ConfigError(
                    f"rollout.reward.reliability.inner={rel.inner!r} is set but rollout.reward.kind={self.kind!r}; "
                    "set rollout.reward.kind=reliability or drop the inner reward"
                )
            return
        if rel.inner is None:
            raise ConfigError(
                "rollout.reward.kind=reliability needs rollout.reward.reliability.inner=<a rule name, custom or remote>"
            )
        if rel.inner == "reliability":
            raise ConfigError(
                "rollout.reward.reliability.inner=reliability cannot wrap itself; name a correctness reward "
                "(a rule name, custom or remote)"
            )
        needs = {"custom": ("path", "'module:function'"), "remote": ("url", "'http://host:port/path'")}
        if rel.inner in needs and getattr(self, needs[rel.inner][0]) is None:
            key, example = needs[rel.inner]
            raise ConfigError(f"rollout.reward.reliability.inner={rel.inner} needs rollout.reward.{key}={example}")
        if not rel.abstain_answer.strip():
            raise ConfigError("rollout.reward.reliability.abstain_answer is empty; set the text that means abstaining")
        if not rel.wrong <= rel.abstain <= rel.correct or rel.wrong == rel.correct:
            raise ConfigError(
                f"rollout.reward.reliability weights must satisfy wrong <= abstain <= correct with wrong < correct, "
                f"got wrong={rel.wrong}, abstain={rel.abstain}, correct={rel.correct}; reorder them"
            )


GENERATE_KINDS = ("single_turn", "multi_turn", "custom")


@dataclass
class GenerateConfig:
    """`rollout.generate`: how one sample is generated (rollout/hook.py states the hook contract)."""

    kind: str = "single_turn"  # single_turn | multi_turn (tool use, `tools` node) | custom (uses path)
    path: str | None = None  # "package.module:function" for kind=custom: `async def fn(ctx, sample) -> None`
    max_turns: int = 4  # kind=multi_turn: policy turns per sample (each ends at a tool call or an answer)

    def __post_init__(self) -> None:
        check_choice("rollout.generate.kind", self.kind, GENERATE_KINDS)
        if self.kind == "custom" and (self.path is None or self.path.count(":") != 1):
            raise ConfigError(
                f"rollout.generate.kind=custom needs rollout.generate.path='package.module:function', got {self.path!r}"
            )
        if self.kind != "custom" and self.path is not None:
            raise ConfigError(
                f"rollout.generate.path={self.path!r} is set but rollout.generate.kind={self.kind}; "
                "set rollout.generate.kind=custom or drop the path"
            )
        if self.max_turns < 1:
            raise ConfigError(f"rollout.generate.max_turns must be >= 1 turns, got {self.max_turns}")


@dataclass
class RolloutConfig:
    rollout_batch_size: int = 8  # prompt groups per training step
    n_samples_per_prompt: int = 8  # group size for group-relative advantages
    max_new_tokens: int = 64  # response tokens per sample
    temperature: float = 1.0  # sampling temperature (1.0 = the policy's own distribution)
    top_p: float = 1.0  # nucleus sampling mass
    top_k: int = -1  # -1 = whole vocabulary
    max_concurrent_requests: int = 256  # requests in flight through the router
    use_april: bool = False  # APRIL: over-provision, abort at target, recycle partials
    over_sampling_batch_size: int | None = None  # APRIL keeps this many groups' worth of requests in flight (a group
    # is taken whenever n_samples_per_prompt requests returned); None = 2 x rollout_batch_size
    partial_policy: str = "recompute"  # recompute | mask_stale | tis: treatment of resumed stale tokens
    max_partial_staleness: int | None = None  # versions a resumed partial may lag; older ones restart; None = never
    dynamic_filter: str | None = None  # "nonzero_std" or "module:function"; None = keep every group
    max_filter_drops_per_step: int | None = None  # groups the filter may drop per step, then it keeps them;
    # None = the groups in flight (rollout_batch_size, or the over-sampling size under APRIL)
    max_failed_groups_per_step: int = 16  # groups whose engine failed in one step before generate raises
    abort_timeout_s: float = 60.0  # seconds APRIL waits for aborted requests to return before cancelling them
    seed: int = 1234  # sampling seed base
    reward: RewardConfig = field(default_factory=RewardConfig)
    generate: GenerateConfig = field(default_factory=GenerateConfig)

    def __post_init__(self) -> None:
        check_choice("rollout.partial_policy", self.partial_policy, ("recompute", "mask_stale", "tis"))
        for key in ("rollout_batch_size", "n_samples_per_prompt", "max_new_tokens", "max_concurrent_requests"):
            if getattr(self, key) < 1:
                raise ConfigError(f"rollout.{key} must be >= 1, got {getattr(self, key)}")
        if self.temperature < 0:
            raise ConfigError(f"rollout.temperature must be >= 0, got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise ConfigError(f"rollout.top_p must be in (0, 1], got {self.top_p}")
        for key in ("max_partial_staleness", "max_filter_drops_per_step"):
            if getattr(self, key) is not None and getattr(self, key) < 0:
                raise ConfigError(f"rollout.{key} must be >= 0 or null, got {getattr(self, key)}")
        if self.max_failed_groups_per_step < 1:
            raise ConfigError(f"rollout.max_failed_groups_per_step must be >= 1, got {self.max_failed_groups_per_step}")
        if self.abort_timeout_s <= 0:
            raise ConfigError(f"rollout.abort_timeout_s must be > 0, got {self.abort_timeout_s}")
        if self.over_sampling_batch_size is not None and self.over_sampling_batch_size < self.rollout_batch_size:
            raise ConfigError(
                f"rollout.over_sampling_batch_size={self.over_sampling_batch_size} is below "
                f"rollout.rollout_batch_size={self.rollout_batch_size}; APRIL needs at least the target in flight"
            )


def groups_in_flight(cfg: RolloutConfig) -> int:
    """Groups kept in flight per step: the target without APRIL, the over-sampling size with it."""
    if not cfg.use_april:
        return cfg.rollout_batch_size
    return cfg.over_sampling_batch_size or 2 * cfg.rollout_batch_size


def max_filter_drops(cfg: RolloutConfig) -> int:
    """Groups the dynamic filter may drop in one step before filtered groups are kept (never starve a step)."""
    if cfg.max_filter_drops_per_step is not None:
        return cfg.max_filter_drops_per_step
    return groups_in_flight(cfg)
