"""What X-Cross's training costs against a new LoRA on the target, and what caching its frozen part could save.

    python benchmarks/bench_xcross_cost.py --target=Tools --sources=Sports,Electronics \\
        --source_adapter_dir=saved/bench_xcross_Tools_learning [--batches=6] [--key=value ...]

One process, the same training batches for both models, alternating (so a load shared with other processes hits
both alike): seconds per optimizer step (loss, backward, AdamW step) of ``PromptLoRA`` (a new adapter) and of
``XCross``, and seconds per scored prompt in evaluation. For X-Cross it splits the forward pass by hooks into the
embeddings and the layers below the first integrated one (every source runs them with its own frozen adapter; no
parameter below them trains, so backward never reaches them) and the rest. A cache of those lower hidden states
could save at most that share, only on prompts seen before, and only where they are computed alike each time.
The script measures both conditions: whether two train-mode passes of the lower layers agree (dropout), and how
many training prompts of one epoch recur in the next (the positive recurs; the popularity negatives are drawn
afresh), over ``--epochs`` draws with the model's negative sampler.
"""

import argparse
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def step_seconds(model, optimizer, batch):
    started = time.perf_counter()
    optimizer.zero_grad()
    loss = model.calculate_loss(batch)
    loss.backward()
    optimizer.step()
    return time.perf_counter() - started


class LowerTimer:
    """Forward seconds of the embeddings and of the layers below the first integrated one (hooks)."""

    def __init__(self, model):
        lm = model.language_model
        layers = lm.encoder.layer
        self.modules = [lm.embeddings] + list(
            layers[: len(layers) - model.n_integrated]
        )
        self.seconds, self._start = 0.0, None
        for module in self.modules:
            module.register_forward_pre_hook(self._pre)
            module.register_forward_hook(self._post)

    def _pre(self, *_):
        self._start = time.perf_counter()

    def _post(self, *_):
        self.seconds += time.perf_counter() - self._start


