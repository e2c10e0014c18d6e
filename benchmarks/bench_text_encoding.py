"""Item-text encoding throughput on Scientific: this pipeline vs the reference-style loop, in one run.

    python benchmarks/bench_text_encoding.py [--limit N] [--threads T] [--budgets 2048,4096,8192] [--repeat R]

Texts: ../shared/data/amazon2018_scientific_unisrec/Scientific.text (4,385 items), encoder all-MiniLM-L6-v2
(the default PLM), CLS pooling.

(a) Baseline, as the reference UniSRec preprocessing encodes: batches of 4 in file order, each padded to its longest
    text, truncation at 512 tokens, plain ``torch.no_grad``.
(b) ``recbole_transfer.plm.encode_texts``: tokenized once, sorted by length, batches under a token budget,
    ``torch.inference_mode`` (one row per budget in ``--budgets``; the default budget is marked).

Also: the max |difference| between the two matrices and the time of a cached ``item_text_matrix`` call (the second
run of a model on the same dataset). Prints a markdown row at the end; writes nothing else.
"""

import argparse
import os
import platform
import sys
import tempfile
import time
from datetime import date

import torch

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

from recbole_transfer import plm  # noqa: E402
from recbole_transfer.data import text  # noqa: E402

TEXT_FILE = os.path.join(
    os.path.dirname(REPO),
    "shared",
    "data",
    "amazon2018_scientific_unisrec",
    "Scientific.text",
)


def naive_encode(texts, tokenizer, model, batch_size=4, max_length=512):
    out = []
    with torch.no_grad():
        for start in range(0, len(texts), batch_size):
            enc = tokenizer(
                texts[start : start + batch_size],
                padding=True,
                truncation=True,
                max_length=max_length,
                return_tensors="pt",
            )
            out.append(model(**enc).last_hidden_state[:, 0])
    return torch.cat(out)


def timed(fn):
    start = time.perf_counter()
    result = fn()
    return result, time.perf_counter() - start


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--limit", type=int, default=None, help="encode only the first N items"
    )
    parser.add_argument(
        "--threads",
        type=int,
        default=None,
        help="torch.set_num_threads (default: torch's)",
    )
    parser.add_argument(
        "--budgets",
        default=str(plm.DEFAULT_TOKEN_BUDGET),
        help="comma-separated token budgets to time for the pipeline",
    )
    parser.add_argument(
        "--repeat",
        type=int,
        default=1,
        help="time each pipeline budget R times, keep the best",
    )
    parser.add_argument("--text_file", default=TEXT_FILE)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    texts = list(text.read_item_text(args.text_file).values())[: args.limit]
    tokenizer, model = plm.load_plm(plm.DEFAULT_PLM)
    lengths = [
        len(ids)
        for ids in tokenizer(texts, truncation=True, max_length=512)["input_ids"]
    ]
    print(
        f"{len(texts)} texts, tokens per text: mean {sum(lengths) / len(lengths):.1f}, max {max(lengths)}; "
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, {os.cpu_count()} CPUs"
    )
    naive_encode(texts[:16], tokenizer, model)  # warm-up (allocator, kernels)

    baseline, naive_s = timed(lambda: naive_encode(texts, tokenizer, model))
    print(
        f"(a) naive (batch 4, file order, max_length 512, no_grad): {len(texts) / naive_s:.1f} items/s "
        f"({naive_s:.1f} s)"
    )

    results, fast = {}, None
    for budget in [int(b) for b in args.budgets.split(",")]:
        best = float("inf")
        for _ in range(args.repeat):
            fast, seconds = timed(
                lambda: plm.encode_texts(
                    texts,
                    tokenizer,
                    model,
                    pooling="cls",
                    token_budget=budget,
                    show_progress=False,
                )
            )
            best = min(best, seconds)
        results[budget] = best
        diff = (fast - baseline).abs().max().item()
        mark = " (default)" if budget == plm.DEFAULT_TOKEN_BUDGET else ""
        print(
            f"(b) encode_texts token_budget={budget}{mark}: {len(texts) / best:.1f} items/s ({best:.1f} s), "
            f"{naive_s / best:.2f}x, max |diff| vs naive {diff:.1e}"
        )

    budget = (
        plm.DEFAULT_TOKEN_BUDGET
        if plm.DEFAULT_TOKEN_BUDGET in results
        else min(results, key=results.get)
    )
    fast_s = results[budget]
    fast = plm.encode_texts(
        texts, tokenizer, model, token_budget=budget, show_progress=False
    )
    diff = (fast - baseline).abs().max().item()

    with tempfile.TemporaryDirectory() as cache_dir:
        aligned = [""] + texts
        _, first_s = timed(
            lambda: text.item_text_matrix(
                "Scientific", aligned, cache_dir=cache_dir, show_progress=False
            )
        )
        cached, cached_s = timed(
            lambda: text.item_text_matrix(
                "Scientific", aligned, cache_dir=cache_dir, show_progress=False
            )
        )
        assert torch.allclose(cached[1:], fast, atol=1e-5)
    print(
        f"item_text_matrix: first call (load encoder + encode + write) {first_s:.1f} s, "
        f"cached call {cached_s * 1000:.0f} ms for {len(aligned)} x {cached.shape[1]}"
    )

    machine = f"{platform.machine()} CPU, {torch.get_num_threads()} threads"
    print()
    print(
        "| date | machine | items | naive items/s | pipeline items/s | speedup | max abs diff | cached load |"
    )
    print("|---|---|---|---|---|---|---|---|")
    print(
        f"| {date.today()} | {machine} | {len(texts)} | {len(texts) / naive_s:.1f} | "
        f"{len(texts) / fast_s:.1f} (budget {budget}) | {naive_s / fast_s:.2f}x | {diff:.1e} | "
        f"{cached_s * 1000:.0f} ms |"
    )


if __name__ == "__main__":
    main()
