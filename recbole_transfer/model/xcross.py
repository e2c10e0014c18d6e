"""X-Cross: per-domain LoRA language models integrated layer by layer for a new domain.

Reference:
    "X-Cross: Dynamic Integration of Language Models for Cross-Domain Sequential Recommendation." SIGIR 2025.

Recommendation as multiple choice: a prompt is the titles of the user's last ``xc_history_items`` items (newest
first) followed by one candidate's title; the language model's [CLS] state (``xc_pooling: cls``, the paper's; or
the mean over the prompt's tokens, ``mean``, the pooling sentence encoders such as MiniLM were trained with) goes
through a pooler and a scorer, s = V act(W_p h + b_p) + b_c. Training scores the true next item and
``xc_negatives`` popularity-sampled other items and minimises the softmax NLL over them (Sec. 3.1.3). Evaluation: RecBole's ``predict`` on sampled candidate
sets (``mode: pop29`` = the paper's 30 choices) or ``full_sort_predict`` (one prompt per item: small targets only).

``PromptLoRA``: one language model with its own peft LoRA adapter and head: a source-domain model, or the "new LoRA
on the target" baseline. ``init_adapter`` starts from a saved one (``export``): zero-shot evaluation of a source,
or with ``xc_train_part: head`` the Pooler+Scorer baseline (adapter frozen).

``XCross``: the source adapters (``<source_adapter_dir>/PromptLoRA-<source>`` for each of ``source_datasets``,
frozen) loaded into one peft model. Every source runs every layer with its own adapter on its own hidden states;
after each of the top ``xcross_layers`` layers an integrator per layer mixes them: omega^l = W^l [h_1; ...; h_n]
(per token, W^l of 2n(n-1) x n*d, no bias), split into scales omega_{m,j} and interaction weights omega'_{m,j}
(j != m), and
    h~_m = h_m + alpha sum_{j!=m} omega_{m,j} h_j + beta sum_{j!=m} omega'_{m,j} (h_m - h_j)
(negative weights allowed, no softmax); the next layer reads h~_m. The output is sum_m w_m h~_m (w learnable), then
pooler and scorer. Trainable: the integrators, w, pooler, scorer. All sources run in one batch: peft's per-row
adapter selection (``adapter_names``) picks each row's source adapter inside every LoRA layer; each source's LoRA
dropout draws from its own seeded generator, so a seed gives the same run in every process.
"""

import json
import os
from contextlib import contextmanager

import torch
import torch.nn as nn
import torch.nn.functional as F
from recbole.model.abstract_recommender import SequentialRecommender

from recbole_transfer import plm
from recbole_transfer.errors import UserInputError
from recbole_transfer.utils import (
    atomic_folder,
    find_path,
    input_stage,
    is_unset,
    load_checkpoint,
)

HEAD_FILE = "prompt_head.pt"
INFO_FILE = "prompt_lora.json"
TRAIN_PARTS = ("lora", "head")
POOLINGS = ("cls", "mean")


class XCrossError(UserInputError):
    pass


def popularity_negatives(positives, item_counts, k, generator=None):
    """[B, k] distinct items per row drawn with probability proportional to ``item_counts`` (training
    frequency), never the row's positive and never the padding item 0."""
    weights = item_counts.float().unsqueeze(0).repeat(len(positives), 1)
    weights[:, 0] = 0
    weights.scatter_(1, positives.unsqueeze(1), 0)
    available = int((weights[0] > 0).sum()) - 1  # a row loses at most its positive
    if available < k:
        raise XCrossError(
            f"xc_negatives={k} but only {available} other items occur in training"
        )
    return torch.multinomial(weights, k, replacement=False, generator=generator)


class PromptHead(nn.Module):
    """Pooler (linear + tanh) and scorer (linear to one score) over the pooled prompt state."""

    def __init__(self, hidden_size):
        super().__init__()
        self.pooler = nn.Linear(hidden_size, hidden_size)
        self.scorer = nn.Linear(hidden_size, 1)

    def forward(self, prompt_state):
        return self.scorer(torch.tanh(self.pooler(prompt_state))).squeeze(-1)


