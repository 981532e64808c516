"""Run every benchmark script in turn with its default settings (``make bench``).

    python benchmarks/run_all.py [--only NAME ...]

Each script runs in its own process (they start their own workers), its output going straight to this
terminal; the run stops at the first script that fails. RESULTS.md records what the scripts measured
and on which machine.
"""
import argparse
import os
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
SCRIPTS = ("bench_ops", "bench_project", "bench_inference", "bench_compare", "bench_memory", "bench_topk")
# bench_topk's VGG16 part takes about 15 minutes on two cores: run it on its own (RESULTS.md has the command)
ARGS = {"bench_topk": ["--only", "fig2", "dask", "memory"]}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--only", nargs="+", choices=SCRIPTS, help="run these scripts only")
    args = ap.parse_args(argv)
    for name in args.only or SCRIPTS:
        print(f"\n=== {name} ===", flush=True)
        rc = subprocess.run([sys.executable, os.path.join(HERE, f"{name}.py")] + ARGS.get(name, [])).returncode
        if rc:
            raise SystemExit(f"{name} failed (exit status {rc})")


if __name__ == "__main__":
    main()
