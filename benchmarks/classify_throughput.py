"""Seconds the shipped classifier takes for the features of the 10,000 MNIST test images, by batch
size (utils/metrics.py classify: what evaluate.py and train.py --eval_every pay for the test
set's features), interleaved over repeats; says whether every batch size gives the features of
the first bit for bit.

    python -m benchmarks.classify_throughput --batch_sizes 1000 200 --repeats 5
"""
from dataclasses import dataclass
from statistics import median

import torch

from benchmarks.common import timed
from models.classifier import load_classifier
from utils.config import DATA_DIR, check_fields, device_option, from_args, option, parse_flags
from utils.data import load_mnist, to_model_range
from utils.device import select_device, set_cpu_threads
from utils.metrics import classify


@dataclass
class Flags:
    device: str = device_option()
    data_dir: str = option(DATA_DIR, "where MNIST is (fetched there if missing)")
    batch_sizes: tuple = option((1000, 200), "batch sizes to time; the first is the reference", item=int)
    repeats: int = option(5, "timed repeats of every batch size, interleaved", bounds="[1, inf)")

    def __post_init__(self):
        check_fields(self)


def main():
    args = from_args(Flags, parse_flags(__doc__.splitlines()[0], [Flags])[0])
    device = select_device(args.device)
    set_cpu_threads()
    classifier = load_classifier(device)
    images = to_model_range(load_mnist(args.data_dir, train=False)[0])
    features, seconds = {}, {b: [] for b in args.batch_sizes}
    for _ in range(args.repeats):
        for b in args.batch_sizes:
            seconds[b].append(timed(lambda: features.__setitem__(b, classify(classifier, images, device, b)[0]), device))
    first = args.batch_sizes[0]
    print(f"device {device}, CPU capability {torch.backends.cpu.get_cpu_capability()}, {torch.get_num_threads()} "
          f"threads, {len(images)} test images, {args.repeats} repeats")
    print(f"{'batch':>6s} {'median s':>9s} {'vs first':>9s} {'same features':>14s}")
    for b, values in seconds.items():
        print(f"{b:>6d} {median(values):>9.2f} {median(values) / median(seconds[first]):>8.2f}x "
              f"{str(torch.equal(features[b], features[first])):>14s}")


if __name__ == "__main__":
    main()