@contextmanager
def adapter_per_row(module, adapter_names):
    """Inside ``module``, every peft LoRA layer applies row i's adapter ``adapter_names[i]`` (peft's mixed-batch
    forward, reached through its ``adapter_names`` argument)."""
    from peft.tuners.lora import LoraLayer

    def inject(_, args, kwargs):
        return args, dict(kwargs, adapter_names=adapter_names)

    handles = [
        m.register_forward_pre_hook(inject, with_kwargs=True)
        for m in module.modules()
        if isinstance(m, LoraLayer)
    ]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


class SeededDropout(nn.Module):
    """Dropout that draws its masks from its own generator. peft's mixed-batch forward applies the adapters' LoRA
    dropouts in the iteration order of a set of adapter names, which follows the process's string-hash seed: drawn
    from the global RNG, two runs with the same ``seed`` would give each source different masks.
    """

    def __init__(self, p, seed):
        super().__init__()
        self.p = p
        self.generator = torch.Generator().manual_seed(seed)

    def forward(self, x):
        if not self.training or self.p == 0:
            return x
        keep = torch.rand(x.shape, generator=self.generator) >= self.p
        return x * keep.to(x.device, x.dtype) / (1 - self.p)


def seed_source_dropouts(encoder, adapter_names, seed):
    """Every source adapter's LoRA dropout in ``encoder`` as a ``SeededDropout`` of the same rate, one generator per
    (LoRA layer, source), seeded from ``seed``."""
    from peft.tuners.lora import LoraLayer

    layers = [m for m in encoder.modules() if isinstance(m, LoraLayer)]
    for index, layer in enumerate(layers):
        for m, name in enumerate(adapter_names):
            dropout = layer.lora_dropout[name]
            if isinstance(dropout, nn.Dropout) and dropout.p > 0:
                layer.lora_dropout[name] = SeededDropout(
                    dropout.p, seed + 1 + index * len(adapter_names) + m
                )


def check_pooling(folder, pooling):
    """A saved head was trained on one pooling and scores nothing sensible on another."""
    saved = plm.read_json(os.path.join(folder, INFO_FILE)).get(
        "xc_pooling", "cls"
    )  # older folders: cls
    if saved != pooling:
        raise XCrossError(
            f"{folder} was trained with xc_pooling={saved}; got xc_pooling={pooling}"
        )


def load_head(head, folder, pooling):
    check_pooling(folder, pooling)
    head.load_state_dict(
        load_checkpoint(
            os.path.join(folder, HEAD_FILE), what="adapter head", plugin=False
        )
    )


def _adapter_folder(path):
    found = None if is_unset(path) else find_path(path, folder=True)
    if found is None or not os.path.isfile(os.path.join(found, HEAD_FILE)):
        raise XCrossError(
            f"{path} is not a PromptLoRA folder (no {HEAD_FILE}); write one with PromptLoRA.export"
        )
    return found


# the PromptLoRA keys a source adapter must share with the X-Cross run that integrates it
SOURCE_STAGE_KEYS = (
    "plm_name",
    "lora_r",
    "lora_alpha",
    "lora_dropout",
    "lora_target_modules",
    "xc_pooling",
    "xc_history_items",
    "xc_title_tokens",
    "xc_max_length",
    "xc_negatives",
)


def source_adapter_folders(config):
    """The PromptLoRA folder of each of ``source_datasets``: ``source_adapters`` (one folder per source, as the
    runner's recipe passes them), else ``<source_adapter_dir>/PromptLoRA-<source>`` (``source_adapter_dir``
    unset: ``checkpoint_dir``, where ``--model=PromptLoRA --dataset=<source>`` exports).
    """
    names = config["source_datasets"] or []
    if len(names) < 2:
        raise XCrossError(
            "XCross needs source_datasets with at least two source domains, e.g. "
            "--source_datasets=\"['Sports','Electronics']\""
        )
    if config["dataset"] in names:
        raise XCrossError(
            f"source_datasets must not include the target dataset '{config['dataset']}'"
        )
    given = config["source_adapters"]
    if not is_unset(given):
        if len(given) != len(names):
            raise XCrossError(
                f"source_adapters names {len(given)} folders for {len(names)} source_datasets"
            )
        return [_adapter_folder(folder) for folder in given]
    root = (
        config["checkpoint_dir"]
        if is_unset(config["source_adapter_dir"])
        else config["source_adapter_dir"]
    )
    folders = []
    for name in names:
        folder = os.path.join(str(root), f"PromptLoRA-{name}")
        if not os.path.isdir(folder):
            raise XCrossError(
                f"no adapter for source {name}: {folder} not found "
                f"(train it with --model=PromptLoRA --dataset={name})"
            )
        folders.append(_adapter_folder(folder))
    return folders


