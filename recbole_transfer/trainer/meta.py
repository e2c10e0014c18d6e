"""MetaTrainer: MetaRec's bi-level transfer from several source domains to the target (Eq. 4-8).

One iteration (``transfer: meta``) takes ``meta_tasks`` = n target batches from RecBole's training loader and pairs
each with a batch of a sampled source domain (domains drawn without replacement while n <= M). For pair i:

    inner   phi_i = theta - alpha * grad L_src(theta), ``inner_steps`` times (plain SGD, lr ``inner_lr``);
    outer   g_i = d L_tgt(phi_i) / d theta, differentiated through the inner steps (second order: the inner
            gradients keep their graph; ``first_order: True`` drops it, g_i = grad L_tgt at phi_i, much cheaper);
    rescale per parameter tensor p: s_i = cos(g_i[p], theta[p] - phi_i[p]), w = softmax(s / tau) over the n
            pairs, and theta[p] takes the gradient sum_i w_i g_i[p] through the optimizer (lr ``learning_rate`` =
            beta). ``gradient_rescaling: False`` uses w_i = 1 / n (with n = 1: plain MAML).

theta - phi_i is the source task's accumulated gradient (alpha * sum of inner gradients). The paper writes
Sim(g_i, phi_i - theta) and calls phi_i - theta "the gradients of the source task"; with the literal sign the
softmax would favour the sources whose updates oppose the target's meta-gradient, so the gradient sign is used.

Source-only parameters (each source's item table and output bias) are not shared with the target and get no
meta-gradient under first-order updates; they train on their own source loss (the gradient of the first inner step,
an Adam optimizer of their own).

``transfer: joint`` (ablation "w/o meta transfer") trains on the same batches with one ordinary step on the mean of
the n target and n source losses. Validation and test are RecBole's full ranking on the target. An epoch is one
pass over the target's training loader; its last (len % n) batches, reshuffled each epoch, wait for the next one.
"""

import time

import torch
import torch.nn as nn
import torch.nn.functional as F
from recbole.trainer import Trainer
from recbole.utils import set_color
from tqdm import tqdm

from recbole_transfer.compat import plugin_trainer
from recbole_transfer.errors import UserInputError
from recbole_transfer.model.metarec import TARGET_DOMAIN

TRANSFERS = ("meta", "joint")


