"""GradInit (Zhu et al., "GradInit: Learning to Initialize Neural Networks for Stable and Efficient
Training", NeurIPS 2021) on the benchmark engine, for a target Adam, every run of a :class:`Stack` at once.

Every parameter tensor ``theta_i = alpha_i theta_i^0`` gets a scale ``alpha_i`` (starting at 1), learned
so that the loss after one step of the target optimizer is small (the paper's Algorithm 1, as the
authors' code runs it: ``gradinit_utils.gradinit`` and ``RescaleAdam`` of github.com/zhuchen03/gradinit):

for ``t = 1..T``, with two batches ``S_t`` and ``S'_t``:

* ``g = grad_theta L(S_t; theta)``;
* if ``||g||_1 > gamma`` (the constraint; the 1-norm for a target Adam): a step of ``alpha`` against
  ``d ||g||_1 / d alpha``;
* else a step of ``alpha`` against ``d L(S'_t; theta - eta sign(g)) / eta / d alpha``, the loss after
  Adam's first step (``eta sign(g)``, taken as a constant);
* ``alpha`` follows Adam on these scalar gradients (the derivative along ``theta^0``: ``<grad, theta^0>``),
  with its own first moment for the constraint steps and one shared second moment, clipped to
  ``[min_scale, max_scale]`` (``min_scale`` 0 for biases); a tensor whose initial norm is 0 (biases
  that start at 0) is left alone.

One iteration costs two gradients (at ``theta`` and after the step), so ``T`` iterations are counted
as ``2 T`` optimizer steps in an equal-steps comparison.

The defaults are the authors' settings for their Adam-trained Transformer (``gradinit_lr`` 2.5e-3,
``beta2`` 0.98, ``gamma`` 1000, scales in [0.01, 100], no gradient clipping); ``eta`` the target's own
learning rate, as the paper defines it.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from benchmarks._lib.engine import Batch, Draws, Epochs, FullBatch, Objective, Stack


@dataclass(frozen=True)
class GradInit:
    """GradInit's hyper-parameters (see the module docstring); :meth:`fit_` runs it."""

    iterations: int = 100
    eta: float = 1e-3  # the target Adam's learning rate: its first step is eta * sign(g)
    lr: float = 2.5e-3  # of the scales
    betas: tuple[float, float] = (0.9, 0.98)
    eps: float = 1e-8
    gamma: float = 1000.0  # bound on ||g||_1
    min_scale: float = 0.01
    max_scale: float = 100.0

    @property
    def steps(self) -> int:
        """Optimizer steps an iteration counts as in an equal-steps comparison: two gradients each."""
        return 2 * self.iterations

    def fit_(self, stack: Stack, objective: Objective, train: Batch, order: Epochs | Draws | FullBatch) -> dict:
        """Rescale every run's parameter tensors of ``stack`` in place. ``objective(stack, batch,
        generator)`` is the per-run training loss; iteration ``t`` takes its step on the order's batch
        ``2t`` and measures the loss after it on batch ``2t + 1``. Returns per run the learned scales
        ``(R, tensors)`` and how many iterations took the constraint step."""
        params = list(stack._params)
        runs = stack.runs
        with torch.no_grad():
            start = [p.detach().clone() for p in params]  # theta^0
            norms = torch.stack([p.flatten(1).norm(dim=1) for p in start], 1).double()  # (R, tensors)
        is_bias = torch.tensor([name.endswith("bias") for name in stack.names])
        lower = torch.where(is_bias, 0.0, self.min_scale).double()
        active = norms > 0
        alpha = torch.ones(runs, len(params), dtype=torch.float64)
        m, m_constraint, v = (torch.zeros_like(alpha) for _ in range(3))
        steps, steps_constraint = torch.zeros(runs), torch.zeros(runs)
        batcher = order.start(len(train[0]), runs)
        b1, b2 = self.betas
        for t in range(self.iterations):
            loss = objective(stack, batcher.batch(train, 2 * t), batcher.generator)
            grads = torch.autograd.grad(loss.sum(), params, create_graph=True)
            gnorm = sum(g.abs().flatten(1).sum(1) for g in grads)  # (R,)
            over = (gnorm > self.gamma).detach()
            constraint = torch.autograd.grad(gnorm.sum(), params) if bool(over.any()) else None
            with torch.no_grad():
                moves = [self.eta * g.nan_to_num(nan=0.0).sign() for g in grads]
                for p, move in zip(params, moves):
                    p.sub_(move)
            with torch.enable_grad():
                after = objective(stack, batcher.batch(train, 2 * t + 1), batcher.generator) / self.eta
                stepped = torch.autograd.grad(after.sum(), params)
            with torch.no_grad():
                for p, move in zip(params, moves):
                    p.add_(move)
                along = lambda gs: torch.stack(  # noqa: E731  d/d alpha_i = <grad_i, theta_i^0>
                    [(g * s).flatten(1).sum(1) for g, s in zip(gs, start)], 1).double()
                grad_alpha = along(stepped)
                if constraint is not None:
                    grad_alpha = torch.where(over[:, None], along(constraint), grad_alpha)
                grad_alpha = torch.nan_to_num(grad_alpha, nan=0.0, posinf=0.0, neginf=0.0)
                steps_constraint += over
                steps += ~over
                first = torch.where(over[:, None], m_constraint, m).lerp_(grad_alpha, 1 - b1)
                m = torch.where(over[:, None], m, first)
                m_constraint = torch.where(over[:, None], first, m_constraint)
                v = torch.where(active, v * b2 + (1 - b2) * grad_alpha**2, v)
                own = torch.where(over, steps_constraint, steps).double()[:, None]
                total = (steps + steps_constraint).double()[:, None]
                denom = (v / (1 - b2**total)).sqrt() + self.eps
                moved = alpha - self.lr / (1 - b1**own) * first / denom
                alpha = torch.where(active, moved.clamp(lower, torch.full_like(lower, self.max_scale)), alpha)
                for i, (p, s) in enumerate(zip(params, start)):
                    p.copy_(s * alpha[:, i].to(s.dtype).view(-1, *[1] * (s.dim() - 1)))
        return {"scales": alpha.numpy(), "constrained": steps_constraint.long().numpy()}