class PromptRecommender(SequentialRecommender):
    """Prompts, multiple-choice loss and ranking shared by ``PromptLoRA`` and ``XCross``; a subclass defines
    ``score(input_ids, attention_mask)`` -> [N] scores."""

    def __init__(self, config, dataset):
        super().__init__(config, dataset)
        self.history_items = int(config["xc_history_items"])
        self.n_negatives = int(config["xc_negatives"])
        self.max_length = int(config["xc_max_length"])
        self.score_batch_size = int(config["xc_score_batch_size"])
        self.pooling = config["xc_pooling"]
        if self.pooling not in POOLINGS:
            raise XCrossError(
                f"xc_pooling must be one of {', '.join(POOLINGS)}; got '{self.pooling}'"
            )
        # training frequency of every item: the popularity the negatives are drawn by
        counts = torch.zeros(self.n_items, dtype=torch.long)
        items, freq = torch.unique(
            dataset.inter_feat[self.POS_ITEM_ID], return_counts=True
        )
        counts[items] = freq
        self.register_buffer("item_counts", counts, persistent=False)
        self.generator = torch.Generator().manual_seed(int(config["seed"]))

    def init_tokens(self, tokenizer, dataset, config):
        self.item_tokens = plm.ItemTokens(
            tokenizer, dataset.item_texts, int(config["xc_title_tokens"])
        )

    def pool(self, hidden, attention_mask):
        """One vector per prompt from the last hidden states [N, T, d]."""
        if self.pooling == "cls":
            return hidden[:, 0]
        mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
        return (hidden * mask).sum(1) / mask.sum(1).clamp(min=1)

    def prompt_history(self, sequence, length):
        """The items a prompt shows (oldest first; the prompt lists them newest first): the last
        ``xc_history_items`` of the row's items before its target (RecBole's ``item_id_list``).
        """
        return sequence[:length][-self.history_items :]

    def prompt_tokens(self, item_seq, item_seq_len, candidates):
        """Token lists of every (row, candidate) prompt, row-major."""
        sequences, lengths, candidates = (
            item_seq.tolist(),
            item_seq_len.tolist(),
            candidates.tolist(),
        )
        return [
            self.item_tokens.pair(self.prompt_history(seq, n), c, self.max_length)
            for seq, n, row in zip(sequences, lengths, candidates)
            for c in row
        ]

    def score_prompts(self, token_lists):
        scores = []
        for start in range(0, len(token_lists), self.score_batch_size):
            input_ids, attention_mask = plm.pad_batch(
                token_lists[start : start + self.score_batch_size],
                self.item_tokens.pad_id,
            )
            scores.append(
                self.score(input_ids.to(self.device), attention_mask.to(self.device))
            )
        return torch.cat(scores)

    def calculate_loss(self, interaction):
        positives = interaction[self.POS_ITEM_ID]
        negatives = popularity_negatives(
            positives.cpu(), self.item_counts.cpu(), self.n_negatives, self.generator
        )
        candidates = torch.cat(
            [positives.cpu().unsqueeze(1), negatives], dim=1
        )  # the positive is choice 0
        scores = self.score_prompts(
            self.prompt_tokens(
                interaction[self.ITEM_SEQ], interaction[self.ITEM_SEQ_LEN], candidates
            )
        ).view(len(positives), -1)
        return F.cross_entropy(
            scores, torch.zeros(len(positives), dtype=torch.long, device=scores.device)
        )

    def predict(self, interaction):
        candidates = interaction[self.ITEM_ID].unsqueeze(1)
        return self.score_prompts(
            self.prompt_tokens(
                interaction[self.ITEM_SEQ], interaction[self.ITEM_SEQ_LEN], candidates
            )
        )

    def full_sort_predict(self, interaction):
        """Every item's prompt for every row: n_items language-model passes per user."""
        rows = len(interaction[self.ITEM_SEQ])
        candidates = torch.arange(self.n_items).unsqueeze(0).repeat(rows, 1)
        return self.score_prompts(
            self.prompt_tokens(
                interaction[self.ITEM_SEQ], interaction[self.ITEM_SEQ_LEN], candidates
            )
        ).view(rows, -1)


