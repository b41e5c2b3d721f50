"""Time to quality: train with the defaults and measure the samples at wall-clock marks.

    python benchmarks/time_to_quality.py --marks 5 10 20

Runs train.py on its defaults in a fresh folder, keeping a step checkpoint every --save_every
steps, and stops it with SIGTERM (which saves) at the last mark. Each checkpoint's training time
comes from the log's wall_s column; for each mark the last checkpoint saved before it is
evaluated with evaluate.py (--num_samples samples, --sampler at its default steps), next to the
real-data floor at the same sample count.
"""
import argparse
import csv
import json
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import evaluate  # noqa: E402  (after the path set-up above)


def read_log(path):
    if not path.exists():
        return []
    with open(path) as f:
        return list(csv.DictReader(f))


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--marks", type=float, nargs="+", default=[5, 10, 20], help="minutes of training")
    parser.add_argument("--save_every", type=int, default=50)
    parser.add_argument("--num_samples", type=int, default=1000)
    parser.add_argument("--sampler", default="ddim")
    parser.add_argument("--work_dir", default="", help="keep checkpoints and logs here (default: a temp folder)")
    parser.add_argument("train_args", nargs="*", help="extra train.py flags, after --")
    args = parser.parse_args()
    work = Path(args.work_dir or tempfile.mkdtemp(prefix="ttq_"))
    ckpt, out = work / "ck", work / "out"

    # ---- train, stopping at the last mark ---------------------------------------------------
    cmd = [sys.executable, "train.py", "--checkpoint_path", str(ckpt), "--output_dir", str(out),
           "--save_every", str(args.save_every), "--log_every", str(args.save_every), "--keep_last", "100000",
           *args.train_args]
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    log = out / "train_log.csv"
    deadline = max(args.marks) * 60
    while proc.poll() is None:
        rows = read_log(log)
        if rows and float(rows[-1]["wall_s"]) >= deadline:
            proc.send_signal(signal.SIGTERM)
            proc.wait()
        time.sleep(2)

    # ---- evaluate the checkpoint at each mark ---------------------------------------------------
    rows = [r for r in read_log(log) if int(r["step"]) % args.save_every == 0]
    floor = evaluate.main(["--real", "--num_samples", str(args.num_samples), "--out", str(work / "real.json")])
    table = []
    for mark in args.marks:
        done = [r for r in rows if float(r["wall_s"]) <= mark * 60]
        if not done:
            continue
        step = int(done[-1]["step"])
        result = evaluate.main(["--checkpoint_path", f"{ckpt}_step{step:07d}", "--num_samples", str(args.num_samples),
                                "--sampler", args.sampler, "--out", str(work / f"eval_{mark:g}min.json")])
        table.append({"minutes": mark, "step": step, "train_seconds": float(done[-1]["wall_s"]), **result})
    print(f"\n{'minutes':>8s} {'step':>6s} {'FID':>8s} {'FID/floor':>10s} {'confident':>10s}   "
          f"({args.num_samples} samples, {args.sampler}; floor FID {floor['fid']:.4f})")
    for r in table:
        print(f"{r['minutes']:>8g} {r['step']:>6d} {r['fid']:>8.4f} {r['fid'] / floor['fid']:>10.1f} {r['confident']:>10.3f}")
    (work / "time_to_quality.json").write_text(json.dumps({"floor": floor, "marks": table}, indent=2))
    print(f"wrote {work / 'time_to_quality.json'}")


if __name__ == "__main__":
    main()
