"""Seconds per UniSRec training step (forward + backward + Adam) with length-bucketed encoding (the model's
``forward``) against encoding the padded batch, as the reference code does, on the same batches.

    python benchmarks/bench_unisrec_step.py --dataset=Scientific --steps=5 [--key=value ...]
"""

import argparse
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--dataset", default="Scientific")
    parser.add_argument("--steps", type=int, default=5)
    args, overrides = parser.parse_known_args()
    from recbole_transfer.config import parse_cli_overrides
    from recbole_transfer.quick_start import build

    config_dict = dict(
        dict(log_flops=False, show_progress=False, pretrained_path=None),
        **parse_cli_overrides(overrides),
    )
    sys.argv = sys.argv[:1]
    config, model, _, (train, _, _) = build(
        "UniSRec", args.dataset, config_dict=config_dict
    )
    batches = [batch for _, batch in zip(range(args.steps + 1), train)]
    bucketed_forward = model.forward

    def padded_forward(item_seq, item_seq_len, table, rows=None):
        rows = item_seq if rows is None else rows
        return model._encode(item_seq, item_seq_len, table[rows])

    optimizer = __import__("torch").optim.Adam(model.parameters(), lr=1e-3)
    model.train()
    results = {}
    for label, forward in (
        ("padded (reference)", padded_forward),
        ("length-bucketed", bucketed_forward),
    ):
        model.forward = forward
        times = []
        for i, batch in enumerate(batches):
            start = time.time()
            optimizer.zero_grad()
            model.calculate_loss(batch).backward()
            optimizer.step()
            if i:  # the first step warms up allocators
                times.append(time.time() - start)
        results[label] = statistics.median(times)
    lengths = batches[0][model.ITEM_SEQ_LEN].float()
    print(
        f"{args.dataset} train_stage={config['train_stage']} batch={config['train_batch_size']} "
        f"hidden={config['hidden_size']} L={config['MAX_ITEM_LIST_LENGTH']} "
        f"(mean history {lengths.mean():.1f}, max {int(lengths.max())})"
    )
    for label, seconds in results.items():
        print(f"{label}: {seconds:.2f} s/step")
    print(
        f"speed-up: {results['padded (reference)'] / results['length-bucketed']:.1f}x"
    )


if __name__ == "__main__":
    main()