class PromptLoRA(PromptRecommender):
    def __init__(self, config, dataset):
        super().__init__(config, dataset)
        from peft import LoraConfig, PeftModel, get_peft_model

        # load parameters info
        self.train_part = config["xc_train_part"]
        if self.train_part not in TRAIN_PARTS:
            raise XCrossError(
                f"xc_train_part must be one of {', '.join(TRAIN_PARTS)}; got '{self.train_part}'"
            )
        init = (
            None
            if is_unset(config["init_adapter"])
            else _adapter_folder(config["init_adapter"])
        )

        # define layers: the language model with one LoRA adapter, and the head
        tokenizer, base = plm.load_plm(
            plm.adapter_base(init) if init else config["plm_name"]
        )
        self.init_tokens(tokenizer, dataset, config)
        if init:
            self.encoder = PeftModel.from_pretrained(
                base, init, is_trainable=self.train_part == "lora"
            )
        else:
            if self.train_part == "head":
                raise XCrossError(
                    "xc_train_part=head trains on a saved adapter: set init_adapter"
                )
            lora = LoraConfig(
                r=config["lora_r"],
                lora_alpha=config["lora_alpha"],
                lora_dropout=config["lora_dropout"],
                target_modules=list(config["lora_target_modules"]),
            )
            self.encoder = get_peft_model(base, lora)
        self.head = PromptHead(base.config.hidden_size)
        if init:
            load_head(self.head, init, self.pooling)
        self.base_name = plm.adapter_base(init) if init else config["plm_name"]

    def score(self, input_ids, attention_mask):
        hidden = self.encoder(
            input_ids=input_ids, attention_mask=attention_mask
        ).last_hidden_state
        return self.head(self.pool(hidden, attention_mask))

    def export(self, folder, extra_info=None):
        """The adapter (peft ``save_pretrained``), the head and ``prompt_lora.json``, written atomically."""
        info = dict(extra_info or {}, plm_name=self.base_name, xc_pooling=self.pooling)

        def write(tmp):
            self.encoder.save_pretrained(tmp)
            torch.save(self.head.state_dict(), os.path.join(tmp, HEAD_FILE))
            with open(os.path.join(tmp, INFO_FILE), "w", encoding="utf-8") as f:
                json.dump(info, f, indent=1)

        atomic_folder(write, folder)
        return folder


