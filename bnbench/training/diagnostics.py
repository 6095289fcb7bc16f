"""What the norm does inside the network, recorded during training (`train.diagnostics: true`).

At a diagnostic point the model runs forward and backward once on a fixed probe batch (the same
images for every run with the same seed), with hooks on every norm position that exist only for
that pass. Recorded per position (`norm1`, `norm2`, ...; the same names for every norm):

* act_*: the activation's input (after the norm when the norm comes first): mean, std, and the
  15/50/85th percentiles over the layer (`act_p15`...) and for one fixed unit (`unit_p15`...: feature 0,
  or channel 0 at the centre pixel); `units_path`: how far every unit's 15/50/85th percentiles have
  moved so far, summed over the probes (mean over units and percentiles of |q_now - q_before|; the
  probe batch is fixed, so weights that do not change add exactly 0); `saturated`: the fraction of
  sigmoid inputs with |x| > 4 or tanh inputs with |x| > 2, or for ReLU the fraction of units that are
  off for every probe example;
* norm_in_mean, norm_in_std: the norm's input;
* weight_*, bias_*: the norm's gamma and beta (mean, std; weight_off: the fraction with |gamma| < 0.1);
  for BN also running_mean_* and running_var_*,
  and the lag of the running statistics behind the probe batch's own, averaged over channels:
  lag_mean = |batch mean - running mean| / sqrt(running var), lag_var = batch var / running var;
* weight_norm, effective_lr = lr / weight_norm^2 and grad_weight_norm of the Linear or Conv layer feeding the
  position, and grad_input_norm (its output).

The loss-landscape probe (Santurkar et al. 2018) runs at step 0, three times in the first epoch and at
the end of every epoch, as layer `model`: from the current weights w with probe gradient g, it steps to
w - t * lr * g for each t in `train.landscape_steps` and records the loss there (`loss_at_t`, and
their min and max: the variation band), gradient predictiveness `grad_change_max` = max_t |g_t - g|,
and effective beta-smoothness `beta_smoothness` = max_t |g_t - g| / |w_t - w|.

The landscape probe is noise-free: the injected noise of `norm.noise` and `model.dropout` are off for its
passes (BN still normalizes with the probe batch's statistics), its gradient g is taken afresh without them,
so every point is the same function of the weights and the loss differences measure the landscape, not fresh
noise draws (the per-position values above keep the noise: it is what moves the distributions). It also
records `landscape_loss` (L(w) without the noise: `loss` is the training-mode loss, noise and all),
`landscape_loss_range` (max - min of the losses along the step, Santurkar et al.'s Fig. 4a band) and
`grad_curvature` = g^T H g / |g|^2, the curvature along the gradient, by a Hessian-vector product (double
backward; NaN for a norm without a second derivative).

Everything a probe changes (weights, gradients, BN buffers, noise draws, torch's random state) is put back bit for bit,
and the optimizer is never touched, so a run's metrics are the same with and without diagnostics.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from bnbench.config import RunConfig
from bnbench.nn.models import NormAct
from bnbench.nn.norms import ShiftNoise, is_batch_norm, keep_noise_draws
from bnbench.records import DIAGNOSTICS
from bnbench.training.data import Split

POINTS_PER_EPOCH = 10
PERCENTILES = (15, 50, 85)
MAX_PERCENTILE_SAMPLE = 1 << 16  # percentiles over the whole layer use a fixed, evenly strided sample
SATURATION = {"sigmoid": 4.0, "tanh": 2.0}


def percentiles(x: torch.Tensor) -> torch.Tensor:
    """The 15th, 50th and 85th percentiles of `x` (linear interpolation, as numpy's default)."""
    flat = x.detach().flatten().float()
    flat = flat[:: max(1, flat.numel() // MAX_PERCENTILE_SAMPLE)]
    return torch.quantile(flat, torch.tensor([p / 100 for p in PERCENTILES], device=flat.device))


def unit_of(x: torch.Tensor) -> torch.Tensor:
    """The values of one fixed unit over the batch: feature 0, or channel 0 at the centre pixel."""
    return x[:, 0] if x.dim() == 2 else x[:, 0, x.shape[2] // 2, x.shape[3] // 2]


def units_of(x: torch.Tensor) -> torch.Tensor:
    """Every unit's values over the batch: (batch, features), or each channel at the centre pixel."""
    return x.flatten(1) if x.dim() == 2 else x[:, :, x.shape[2] // 2, x.shape[3] // 2]


def channel_stats(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel mean and unbiased variance, as BN computes them for its running statistics."""
    dims = (0,) if x.dim() == 2 else (0, 2, 3)
    return x.mean(dims), x.var(dims, unbiased=True)


def probe_indices(n: int, size: int, seed: int) -> torch.Tensor:
    """The probe batch: `size` training examples fixed by the seed, from a generator of its own."""
    return torch.randperm(n, generator=torch.Generator().manual_seed(seed))[: min(size, n)].sort().values


class Diagnostics:
    def __init__(self, model: nn.Module, train: Split, cfg: RunConfig, steps_per_epoch: int) -> None:
        tc = cfg.train
        self.model, self.cfg = model, cfg
        idx = probe_indices(len(train), tc.probe_size, tc.seed).to(train.x.device)
        self.x, self.y = train.x.index_select(0, idx), train.y.index_select(0, idx)
        self.every = tc.diag_every or math.ceil(steps_per_epoch / POINTS_PER_EPOCH)
        self.landscape_at = {0, *(steps_per_epoch * k // 8 for k in (1, 2, 4))}
        self.steps_per_epoch = steps_per_epoch
        # Each norm position and the Linear or Conv layer that feeds it (the last one before it).
        self.positions: dict[str, tuple[NormAct, nn.Module | None]] = {}
        self.unit_quantiles: dict[str, torch.Tensor] = {}  # per position, at the last probe: for units_path
        self.units_path: dict[str, torch.Tensor] = {}
        feeding = None
        for name, module in model.named_modules():
            if isinstance(module, (nn.Linear, nn.Conv2d)):
                feeding = module
            elif isinstance(module, NormAct):
                self.positions[name] = (module, feeding)

    def state(self) -> dict:
        return {"unit_quantiles": dict(self.unit_quantiles), "units_path": dict(self.units_path)}

    def load_state(self, state: dict) -> None:
        self.unit_quantiles = dict(state.get("unit_quantiles", {}))
        self.units_path = dict(state.get("units_path", {}))

    def due(self, step: int) -> bool:
        return step % self.every == 0 or step in self.landscape_at or step % self.steps_per_epoch == 0

    def _forward_backward(self) -> torch.Tensor:
        loss = F.cross_entropy(self.model(self.x), self.y)
        loss.backward()
        return loss.detach()

    def record(self, step: int, epoch: int, lr: float) -> list[dict]:
        """Probe the model at `step`; return diagnostics.csv rows. One host read for all values."""
        model = self.model
        params = [p for p in model.parameters() if p.requires_grad]
        grads = [None if p.grad is None else p.grad.clone() for p in params]
        buffers = {name: b.clone() for name, b in model.named_buffers()}
        captured: dict[str, dict[str, torch.Tensor]] = {name: {} for name in self.positions}
        hooks = []
        for name, (position, _) in self.positions.items():
            store = captured[name]

            def keep_input(_m: nn.Module, inputs: tuple, _out: torch.Tensor, store: dict = store) -> None:
                if inputs[0].requires_grad:  # not when every layer before it is frozen (train.trainable)
                    inputs[0].retain_grad()
                store["input"] = inputs[0]

            hooks += [
                position.register_forward_hook(keep_input),
                position.norm.register_forward_hook(lambda _m, i, _o, s=store: s.update(norm_in=i[0].detach())),
                position.act.register_forward_hook(lambda _m, i, _o, s=store: s.update(act_in=i[0].detach())),
            ]
        was_training = model.training
        model.train()
        model.zero_grad(set_to_none=True)
        draws = keep_noise_draws(model)
        draws.__enter__()  # noise counters (norm.noise) are put back with everything else, below
        rng = torch.get_rng_state()  # dropout's masks come from torch's generator: training's next ones unchanged
        cuda_rng = torch.cuda.get_rng_state(self.x.device) if self.x.device.type == "cuda" else None
        try:
            loss = self._forward_backward()
        finally:
            for hook in hooks:
                hook.remove()
        values: list[tuple[str, str, torch.Tensor]] = [("model", "loss", loss)]
        for name, (position, feeding) in self.positions.items():
            values += self._position_values(name, position, feeding, captured[name], buffers, lr)
        if step in self.landscape_at or step % self.steps_per_epoch == 0:
            values += self._landscape(params, lr, buffers)
        with torch.no_grad():
            for p, g in zip(params, grads, strict=True):
                p.grad = g
            for name, b in model.named_buffers():
                b.copy_(buffers[name])
        draws.__exit__()
        torch.set_rng_state(rng)
        if cuda_rng is not None:
            torch.cuda.set_rng_state(cuda_rng, self.x.device)
        model.train(was_training)
        numbers = torch.stack([v.detach().float().reshape(()) for _, _, v in values]).tolist()  # one read
        return [
            DIAGNOSTICS.row(step=step, epoch=epoch, layer=layer, quantity=quantity, value=number)
            for (layer, quantity, _), number in zip(values, numbers, strict=True)
        ]

    def _position_values(
        self, name: str, position: NormAct, feeding: nn.Module | None, seen: dict, buffers: dict, lr: float
    ) -> list[tuple[str, str, torch.Tensor]]:
        act_in, norm_in, norm = seen["act_in"], seen["norm_in"], position.norm
        out = [(name, "act_mean", act_in.mean()), (name, "act_std", act_in.std())]
        for p, value in zip(PERCENTILES, percentiles(act_in), strict=True):
            out.append((name, f"act_p{p}", value))
        for p, value in zip(PERCENTILES, percentiles(unit_of(act_in)), strict=True):
            out.append((name, f"unit_p{p}", value))
        levels = torch.tensor([p / 100 for p in PERCENTILES], device=act_in.device)
        quantiles = torch.quantile(units_of(act_in).float(), levels, dim=0)
        before = self.unit_quantiles.get(name)
        moved = (quantiles - before).abs().mean() if before is not None else quantiles.new_zeros(())
        self.units_path[name] = self.units_path.get(name, quantiles.new_zeros(())) + moved
        self.unit_quantiles[name] = quantiles
        out.append((name, "units_path", self.units_path[name]))
        activation = self.cfg.model.activation
        if activation in SATURATION:
            out.append((name, "saturated", (act_in.abs() > SATURATION[activation]).float().mean()))
        else:  # ReLU: units off for every probe example
            out.append((name, "saturated", (act_in.flatten(1) <= 0).all(0).float().mean()))
        out += [(name, "norm_in_mean", norm_in.mean()), (name, "norm_in_std", norm_in.std())]
        for param in ("weight", "bias"):
            tensor = getattr(norm, param, None)
            if isinstance(tensor, torch.Tensor):
                out += [(name, f"{param}_mean", tensor.mean()), (name, f"{param}_std", tensor.std())]
                if param == "weight":  # features the norm switches (nearly) off
                    out.append((name, "weight_off", (tensor.detach().abs() < 0.1).float().mean()))
        if is_batch_norm(norm) and norm.running_mean is not None:
            prefix = next(k for k, v in self.model.named_modules() if v is norm)
            running_mean, running_var = buffers[f"{prefix}.running_mean"], buffers[f"{prefix}.running_var"]
            batch_mean, batch_var = channel_stats(norm_in)
            out += [
                (name, "running_mean_mean", running_mean.mean()),
                (name, "running_mean_std", running_mean.std()),
                (name, "running_var_mean", running_var.mean()),
                (name, "running_var_std", running_var.std()),
                (name, "lag_mean", ((batch_mean - running_mean).abs() / running_var.sqrt()).mean()),
                (name, "lag_var", (batch_var / running_var).mean()),
            ]
        if feeding is not None:  # the feeding layer's weights: with BN after them, a scale-invariant direction
            weight_norm = feeding.weight.detach().norm()
            out += [(name, "weight_norm", weight_norm), (name, "effective_lr", lr / weight_norm.square())]
        if feeding is not None and feeding.weight.grad is not None:
            out.append((name, "grad_weight_norm", feeding.weight.grad.norm()))
        if seen["input"].grad is not None:
            out.append((name, "grad_input_norm", seen["input"].grad.norm()))
        return out

    def _landscape(self, params: list[nn.Parameter], lr: float, buffers: dict) -> list[tuple[str, str, torch.Tensor]]:
        noisy = [m for m in self.model.modules() if isinstance(m, (ShiftNoise, nn.Dropout)) and m.training]
        for module in noisy:
            module.eval()
        try:
            return self._noise_free_landscape(params, lr, buffers)
        finally:
            for module in noisy:
                module.train()

    def _curvature_pass(self, params: list[nn.Parameter]) -> tuple[list[torch.Tensor], torch.Tensor, torch.Tensor]:
        """The probe gradient g at the current weights, g^T H g / |g|^2 (NaN without a second derivative) and
        the loss there."""
        loss = F.cross_entropy(self.model(self.x), self.y)
        grads = torch.autograd.grad(loss, params, create_graph=True, allow_unused=True)
        grads = [torch.zeros_like(p) if g is None else g for p, g in zip(params, grads, strict=True)]
        gradient = [g.detach() for g in grads]
        squared = sum(g.square().sum() for g in gradient)
        try:  # H g from the gradient of g . g_detached (one double backward)
            directional = sum((g * v).sum() for g, v in zip(grads, gradient, strict=True) if g.requires_grad)
            hvp = torch.autograd.grad(directional, params, allow_unused=True)
            along = sum((h * v).sum() for h, v in zip(hvp, gradient, strict=True) if h is not None)
            curvature = torch.as_tensor(along, dtype=squared.dtype) / squared.clamp_min(1e-30)
        except (RuntimeError, TypeError):  # a norm (a user's) with no double backward
            curvature = torch.full((), math.nan)
        return gradient, curvature.detach(), loss.detach()

    def _noise_free_landscape(self, params: list[nn.Parameter], lr: float,
                              buffers: dict) -> list[tuple[str, str, torch.Tensor]]:  # fmt: skip
        weights = [p.detach().clone() for p in params]
        with torch.no_grad():
            for name, b in self.model.named_buffers():  # the BN state the probe started from
                b.copy_(buffers[name])
        gradient, curvature, base_loss = self._curvature_pass(params)
        grad_norm = torch.sqrt(sum(g.square().sum() for g in gradient))
        losses, changes, ratios = [], [], []
        for t in self.cfg.train.landscape_steps:
            with torch.no_grad():
                for p, w, g in zip(params, weights, gradient, strict=True):
                    p.copy_(w).add_(g, alpha=-t * lr)
                for name, b in self.model.named_buffers():  # the same BN state at every point
                    b.copy_(buffers[name])
            self.model.zero_grad(set_to_none=True)
            losses.append(self._forward_backward())
            change = torch.sqrt(
                sum((p.grad - g).square().sum() for p, g in zip(params, gradient, strict=True) if p.grad is not None)
            )
            changes.append(change)
            ratios.append(change / (t * lr * grad_norm).clamp_min(1e-30))
        with torch.no_grad():
            for p, w in zip(params, weights, strict=True):
                p.copy_(w)
        out = [("model", "grad_norm", grad_norm), ("model", "landscape_loss", base_loss)]
        steps = self.cfg.train.landscape_steps
        out += [("model", f"loss_at_{t:g}", value) for t, value in zip(steps, losses, strict=True)]
        stacked = torch.stack(losses)
        out += [("model", "landscape_loss_min", stacked.min()), ("model", "landscape_loss_max", stacked.max())]
        out += [
            ("model", "landscape_loss_range", stacked.max() - stacked.min()),
            ("model", "grad_curvature", curvature),
        ]
        out += [("model", "grad_change_max", torch.stack(changes).max())]
        out += [("model", "beta_smoothness", torch.stack(ratios).max())]
        return out