class _DomainLoss(nn.Module):
    """``torch.func.functional_call`` runs ``forward``; this one is a model's loss on one domain's batch."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, interaction, domain):
        return self.model.domain_loss(interaction, domain)


def domain_loss(model, params, interaction, domain):
    """The loss of ``model`` on a batch of ``domain`` with the parameters ``params`` ({name: tensor}; names not in
    it keep the model's own)."""
    wrapper = _DomainLoss(model)
    return torch.func.functional_call(
        wrapper, {f"model.{k}": v for k, v in params.items()}, (interaction, domain)
    )


def adapt(model, params, names, interaction, domain, steps, lr, first_order=False):
    """phi: ``steps`` SGD steps of lr ``lr`` on the batch from ``params``, over the parameters ``names``. With
    ``first_order`` the inner gradients are constants (no graph back through them). Returns (phi, first gradients).
    """
    fast = dict(params)
    first_grads = None
    for _ in range(steps):
        loss = domain_loss(model, fast, interaction, domain)
        grads = torch.autograd.grad(
            loss,
            [fast[n] for n in names],
            create_graph=not first_order,
            allow_unused=True,
        )
        if first_grads is None:
            first_grads = {
                n: None if g is None else g.detach() for n, g in zip(names, grads)
            }
        fast.update(
            {
                n: fast[n] - lr * (g.detach() if first_order else g)
                for n, g in zip(names, grads)
                if g is not None
            }
        )
    return fast, first_grads


def meta_gradient(
    model,
    params,
    shared_names,
    source_names,
    source_batch,
    domain,
    target_batch,
    steps,
    lr,
    first_order=False,
):
    """(g = d L_tgt(phi) / d theta over ``shared_names``, theta - phi, target loss, phi, first inner gradients) for one
    (source, target) pair."""
    phi, first_grads = adapt(
        model,
        params,
        shared_names + source_names,
        source_batch,
        domain,
        steps,
        lr,
        first_order,
    )
    outer = domain_loss(model, phi, target_batch, TARGET_DOMAIN)
    grads = torch.autograd.grad(
        outer, [params[n] for n in shared_names], allow_unused=True
    )
    grads = {
        n: torch.zeros_like(params[n]) if g is None else g
        for n, g in zip(shared_names, grads)
    }
    steps_taken = {n: (params[n] - phi[n]).detach() for n in shared_names}
    return grads, steps_taken, outer.detach(), phi, first_grads


def rescaling_weights(meta_grads, source_steps, tau, rescale=True):
    """{name: [n] weights} from n tasks' meta-gradients and source steps (lists of {name: tensor}): softmax over the
    tasks of cos(g_i[p], step_i[p]) / tau per parameter tensor p, or 1 / n each without ``rescale``.
    """
    n = len(meta_grads)
    weights = {}
    for name in meta_grads[0]:
        if not rescale:
            weights[name] = torch.full((n,), 1.0 / n, device=meta_grads[0][name].device)
            continue
        grads = torch.stack([g[name].flatten() for g in meta_grads])
        steps = torch.stack([s[name].flatten() for s in source_steps])
        weights[name] = torch.softmax(
            F.cosine_similarity(grads, steps, dim=1) / tau, dim=0
        )
    return weights


class MetaTrainer(plugin_trainer(Trainer)):
    def __init__(self, config, model):
        super().__init__(config, model)
        if config["transfer"] not in TRANSFERS:
            raise UserInputError(
                f"transfer must be one of {', '.join(TRANSFERS)}; got '{config['transfer']}'"
            )
        self.transfer = config["transfer"]
        self.n_tasks = int(config["meta_tasks"])
        self.inner_steps = int(config["inner_steps"])
        self.inner_lr = float(config["inner_lr"])
        self.first_order = bool(config["first_order"])
        self.rescale = bool(config["gradient_rescaling"])
        self.tau = float(config["rescaling_temperature"])
        self.source_batch_size = int(config["source_batch_size"])
        if self.n_tasks < 1 or self.inner_steps < 1:
            raise UserInputError("meta_tasks and inner_steps must be at least 1")
        named = dict(model.named_parameters())
        self.shared_names = [
            n
            for n, p in named.items()
            if p.requires_grad and not model.is_source_parameter(n)
        ]
        source_params = [p for n, p in named.items() if model.is_source_parameter(n)]
        # RecBole's optimizer takes the shared parameters only: the source tables have their own
        self.optimizer = self._build_optimizer(
            params=[named[n] for n in self.shared_names]
        )
        self.source_optimizer = (
            torch.optim.Adam(source_params, lr=self.learning_rate)
            if source_params
            else None
        )
        self.distributed = not config["single_spec"]
        # each rank draws its own sources and source rows (with one process: the seed itself)
        self.generator = torch.Generator().manual_seed(
            int(config["seed"]) + int(config["local_rank"] or 0)
        )
        self.iteration_seconds = (
            []
        )  # wall time of every iteration (meta or joint), for the benchmark

    def _sample_domains(self, n_sources):
        if n_sources == 0:
            raise UserInputError(
                "MetaRec needs source_datasets (the target has no shipped family to take them from): "
                "pass --source_datasets=\"['A','B']\""
            )
        if self.n_tasks <= n_sources:
            order = torch.randperm(n_sources, generator=self.generator)[: self.n_tasks]
        else:
            order = torch.randint(n_sources, (self.n_tasks,), generator=self.generator)
        return [int(i) + 1 for i in order]

    def _source_batch(self, source):
        rows = torch.randint(
            len(source.interaction), (self.source_batch_size,), generator=self.generator
        )
        return source.interaction[rows].to(self.device)

    def _set_source_grads(self, grads_by_domain):
        params = dict(self.model.named_parameters())
        for grads in grads_by_domain:
            for name, grad in grads.items():
                if grad is not None and self.model.is_source_parameter(name):
                    params[name].grad = (
                        grad if params[name].grad is None else params[name].grad + grad
                    )

    def _average_gradients_over_ranks(self):
        """Data-parallel training: every rank ends with the mean of the ranks' gradients. A parameter no rank has a
        gradient for (a source nobody sampled) keeps none, so Adam leaves it alone as it would in one process.
        """
        if not self.distributed:
            return
        import torch.distributed as dist

        params = [p for p in self.model.parameters() if p.requires_grad]
        present = torch.tensor(
            [p.grad is not None for p in params],
            dtype=torch.float32,
            device=self.device,
        )
        dist.all_reduce(present)
        flat = torch.cat(
            [
                (p.grad if p.grad is not None else torch.zeros_like(p)).flatten()
                for p in params
            ]
        )
        dist.all_reduce(flat)
        flat /= dist.get_world_size()
        offset = 0
        for p, used in zip(params, present.tolist()):
            p.grad = (
                flat[offset : offset + p.numel()].view_as(p).clone() if used else None
            )
            offset += p.numel()

    def _apply_gradients(self):
        self._average_gradients_over_ranks()
        self._clip()
        self.optimizer.step()
        if self.source_optimizer is not None:
            self.source_optimizer.step()

    def _zero_grad(self):
        self.optimizer.zero_grad()
        if self.source_optimizer is not None:
            self.source_optimizer.zero_grad()

    def meta_step(self, target_batches, domains, sources):
        """One meta iteration; returns the mean target loss at the adapted parameters."""
        params = dict(self.model.named_parameters())
        meta_grads, source_steps, losses, first_grads = [], [], [], []
        for target_batch, domain in zip(target_batches, domains):
            source_names = self.model.source_parameter_names(domain)
            grads, steps, loss, _, first = meta_gradient(
                self.model,
                params,
                self.shared_names,
                source_names,
                self._source_batch(sources[domain - 1]),
                domain,
                target_batch,
                self.inner_steps,
                self.inner_lr,
                self.first_order,
            )
            meta_grads.append(grads)
            source_steps.append(steps)
            losses.append(loss)
            first_grads.append(first)
        weights = rescaling_weights(meta_grads, source_steps, self.tau, self.rescale)
        self._zero_grad()
        for name in self.shared_names:
            params[name].grad = sum(
                w * g[name] for w, g in zip(weights[name], meta_grads)
            )
        self._set_source_grads(first_grads)
        self._apply_gradients()
        return torch.stack(losses).mean()

    def joint_step(self, target_batches, domains, sources):
        """The ablation without meta transfer: one ordinary step on the mean of the same batches' losses."""
        self._zero_grad()
        losses = []
        for target_batch, domain in zip(target_batches, domains):
            losses.append(self.model.domain_loss(target_batch, TARGET_DOMAIN))
            losses.append(
                self.model.domain_loss(self._source_batch(sources[domain - 1]), domain)
            )
        loss = torch.stack(losses).mean()
        loss.backward()
        self._apply_gradients()
        return loss.detach()

    def _clip(self):
        if self.clip_grad_norm:
            nn.utils.clip_grad_norm_(
                [p for n, p in self.model.named_parameters() if n in self.shared_names],
                **self.clip_grad_norm,
            )

    def _train_epoch(self, train_data, epoch_idx, loss_func=None, show_progress=False):
        self.model.train()
        sources = train_data._dataset.sources
        step = self.meta_step if self.transfer == "meta" else self.joint_step
        n_iterations = len(train_data) // self.n_tasks
        progress = (
            tqdm(
                total=n_iterations,
                ncols=100,
                desc=set_color(f"Train {epoch_idx:>5}", "pink"),
            )
            if show_progress
            else None
        )
        total, batches = 0.0, []
        for interaction in train_data:
            batches.append(interaction.to(self.device))
            if len(batches) < self.n_tasks:
                continue
            start = time.perf_counter()
            loss = step(batches, self._sample_domains(len(sources)), sources)
            self.iteration_seconds.append(time.perf_counter() - start)
            self._check_nan(loss)
            total += loss.item()
            batches = []
            if progress is not None:
                progress.update()
                progress.set_postfix_str(
                    set_color(f"loss: {loss.item():.4f}", "yellow")
                )
        if progress is not None:
            progress.close()
        return total