class XCross(PromptRecommender):
    yaml_bases = ("PromptLoRA",)
    # the other text domains of the target's family, each with its own PromptLoRA
    default_sources = "text"

    @classmethod
    def input_stages(cls, config):
        """Neither source_adapters nor source_adapter_dir given: one PromptLoRA per source runs first (stage
        group ``source``), with the prompt and adapter keys of this run."""
        if not is_unset(config["source_adapters"]) or not is_unset(
            config["source_adapter_dir"]
        ):
            return [], {}
        shared = {k: config[k] for k in SOURCE_STAGE_KEYS}
        stages = [
            input_stage(
                f"source {name}",
                "PromptLoRA",
                name,
                output_key="adapter_dir",
                settings=shared,
                sources=True,
                group="source",
            )
            for name in config["source_datasets"] or []
        ]
        return stages, {"source_adapters": ["@" + stage["name"] for stage in stages]}

    def __init__(self, config, dataset):
        super().__init__(config, dataset)
        from peft import PeftModel

        # load parameters info
        sources = source_adapter_folders(config)
        bases = {plm.adapter_base(path) for path in sources}
        if len(bases) != 1:
            raise XCrossError(
                f"the source adapters were tuned from different language models: {', '.join(sorted(bases))}"
            )
        self.n_sources = len(sources)
        self.alpha = float(config["xcross_alpha"])
        self.beta = float(config["xcross_beta"])
        head_source = int(config["xcross_head_source"])

        # define layers: one peft model holding every source adapter, frozen
        tokenizer, base = plm.load_plm(bases.pop())
        self.init_tokens(tokenizer, dataset, config)
        self.adapter_names = [f"source{m}" for m in range(self.n_sources)]
        self.encoder = PeftModel.from_pretrained(
            base, sources[0], adapter_name=self.adapter_names[0]
        )
        for name, path in zip(self.adapter_names[1:], sources[1:]):
            self.encoder.load_adapter(path, adapter_name=name)
        self.encoder.requires_grad_(False)
        seed_source_dropouts(self.encoder, self.adapter_names, int(config["seed"]))
        self.language_model = self.encoder.get_base_model()
        n_layers = len(self.language_model.encoder.layer)
        self.n_integrated = min(int(config["xcross_layers"]), n_layers)
        hidden, n = base.config.hidden_size, self.n_sources
        self.integrators = nn.ModuleList(
            nn.Linear(n * hidden, 2 * n * (n - 1), bias=False)
            for _ in range(self.n_integrated)
        )
        self.source_weights = nn.Parameter(torch.full((n,), 1.0 / n))
        self.head = PromptHead(hidden)

        # init: integrators at zero (every source starts on its own path); the head of one source
        for integrator in self.integrators:
            nn.init.zeros_(integrator.weight)
        for path in sources:  # every source must share the pooling, not only the head's
            check_pooling(path, self.pooling)
        load_head(self.head, sources[head_source], self.pooling)
        # pairs (m, j), j != m, in the order omega's columns are read
        self.register_buffer(
            "pair_other",
            torch.tensor([[j for j in range(n) if j != m] for m in range(n)]),
            persistent=False,
        )

    def integrate(self, integrator, states):
        """h~_m = h_m + alpha sum_j omega_mj h_j + beta sum_j omega'_mj (h_m - h_j) over states [n, B, T, d]."""
        n = self.n_sources
        omega = integrator(states.permute(1, 2, 0, 3).flatten(2))  # [B, T, 2n(n-1)]
        scales, interactions = omega.view(*omega.shape[:2], 2, n, n - 1).permute(
            2, 3, 0, 1, 4
        )  # [n, B, T, n-1]
        others = states[
            self.pair_other
        ]  # [n, n-1, B, T, d]: others[m, k] = h_j for the k-th j != m
        scales, interactions = scales.permute(0, 3, 1, 2).unsqueeze(
            -1
        ), interactions.permute(0, 3, 1, 2).unsqueeze(-1)
        direct = (scales * others).sum(1)
        differences = (interactions * (states.unsqueeze(1) - others)).sum(1)
        return states + self.alpha * direct + self.beta * differences

    def encode(self, input_ids, attention_mask):
        """The integrated last hidden states [B, T, d]."""
        from transformers.masking_utils import create_bidirectional_mask

        lm, n, rows = self.language_model, self.n_sources, len(input_ids)
        embedded = lm.embeddings(input_ids=input_ids)
        mask = create_bidirectional_mask(
            config=lm.config, inputs_embeds=embedded, attention_mask=attention_mask
        )
        states = embedded.repeat(n, 1, 1)  # source m's rows are m*B .. (m+1)*B - 1
        if mask is not None:
            mask = mask.repeat(n, *([1] * (mask.dim() - 1)))
        names = [name for name in self.adapter_names for _ in range(rows)]
        layers = lm.encoder.layer
        first_integrated = len(layers) - self.n_integrated
        for index, layer in enumerate(layers):
            with adapter_per_row(layer, names):
                states = layer(states, attention_mask=mask)
            states = states[0] if isinstance(states, tuple) else states
            if index >= first_integrated:
                per_source = states.view(n, rows, *states.shape[1:])
                states = self.integrate(
                    self.integrators[index - first_integrated], per_source
                ).flatten(0, 1)
        per_source = states.view(n, rows, *states.shape[1:])
        return (self.source_weights.view(n, 1, 1, 1) * per_source).sum(0)

    def score(self, input_ids, attention_mask):
        return self.head(
            self.pool(self.encode(input_ids, attention_mask), attention_mask)
        )