def recurring_prompts(model, train, epochs, seed):
    """Share of each later epoch's (row, candidate) prompts that an earlier epoch already had: the positive and the
    popularity negatives that happen to be drawn again (the model's sampler, fresh draws every epoch).
    """
    import torch

    from recbole_transfer.model.xcross import popularity_negatives

    rows = train._dataset.inter_feat
    positives = rows[model.POS_ITEM_ID]
    generator = torch.Generator().manual_seed(seed)
    seen, shares = set(), []
    for epoch in range(epochs):
        negatives = popularity_negatives(
            positives, model.item_counts.cpu(), model.n_negatives, generator
        )
        candidates = torch.cat([positives.unsqueeze(1), negatives], 1).tolist()
        prompts = {(r, c) for r, row in enumerate(candidates) for c in row}
        if epoch:
            shares.append(len(prompts & seen) / len(prompts))
        seen |= prompts
    return shares


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--target", default="Tools")
    parser.add_argument("--sources", default="Sports,Electronics")
    parser.add_argument("--source_adapter_dir", required=True)
    parser.add_argument("--batches", type=int, default=6)
    parser.add_argument("--eval_prompts", type=int, default=128)
    args, overrides = parser.parse_known_args()
    from recbole_transfer.config import parse_cli_overrides

    common = parse_cli_overrides(overrides)
    sys.argv = sys.argv[:1]  # RecBole's Config reads the command line
    import torch

    from recbole_transfer.quick_start import build

    settings = dict(
        dict(show_progress=False, log_flops=False, state="WARNING"), **common
    )
    _, lora, _, (train, _, test) = build(
        "PromptLoRA", args.target, config_dict=settings
    )
    config, xcross, _, _ = build(
        "XCross",
        args.target,
        config_dict=dict(
            settings,
            source_datasets=args.sources.split(","),
            source_adapter_dir=args.source_adapter_dir,
        ),
    )
    timer = LowerTimer(xcross)
    optimizers = {
        name: torch.optim.AdamW(
            [p for p in model.parameters() if p.requires_grad],
            lr=float(config["learning_rate"]),
            weight_decay=float(config["weight_decay"]),
        )
        for name, model in (("lora", lora), ("xcross", xcross))
    }
    trainable = {
        name: sum(p.numel() for p in model.parameters() if p.requires_grad)
        for name, model in (("lora", lora), ("xcross", xcross))
    }
    print(
        f"trainable parameters: new LoRA {trainable['lora']:,}, X-Cross {trainable['xcross']:,}",
        flush=True,
    )

    # training steps on the same batches, alternating which model goes first
    seconds = {"lora": [], "xcross": [], "lower": []}
    lora.train(), xcross.train()
    for index, batch in enumerate(train):
        if index == args.batches + 1:
            break
        order = ("lora", "xcross") if index % 2 else ("xcross", "lora")
        timer.seconds = 0.0
        measured = {
            name: step_seconds(
                lora if name == "lora" else xcross, optimizers[name], batch
            )
            for name in order
        }
        if index == 0:
            continue  # warm-up
        for name in order:
            seconds[name].append(measured[name])
        seconds["lower"].append(timer.seconds)
    prompts = config["train_batch_size"] * (1 + xcross.n_negatives)
    lower_share = [lo / x for lo, x in zip(seconds["lower"], seconds["xcross"])]
    print(
        f"training step of {prompts} prompts (median of {len(seconds['lora'])}): new LoRA "
        f"{statistics.median(seconds['lora']):.2f} s, X-Cross {statistics.median(seconds['xcross']):.2f} s, "
        f"ratio {statistics.median(x / lo for x, lo in zip(seconds['xcross'], seconds['lora'])):.2f}; "
        f"X-Cross's embeddings + lower {len(timer.modules) - 1} layers (every source): "
        f"{statistics.median(seconds['lower']):.2f} s = {statistics.median(lower_share):.1%} of its step",
        flush=True,
    )

    # does backward reach the lower layers? (it must not: nothing below them trains)
    lm = xcross.language_model
    batch = next(iter(train))
    token_lists = xcross.prompt_tokens(
        batch[xcross.ITEM_SEQ][:1],
        batch[xcross.ITEM_SEQ_LEN][:1],
        batch[xcross.POS_ITEM_ID][:1].unsqueeze(1),
    )
    from recbole_transfer import plm
    from recbole_transfer.model.xcross import adapter_per_row

    input_ids, attention_mask = plm.pad_batch(token_lists, xcross.item_tokens.pad_id)
    from transformers.masking_utils import create_bidirectional_mask

    def lower_states(train_mode):
        xcross.train(train_mode)
        states = lm.embeddings(input_ids=input_ids)
        mask = create_bidirectional_mask(
            config=lm.config, inputs_embeds=states, attention_mask=attention_mask
        )
        for layer in lm.encoder.layer[: len(lm.encoder.layer) - xcross.n_integrated]:
            with adapter_per_row(layer, [xcross.adapter_names[0]]):
                states = layer(states, attention_mask=mask)
            states = states[0] if isinstance(states, tuple) else states
        return states

    with torch.no_grad():
        train_diff = (lower_states(True) - lower_states(True)).abs().max().item()
        eval_diff = (lower_states(False) - lower_states(False)).abs().max().item()
    print(
        f"lower hidden states, two passes of one prompt: train mode max |diff| {train_diff:.3g} (dropout), "
        f"eval mode {eval_diff:.3g}; they need a gradient: {lower_states(True).requires_grad}",
        flush=True,
    )

    # evaluation: seconds per scored prompt
    lora.eval(), xcross.eval()
    interaction = next(iter(test))[0][: args.eval_prompts]
    evaluation = {}
    with torch.no_grad():
        for name, model in (("lora", lora), ("xcross", xcross), ("lora2", lora)):
            timer.seconds = 0.0
            started = time.perf_counter()
            model.predict(interaction)
            evaluation[name] = (time.perf_counter() - started) / len(interaction)
            if name == "xcross":
                evaluation["lower"] = timer.seconds / len(interaction)
    lora_eval = min(evaluation["lora"], evaluation["lora2"])
    print(
        f"evaluation per prompt: new LoRA {1000 * lora_eval:.1f} ms, X-Cross {1000 * evaluation['xcross']:.1f} ms "
        f"(ratio {evaluation['xcross'] / lora_eval:.2f}); X-Cross's lower layers "
        f"{evaluation['lower'] / evaluation['xcross']:.1%} of it",
        flush=True,
    )

    epochs = int(config["epochs"])
    shares = recurring_prompts(xcross, train, max(epochs, 2), int(config["seed"]))
    print(
        f"training prompts an earlier epoch already had, epochs 2..{max(epochs, 2)}: "
        + ", ".join(f"{s:.1%}" for s in shares),
        flush=True,
    )


if __name__ == "__main__":
    main()
