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

The inner steps must move phi for any of this to matter: the gradients of the shared weights are small (CE over
thousands of items, weights initialised at std 0.02), so at ``inner_lr`` 0.1 and one step ||theta - phi|| / ||theta||
is 1e-4 on Scientific and g_i is the plain target gradient to 0.1%: MetaRec would be target-only LRURec. The
defaults (``inner_lr`` 1, 3 steps) move phi by 2.6e-3 and g_i by 2.5%, and lower the source loss on its batch;
``diagnose`` measures this. ``inner_lr: 0`` is the control: phi = theta, every g_i is the plain target gradient and
the weights are 1 / n (a zero step has cosine 0), so an iteration is a target-only step on the n batches.

Source-only parameters (each source's item table and output bias) are not shared with the target and get no
meta-gradient under first-order updates; they train on their own source loss (the gradient of the first inner step).
One optimizer (``learner``, ``learning_rate``, ``weight_decay``) holds them and the shared weights.

``transfer: joint`` (ablation "w/o meta transfer") trains on the same batches with one ordinary step on the mean of
the n target and n source losses. ``transfer: target`` takes one ordinary step on the mean of the n target losses
alone: LRURec on MetaRec's batches, what the ``inner_lr: 0`` control computes without its inner loop.

``source_pretrain_epochs: N`` first trains on the sources alone (N passes over every source's rows, one source per
batch, the batches of all sources in random order: CE + L_vq, the body, the source tables and, through L_vq, the
target table as codebook), then starts the optimizer afresh for the target training that follows; with
``transfer: target`` that is the plainest transfer: a source-pretrained body fine-tuned on the target.

Validation and test are RecBole's full ranking on the target. An epoch is one pass over the target's training
loader; its last (len % n) batches make a smaller iteration, so none is dropped.
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

TRANSFERS = ("meta", "joint", "target")
MAX_INNER_STEPS = 5


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


def parameter_group(name):
    """The group a parameter is reported under by ``diagnose``: the module that owns it, a block's LayerNorms
    together (blocks.0.ffn.3.weight -> blocks.0.ffn, blocks.0.lru_norm.bias -> blocks.0.norms).
    """
    parts = name.split(".")
    if parts[0] != "blocks" or len(parts) < 4:
        return parts[0]
    return f"blocks.{parts[1]}." + ("norms" if parts[2].endswith("_norm") else parts[2])


def _norm(tensors):
    return torch.sqrt(sum(t.double().pow(2).sum() for t in tensors)).item()


def _cosine(a, b, names):
    dot = sum((a[n].double() * b[n].double()).sum() for n in names).item()
    return dot / max(_norm(a[n] for n in names) * _norm(b[n] for n in names), 1e-30)


def _group_stats(names, theta, meta, plain):
    """Means over the tasks of the inner-step size, the meta-vs-plain gradient difference and cosine, the source
    gradient's size against the plain one and its cosine with that difference, and the range of the rescaling
    weights, over the parameters ``names``."""
    step, diff, cosine, source, source_cos = [], [], [], [], []
    for phi, grad, base, first in zip(
        meta["phis"], meta["grads"], plain, meta["first_grads"]
    ):
        step.append(
            _norm([theta[n] - phi[n] for n in names])
            / max(_norm(theta[n] for n in names), 1e-30)
        )
        base_norm = max(_norm(base[n] for n in names), 1e-30)
        change = {n: grad[n] - base[n] for n in names}
        diff.append(_norm(change.values()) / base_norm)
        cosine.append(_cosine(grad, base, names))
        # the source loss's gradient at theta: what a joint step adds to the plain target gradient
        source_grad = {
            n: torch.zeros_like(base[n]) if first[n] is None else first[n]
            for n in names
        }
        source.append(_norm(source_grad.values()) / base_norm)
        source_cos.append(_cosine(change, source_grad, names))
    weights = torch.stack([meta["weights"][n] for n in names])
    return {
        "step": sum(step) / len(step),
        "diff": sum(diff) / len(diff),
        "cos": sum(cosine) / len(cosine),
        "source": sum(source) / len(source),
        "source_cos": sum(source_cos) / len(source_cos),
        "w_min": weights.min().item(),
        "w_max": weights.max().item(),
    }


@torch.no_grad()
def codeword_use(model, sources, top=10):
    """{source name: {items: the source's items, codewords: the codebook's size, heads: [(distinct codewords hit
    by the source's items, share of its items on the ``top`` most used codewords) per VQ head]}}; {} without VQ.
    """
    if model.quantizer is None:
        return {}
    codebook = model.item_embedding.weight[1:]
    use = {}
    for domain, source in enumerate(sources, start=1):
        codes = model.quantizer.codes(
            model.source_item_embedding[domain - 1].weight[1:], codebook
        )
        heads = []
        for head in range(codes.shape[1]):
            counts = torch.bincount(codes[:, head], minlength=codebook.shape[0])
            top_share = counts.topk(min(top, len(counts))).values.sum() / len(codes)
            heads.append((int((counts > 0).sum()), float(top_share)))
        use[source.name] = {
            "items": len(codes),
            "codewords": codebook.shape[0],
            "heads": heads,
        }
    return use


def _target_batches(trainer, train_data):
    """Endless lists of ``trainer.n_tasks`` target training batches in loader order, on the trainer's device (a
    short epoch: the next one starts)."""
    loader = iter(train_data)
    while True:
        batches = []
        for _ in range(trainer.n_tasks):
            batch = next(loader, None)
            if batch is None:
                loader = iter(train_data)
                batch = next(loader)
            batches.append(batch.to(trainer.device))
        yield batches


def code_changes(trainer, train_data, iterations=10, lags=(1, 5, 10)):
    """How often source items change codeword while MetaRec trains (``iterations`` training iterations of the
    trainer's ``transfer``): ``lags`` {lag: [share of (item, head) codes, all sources together, that differ from
    the codes ``lag`` iterations earlier, at the start of each iteration]}; ``inner`` [share that differs between
    the first forward of a (source, target) pair and each later inner step, per inner step, the mean over the
    pairs] (empty unless the step searches at every forward: ``transfer: meta``, ``vq_refresh_steps: 0``).
    """
    model = trainer.model
    sources = train_data._dataset.sources
    searches, search = [], model.quantizer.codes

    def recording(z_e, book):
        searches.append(search(z_e, book))
        return searches[-1]

    history, lags_out = [], {lag: [] for lag in lags}
    inner = [[] for _ in range(trainer.inner_steps - 1)]
    target_batches = _target_batches(trainer, train_data)
    model.quantizer.codes = recording
    try:
        for _ in range(iterations):
            codebook = model.item_embedding.weight[1:]  # as the last update left it
            with torch.no_grad():
                history.append(
                    torch.cat(
                        [
                            search(table.weight[1:], codebook)
                            for table in model.source_item_embedding
                        ]
                    )
                )
            for lag in lags:
                if len(history) > lag:
                    lags_out[lag].append(
                        (history[-1] != history[-1 - lag]).float().mean().item()
                    )
            batches = next(target_batches)
            searches.clear()
            trainer.step(batches, trainer._sample_domains(len(sources)), sources)
            per_pair = trainer.inner_steps
            if trainer.transfer == "meta" and len(searches) == per_pair * len(batches):
                for first in range(0, len(searches), per_pair):
                    for j in range(1, per_pair):
                        inner[j - 1].append(
                            (searches[first + j] != searches[first])
                            .float()
                            .mean()
                            .item()
                        )
    finally:
        del model.quantizer.codes  # the method again
    return {
        "lags": lags_out,
        "inner": [sum(v) / len(v) for v in inner if v],
    }


def diagnose(trainer, train_data, iterations=6):
    """What the meta path does over ``iterations`` consecutive meta iterations from the trainer's current state,
    on the target's training batches in loader order. Each iteration is measured with dropout off, so the
    meta-gradient and the plain target gradient differ by the inner steps only, then trained on as usual.

    One record per iteration: target loss at theta and at phi, source loss at theta and at phi (what the inner
    steps achieved), ``groups`` {parameter group (``parameter_group``; "all" = every shared weight): step =
    ||theta - phi|| / ||theta||, diff = ||g_meta - g_plain|| / ||g_plain||, cos = cos(g_meta, g_plain), source =
    ||g_source|| / ||g_plain|| with g_source the source loss's gradient at theta (the term a joint step adds),
    source_cos = cos(g_meta - g_plain, g_source) (each the mean over the tasks), w_min / w_max = the range of the
    rescaling weights}, ``codewords`` (``codeword_use``) and the iteration's seconds.
    """
    model = trainer.model
    sources = train_data._dataset.sources
    names = trainer.shared_names
    groups = {}
    for name in names:
        groups.setdefault(parameter_group(name), []).append(name)
    groups["all"] = list(names)
    dropout = any(isinstance(m, nn.Dropout) and m.p > 0 for m in model.modules())
    records, batch_lists = [], _target_batches(trainer, train_data)
    for _ in range(iterations):
        target_batches = next(batch_lists)
        domains = trainer._sample_domains(len(sources))
        source_batches = [trainer._source_batch(sources[d - 1]) for d in domains]
        model.start_iteration()
        params = dict(model.named_parameters())
        theta = {n: params[n].detach().clone() for n in names}
        start = time.perf_counter()
        model.eval()
        meta = trainer.meta_gradients(target_batches, domains, source_batches)
        plain, plain_losses = [], []
        for batch in target_batches:
            loss = model.domain_loss(batch, TARGET_DOMAIN)
            grads = torch.autograd.grad(
                loss, [params[n] for n in names], allow_unused=True
            )
            plain.append(
                {
                    n: torch.zeros_like(params[n]) if g is None else g
                    for n, g in zip(names, grads)
                }
            )
            plain_losses.append(loss.item())
        with torch.no_grad():
            source_losses = [
                (
                    model.domain_loss(batch, domain).item(),
                    domain_loss(model, phi, batch, domain).item(),
                )
                for batch, domain, phi in zip(source_batches, domains, meta["phis"])
            ]
        record = {
            "loss_theta": sum(plain_losses) / len(plain_losses),
            "loss_phi": torch.stack(meta["losses"]).mean().item(),
            "source_loss_theta": sum(s[0] for s in source_losses) / len(source_losses),
            "source_loss_phi": sum(s[1] for s in source_losses) / len(source_losses),
            "groups": {
                g: _group_stats(group, theta, meta, plain)
                for g, group in groups.items()
            },
            "codewords": codeword_use(model, sources),
        }
        model.train()
        if dropout:  # measured without dropout: train on gradients with it
            meta = trainer.meta_gradients(target_batches, domains, source_batches)
        trainer.apply_meta_gradients(meta)
        record["seconds"] = time.perf_counter() - start
        records.append(record)
    return records


def diagnosis_report(records):
    """``diagnose``'s records as text: per parameter group the range over the iterations, the iterations one by
    one (all shared weights), and the codeword use at the first and the last iteration.
    """

    def span(values, fmt):
        low, high = fmt.format(min(values)), fmt.format(max(values))
        return low if low == high else f"{low}-{high}"

    lines = [
        f"over {len(records)} meta iterations; step = ||theta - phi|| / ||theta||, grad diff = ||g_meta - g_plain|| "
        "/ ||g_plain||, cos = cos(g_meta, g_plain), source grad = ||g_source|| / ||g_plain|| (the source loss's "
        "gradient at theta, which a joint step adds), cos(diff, source) = cos(g_meta - g_plain, g_source), each "
        "the mean over the tasks (ranges over the iterations)",
        "| group | step | grad diff | cos | source grad | cos(diff, source) | rescaling weights |",
        "|---|---|---|---|---|---|---|",
    ]
    for group in records[0]["groups"]:
        stats = [r["groups"][group] for r in records]
        lines.append(
            f"| {group} | {span([s['step'] for s in stats], '{:.2e}')} | "
            f"{span([s['diff'] for s in stats], '{:.2e}')} | "
            f"{span([s['cos'] for s in stats], '{:.4f}')} | "
            f"{span([s['source'] for s in stats], '{:.2e}')} | "
            f"{span([s['source_cos'] for s in stats], '{:.3f}')} | "
            f"{min(s['w_min'] for s in stats):.2f}-{max(s['w_max'] for s in stats):.2f} |"
        )
    lines += [
        "",
        "| iteration | target loss theta | target loss phi | source loss theta | source loss phi | step | grad diff "
        "| cos | source grad | cos(diff, source) | s |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for index, r in enumerate(records):
        a = r["groups"]["all"]
        lines.append(
            f"| {index} | {r['loss_theta']:.4f} | {r['loss_phi']:.4f} | {r['source_loss_theta']:.4f} | "
            f"{r['source_loss_phi']:.4f} | {a['step']:.2e} | {a['diff']:.2e} | {a['cos']:.4f} | "
            f"{a['source']:.2e} | {a['source_cos']:.3f} | {r['seconds']:.1f} |"
        )
    for label, r in (("first", records[0]), ("last", records[-1])):
        for name, use in r["codewords"].items():
            heads = use["heads"]
            lines.append(
                f"codewords ({label} iteration) {name} ({use['items']} items, {use['codewords']} codewords): "
                "distinct per head "
                + "/".join(str(d) for d, _ in heads)
                + "; share on the 10 most used "
                + "/".join(f"{share:.1%}" for _, share in heads)
            )
    return "\n".join(lines)


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
        self.source_pretrain_epochs = int(config["source_pretrain_epochs"] or 0)
        if self.source_pretrain_epochs < 0:
            raise UserInputError(
                f"source_pretrain_epochs must be >= 0; got {self.source_pretrain_epochs}"
            )
        if self.n_tasks < 1:
            raise UserInputError(f"meta_tasks must be at least 1; got {self.n_tasks}")
        if not 1 <= self.inner_steps <= MAX_INNER_STEPS:
            raise UserInputError(
                f"inner_steps must be 1 to {MAX_INNER_STEPS}; got {self.inner_steps}"
            )
        if self.inner_lr < 0:
            raise UserInputError(f"inner_lr must be >= 0; got {self.inner_lr}")
        named = dict(model.named_parameters())
        self.shared_names = [
            n
            for n, p in named.items()
            if p.requires_grad and not model.is_source_parameter(n)
        ]
        self.source_param_names = [
            n
            for n, p in named.items()
            if p.requires_grad and model.is_source_parameter(n)
        ]
        # one optimizer (learner, learning_rate, weight_decay) for the shared weights and the source tables, so
        # both follow the configured optimizer and a checkpoint holds all of its state
        self.optimizer = self._fresh_optimizer()
        self.distributed = not config["single_spec"]
        # each rank draws its own sources and source rows (with one process: the seed itself)
        self.generator = torch.Generator().manual_seed(
            int(config["seed"]) + int(config["local_rank"] or 0)
        )
        self.iteration_seconds = (
            []
        )  # wall time of every iteration (meta or joint), for the benchmark

    def _fresh_optimizer(self):
        named = dict(self.model.named_parameters())
        return self._build_optimizer(
            params=[named[n] for n in self.shared_names + self.source_param_names]
        )

    @property
    def step(self):
        """The training step of ``transfer``: f(target batches, source domains, sources) -> loss."""
        return {
            "meta": self.meta_step,
            "joint": self.joint_step,
            "target": self.target_step,
        }[self.transfer]

    def _sample_domains(self, n_sources, n_tasks=None):
        """``n_tasks`` (default ``meta_tasks``) source domains, 1-based: without replacement while there are
        enough."""
        n_tasks = self.n_tasks if n_tasks is None else n_tasks
        if n_sources == 0:
            raise UserInputError(
                "MetaRec needs source_datasets (the target has no shipped family to take them from): "
                "pass --source_datasets=\"['A','B']\""
            )
        if n_tasks <= n_sources:
            order = torch.randperm(n_sources, generator=self.generator)[:n_tasks]
        else:
            order = torch.randint(n_sources, (n_tasks,), generator=self.generator)
        return [int(i) + 1 for i in order]

    def _source_batch(self, source):
        rows = torch.randint(
            len(source.interaction), (self.source_batch_size,), generator=self.generator
        )
        return source.interaction[rows].to(self.device)

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

    def meta_gradients(self, target_batches, domains, source_batches):
        """The meta-gradients of one iteration, not applied: {grads, steps, losses, first_grads, phis: one entry
        per (target batch, source domain, source batch); weights: {name: [n]}}."""
        params = dict(self.model.named_parameters())
        out = {k: [] for k in ("grads", "steps", "losses", "first_grads", "phis")}
        for target_batch, domain, source_batch in zip(
            target_batches, domains, source_batches
        ):
            grads, steps, loss, phi, first = meta_gradient(
                self.model,
                params,
                self.shared_names,
                self.model.source_parameter_names(domain),
                source_batch,
                domain,
                target_batch,
                self.inner_steps,
                self.inner_lr,
                self.first_order,
            )
            out["grads"].append(grads)
            out["steps"].append(steps)
            out["losses"].append(loss)
            out["first_grads"].append(first)
            # the adapted weights are kept for the diagnosis only: without their graph
            out["phis"].append({n: v.detach() for n, v in phi.items()})
        out["weights"] = rescaling_weights(
            out["grads"], out["steps"], self.tau, self.rescale
        )
        return out

    def apply_meta_gradients(self, meta):
        """One optimizer step: the shared weights on sum_i w_i g_i, each sampled source's table on its own
        gradient. Returns the mean target loss at the adapted parameters."""
        params = dict(self.model.named_parameters())
        self.optimizer.zero_grad()
        for name in self.shared_names:
            params[name].grad = sum(
                w * g[name] for w, g in zip(meta["weights"][name], meta["grads"])
            )
        for grads in meta["first_grads"]:
            for name, grad in grads.items():
                if grad is not None and self.model.is_source_parameter(name):
                    params[name].grad = (
                        grad if params[name].grad is None else params[name].grad + grad
                    )
        self._apply_gradients()
        return torch.stack(meta["losses"]).mean()

    def meta_step(self, target_batches, domains, sources):
        """One meta iteration; returns the mean target loss at the adapted parameters."""
        self.model.start_iteration()
        source_batches = [self._source_batch(sources[d - 1]) for d in domains]
        return self.apply_meta_gradients(
            self.meta_gradients(target_batches, domains, source_batches)
        )

    def joint_step(self, target_batches, domains, sources):
        """The ablation without meta transfer: one ordinary step on the mean of the same batches' losses."""
        self.model.start_iteration()
        self.optimizer.zero_grad()
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

    def target_step(self, target_batches, domains=None, sources=None):
        """Target-only training on the same batches (the sources are not read): one ordinary step on the mean of
        the target losses."""
        self.model.start_iteration()
        self.optimizer.zero_grad()
        loss = torch.stack(
            [self.model.domain_loss(batch, TARGET_DOMAIN) for batch in target_batches]
        ).mean()
        loss.backward()
        self._apply_gradients()
        return loss.detach()

    def source_epoch_batches(self, sources):
        """One pass over every source's rows: [(domain, row indices)] in batches of ``source_batch_size`` from one
        source each, the batches of all sources in random order (the trainer's generator).
        """
        batches = []
        for domain, source in enumerate(sources, start=1):
            order = torch.randperm(len(source.interaction), generator=self.generator)
            batches += [
                (domain, order[start : start + self.source_batch_size])
                for start in range(0, len(order), self.source_batch_size)
            ]
        return [
            batches[i] for i in torch.randperm(len(batches), generator=self.generator)
        ]

    def pretrain_on_sources(self, sources, show_progress=False):
        """``source_pretrain_epochs`` passes over the sources' rows (CE + L_vq per batch, ordinary steps), then a
        fresh optimizer for the target. Returns the mean loss of each pass."""
        self.model.train()
        epoch_losses = []
        for epoch in range(self.source_pretrain_epochs):
            start, total = time.perf_counter(), 0.0
            batches = self.source_epoch_batches(sources)
            if show_progress:
                batches = tqdm(
                    batches,
                    ncols=100,
                    desc=set_color(f"Sources {epoch:>3}", "pink"),
                )
            for domain, rows in batches:
                self.model.start_iteration()
                self.optimizer.zero_grad()
                batch = sources[domain - 1].interaction[rows].to(self.device)
                loss = self.model.domain_loss(batch, domain)
                self._check_nan(loss)
                loss.backward()
                self._apply_gradients()
                total += loss.item()
            epoch_losses.append(total / len(batches))
            self.logger.info(
                set_color("source pretraining", "green")
                + f" epoch {epoch} [time: {time.perf_counter() - start:.2f}s, "
                f"mean loss: {epoch_losses[-1]:.4f}]"
            )
        self.optimizer = self._fresh_optimizer()
        return epoch_losses

    def fit(
        self,
        train_data,
        valid_data=None,
        verbose=True,
        saved=True,
        show_progress=False,
        callback_fn=None,
    ):
        if self.source_pretrain_epochs and self.start_epoch == 0:
            self.pretrain_on_sources(train_data._dataset.sources, show_progress)
        return super().fit(
            train_data, valid_data, verbose, saved, show_progress, callback_fn
        )

    def _clip(self):
        if self.clip_grad_norm:
            nn.utils.clip_grad_norm_(
                [p for n, p in self.model.named_parameters() if n in self.shared_names],
                **self.clip_grad_norm,
            )

    def _train_epoch(self, train_data, epoch_idx, loss_func=None, show_progress=False):
        self.model.train()
        sources = train_data._dataset.sources
        step = self.step
        n_batches = len(train_data)
        progress = (
            tqdm(
                total=-(-n_batches // self.n_tasks),
                ncols=100,
                desc=set_color(f"Train {epoch_idx:>5}", "pink"),
            )
            if show_progress
            else None
        )
        total, batches = 0.0, []
        for index, interaction in enumerate(train_data):
            batches.append(interaction.to(self.device))
            # the epoch's last (n_batches % n) batches make a smaller iteration of their own
            if len(batches) < self.n_tasks and index + 1 < n_batches:
                continue
            start = time.perf_counter()
            loss = step(
                batches, self._sample_domains(len(sources), len(batches)), sources
            )
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
